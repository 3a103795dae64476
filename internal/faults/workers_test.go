//go:build linux

package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// Case 1: workers SIGKILLed repeatedly during a 1,000-message load. Two worker
// processes; every ~500 ms one of them, at random, is SIGKILLed and a
// replacement started. Sends take 100 ms at the simulator (the reply is late,
// the send has happened), so kills land between WeChat's acceptance and the
// state write: the re-run repeats the send with the same client_msg_id and
// WeChat drops it (Accepted 2, Pushed 1). Tasks of a killed worker are re-run
// by asynq's lease recovery, 55–60 s after the kill (see the package doc).
func TestWorkersSIGKILLed(t *testing.T) {
	requireFaults(t)
	const (
		total = 1000
		batch = 100
		kills = 8
	)
	c := startCluster(t, options{workers: 2, env: map[string]string{"WXPUSH_CONCURRENCY": "10"}})
	c.front.setLatency(func(string, int) time.Duration { return 100 * time.Millisecond })
	p := newProducer(c)
	items := itemNames("kill", 0, total)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < total/batch; i++ {
			if p.submitBatch(ctx, items[i*batch:(i+1)*batch], fmt.Sprintf("kill-batch-%d", i)) != nil {
				return
			}
			time.Sleep(250 * time.Millisecond) // pacing the load, not waiting for anything
		}
	})
	c.waitSends(20, 20*time.Second)

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var killedAt []time.Time
	inflightAtKill := 0
	for len(killedAt) < kills {
		time.Sleep(400*time.Millisecond + time.Duration(rng.IntN(200))*time.Millisecond)
		live := c.liveWorkers()
		w := live[rng.IntN(len(live))]
		inflightAtKill += c.front.inFlight()
		w.kill()
		killedAt = append(killedAt, time.Now())
		c.dropWorker(w)
		c.startWorker()
	}
	wg.Wait()
	lastKill := killedAt[len(killedAt)-1]
	ids, items2 := p.ackedIDs()
	if len(ids) != total {
		t.Errorf("the API acknowledged %d of %d messages", len(ids), total)
	}

	// asynq re-runs the killed workers' tasks once their leases are 30 s past
	// expiry, when a recoverer runs: at a server's start and then every minute.
	// Once the leases are due, start one more worker (a supervisor restarting
	// the crashed one), whose recoverer runs at start-up.
	rec := &leaseRecovery{c: c, fault: lastKill}
	views := c.waitFinal(ids, 110*time.Second, rec.tick)
	byState := c.checkStates(ids, views, expectDelivered)
	push := c.checkPushes(ids, items2, views, false)
	orph := c.orphans(items2)
	c.checkBacklog(orph)
	c.checkProcesses()

	if len(killedAt) < 5 {
		t.Errorf("only %d kills", len(killedAt))
	}
	recoveredLate := 0
	for _, v := range views {
		if v.FinishedAt != nil && v.FinishedAt.After(lastKill.Add(30*time.Second)) {
			recoveredLate++
		}
	}
	t.Logf("lease recovery: %v; %d messages settled only after lease recovery", rec, recoveredLate)
	t.Logf("FIGURES case1 workers SIGKILLed: messages %d (%v), faults %d SIGKILLs over %s (sends in flight at the kills: %d), "+
		"longest recovery %s (last kill → last message final), user pushes %d, duplicate pushes %d, "+
		"repeat sends de-duplicated by WeChat %d over %d pairs, max attempts %d, orphans %v",
		len(ids), byState, len(killedAt), killedAt[len(killedAt)-1].Sub(killedAt[0]).Round(time.Millisecond), inflightAtKill,
		since(lastKill, lastFinished(views)), push.pushed, push.dupItems, push.repeatSends, push.repeatedPairs, mostAttempts(views), orph.unacked)
}

