package bench

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/tasks"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

// singleN is how many single messages one run of each system delivers.
const singleN = 4000

// singleProducers are the producer counts compared: each producer sends one
// message at a time, the seed's "push the moment something changes".
var singleProducers = []int{16, 64}

// singleFigures compares, for each producer count, four ways of pushing one
// message per event, in the same rounds: wxpush (POST /v1/messages over HTTP,
// each message end to end to delivered), bare asynq (one no-op task per
// event), the hand-written alternative (asynq, a plain HTTP send, a Redis
// hash updated by the callback) and the floor (bare asynq behind the same
// three HTTP exchanges as wxpush, nothing stored). Rates are medians of three
// rounds; each round runs the systems one after the other on fresh Redis
// servers.
func singleFigures(b *testing.B, tab *table) {
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("WXPUSH_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n // fewer for a quick look while profiling; the figures are medians of 3
	}
	type rates struct {
		pipe, bare, hand, floor, hooks, events  []float64
		handLost                                int       // callbacks the hand-written alternative lost, all rounds
		lag                                     histogram // the worker's inbox apply lag, summed over the rounds
		lagP99                                  []float64 // each round's p99
		pipeCost, bareCost, handCost, floorCost costSum   // CPU and wall, summed over the rounds
	}
	by := map[int]*rates{}
	var rt singleRoundTrips
	for round := 0; round < rounds; round++ {
		for _, p := range singleProducers {
			r := by[p]
			if r == nil {
				r = &rates{}
				by[p] = r
			}
			bare := asynqCost(b, p, singleN, true)
			r.bare, r.bareCost = append(r.bare, bare.rate), r.bareCost.add(bare)
			run := runSingles(b, p, singleN, round == 0 && p == singleProducers[len(singleProducers)-1])
			r.pipe, r.pipeCost = append(r.pipe, run.rate), r.pipeCost.add(run.cost)
			r.lag, r.lagP99 = r.lag.add(run.lag), append(r.lagP99, run.lag.quantile(0.99))
			if run.roundTrips != nil {
				rt = *run.roundTrips
			}
			hand, lost := handWrittenRun(b, p, singleN)
			r.hand, r.handCost, r.handLost = append(r.hand, hand.rate), r.handCost.add(hand), r.handLost+lost
			fl := floorRun(b, p, singleN)
			r.floor, r.floorCost = append(r.floor, fl.rate), r.floorCost.add(fl)
			if p == singleProducers[len(singleProducers)-1] {
				msgs, events := webhooksRun(b, p, singleN)
				r.hooks, r.events = append(r.hooks, msgs), append(r.events, events)
			}
		}
	}
	var headline float64
	for _, p := range singleProducers {
		r := by[p]
		pipe, bare, hand, fl := median(r.pipe), median(r.bare), median(r.hand), median(r.floor)
		tab.row(fmt.Sprintf("single-message throughput, %d producers", p),
			fmt.Sprintf("wxpush %.0f msg/s, bare asynq %.0f tasks/s, hand-written %.0f msg/s", pipe, bare, hand), "–",
			fmt.Sprintf("median of %d rounds (wxpush %s; asynq %s; hand-written %s), %d messages each, one at a time per producer",
				rounds, rateList(r.pipe), rateList(r.bare), rateList(r.hand), singleN)+handLost(r.handLost, rounds*singleN))
		tab.row(fmt.Sprintf("single-message pipeline/asynq, %d producers", p), fmt.Sprintf("%.2f", pipe/bare), "≥ 0.8",
			"ratio of the medians; per round: "+ratioList(r.pipe, r.bare))
		tab.row(fmt.Sprintf("single-message pipeline/hand-written, %d producers", p), fmt.Sprintf("%.2f", pipe/hand), "moonshot ≥ 1.0",
			"ratio of the medians; per round: "+ratioList(r.pipe, r.hand))
		tab.row(fmt.Sprintf("single-message floor/asynq (the ceiling), %d producers", p), fmt.Sprintf("%.2f", fl/bare), "–",
			fmt.Sprintf("the floor (floor_test.go: bare asynq behind the three HTTP exchanges of a single message, nothing stored) %.0f msg/s, median of %s; no system measured this way gets a higher ratio here; per round: %s",
				fl, rateList(r.floor), ratioList(r.floor, r.bare)))
		tab.row(fmt.Sprintf("single-message pipeline/floor, %d producers", p), fmt.Sprintf("%.2f", pipe/fl), "–",
			"what wxpush's records, msgids, states, inbox and events cost on top of the floor; per round: "+ratioList(r.pipe, r.floor))
		n := singleN * rounds
		tab.row(fmt.Sprintf("CPU per single message, %d producers", p),
			fmt.Sprintf("wxpush %s; floor %s; hand-written %s; bare asynq %s", r.pipeCost.per(n), r.floorCost.per(n), r.handCost.per(n), r.bareCost.per(n)), "–",
			fmt.Sprintf("CPU time of redis-server, the worker binary (wxpush only) and this process (producers, enqueuer, simulator, and asynq's server for the others) from the first message to the last final, all %d rounds; cores kept busy on average: wxpush %.2f, floor %.2f, hand-written %.2f, bare asynq %.2f of 2",
				rounds, r.pipeCost.busy(), r.floorCost.busy(), r.handCost.busy(), r.bareCost.busy()))
		tab.row(fmt.Sprintf("inbox apply lag p50 / p99, %d producers", p), ms(r.lag.quantile(0.5))+" / "+ms(r.lag.quantile(0.99)), "–",
			fmt.Sprintf("the worker's wxpush_inbox_apply_lag_seconds (callback receipt → applied) after each wxpush run above, the pipeline at full rate (median %.0f msg/s, so about as many callbacks/s, 50 ms after each send); buckets summed over %d rounds (%.0f events), estimated as histogram_quantile does; per-round p99 %s",
				pipe, rounds, r.lag.count(), msList(r.lagP99)))
		headline = pipe / bare
		if len(r.hooks) > 0 {
			hooks := median(r.hooks)
			tab.row(fmt.Sprintf("status webhooks, %d producers", p), fmt.Sprintf("%.0f events/s (%.0f msg/s)", median(r.events), hooks), "–",
				fmt.Sprintf("every message has a status_url: POST to its sent and delivered webhooks answered 2xx by a local receiver; median of %d rounds (%s events/s)",
					rounds, rateList(r.events)))
			tab.row(fmt.Sprintf("single-message pipeline/asynq with webhooks on, %d producers", p), fmt.Sprintf("%.2f", hooks/bare), "–",
				"messages/s to their last webhook ÷ bare asynq, medians of the same rounds; per round: "+ratioList(r.hooks, r.bare))
		}
	}
	tab.row("Redis round trips per single message", fmt.Sprintf("%.2f", rt.perMessage), "≤ 4",
		fmt.Sprintf("wxpush_redis_round_trips_total of enqueuer and worker, %d producers, POST to delivered: %s", singleProducers[len(singleProducers)-1], rt.top))
	tab.row("Redis round trips per callback", fmt.Sprintf("%.2f", rt.perCallback), "–",
		"the same run less one whose simulator sends no result callbacks (messages end sent): the difference per message")
	tab.row("Redis commands per single message", fmt.Sprintf("%.1f", rt.commands), "–", "commandstats delta of that run, incl. commands inside scripts: "+rt.topCommands)
	b.ReportMetric(headline, "single-pipeline/asynq")
	fmt.Printf("single-message pipeline/asynq ratio: %.2f\n", headline)
}

