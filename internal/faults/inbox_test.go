//go:build linux

package faults

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/inbox"
)

// Case 10: inbox appliers SIGKILLed mid-batch. 3,000 results are answered
// into the inbox while no applier runs; then an applying worker starts and is
// SIGKILLed as soon as it has applied something, a second one likewise, and a
// third takes over what the dead ones read and never acknowledged (after
// inbox.DefaultClaimAfter). Every message must end delivered with exactly one
// callback in its history (applied once in effect), nothing parked, nothing
// pending.
func TestInboxAppliersSIGKILLed(t *testing.T) {
	requireFaults(t)
	const total = 3000
	c := startCluster(t, options{workers: 1, env: map[string]string{"WXPUSH_CONCURRENCY": "20", "WXPUSH_INBOX_APPLY": "false"}})
	p := newProducer(c)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	items := itemNames("inbox", 0, total)
	for i := 0; i < total/500; i++ {
		if err := p.submitBatch(ctx, items[i*500:(i+1)*500], fmt.Sprintf("inbox-batch-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	ids, _ := p.ackedIDs()
	depth := func() int64 {
		n, err := c.rdb.XLen(context.Background(), inbox.Stream).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitUntil(t, 90*time.Second, "every result in the inbox", func() bool { return depth() >= total })

	var pendingAtKill []int64
	var killedAt time.Time
	for range 2 {
		before := depth()
		w := c.startWorkerWith(map[string]string{"WXPUSH_INBOX_APPLY": "true"})
		waitUntil(t, 30*time.Second, "the applier to apply something", func() bool { return depth() < before })
		w.kill()
		killedAt = time.Now()
		c.dropWorker(w)
		sum, err := c.rdb.XPending(context.Background(), inbox.Stream, inbox.Group).Result()
		if err != nil {
			t.Fatal(err)
		}
		pendingAtKill = append(pendingAtKill, sum.Count)
	}
	left := depth()
	c.startWorkerWith(map[string]string{"WXPUSH_INBOX_APPLY": "true"})
	views := c.waitFinal(ids, 120*time.Second, nil)
	byState := c.checkStates(ids, views, expectDelivered)
	applied := 0
	for _, id := range ids {
		v := views[id]
		n := 0
		for _, h := range v.History {
			if h.Event == "callback" {
				n++
			}
		}
		if n == 1 {
			applied++
		} else if v.State == "delivered" {
			t.Errorf("%s has %d callback entries in its history, want exactly 1", id, n)
		}
	}
	waitUntil(t, 10*time.Second, "the inbox to be empty", func() bool { return depth() == 0 })
	if sum, _ := c.rdb.XPending(context.Background(), inbox.Stream, inbox.Group).Result(); sum != nil && sum.Count != 0 {
		t.Errorf("%d inbox events still pending", sum.Count)
	}
	if n, _ := c.rdb.XLen(context.Background(), inbox.ParkedStream).Result(); n != 0 {
		t.Errorf("%d events parked, want 0", n)
	}
	if pendingAtKill[0]+pendingAtKill[1] == 0 {
		t.Logf("neither kill landed mid-batch (no event read and unacknowledged): the takeover was not exercised this run")
	}
	c.checkProcesses()
	t.Logf("FIGURES case10 inbox appliers SIGKILLed: messages %d %v, each applied once %d, events read and unacknowledged at the kills %v, "+
		"left for the third applier %d, all final %s after the last kill",
		len(ids), byState, applied, pendingAtKill, left, since(killedAt, lastFinished(views)))
}