// Case 7: graceful shutdown. One worker delivers a backlog with sends of
// 300 ms; it gets SIGTERM mid-load and must finish its in-flight sends within
// WXPUSH_SHUTDOWN_TIMEOUT (5 s) and exit, leaving nothing active in asynq.
// Another worker then continues and everything settles, with no repeat send
// at all (a graceful stop must not need WeChat's de-duplication).
func TestGracefulShutdown(t *testing.T) {
	requireFaults(t)
	const (
		total           = 600
		shutdownTimeout = 5 * time.Second
	)
	c := startCluster(t, options{workers: 0, env: map[string]string{
		"WXPUSH_CONCURRENCY": "20", "WXPUSH_SHUTDOWN_TIMEOUT": shutdownTimeout.String()}})
	c.front.setLatency(func(string, int) time.Duration { return 300 * time.Millisecond })
	p := newProducer(c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	items := itemNames("term", 0, total)
	for i := 0; i < total/100; i++ {
		if err := p.submitBatch(ctx, items[i*100:(i+1)*100], fmt.Sprintf("term-batch-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	ids, itemOf := p.ackedIDs()

	a := c.startWorker()
	c.waitSends(100, 30*time.Second)
	waitUntil(t, 10*time.Second, "a send in flight", func() bool { return c.front.inFlight() > 0 })
	inflight := c.front.inFlight()
	took, ok := a.terminate(shutdownTimeout + 5*time.Second)
	exitAt := time.Now()
	c.dropWorker(a)
	if !ok {
		t.Fatalf("worker did not exit within %v of SIGTERM:\n%s", shutdownTimeout+5*time.Second, a.tail(30))
	}
	if a.err != nil {
		t.Errorf("worker exited with %v after SIGTERM:\n%s", a.err, a.tail(30))
	}
	if took > shutdownTimeout+time.Second {
		t.Errorf("worker took %v to exit after SIGTERM (WXPUSH_SHUTDOWN_TIMEOUT %v)", took, shutdownTimeout)
	}

	// Nothing may be left active in asynq once the worker is gone, and no
	// server may still be registered.
	active, waiting := c.queueActive()
	if active != 0 {
		t.Errorf("asynq shows %d active tasks after the only worker exited (they would wait for lease recovery)", active)
	}
	if waiting == 0 {
		t.Errorf("no work left after the SIGTERM: the test did not interrupt the load")
	}
	if servers, err := c.inspector().Servers(); err != nil {
		t.Errorf("asynq servers: %v", err)
	} else if len(servers) != 0 {
		t.Errorf("asynq still lists %d servers after the worker exited", len(servers))
	}
	// Every send the worker started was finished and recorded: its message
	// is sent or final, not back in the queue with WeChat holding it.
	abandoned := c.front.abandonedSends()
	if abandoned != 0 {
		t.Errorf("%d sends were abandoned by the worker (client gone before the reply)", abandoned)
	}
	started := c.front.pairsBefore(exitAt)
	var notRecorded []string
	for _, k := range started {
		v, err := getMessage(p.client, c.api, k.ClientMsgID)
		if err != nil {
			t.Errorf("GET %s: %v", k.ClientMsgID, err)
			continue
		}
		if v.State != "sent" && !finalStates[v.State] {
			notRecorded = append(notRecorded, k.ClientMsgID+"="+v.State)
		}
	}
	if len(notRecorded) > 0 {
		t.Errorf("%d of %d sends started before the exit are not recorded as sent: %v", len(notRecorded), len(started), notRecorded[:min(10, len(notRecorded))])
	}

	c.startWorker() // the next worker continues
	views := c.waitFinal(ids, 60*time.Second, nil)
	byState := c.checkStates(ids, views, expectDelivered)
	push := c.checkPushes(ids, itemOf, views, true)
	c.checkBacklog(c.orphans(itemOf))
	c.checkProcesses()
	t.Logf("FIGURES case7 graceful shutdown: messages %d (%v), faults 1 SIGTERM with %d sends in flight, "+
		"exit %s after SIGTERM (limit %v), %d sends done before exit, asynq active after exit %d, "+
		"recovery: next worker's first send %s and last message final %s after the exit, "+
		"user pushes %d, duplicate pushes %d, repeat sends %d",
		len(ids), byState, inflight, took.Round(time.Millisecond), shutdownTimeout, len(started), active,
		since(exitAt, c.front.firstSendAfter(exitAt)), since(exitAt, lastFinished(views)), push.pushed, push.dupItems, push.repeatSends)
}
