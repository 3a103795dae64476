package inbox

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/metrics"
	"github.com/wxpush/wxpush/internal/redistest"
)

// TestInboxOnRedisCluster runs append, apply, park and replay on a real
// 3-master Redis Cluster: a script or transaction whose keys spanned slots
// would fail with CROSSSLOT.
func TestInboxOnRedisCluster(t *testing.T) {
	t.Parallel()
	rdb := redistest.StartCluster(t, 3).Client(t)
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, rdb, []string{"default"})
	counts := metrics.New(reg, metrics.Labels{Apps: []string{"default"}})
	store := delivery.NewStore(rdb, delivery.Config{Retention: time.Hour, ConfirmTimeout: time.Hour, CallbackHold: time.Hour})
	ib := New(rdb, m)
	id := string(delivery.Shard("default")) + "c1"
	if _, err := store.Create(ctx, delivery.NewMessage{ID: id, App: "default", Queue: "normal", To: "o1", Body: []byte(`{"touser":"o1"}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Begin(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := store.MarkSent(ctx, id, "default", 4242); err != nil {
		t.Fatal(err)
	}
	for i, xml := range [][]byte{resultXML(4242, "success"), []byte("<xml><MsgID>1")} {
		use, err := ib.Append(ctx, Entry{App: "default", Event: "TEMPLATESENDJOBFINISH", XML: xml, Received: time.Now()},
			strconv.FormatInt(time.Now().Unix(), 10), strconv.Itoa(i), xml, time.Minute)
		if err != nil || use != Appended {
			t.Fatalf("Append on the cluster = %v, %v", use, err)
		}
	}
	a := NewApplier(rdb, store, "c", m, counts, slog.New(slog.NewTextHandler(io.Discard, nil)))
	a.Block = 10 * time.Millisecond
	if n, err := a.Once(ctx, true); err != nil || n != 2 {
		t.Fatalf("Once on the cluster = %d, %v; want the result applied and the broken one parked", n, err)
	}
	if msg, err := store.Get(ctx, id); err != nil || msg.State != delivery.StateDelivered {
		t.Fatalf("message after the apply: %+v, %v", msg, err)
	}
	pe := NewParkedEvents(rdb)
	list, total, err := pe.List(ctx, 10)
	if err != nil || total != 1 {
		t.Fatalf("parked on the cluster: %+v (%d), %v", list, total, err)
	}
	if err := pe.Replay(ctx, list[0].ID); err != nil {
		t.Fatalf("Replay on the cluster: %v", err)
	}
	if _, ok, err := Oldest(ctx, rdb); err != nil || !ok {
		t.Fatalf("Oldest after the replay: %v, %v", ok, err)
	}
}
