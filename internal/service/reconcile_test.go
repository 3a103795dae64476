package service_test

import (
	"context"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/servicetest"
)

// TestOrphanedMessageIsSent: a message stored by an enqueuer that died before
// it enqueued the task (simulated by storing the record alone) is sent by a
// worker's sweep, not left queued and counted in the backlog forever.
func TestOrphanedMessageIsSent(t *testing.T) {
	t.Parallel()
	// A 2 s confirmation timeout makes the worker sweep every 500 ms.
	c := servicetest.Start(t, servicetest.Options{Workers: 1, Env: map[string]string{"WXPUSH_CONFIRM_TIMEOUT": "2s"}})
	store := delivery.NewStore(c.Redis.Client(t), delivery.Config{})
	id := delivery.IDFor("default", ulid.Make().String())
	if _, err := store.Create(context.Background(), delivery.NewMessage{ID: id, App: "default", To: "o_orphan",
		Queue: "normal", Body: []byte(servicetest.MessageBody("o_orphan"))}); err != nil {
		t.Fatal(err)
	}
	if m := servicetest.WaitFinal(t, c.API, id, 30*time.Second); m.State != "delivered" {
		t.Fatalf("orphaned message = %+v, want delivered", m)
	}
	if got := servicetest.SumSeries(t, c.Scrape, `wxpush_enqueues_completed_total{app="default"}`); got != 1 {
		t.Errorf("wxpush_enqueues_completed_total = %v, want 1", got)
	}
	if n, _ := store.Backlog(context.Background(), "default"); n != 0 {
		t.Errorf("backlog = %d after the orphan was delivered, want 0", n)
	}
}
