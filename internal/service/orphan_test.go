package service_test

import (
	"context"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/servicetest"
)

// TestWorkerEndsOrphans: a record an enqueuer stored and never gave a task
// (it died before enqueueing, so its request got no 2xx) is ended canceled by
// the worker's sweep once older than WXPUSH_ORPHAN_AFTER, is never sent, and
// frees its app's backlog slot; a message accepted meanwhile is delivered.
func TestWorkerEndsOrphans(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Workers: 1, Env: map[string]string{
		"WXPUSH_CONFIRM_TIMEOUT": "2s", // the sweep ticks every 500 ms
		"WXPUSH_ORPHAN_AFTER":    "30s",
	}})
	// The dead enqueuer's write, an hour ago by its clock.
	past := func() time.Time { return time.Now().Add(-time.Hour) }
	store := delivery.NewStore(c.Redis.Client(t), delivery.Config{Now: past})
	orphan := delivery.NewMessage{ID: delivery.IDFor("default", ulid.Make().String()), App: "default", To: "orphan_user",
		Queue: "normal", Body: []byte(servicetest.MessageBody("orphan_user"))}
	if _, err := store.Create(context.Background(), orphan); err != nil {
		t.Fatal(err)
	}
	accepted := servicetest.PostMessage(t, c.API, servicetest.MessageBody("live_user"))

	m := servicetest.WaitFinal(t, c.API, orphan.ID, 20*time.Second)
	if m.State != "canceled" || m.Attempts != 0 {
		t.Errorf("orphan = %+v, want canceled with no attempt", m)
	}
	if m := servicetest.WaitFinal(t, c.API, accepted, 20*time.Second); m.State != "delivered" {
		t.Errorf("accepted message = %+v, want delivered", m)
	}
	if got := servicetest.SumSeries(t, c.Scrape, `wxpush_orphans_canceled_total{app="default"}`); got != 1 {
		t.Errorf("orphans_canceled = %v, want 1", got)
	}
	// Never counted as enqueued, so not as finished: enqueued − finished stays
	// the messages in flight.
	if got := servicetest.SumSeries(t, c.Scrape, `wxpush_messages_finished_total{app="default",state="canceled"}`); got != 0 {
		t.Errorf("finished{canceled} = %v, want 0", got)
	}
	if n, err := store.Backlog(context.Background(), "default"); err != nil || n != 0 {
		t.Errorf("backlog = %d, %v, want 0", n, err)
	}
	if sends := len(c.SendTimes()); sends != 1 {
		t.Errorf("the simulator got %d sends, want 1 (the orphan is never sent)", sends)
	}
}
