package service_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/inbox"
	"github.com/wxpush/wxpush/internal/servicetest"
)

// TestInboxBurstWhileAppliersStopped: 20,000 results pushed by the simulator
// through its 64 pushers while no applier runs, each answered after one
// append; then an applier starts and settles them all. None is lost, and the
// unconfirmed sweep settles none while their results wait in the inbox, even
// once every message's confirmation deadline (20 s here) has passed.
func TestInboxBurstWhileAppliersStopped(t *testing.T) {
	t.Parallel()
	const n = 20000
	c := servicetest.Start(t, servicetest.Options{Workers: 1, Env: map[string]string{
		"WXPUSH_INBOX_APPLY": "false", "WXPUSH_CONFIRM_TIMEOUT": "20s", "WXPUSH_CONCURRENCY": "64",
	}})
	rdb := c.Redis.Client(t)
	bodies := make([]string, 0, 1000)
	for i := range n {
		bodies = append(bodies, servicetest.MessageBody(fmt.Sprintf("oBurst_%06d", i)))
		if len(bodies) == cap(bodies) {
			servicetest.PostBatch(t, c.API, bodies)
			bodies = bodies[:0]
		}
	}
	sent := time.Now()
	t.Logf("%d messages accepted", n)
	deadline := time.Now().Add(4 * time.Minute)
	for c.Sim.Stats().CallbacksPushed < n {
		if time.Now().After(deadline) {
			st := c.Sim.Stats()
			t.Fatalf("the simulator pushed %d of %d results (%d failed) in 4 min", st.CallbacksPushed, n, st.CallbacksFailed)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := c.Sim.Stats(); st.CallbacksFailed != 0 {
		t.Errorf("%d result pushes failed; each must be answered", st.CallbacksFailed)
	}
	if depth, _ := rdb.XLen(t.Context(), inbox.Stream).Result(); depth != n {
		t.Fatalf("the inbox holds %d events with no applier running, want %d", depth, n)
	}
	t.Logf("%d results pushed and answered %s after the last message was accepted", n, time.Since(sent).Round(time.Millisecond))
	// Every message was sent before its result was pushed, so every
	// deadline is at most 20 s from now: give the sweeper (every 5 s) time
	// to make the mistake it must not.
	pushed := time.Now()
	for time.Since(pushed) < 27*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	if u := servicetest.SumSeries(t, c.Scrape, `wxpush_messages_finished_total{app="default",state="unconfirmed"}`); u != 0 {
		t.Fatalf("%v messages settled unconfirmed while their results waited in the inbox", u)
	}

	c.AddWorkerEnv(t, map[string]string{"WXPUSH_INBOX_APPLY": "true"})
	applying := time.Now()
	deadline = time.Now().Add(4 * time.Minute)
	for {
		delivered := servicetest.SumSeries(t, c.Scrape, `wxpush_messages_finished_total{app="default",state="delivered"}`)
		depth, _ := rdb.XLen(t.Context(), inbox.Stream).Result()
		if delivered == n && depth == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 4 min: %v of %d delivered (%v unconfirmed), %d events still in the inbox", delivered, n,
				servicetest.SumSeries(t, c.Scrape, `wxpush_messages_finished_total{app="default",state="unconfirmed"}`), depth)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d results applied in %s", n, time.Since(applying).Round(time.Millisecond))
	if u := servicetest.SumSeries(t, c.Scrape, `wxpush_messages_finished_total{app="default",state="unconfirmed"}`); u != 0 {
		t.Errorf("%v messages unconfirmed, want 0", u)
	}
	if a := servicetest.SumSeries(t, c.Scrape, `wxpush_inbox_applied_total{app="default"}`); a != n {
		t.Errorf("inbox_applied_total = %v, want %d", a, n)
	}
	if p, _ := rdb.XLen(t.Context(), inbox.ParkedStream).Result(); p != 0 {
		t.Errorf("%d events parked, want 0", p)
	}
}