// costSum adds up runs' CPU and wall time.
type costSum struct {
	cpu  cpuSplit
	wall time.Duration
}

func (s costSum) add(c cost) costSum { return costSum{s.cpu.plus(c.cpu), s.wall + c.wall} }

func (s costSum) busy() float64 { return s.cpu.busy(s.wall) }

// per is the CPU per message of n messages.
func (s costSum) per(n int) string {
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	c := s.cpu
	if c.worker == 0 {
		return fmt.Sprintf("%.0f µs (redis %.0f, process %.0f)", us(c.redis+c.self), us(c.redis), us(c.self))
	}
	return fmt.Sprintf("%.0f µs (redis %.0f, worker %.0f, process %.0f)", us(c.redis+c.worker+c.self), us(c.redis), us(c.worker), us(c.self))
}

// simulator is a WeChat simulator over HTTP whose app pushes its results to
// callbackURL 50 ms after each send, as for wxpush, and a token it issued.
type simulator struct {
	*wechatsim.Server
	url, token string
}

func startSim(b *testing.B, callbackURL string) simulator {
	sim, err := wechatsim.New(wechatsim.Config{
		Apps:          []wechatsim.App{{AppID: servicetest.AppID, Secret: servicetest.Secret, Token: servicetest.Token, CallbackURL: callbackURL}},
		Templates:     []wechatsim.Template{{AppID: servicetest.AppID, TemplateID: "T1", Title: "发货通知", Content: "{{thing1.DATA}}"}},
		CallbackDelay: 50 * time.Millisecond,
	})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(sim)
	b.Cleanup(func() { srv.Close(); sim.Close() })
	resp, err := http.Get(srv.URL + "/cgi-bin/token?grant_type=client_credential&appid=" + servicetest.AppID + "&secret=" + servicetest.Secret)
	if err != nil {
		b.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	decodeJSON(b, resp, &tok)
	return simulator{Server: sim, url: srv.URL, token: tok.AccessToken}
}

// waitCallbacks waits until delivered plus the callbacks the simulator gave
// up on (after its three quick tries) make n, and returns those lost. The
// simulator's count walks every send, so it is read only when deliveries have
// stalled for 20 ms.
func (s simulator) waitCallbacks(b *testing.B, what string, n int, delivered *atomic.Int64) (lost int) {
	seen, stalled := int64(0), time.Now()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(5 * time.Millisecond) {
		d := delivered.Load()
		if d != seen {
			seen, stalled = d, time.Now()
		} else if time.Since(stalled) > 20*time.Millisecond {
			lost, stalled = s.Stats().CallbacksFailed, time.Now()
		}
		if d+int64(lost) >= int64(n) {
			return lost
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: %d of %d delivered, %d callbacks lost", what, d, n, lost)
		}
	}
}

// handLost says how many callbacks the hand-written alternative lost, if any.
func handLost(lost, of int) string {
	if lost == 0 {
		return ""
	}
	return fmt.Sprintf("; hand-written lost %d of %d callbacks (the simulator gave up after its 3 tries; the handler answers 503 to a result that comes before its msgid is stored), counted as done", lost, of)
}

func rateList(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(s, ", ")
}

func ratioList(a, b []float64) string {
	s := make([]string, len(a))
	for i := range a {
		s[i] = fmt.Sprintf("%.2f", a[i]/b[i])
	}
	return strings.Join(s, ", ")
}

type singleRoundTrips struct {
	perMessage, perCallback, commands float64
	top, topCommands                  string
}

type singleRun struct {
	cost
	lag        histogram         // the worker's inbox apply lag
	roundTrips *singleRoundTrips // counted when asked
}

// runSingles times n single POSTs by producers, each one at a time, until every
// message is final, against an enqueuer and one worker binary. With count it
// also counts Redis round trips (and runs again without callbacks to split
// off their share).
func runSingles(b *testing.B, producers, n int, count bool) singleRun {
	r := singlesOnce(b, producers, n, true, count)
	run := singleRun{cost: r.cost, lag: r.lag}
	if count {
		noCallbacks := singlesOnce(b, producers, n, false, false)
		run.roundTrips = &singleRoundTrips{perMessage: float64(r.roundTrips) / float64(n),
			perCallback: float64(r.roundTrips-noCallbacks.roundTrips) / float64(n), commands: float64(r.commands.total) / float64(n), top: r.top, topCommands: r.commands.top(12, n)}
	}
	return run
}

// singlesResult is one run of singlesOnce.
type singlesResult struct {
	roundTrips int64     // the processes' Redis round trips
	cost                 // messages per second, CPU and wall time
	commands   callStats // Redis commands run, incl. inside scripts
	top        string    // the busiest round trips, per message
	lag        histogram
}

// singlesOnce is one run: the round trips the processes made, the rate, the
// Redis commands run, the busiest round trips and the worker's inbox apply
// lag histogram after the run. Without callbacks the simulator pushes no
// results, and the run waits for every message to be sent instead of final.
// profiled writes CPU profiles when WXPUSH_BENCH_PROFILE names a directory.
func singlesOnce(b *testing.B, producers, n int, callbacks, profiled bool) singlesResult {
	o := servicetest.Options{Env: env(map[string]string{"WXPUSH_CONCURRENCY": fmt.Sprint(concurrency)})}
	if !callbacks {
		o.Rules = "*=no_callback"
	}
	c := servicetest.Start(b, o)
	rdb := c.Redis.Client(b)
	worker := startWorkerBinary(b, c.Env(b))
	defer worker.stop()
	urls := append([]string{worker.admin + "/metrics"}, c.Scrape...)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: producers}}
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = []byte(body(fmt.Sprintf("oSingle%d_%06d", producers, i)))
	}
	rdb.ConfigResetStat(context.Background())
	before := roundTrips(b, urls)
	stopProfiles := func() {}
	if profiled {
		stopProfiles = profile(b, worker) // when WXPUSH_BENCH_PROFILE names a directory
	}
	cpu0, start := cpuTimes(b, rdb, worker), time.Now()
	runParallel(producers, n, func(i int) {
		post(b, client, c.API+"/v1/messages", bodies[i], http.StatusAccepted)
	})
	if !callbacks {
		waitSent(b, rdb, n, 2*time.Minute)
	} else {
		waitBacklog(b, rdb, 0, 2*time.Minute)
	}
	wall := time.Since(start)
	cpu := cpuTimes(b, rdb, worker).sub(cpu0)
	stopProfiles()
	after := roundTrips(b, urls)
	st := callStats{by: map[string]int64{}}
	for cmd, v := range after {
		st.by[cmd] = v - before[cmd]
		st.total += v - before[cmd]
	}
	return singlesResult{roundTrips: st.total, cost: cost{rate: float64(n) / wall.Seconds(), cpu: cpu, wall: wall},
		commands: commandCalls(b, rdb), top: st.top(6, n),
		lag: scrapeHistogram(b, worker.admin+"/metrics", "wxpush_inbox_apply_lag_seconds")}
}

