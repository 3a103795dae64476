//go:build linux

package faults

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

// Case 3: a 30 s WeChat outage. Every send fails: a third answer HTTP 500, a
// third errcode -1 (system busy), a third hang until the client's 1 s timeout
// (WXPUSH_SEND_TIMEOUT). Messages keep arriving before, during and after it.
// Backoff is WXPUSH_RETRY_BASE 100 ms, WXPUSH_RETRY_CAP 2 s, full jitter: after
// the fourth failure a retry waits U[0, 2 s], 1 s on average, and a third of
// the attempts hang for 1 s, so a message makes about 15–25 attempts in a 30 s
// outage (at most ~35 if none hung, barring a freak run of short waits). With
// WXPUSH_MAX_ATTEMPTS 100 no message can run out of attempts inside the
// outage, so none may end dead: the point is that the outage is survived,
// not that the budget is small. (The production defaults, 10 attempts with a
// 10 min cap, span about 17 min of outage on average.)
func TestWeChatOutage(t *testing.T) {
	requireFaults(t)
	const (
		outage      = 30 * time.Second
		maxAttempts = 100
	)
	c := startCluster(t, options{workers: 2, env: map[string]string{
		"WXPUSH_SEND_TIMEOUT": "1s", "WXPUSH_MAX_ATTEMPTS": fmt.Sprint(maxAttempts), "WXPUSH_CONCURRENCY": "20"}})
	p := newProducer(c)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n := 0
	submit := func(k int) {
		t.Helper()
		if err := p.submitBatch(ctx, itemNames("outage", n, k), fmt.Sprintf("outage-%d", n)); err != nil {
			t.Fatal(err)
		}
		n += k
	}
	submit(100)
	submit(100)
	c.waitSends(50, 20*time.Second)

	if err := c.front.sim.SetRules([]wechatsim.Rule{
		{OpenID: "*", Outcome: wechatsim.OutcomeHTTP500, Rate: 1.0 / 3},
		{OpenID: "*", Outcome: wechatsim.OutcomeSystemBusy, Rate: 0.5},
		{OpenID: "*", Outcome: wechatsim.OutcomeHang},
	}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for time.Since(start) < outage {
		submit(10)
		time.Sleep(time.Second)
	}
	// The outage ends before its rules are lifted: a send the simulator
	// answers before end was decided under them.
	end := time.Now()
	if err := c.front.sim.SetRules(nil); err != nil {
		t.Fatal(err)
	}
	submit(100)

	ids, itemOf := p.ackedIDs()
	views := c.waitFinal(ids, 60*time.Second, nil)
	byState := c.checkStates(ids, views, expectDelivered)
	push := c.checkPushes(ids, itemOf, views, true)
	c.checkBacklog(c.orphans(itemOf))
	c.checkProcesses()
	ma := mostAttempts(views)
	if ma >= maxAttempts {
		t.Errorf("a message used %d attempts of %d", ma, maxAttempts)
	}
	during := c.front.codesWithin(start, end)
	if during["errcode 0"] > 0 {
		t.Errorf("%d sends succeeded during the outage", during["errcode 0"])
	}
	t.Logf("FIGURES case3 wechat outage: messages %d (%v), fault %v outage with %v answers, "+
		"longest recovery: first successful send %s and last message final %s after the outage, max attempts %d of %d, "+
		"user pushes %d, duplicate pushes %d, repeat sends %d",
		len(ids), byState, end.Sub(start).Round(time.Millisecond), during,
		since(end, c.front.firstOKAfter(end)), since(end, lastFinished(views)), ma, maxAttempts,
		push.pushed, push.dupItems, push.repeatSends)
}

// Case 4: slow WeChat. The first request of every message is answered 1.5 s
// late, past the worker's 1 s WXPUSH_SEND_TIMEOUT; WeChat has taken the message
// by then (the simulator accepts it, then delays the reply). The attempt times
// out. Either the retry carries the same client_msg_id, WeChat returns the
// same msgid without pushing again, and the result callback, which came
// before the msgid was stored, is applied once it is; or (usually) that
// held callback already settles the attempt whose reply was lost, matched by
// openid and time, and nothing is sent again. The user sees each message once.
//
// The delay is added in front of the simulator for sends only: the
// simulator's own Latency applies to every API, and a token fetch slower
// than the timeout (it uses the same HTTP client) would stop every send.
func TestSlowWeChat(t *testing.T) {
	requireFaults(t)
	const (
		total   = 300
		timeout = time.Second
		slow    = 1500 * time.Millisecond
	)
	c := startCluster(t, options{workers: 2, env: map[string]string{"WXPUSH_SEND_TIMEOUT": timeout.String(), "WXPUSH_CONCURRENCY": "20"}})
	c.front.setLatency(func(_ string, nth int) time.Duration {
		if nth == 1 {
			return slow
		}
		return 0
	})
	p := newProducer(c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	items := itemNames("slow", 0, total)
	for i := 0; i < total/100; i++ {
		if err := p.submitBatch(ctx, items[i*100:(i+1)*100], fmt.Sprintf("slow-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	ids, itemOf := p.ackedIDs()
	views := c.waitFinal(ids, 60*time.Second, nil)
	byState := c.checkStates(ids, views, expectDelivered)
	push := c.checkPushes(ids, itemOf, views, false)
	c.checkBacklog(c.orphans(itemOf))
	c.checkProcesses()

	var longest time.Duration
	retried, settledFromHeld, otherIDs := 0, 0, 0
	var bad []string
	for _, id := range ids {
		item := itemOf[id]
		ps := c.front.sim.Pair(item, id)
		possiblySent := false
		for _, h := range views[id].History {
			possiblySent = possiblySent || h.Event == delivery.EventPossiblySent
		}
		switch {
		case ps.Requests >= 2:
			retried++
		case ps.Requests == 1 && possiblySent:
			// The result callback came before the timed-out attempt ended:
			// the attempt, whose reply was lost, is settled from it (matched
			// by openid and time) instead of sent again.
			settledFromHeld++
		}
		if ps.Pushed != 1 || (ps.Requests < 2 && !possiblySent) {
			bad = append(bad, fmt.Sprintf("%s: requests %d accepted %d pushed %d", id, ps.Requests, ps.Accepted, ps.Pushed))
		}
		if cm := c.front.clientMsgIDs(item); len(cm) != 1 || cm[0] != id {
			otherIDs++
			bad = append(bad, fmt.Sprintf("%s: sent with client_msg_ids %v", id, cm))
		}
		if pl, ok := c.front.pair(item, id); ok && views[id].FinishedAt != nil {
			longest = max(longest, views[id].FinishedAt.Sub(pl.first.Add(timeout)))
		}
	}
	if len(bad) > 0 {
		t.Errorf("%d messages were not timed out once, then retried with the same client_msg_id or settled from their held result, and pushed once, e.g. %v", len(bad), bad[:min(10, len(bad))])
	}
	t.Logf("FIGURES case4 slow wechat: messages %d (%v), faults %d timed-out first attempts (reply %v > timeout %v), "+
		"retried with the same client_msg_id %d, settled from the held result without a retry %d, other client_msg_ids %d, longest recovery %s (client timeout → final), max attempts %d, "+
		"user pushes %d, duplicate pushes %d, repeat sends de-duplicated by WeChat %d over %d pairs, abandoned replies %d",
		len(ids), byState, c.front.abandonedSends(), slow, timeout, retried, settledFromHeld, otherIDs, longest.Round(10*time.Millisecond), mostAttempts(views),
		push.pushed, push.dupItems, push.repeatSends, push.repeatedPairs, c.front.abandonedSends())
}

// Case 5: the access token is revoked (every token of the app dies at once)
// three times while three worker processes send. Every send in flight with
// the dead token gets 40001; the cluster must fetch exactly one new token per
// revocation (invariant 5), and every message is delivered.
func TestTokenRevoked(t *testing.T) {
	requireFaults(t)
	const (
		total   = 900
		revokes = 3
	)
	c := startCluster(t, options{workers: 3, env: map[string]string{"WXPUSH_CONCURRENCY": "5"}})
	c.front.setLatency(func(string, int) time.Duration { return 100 * time.Millisecond })
	p := newProducer(c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	items := itemNames("token", 0, total)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < total/100; i++ {
			if p.submitBatch(ctx, items[i*100:(i+1)*100], fmt.Sprintf("token-%d", i)) != nil {
				return
			}
		}
	})
	c.waitSends(60, 20*time.Second)

	sim := c.front.sim
	fetches := func() int { return sim.Stats().TokenFetches[servicetest.AppID] }
	type revocation struct {
		inflight, invalid, fetched int
		recovery                   time.Duration
	}
	var revs []revocation
	initial := fetches()
	for range revokes {
		waitUntil(t, 10*time.Second, "a send in flight", func() bool { return c.front.inFlight() > 0 })
		before := fetches()
		inflight := c.front.inFlight()
		at := time.Now()
		sim.Revoke(servicetest.AppID)
		// Wait for a send to succeed again (a new token is in use), then
		// long enough for every send that held the dead token to come back.
		deadline := at.Add(15 * time.Second)
		var ok time.Time
		for ok = c.front.firstOKAfter(at); ok.IsZero(); ok = c.front.firstOKAfter(at) {
			if time.Now().After(deadline) {
				t.Fatalf("no successful send within 15 s of the revocation")
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Second)
		codes := c.front.codesBetween(at, time.Now())
		revs = append(revs, revocation{inflight: inflight, invalid: codes["errcode 40001"], fetched: fetches() - before, recovery: ok.Sub(at)})
	}
	wg.Wait()
	ids, itemOf := p.ackedIDs()
	views := c.waitFinal(ids, 60*time.Second, nil)
	byState := c.checkStates(ids, views, expectDelivered)
	push := c.checkPushes(ids, itemOf, views, true)
	c.checkBacklog(c.orphans(itemOf))
	c.checkProcesses()

	var longest time.Duration
	for i, r := range revs {
		if r.fetched != 1 {
			t.Errorf("revocation %d: %d token fetches cluster-wide, want exactly 1 (%d sends got 40001)", i+1, r.fetched, r.invalid)
		}
		if r.invalid == 0 {
			t.Errorf("revocation %d hit no send (no 40001): the test did not exercise the storm", i+1)
		}
		longest = max(longest, r.recovery)
	}
	simFetches := fetches()
	if simFetches != initial+revokes {
		t.Errorf("token fetches: %d before the first revocation, %d at the end; want exactly one per revocation (%d)", initial, simFetches, revokes)
	}
	metricFetches := servicetest.SumSeries(t, c.scrapeURLs(), `wxpush_token_fetches_total{app="default",result="ok"}`)
	if int(metricFetches) != simFetches {
		t.Errorf("processes count %v token fetches, the simulator %d", metricFetches, simFetches)
	}
	// Every worker met the dead token (its send API calls answered 40001).
	var perWorker []string
	for _, w := range c.liveWorkers() {
		n := servicetest.SumSeries(t, []string{"http://" + w.admin + "/metrics"},
			`wxpush_wechat_api_duration_seconds_count{api="template/send",result="token"}`)
		perWorker = append(perWorker, fmt.Sprintf("%s %v", w.name, n))
		if n == 0 {
			t.Errorf("%s never got a 40001: the revocations did not reach every worker", w.name)
		}
	}
	var per []string
	for _, r := range revs {
		per = append(per, fmt.Sprintf("{in flight %d, answered 40001 %d, token fetches %d, next good send after %v}",
			r.inflight, r.invalid, r.fetched, r.recovery.Round(time.Millisecond)))
	}
	t.Logf("FIGURES case5 token revoked: messages %d (%v), faults %d revocations across 3 workers %s, token fetches total %d "+
		"(%d before the first revocation), 40001 answers by worker [%s], longest recovery %s (revocation → next successful send), "+
		"user pushes %d, duplicate pushes %d, repeat sends %d",
		len(ids), byState, revokes, strings.Join(per, " "), simFetches, initial, strings.Join(perWorker, ", "), longest.Round(time.Millisecond),
		push.pushed, push.dupItems, push.repeatSends)
}
