package delivery

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/redistest"
)

// TestHeldAndLostRepliesOnRedisCluster runs the bounded held results and the
// lost-reply match on a real 3-master Redis Cluster: the scripts build the
// per-app and per-openid keys from the shard's tag, and one that reached a
// key in another slot would fail there.
func TestHeldAndLostRepliesOnRedisCluster(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartCluster(t, 3)
	rdb := cluster.Client(t)
	ctx := context.Background()
	c := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	store := NewStore(rdb, Config{Retention: 48 * time.Hour, ConfirmTimeout: 10 * time.Minute, Now: c.Now, MaxHeld: 2})
	for _, k := range []string{heldIndexKey("shop"), suspectIndexKey("shop"), heldByUserKey("shop", "o"), suspectKey("shop", "o")} {
		got, err := rdb.ClusterKeySlot(ctx, k).Result()
		if err != nil || int(got) != slot(k) || slot(k) != slot(backlogKey(Shard("shop"))) {
			t.Fatalf("key %s is in slot %d (%v), not the app's %d", k, got, err, slot(backlogKey(Shard("shop"))))
		}
	}
	for i, app := range appsOnDistinctMasters(t, rdb, 3) {
		id := func(n int) string { return IDFor(app, fmt.Sprintf("1%024d%d", i, n)) }
		lost, first := id(1), id(2)
		for _, m := range []string{lost, first} {
			if _, err := store.Create(ctx, NewMessage{ID: m, App: app, Queue: "normal", Body: []byte(`{"touser":"o"}`)}); err != nil {
				t.Fatal(err)
			}
		}
		// Three held results, two kept.
		evicted := 0
		for n := 1; n <= 3; n++ {
			rs, errs, err := store.ApplyCallbacks(ctx, []CallbackInput{{App: app, MsgID: fmt.Sprint(n), To: StateDelivered, Raw: "success", OpenID: "x"}})
			if err != nil || errs[0] != nil || rs[0].Outcome != CallbackHeld {
				t.Fatalf("%s: held callback = %+v, %v, %v", app, rs, errs, err)
			}
			evicted += rs[0].Evicted
			c.Advance(time.Second)
		}
		if evicted != 1 {
			t.Errorf("%s: evicted %d, want 1", app, evicted)
		}
		// A lost reply, dead, then corrected by its callback.
		start := c.Now()
		mustBegin(t, store, lost)
		if _, err := store.MarkAmbiguous(ctx, lost, app, "o", start); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Finish(ctx, lost, app, StateDead, &ErrorInfo{Msg: "timeout"}); err != nil {
			t.Fatal(err)
		}
		rs, _, err := store.ApplyCallbacks(ctx, []CallbackInput{{App: app, MsgID: "100", To: StateDelivered, Raw: "success", OpenID: "o", CreateTime: start}})
		if err != nil || rs[0].Outcome != CallbackCorrected || rs[0].ID != lost {
			t.Fatalf("%s: callback after dead = %+v, %v; want corrected", app, rs, err)
		}
		// The callback first, then the lost reply.
		start = c.Now()
		mustBegin(t, store, first)
		if rs, _, err := store.ApplyCallbacks(ctx, []CallbackInput{{App: app, MsgID: "200", To: StateDelivered, Raw: "success", OpenID: "o", CreateTime: start}}); err != nil || rs[0].Outcome != CallbackHeld {
			t.Fatalf("%s: early callback = %+v, %v", app, rs, err)
		}
		if tr, err := store.MarkAmbiguous(ctx, first, app, "o", start); err != nil || tr.State != StateDelivered {
			t.Fatalf("%s: MarkAmbiguous after a held result = %+v, %v", app, tr, err)
		}
	}
}
