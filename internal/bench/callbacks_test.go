package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/inbox"
	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/wechat"
)

// callbackN is how many result callbacks one round pushes; callbackPushers
// push them side by side, as WeChat does at a busy account's peak.
const (
	callbackN       = 4000
	callbackPushers = 64
)

// callbackFigures: result callbacks answered per second by one enqueuer, the
// path whose limit decides whether WeChat's 5-second wait is met under a
// burst, with the callback inbox (WXPUSH_CALLBACK_INBOX=true: one append,
// then the answer; the worker's applier settles the records) and with the
// old store-then-answer path (=false), in interleaved rounds. Messages are
// sent first with the simulator's callbacks off; then 64 pushers post each
// message's signed TEMPLATESENDJOBFINISH to the enqueuer, and the clock runs
// until every one is answered. An inbox round then times the drain, from
// the last answer until every result is applied; every round ends by
// reading every message back and fails unless all are delivered.
//
// A third kind of round is the burst the inbox is for: no applier runs
// while the results are answered (the worker has WXPUSH_INBOX_APPLY=false),
// then one applier starts and works off the backlog alone, which measures
// what an acknowledgement costs by itself and what one applier applies per
// second.
func callbackFigures(b *testing.B, tab *table) {
	const rounds = 5
	var inboxRates, oldRates, deferredRates, applyRates, drains []float64
	var lag histogram
	var inboxCPU, oldCPU cpuSplit
	var inboxRT, oldRT, failures, parked int64
	for range rounds {
		in := callbacksOnce(b, inboxLive)
		inboxRates, drains = append(inboxRates, in.rate), append(drains, in.drain.Seconds())
		lag, failures, parked = lag.add(in.lag), failures+in.failures, parked+in.parked
		inboxCPU, inboxRT = inboxCPU.plus(in.cpu), inboxRT+in.roundTrips
		old := callbacksOnce(b, storeThenAnswer)
		oldRates = append(oldRates, old.rate)
		oldCPU, oldRT = oldCPU.plus(old.cpu), oldRT+old.roundTrips
		deferred := callbacksOnce(b, inboxDeferred)
		deferredRates, applyRates = append(deferredRates, deferred.rate), append(applyRates, deferred.applyRate)
		failures, parked = failures+deferred.failures, parked+deferred.parked
	}
	inboxRate, oldRate := median(inboxRates), median(oldRates)
	tab.row("callbacks stored per second, one enqueuer", fmt.Sprintf("%.0f/s", oldRate), "–",
		fmt.Sprintf("%d signed TEMPLATESENDJOBFINISH results by %d pushers, each stored before it is answered (store-then-answer, WXPUSH_CALLBACK_INBOX=false); median of %d rounds (%s), interleaved with the inbox's",
			callbackN, callbackPushers, rounds, rateList(oldRates)))
	tab.row("callbacks answered per second, one enqueuer, inbox", fmt.Sprintf("%.0f/s", inboxRate), "–",
		fmt.Sprintf("the same %d results by %d pushers, each appended to the inbox (one script) and answered (WXPUSH_CALLBACK_INBOX=true), the worker's applier settling them meanwhile; median of %d rounds (%s)",
			callbackN, callbackPushers, rounds, rateList(inboxRates)))
	tab.row("callbacks answered per second, inbox/store-then-answer", fmt.Sprintf("%.2f", inboxRate/oldRate), "–",
		"ratio of the medians; per round (inbox, then store-then-answer, on fresh servers): "+ratioList(inboxRates, oldRates)+
			"; the applier shares the 2 cores with the enqueuer and the pushers, so the answers are bound by the machine's CPU, not by Redis round trips")
	deferredRate := median(deferredRates)
	tab.row("callbacks answered per second, inbox, no applier running", fmt.Sprintf("%.0f/s", deferredRate), "–",
		fmt.Sprintf("the same %d results while no worker applies (WXPUSH_INBOX_APPLY=false), a burst the inbox absorbs; median of %d rounds (%s); %.2f of store-then-answer",
			callbackN, rounds, rateList(deferredRates), deferredRate/oldRate))
	tab.row("events applied per second by one applier, from a backlog", fmt.Sprintf("%.0f/s", median(applyRates)), "–",
		fmt.Sprintf("then one worker with WXPUSH_INBOX_APPLY=true starts alone on the %d events; the clock runs from its first batch acknowledged to every result applied (inbox depth 0, backlog 0); median of %d rounds (%s)",
			callbackN, rounds, rateList(applyRates)))
	tab.row("inbox drain after the last answer", ms(median(drains)), "–",
		fmt.Sprintf("from the last callback answered until every result is applied (backlog 0, inbox depth 0, polled every 5 ms); median of %d rounds (%s); every round then read all %d messages back: all delivered; %d failed applies (retried), %d parked, all rounds",
			rounds, msList(drains), callbackN, failures, parked))
	tab.row("inbox apply lag p50 / p99 in the callback burst", ms(lag.quantile(0.5))+" / "+ms(lag.quantile(0.99)), "–",
		fmt.Sprintf("the worker's wxpush_inbox_apply_lag_seconds (receipt → applied), buckets summed over the %d inbox rounds (%.0f events), estimated as histogram_quantile does",
			rounds, lag.count()))
	all := rounds * callbackN
	tab.row("CPU per callback, inbox / store-then-answer", inboxCPU.per(all)+" / "+oldCPU.per(all), "–",
		"CPU time from the first callback until every result is applied, all rounds: redis-server, worker binary (the inbox's applier), this process (enqueuer and the 64 pushers); incl. the worker's idle asynq polling, of which the longer store-then-answer span holds more")
	tab.row("Redis round trips per callback, inbox / store-then-answer", fmt.Sprintf("%.2f / %.2f", float64(inboxRT)/float64(all), float64(oldRT)/float64(all)), "–",
		"wxpush_redis_round_trips_total of the enqueuer and the worker over the same span, incl. the worker's asynq polling")
	b.ReportMetric(inboxRate/oldRate, "callbacks-inbox/old")
}

