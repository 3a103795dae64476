//go:build linux

package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Case 6: the enqueuer SIGKILLed while batches are in flight, four times,
// and restarted on the same address. Producers send batches with an
// Idempotency-Key and retry whatever got no complete answer (connection
// refused or reset, a cut-off reply, 409 idempotency_in_progress) with the
// same key and body, as the client package does. Two kills land at random.
// Two land at chosen points of a batch request, found through a proxy
// between the enqueuer and Redis that holds the command back and SIGKILLs the
// enqueuer when it sees it: (a) the batch is committed (records and fanout
// task written) and the enqueuer is storing its idempotent response
// ("done …"); (b) the records are written and the enqueuer is enqueuing the
// fanout task. In both the producer gets no answer.
//
// Checked: every message the API acknowledged is durable and settles
// (delivered, or unconfirmed when its callback came while the enqueuer was
// down); no logical item (one openid) is pushed twice, whatever the retries
// did; and no record is left unfinished for ever.
func TestEnqueuerKilled(t *testing.T) {
	requireFaults(t)
	const (
		producers = 4
		batches   = 10
		batchSize = 100
		// The targeted producer's batches are small, so that the reply is
		// still in the server's buffer (under 2 KiB) when the enqueuer dies.
		targetBatches = 6
		targetSize    = 20
	)
	c := startCluster(t, options{workers: 2, enqueuerViaProxy: true, env: map[string]string{"WXPUSH_CONFIRM_TIMEOUT": "10s"}})
	p := newProducer(c)
	p.connErrorsOK = true
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	for g := range producers {
		wg.Go(func() {
			for b := range batches {
				items := itemNames(fmt.Sprintf("enq%d", g), b*batchSize, batchSize)
				if p.submitBatch(ctx, items, fmt.Sprintf("enq-%d-%d", g, b)) != nil {
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
	// Targeted producers start once their trigger is armed.
	targeted := func(prefix string, start <-chan struct{}) {
		wg.Go(func() {
			<-start
			for b := range targetBatches {
				items := itemNames(prefix, b*targetSize, targetSize)
				if p.submitBatch(ctx, items, fmt.Sprintf("%s-%d", prefix, b)) != nil {
					return
				}
				time.Sleep(150 * time.Millisecond)
			}
		})
	}
	goDone, goFanout := make(chan struct{}), make(chan struct{})
	targeted("tgt", goDone)
	targeted("fan", goFanout)

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 6))
	var kills []time.Time
	var downFor []time.Duration
	restart := func(at time.Time) {
		kills = append(kills, at)
		c.startEnqueuer()
		downFor = append(downFor, time.Since(at).Round(time.Millisecond))
	}
	for range 2 {
		time.Sleep(300*time.Millisecond + time.Duration(rng.IntN(400))*time.Millisecond)
		waitUntil(t, 10*time.Second, "a batch in flight", func() bool { return p.inFlight() > 0 })
		c.enqueuer().kill()
		restart(time.Now())
	}
	// Targeted kill 1: a tgt- batch is committed (records and fanout task
	// written); the enqueuer is writing its idempotent response ("done …").
	// Targeted kill 2: a batch's records are written; the enqueuer is
	// enqueuing its fanout task.
	for _, tk := range []struct {
		name     string
		start    chan struct{}
		patterns []string
	}{
		{"after commit, before the idempotent response", goDone, []string{":tgt-", "done "}},
		{"after the records, before the fanout task", goFanout, []string{"message:fanout", "fan_"}},
	} {
		fired := c.proxy.arm(c.enqueuer().kill, tk.patterns...)
		close(tk.start)
		select {
		case <-fired:
		case <-time.After(20 * time.Second):
			t.Fatalf("targeted kill %q never fired", tk.name)
		}
		restart(time.Now())
	}
	wg.Wait()
	answered := time.Now()
	if len(p.unexpected) > 0 {
		t.Errorf("producer saw unexpected answers: %v", p.unexpected)
	}

	ids, itemOf := p.ackedIDs()
	want := producers*batches*batchSize + 2*targetBatches*targetSize
	if len(ids) != want {
		t.Errorf("the API acknowledged %d messages for %d items", len(ids), want)
	}
	views := c.waitFinal(ids, 60*time.Second, nil)
	byState := c.checkStates(ids, views, expectDeliveredOrLostCallback)
	push := c.checkPushes(ids, itemOf, views, false)
	orph := c.orphans(itemOf)
	c.checkBacklog(orph)
	if len(orph.pushedIDs) > 0 {
		sort.Strings(orph.pushedIDs)
		var detail []string
		for _, id := range orph.pushedIDs[:min(5, len(orph.pushedIDs))] {
			v, _ := getMessage(p.client, c.api, id)
			detail = append(detail, fmt.Sprintf("%s (%s, created %s)", id, v.State, v.CreatedAt.Format(time.RFC3339Nano)))
		}
		t.Errorf("%d messages were accepted and pushed although no response acknowledged them; the producer's retry "+
			"with the same Idempotency-Key ran the batch again after the key's 30 s lease, under new ids: e.g. %s",
			len(orph.pushedIDs), strings.Join(detail, ", "))
	}
	c.checkProcesses()
	tries, fails := c.cb.counts()
	lastKill := kills[len(kills)-1]
	t.Logf("producer answers: %v", p.status)
	t.Logf("FIGURES case6 enqueuer killed: messages %d acknowledged for %d items (%v), faults %d SIGKILLs (2 random, 1 after commit before the idempotent response, 1 after the records before the fanout task), "+
		"enqueuer back after %v, all batches answered %s after the last kill, longest recovery %s (last kill → last message final), "+
		"callbacks %d tries / %d failed, user pushes %d, duplicate pushes %d, repeat sends %d, unacknowledged records by state %v",
		len(ids), want, byState, len(kills), downFor, since(lastKill, answered), since(lastKill, lastFinished(views)),
		tries, fails, push.pushed, push.dupItems, push.repeatSends, orph.unacked)
}
