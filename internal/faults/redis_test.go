//go:build linux

package faults

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Case 2: Redis (append-only file, fsync always) SIGKILLed during load and
// restarted 4 s later. While it is down the API answers 503 with Retry-After
// (never a 500, never a dropped connection), readiness says 503 and liveness
// 200; the producer retries its 503s; the worker processes survive and carry
// on once Redis is back; nothing acknowledged is lost. Result callbacks that
// arrive while Redis is down cannot be stored (the enqueuer answers 503 and
// the simulator, like WeChat, gives up after three tries): those messages
// settle unconfirmed after WXPUSH_CONFIRM_TIMEOUT (10 s here).
func TestRedisRestart(t *testing.T) {
	requireFaults(t)
	const down = 4 * time.Second
	// A record stored just before the kill whose task could not be enqueued
	// is ended canceled by the orphan sweep, 30 s on.
	c := startCluster(t, options{workers: 2, env: map[string]string{"WXPUSH_CONFIRM_TIMEOUT": "10s", "WXPUSH_ORPHAN_AFTER": "30s"}})
	c.front.setLatency(func(string, int) time.Duration { return 20 * time.Millisecond })
	p := newProducer(c)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// Load: four producers, alternating batches of 10 and single messages,
	// until told to stop.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				base := (g*100000 + i) * 10
				if i%2 == 0 {
					if p.submitBatch(ctx, itemNames("redis", base, 10), "") != nil {
						return
					}
				} else if p.submitOne(ctx, itemNames("redis", base, 1)[0], "") != nil {
					return
				}
				time.Sleep(40 * time.Millisecond)
			}
		})
	}
	c.waitSends(100, 20*time.Second)

	killAt := time.Now()
	c.redis.Kill(t)
	// Probe while Redis is down.
	probe := &http.Client{Timeout: 10 * time.Second}
	probes := map[string]int{}
	var probeErrs []string
	for time.Since(killAt) < down {
		for _, path := range []string{"/readyz", "/healthz"} {
			resp, err := probe.Get(c.api + path)
			if err != nil {
				probeErrs = append(probeErrs, fmt.Sprintf("GET %s: %v", path, err))
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			probes[fmt.Sprintf("%s %d", path, resp.StatusCode)]++
		}
		for _, w := range c.liveWorkers() {
			resp, err := probe.Get("http://" + w.admin + "/readyz")
			if err != nil {
				probeErrs = append(probeErrs, fmt.Sprintf("%s GET /readyz: %v", w.name, err))
				continue
			}
			resp.Body.Close()
			probes[fmt.Sprintf("worker /readyz %d", resp.StatusCode)]++
		}
		time.Sleep(250 * time.Millisecond)
	}
	c.redis.Restart(t)
	upAt := time.Now()
	time.Sleep(2 * time.Second) // keep the load running after the restart
	close(stop)
	wg.Wait()
	resumed := c.front.firstOKAfter(upAt)

	duringDown := p.statusesBetween(killAt, upAt)
	t.Logf("API answers while Redis was down: %v; probes: %v", duringDown, probes)
	if duringDown["503"] == 0 {
		t.Errorf("no 503 seen while Redis was down (answers %v)", duringDown)
	}
	for s, n := range duringDown {
		if s != "503" && s != "200" && s != "202" {
			t.Errorf("%d answers %q while Redis was down: want only 503 with Retry-After", n, s)
		}
	}
	if p.noRetryAft > 0 {
		t.Errorf("%d 503/429 answers without Retry-After", p.noRetryAft)
	}
	for _, want := range []string{"/readyz 503", "/healthz 200", "worker /readyz 503"} {
		if probes[want] == 0 {
			t.Errorf("while Redis was down no probe answered %q (probes %v)", want, probes)
		}
	}
	for k := range probes {
		if strings.HasPrefix(k, "/healthz") && k != "/healthz 200" {
			t.Errorf("liveness answered %q while Redis was down", k)
		}
	}
	if len(probeErrs) > 0 {
		t.Errorf("probes failed while Redis was down: %v", probeErrs[:min(5, len(probeErrs))])
	}
	if len(p.unexpected) > 0 {
		t.Errorf("producer saw unexpected answers: %v", p.unexpected)
	}
	if resumed.IsZero() {
		t.Errorf("no send succeeded after Redis came back: workers did not reconnect")
	}

	// asynq cannot record a task's outcome while Redis is down, and its
	// syncer's later attempts fail too (they reuse a context canceled when
	// the first attempt returned), so tasks that finished during the outage
	// stay "active" until lease recovery re-runs them (see leaseRecovery).
	ids, itemOf := p.ackedIDs()
	rec := &leaseRecovery{c: c, fault: killAt}
	views := c.waitFinal(ids, 110*time.Second-time.Since(killAt), rec.tick)
	byState := c.checkStates(ids, views, expectDeliveredOrLostCallback)
	push := c.checkPushes(ids, itemOf, views, false)
	orph := c.waitOrphans(itemOf, killAt.Add(30*time.Second+2*10*time.Second))
	c.checkBacklog(orph)
	if len(orph.pushedIDs) > 0 {
		sort.Strings(orph.pushedIDs)
		t.Errorf("%d messages were pushed to users although the API answered their request with an error "+
			"(the producer's retry then made another): %v", len(orph.pushedIDs), orph.pushedIDs[:min(10, len(orph.pushedIDs))])
	}
	c.checkProcesses()
	var lastDelivered time.Time
	for _, v := range views {
		if v.State == "delivered" && v.FinishedAt != nil && v.FinishedAt.After(lastDelivered) {
			lastDelivered = *v.FinishedAt
		}
	}
	late := 0
	for _, v := range views {
		if v.SentAt != nil && v.SentAt.After(upAt.Add(30*time.Second)) {
			late++
		}
	}
	syncs := 0
	var sample []string
	for _, w := range c.liveWorkers() {
		lines := w.grep(1000, "Will retry syncing", "Could not push task", "Could not move task", "Could not remove task")
		syncs += len(lines)
		if len(lines) > 0 && len(sample) < 2 {
			sample = append(sample, lines[0])
		}
	}
	t.Logf("lease recovery: %v; %d messages were recorded sent only through it (their first send's outcome could not be stored); "+
		"asynq logged %d task outcomes it could not write to Redis, e.g. %v", rec, late, syncs, sample)
	tries, fails := c.cb.counts()
	t.Logf("FIGURES case2 redis restart: messages %d (%v), faults 1 Redis SIGKILL, down %v, "+
		"API during the outage %v, longest recovery: first successful send %s after the restart, last delivered %s and last final %s after it; "+
		"callbacks %d tries / %d refused, user pushes %d, duplicate pushes %d, repeat sends de-duplicated %d, orphans %v",
		len(ids), byState, upAt.Sub(killAt).Round(time.Millisecond), duringDown,
		since(upAt, resumed), since(upAt, lastDelivered), since(upAt, lastFinished(views)),
		tries, fails, push.pushed, push.dupItems, push.repeatSends, orph.unacked)
}