// webhooksRun is singlesOnce with status webhooks on: every message names a
// status_url, a local receiver answers 204, and the clock stops when it has
// had every message's sent and delivered webhooks (2n POSTs; duplicates, at
// least once, would count too). It returns messages/s and webhook events/s.
// The receiver does not verify signatures: that is the receiver's CPU, not
// wxpush's.
func webhooksRun(b *testing.B, producers, n int) (float64, float64) {
	var got atomic.Int64
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		got.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer recv.Close()
	c := servicetest.Start(b, servicetest.Options{Env: env(map[string]string{
		"WXPUSH_CONCURRENCY": fmt.Sprint(concurrency), "WXPUSH_STATUS_URL": recv.URL + "/hook",
		"WXPUSH_WEBHOOK_SECRET": "bench-webhook-secret-0123", "WXPUSH_WEBHOOK_ALLOW_PRIVATE": "true",
	})})
	worker := startWorkerBinary(b, c.Env(b))
	defer worker.stop()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: producers}}
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = []byte(body(fmt.Sprintf("oHook%d_%06d", producers, i)))
	}
	start := time.Now()
	runParallel(producers, n, func(i int) {
		post(b, client, c.API+"/v1/messages", bodies[i], http.StatusAccepted)
	})
	deadline := time.Now().Add(3 * time.Minute)
	for got.Load() < int64(2*n) {
		if time.Now().After(deadline) {
			b.Fatalf("webhooks: %d of %d arrived within 3 minutes", got.Load(), 2*n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	el := time.Since(start).Seconds()
	return float64(n) / el, float64(2*n) / el
}

// waitSent waits until n messages of app default are in state sent.
func waitSent(b *testing.B, rdb *redis.Client, n int, within time.Duration) {
	deadline := time.Now().Add(within)
	for {
		sent := int64(0)
		for _, k := range rdb.Keys(context.Background(), "wxpush:{*}:backlog").Val() {
			v, _ := rdb.HGet(context.Background(), k, "default|sent").Int64()
			sent += v
		}
		if sent == int64(n) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d sent after %v", sent, n, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// asynqRun is bare asynq: the same Redis setup, the same concurrency, queues
// and polling as the worker, a no-op handler, n tasks enqueued one by one by
// producers through the asynq client. With endToEnd the server runs first and
// the clock covers the enqueue too; without it the tasks are enqueued before
// the server starts and only the drain is timed.
func asynqRun(b *testing.B, producers, n int, endToEnd bool) float64 {
	return asynqCost(b, producers, n, endToEnd).rate
}

// cost is one timed run: its rate, the CPU its processes spent and its wall
// time.
type cost struct {
	rate float64
	cpu  cpuSplit
	wall time.Duration
}

// asynqCost is asynqRun with the CPU it cost (redis-server and this process).
func asynqCost(b *testing.B, producers, n int, endToEnd bool) cost {
	rdb := redistest.Start(b).Client(b)
	client := asynq.NewClientFromRedisClient(rdb)
	payload := []byte(`{"id":"01JZZZZZZZZZZZZZZZZZZZZZZZ","app":"default","to":"oia2TjuEGTNoeX76QEjQNrcURxG8"}`)
	enqueue := func() {
		runParallel(producers, n, func(int) {
			if _, err := client.Enqueue(asynq.NewTask("noop", payload), asynq.Queue(tasks.QueueNormal)); err != nil {
				b.Fatal(err)
			}
		})
	}
	srv := asynqServer(rdb)
	mux := asynq.NewServeMux()
	mux.HandleFunc("noop", func(context.Context, *asynq.Task) error { return nil })
	insp := asynq.NewInspectorFromRedisClient(rdb)
	if !endToEnd {
		enqueue()
	}
	if err := srv.Start(mux); err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	// As for the pipeline, whose worker is up before its clock starts.
	cpu0, start := cpuTimes(b, rdb, nil), time.Now()
	if endToEnd {
		enqueue()
	}
	for {
		info, err := insp.GetQueueInfo(tasks.QueueNormal)
		if err == nil && info.Pending == 0 && info.Active == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	wall := time.Since(start)
	return cost{rate: float64(n) / wall.Seconds(), cpu: cpuTimes(b, rdb, nil).sub(cpu0), wall: wall}
}

// asynqServer is an asynq server polling as the worker does by default
// (WXPUSH_TASK_CHECK_INTERVAL), with its concurrency and queue weights.
func asynqServer(rdb redis.UniversalClient) *asynq.Server {
	return asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency: concurrency, Queues: tasks.QueueWeights, TaskCheckInterval: 10 * time.Millisecond,
		DelayedTaskCheckInterval: 200 * time.Millisecond, LogLevel: asynq.ErrorLevel,
	})
}

// handWritten is what a user would write instead of wxpush, kept small and
// honest: the producer stores a status hash and enqueues an asynq task; the
// handler sends with a plain HTTP client and a token fetched once, and stores
// the msgid; the callback handler checks the signature, finds the message by
// its msgid and marks it delivered. It has none of wxpush's guarantees (no
// token refresh, no rate limits, no de-duplication across crashes, no
// held early callbacks, no expiry, no metrics).
type handWritten struct {
	rdb       *redis.Client
	api       string // the simulator
	token     string
	http      *http.Client
	delivered atomic.Int64
}

// postTemplate sends a template message with a plain HTTP client, as a
// handler written from WeChat's docs does, and returns its msgid.
func postTemplate(c *http.Client, api, token string, msg []byte) (int64, error) {
	resp, err := c.Post(api+"/cgi-bin/message/template/send?access_token="+token, "application/json", bytes.NewReader(msg))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		ErrCode int    `json:"errcode"`
		ErrMsg  string `json:"errmsg"`
		MsgID   int64  `json:"msgid"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.ErrCode != 0 {
		return 0, fmt.Errorf("errcode %d: %s", r.ErrCode, r.ErrMsg)
	}
	return r.MsgID, nil
}

func (h *handWritten) send(ctx context.Context, t *asynq.Task) error {
	var p struct{ ID, To string }
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return err
	}
	msg, _ := json.Marshal(map[string]any{"touser": p.To, "template_id": "T1", "client_msg_id": p.ID,
		"data": map[string]any{"thing1": map[string]string{"value": "order shipped"}}})
	msgID, err := postTemplate(h.http, h.api, h.token, msg)
	if err != nil {
		return err
	}
	_, err = h.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.HSet(ctx, "alt:msg:"+p.ID, "state", "sent", "msgid", msgID)
		pipe.Set(ctx, fmt.Sprintf("alt:wxid:%d", msgID), p.ID, time.Hour)
		return nil
	})
	return err
}

// signedByWeChat checks a plain-mode callback's signature, as a handler
// written from WeChat's docs does: sha1 of the sorted token, timestamp and
// nonce.
func signedByWeChat(r *http.Request) bool {
	q := r.URL.Query()
	parts := []string{servicetest.Token, q.Get("timestamp"), q.Get("nonce")}
	sort.Strings(parts)
	sum := sha1.Sum([]byte(strings.Join(parts, "")))
	return hex.EncodeToString(sum[:]) == q.Get("signature")
}

func (h *handWritten) callback(w http.ResponseWriter, r *http.Request) {
	if !signedByWeChat(r) {
		http.Error(w, "bad signature", http.StatusForbidden)
		return
	}
	var ev struct {
		MsgID  string `xml:"MsgID"`
		Status string `xml:"Status"`
	}
	if err := xml.NewDecoder(r.Body).Decode(&ev); err != nil {
		http.Error(w, "bad xml", http.StatusBadRequest)
		return
	}
	ctx := r.Context()
	id, err := h.rdb.Get(ctx, "alt:wxid:"+ev.MsgID).Result()
	if err != nil {
		http.Error(w, "unknown msgid", http.StatusServiceUnavailable) // WeChat tries again
		return
	}
	state := "delivered"
	if ev.Status != "success" {
		state = "failed"
	}
	if err := h.rdb.HSet(ctx, "alt:msg:"+id, "state", state).Err(); err != nil {
		http.Error(w, "redis", http.StatusServiceUnavailable)
		return
	}
	h.delivered.Add(1)
	io.WriteString(w, "success")
}

// handWrittenRun times n single messages through the hand-written
// alternative, producers enqueueing one at a time, until every callback is
// stored or lost; the simulator is configured as for wxpush (50 ms callback
// delay). It returns the rate and the callbacks lost.
func handWrittenRun(b *testing.B, producers, n int) (c cost, lost int) {
	rdb := redistest.Start(b).Client(b)
	h := &handWritten{rdb: rdb, http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * concurrency}}}
	cb := httptest.NewServer(http.HandlerFunc(h.callback))
	defer cb.Close()
	sim := startSim(b, cb.URL+"/wechat")
	h.api, h.token = sim.url, sim.token

	srv := asynqServer(rdb)
	mux := asynq.NewServeMux()
	mux.HandleFunc("send", h.send)
	if err := srv.Start(mux); err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	client := asynq.NewClientFromRedisClient(rdb)
	ctx := context.Background()
	cpu0, start := cpuTimes(b, rdb, nil), time.Now()
	runParallel(producers, n, func(i int) {
		id := fmt.Sprintf("hw%d_%06d", producers, i)
		if err := rdb.HSet(ctx, "alt:msg:"+id, "state", "queued").Err(); err != nil {
			b.Fatal(err)
		}
		payload, _ := json.Marshal(map[string]string{"ID": id, "To": "oHand_" + id})
		if _, err := client.Enqueue(asynq.NewTask("send", payload), asynq.Queue(tasks.QueueNormal), asynq.MaxRetry(10)); err != nil {
			b.Fatal(err)
		}
	})
	// A callback that comes before its msgid is stored gets a 503 and, after
	// the simulator's three quick tries, is lost: the hand-written handler
	// holds no early callbacks.
	lost = sim.waitCallbacks(b, "hand-written", n, &h.delivered)
	wall := time.Since(start)
	return cost{rate: float64(n) / wall.Seconds(), cpu: cpuTimes(b, rdb, nil).sub(cpu0), wall: wall}, lost
}