// callbackRun is one round of callbacksOnce: the rate callbacks were
// answered at, and with the inbox the drain after the last answer and the
// worker's apply lag histogram.
type callbackRun struct {
	rate  float64
	drain time.Duration
	lag   histogram
	// From the first callback until every result is applied: CPU by
	// process and the enqueuer's and worker's Redis round trips.
	cpu        cpuSplit
	roundTrips int64
	// The applier's failed applies (each retried) and the parked events.
	failures, parked int64
	// With inboxDeferred: events applied per second by the applier that
	// started after the burst.
	applyRate float64
}

// callbackPath is how an enqueuer answers delivery results in a round.
type callbackPath int

const (
	storeThenAnswer callbackPath = iota // WXPUSH_CALLBACK_INBOX=false
	inboxLive                           // the inbox, its applier running
	inboxDeferred                       // the inbox, no applier until every result is answered
)

func callbacksOnce(b *testing.B, path callbackPath) callbackRun {
	useInbox := path != storeThenAnswer
	c := servicetest.Start(b, servicetest.Options{Rules: "*=no_callback", Env: env(map[string]string{
		"WXPUSH_CONCURRENCY": fmt.Sprint(concurrency), "WXPUSH_CALLBACK_INBOX": strconv.FormatBool(useInbox)})})
	rdb := c.Redis.Client(b)
	workerEnv := c.Env(b)
	workerEnv["WXPUSH_INBOX_APPLY"] = strconv.FormatBool(path != inboxDeferred)
	worker := startWorkerBinary(b, workerEnv)
	defer worker.stop()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: callbackPushers}}
	type sent struct{ id, openID, msgID string }
	msgs := make([]sent, callbackN)
	runParallel(callbackPushers, callbackN, func(i int) {
		openID := fmt.Sprintf("oCallback_%06d", i)
		var r struct{ ID string }
		getJSON(b, client, http.MethodPost, c.API+"/v1/messages", body(openID), http.StatusAccepted, &r)
		msgs[i] = sent{id: r.ID, openID: openID}
	})
	waitSent(b, rdb, callbackN, 2*time.Minute)
	runParallel(callbackPushers, callbackN, func(i int) {
		var v struct {
			MsgID string `json:"wechat_msgid"`
		}
		getJSON(b, client, http.MethodGet, c.API+"/v1/messages/"+msgs[i].id, "", http.StatusOK, &v)
		msgs[i].msgID = v.MsgID
	})

	urls := []string{c.API + "/metrics", worker.admin + "/metrics"}
	rt0 := roundTrips(b, urls)
	cpu0 := cpuTimes(b, rdb, worker)
	var nonce atomic.Int64
	start := time.Now()
	runParallel(callbackPushers, callbackN, func(i int) {
		m := msgs[i]
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		n := strconv.FormatInt(nonce.Add(1), 10) + "bench"
		q := url.Values{"signature": {wechat.Signature(servicetest.Token, ts, n)}, "timestamp": {ts}, "nonce": {n}, "openid": {m.openID}}
		xml := "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[" + m.openID + "]]></FromUserName>" +
			"<CreateTime>" + ts + "</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>" +
			"<MsgID>" + m.msgID + "</MsgID><Status><![CDATA[success]]></Status></xml>"
		resp, err := client.Post(c.API+"/wechat/callback/default?"+q.Encode(), "text/xml", strings.NewReader(xml))
		if err != nil {
			b.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("callback: %d %s", resp.StatusCode, got)
		}
	})
	answered := time.Now()
	run := callbackRun{rate: float64(callbackN) / answered.Sub(start).Seconds()}
	if path == inboxDeferred {
		applier := startWorkerBinary(b, c.Env(b))
		defer applier.stop()
		run.applyRate = drainRate(b, rdb, 2*time.Minute)
		run.failures = int64(servicetest.SumSeries(b, []string{applier.admin + "/metrics"}, "wxpush_inbox_apply_failures_total"))
		run.parked, _ = rdb.XLen(context.Background(), inbox.ParkedStream).Result()
	} else {
		waitApplied(b, rdb, 2*time.Minute)
		run.drain = time.Since(answered)
		run.cpu = cpuTimes(b, rdb, worker).sub(cpu0)
		for cmd, v := range roundTrips(b, urls) {
			run.roundTrips += v - rt0[cmd]
		}
	}
	if path == inboxLive {
		run.lag = scrapeHistogram(b, worker.admin+"/metrics", "wxpush_inbox_apply_lag_seconds")
		run.failures = int64(servicetest.SumSeries(b, []string{worker.admin + "/metrics"}, "wxpush_inbox_apply_failures_total"))
		run.parked, _ = rdb.XLen(context.Background(), inbox.ParkedStream).Result()
	}
	// Answered is not stored: every message must have its result.
	states := make([]string, callbackN)
	runParallel(callbackPushers, callbackN, func(i int) {
		var v struct{ State string }
		getJSON(b, client, http.MethodGet, c.API+"/v1/messages/"+msgs[i].id, "", http.StatusOK, &v)
		states[i] = v.State
	})
	by := map[string]int{}
	for _, s := range states {
		by[s]++
	}
	if by["delivered"] != callbackN {
		parked, _ := rdb.XLen(context.Background(), inbox.ParkedStream).Result()
		b.Fatalf("callbacks (path %d): %d callbacks answered, but only %d of %d messages delivered: states %v; inbox parked %d",
			path, callbackN, by["delivered"], callbackN, by, parked)
	}
	return run
}

// waitApplied waits until no message of app default is waiting for its
// result and the callback inbox is empty: every answered result is applied.
func waitApplied(b *testing.B, rdb *redis.Client, within time.Duration) {
	ctx := context.Background()
	store := delivery.NewStore(rdb, delivery.Config{})
	deadline := time.Now().Add(within)
	for {
		backlog, err := store.Backlog(ctx, "default")
		if err != nil && err != redis.Nil {
			b.Fatal(err)
		}
		depth, err := rdb.XLen(ctx, inbox.Stream).Result()
		if err != nil && err != redis.Nil {
			b.Fatal(err)
		}
		if backlog == 0 && depth == 0 {
			return
		}
		if time.Now().After(deadline) {
			parked, _ := rdb.XLen(ctx, inbox.ParkedStream).Result()
			b.Fatalf("results not applied after %v: backlog %d, inbox depth %d, parked %d", within, backlog, depth, parked)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// drainRate waits until an applier that is starting has applied the inbox
// (see waitApplied) and returns the events it applied per second, timed
// from its first batch: from the first moment the inbox holds fewer events
// than it did, so that the worker's start-up is not counted. The events of
// that first batch are not counted either.
func drainRate(b *testing.B, rdb *redis.Client, within time.Duration) float64 {
	ctx := context.Background()
	full, err := rdb.XLen(ctx, inbox.Stream).Result()
	if err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(within)
	for {
		depth, err := rdb.XLen(ctx, inbox.Stream).Result()
		if err != nil {
			b.Fatal(err)
		}
		if depth < full {
			start := time.Now()
			waitApplied(b, rdb, time.Until(deadline))
			return float64(depth) / time.Since(start).Seconds()
		}
		if time.Now().After(deadline) {
			b.Fatalf("no applier took an event of the %d in the inbox within %v", full, within)
		}
		time.Sleep(time.Millisecond)
	}
}

func msList(secs []float64) string {
	s := make([]string, len(secs))
	for i, x := range secs {
		s[i] = fmt.Sprintf("%.0f", x*1000)
	}
	return strings.Join(s, ", ") + " ms"
}

// getJSON sends body ("" = none) and decodes the answer into v.
func getJSON(b *testing.B, c *http.Client, method, url, body string, want int, v any) {
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		b.Fatalf("%s %s: %d %s", method, url, resp.StatusCode, raw)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		b.Fatalf("%s %s: %v", method, url, err)
	}
}
