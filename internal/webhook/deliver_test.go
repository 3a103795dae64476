package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/redistest"
)

var testSecret = []byte("0123456789abcdef-test")

// receiver is a test webhook endpoint: it checks each signature and records
// what it was sent, answering with answer(event, nth POST of that event).
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	posts  []Event // every POST, in arrival order
	codes  []int   // what each was answered
	ok     []Event // the POSTs answered 2xx
	answer func(ev Event, nth int) int
	seen   map[string]int
	block  chan struct{} // when set, every POST waits for it
	active atomic.Int32
	peak   atomic.Int32
}

func newReceiver(t *testing.T, answer func(ev Event, nth int) int) *receiver {
	r := &receiver{t: t, answer: answer, seen: map[string]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	n := r.active.Add(1)
	defer r.active.Add(-1)
	for p := r.peak.Load(); n > p && !r.peak.CompareAndSwap(p, n); p = r.peak.Load() {
	}
	body, _ := io.ReadAll(req.Body)
	sig := req.Header.Get(SignatureHeader)
	var ts int64
	if _, err := fmt.Sscanf(sig, "t=%d,", &ts); err != nil || Sign(testSecret, time.Unix(ts, 0), body) != sig {
		r.t.Errorf("bad signature %q", sig)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var ev Event
	var wire wireEvent
	if err := json.Unmarshal(body, &wire); err != nil {
		r.t.Errorf("body %q: %v", body, err)
	}
	ev = Event{EventID: wire.EventID, ID: wire.ID, App: wire.App, State: wire.State, Seq: wire.Seq}
	if req.Header.Get("Content-Type") != "application/json" || req.Header.Get(eventIDHeader) != ev.EventID {
		r.t.Errorf("headers %v", req.Header)
	}
	if r.block != nil {
		<-r.block
	}
	r.mu.Lock()
	r.seen[ev.EventID]++
	code := http.StatusOK
	if r.answer != nil {
		code = r.answer(ev, r.seen[ev.EventID])
	}
	r.posts = append(r.posts, ev)
	r.codes = append(r.codes, code)
	if code/100 == 2 {
		r.ok = append(r.ok, ev)
	}
	r.mu.Unlock()
	w.WriteHeader(code)
}

func (r *receiver) delivered() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.ok...)
}

func (r *receiver) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.posts...)
}

type rig struct {
	rdb     *redis.Client
	queue   *asynq.Client
	insp    *asynq.Inspector
	metrics *Metrics
	window  time.Duration
}

// startRig runs a webhook asynq server on a private Redis, as a worker does.
func startRig(t *testing.T, cfg DelivererConfig, concurrency int) *rig {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	m := NewMetrics(prometheus.NewRegistry(), []string{"shop"})
	cfg.Redis, cfg.Metrics, cfg.Log = rdb, m, logging.Discard()
	cfg.Runner = asynq.NewInspectorFromRedisClient(rdb)
	if cfg.Secret == nil {
		cfg.Secret = func(string) ([]byte, bool) { return testSecret, true }
	}
	if cfg.Window == 0 {
		cfg.Window = time.Hour
	}
	d := NewDeliverer(cfg)
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency: concurrency, Queues: map[string]int{Queue: 1},
		RetryDelayFunc: RetryDelay(10*time.Millisecond, 50*time.Millisecond), IsFailure: IsFailure,
		DelayedTaskCheckInterval: 50 * time.Millisecond, TaskCheckInterval: 10 * time.Millisecond,
		LogLevel: asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(TypeDeliver, d)
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return &rig{rdb: rdb, queue: asynq.NewClientFromRedisClient(rdb), insp: asynq.NewInspectorFromRedisClient(rdb), metrics: m, window: cfg.Window}
}

// send does what the forwarder does for ev: its place in the order, then its task.
func (g *rig) send(t *testing.T, ev Event, url string) {
	t.Helper()
	g.order(t, ev)
	g.enqueue(t, ev, url)
}

// order records the events' places in their messages' order.
func (g *rig) order(t *testing.T, evs ...Event) {
	t.Helper()
	ctx := context.Background()
	if _, err := g.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, ev := range evs {
			AddPending(ctx, p, ev, g.window)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// enqueue enqueues ev's delivery task.
func (g *rig) enqueue(t *testing.T, ev Event, url string) {
	t.Helper()
	task, err := Task(ev, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.queue.Enqueue(task); err != nil {
		t.Fatal(err)
	}
}

func (g *rig) attempts(result string) int {
	return int(testutil.ToFloat64(g.metrics.Attempts.WithLabelValues("shop", result)))
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func event(id string, seq int64, state string) Event {
	return Event{EventID: fmt.Sprintf("1733550000000-%d-%s", seq, id), ID: id, App: "shop", State: state,
		Previous: "queued", Seq: seq, Attempts: 1, At: time.Now()}
}

// TestDeliveredSignedAndInOrder: a message's later event is not POSTed until
// the earlier one was answered 2xx, however often the earlier one fails, and
// every POST is signed.
func TestDeliveredSignedAndInOrder(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, func(ev Event, nth int) int {
		if ev.Seq == 1 && nth <= 3 {
			return http.StatusServiceUnavailable
		}
		return http.StatusNoContent
	})
	g := startRig(t, DelivererConfig{AllowPrivate: true, BreakerTrip: 100}, 4)
	for i := range 5 {
		id := fmt.Sprintf("M%d", i)
		// As the forwarder does, both take their place in the order before
		// either task exists; then the later one is enqueued first.
		sent, delivered := event(id, 1, "sent"), event(id, 2, "delivered")
		g.order(t, sent, delivered)
		g.enqueue(t, delivered, rcv.srv.URL+"/hook?k=v")
		g.enqueue(t, sent, rcv.srv.URL+"/hook?k=v")
	}
	// The receiver records a POST before it answers, the deliverer counts it
	// after: wait for both.
	waitFor(t, 20*time.Second, "10 deliveries", func() bool {
		return len(rcv.delivered()) == 10 && g.attempts(ResultDelivered) == 10
	})
	firstOK := map[string]bool{}
	rcv.mu.Lock()
	for i, ev := range rcv.posts {
		if ev.Seq == 2 && !firstOK[ev.ID] {
			t.Errorf("%s: delivered POSTed before sent was delivered", ev.ID)
		}
		if ev.Seq == 1 && rcv.codes[i]/100 == 2 {
			firstOK[ev.ID] = true
		}
	}
	rcv.mu.Unlock()
	if got := g.attempts(ResultHTTPError); got != 15 {
		t.Errorf("http_error attempts = %d, want 15 (3 per sent event)", got)
	}
	if got := g.attempts(ResultDelivered); got != 10 {
		t.Errorf("delivered = %d, want 10", got)
	}
	if n := testutil.CollectAndCount(g.metrics.Lag); n != 1 {
		t.Errorf("lag histogram series = %d", n)
	}
}

// TestWindowEndsInDeadLetterAndReplay: a receiver that never answers 2xx
// gets the event until the window ends; then it is dead, listed with the
// receiver's last answer, the next event of the message is not held back by
// it, and a replay delivers it.
func TestWindowEndsInDeadLetterAndReplay(t *testing.T) {
	t.Parallel()
	var up atomic.Bool
	rcv := newReceiver(t, func(ev Event, nth int) int {
		if up.Load() || ev.Seq == 2 {
			return http.StatusOK
		}
		return http.StatusInternalServerError
	})
	g := startRig(t, DelivererConfig{AllowPrivate: true, Window: 300 * time.Millisecond, BreakerTrip: 1000}, 2)
	g.send(t, event("D", 1, "sent"), rcv.srv.URL)
	g.send(t, event("D", 2, "dead"), rcv.srv.URL)

	dl := NewDeadLetters(g.insp, g.rdb)
	var page DeadPage
	waitFor(t, 20*time.Second, "a dead letter", func() bool {
		page, _ = dl.List(context.Background(), "shop", 0, 10)
		return page.Total == 1
	})
	de := page.Events[0]
	if de.Event.EventID != event("D", 1, "").EventID || !strings.Contains(de.LastError, "HTTP 500") ||
		!strings.Contains(de.LastError, "window") || de.Attempts < 2 {
		t.Errorf("dead event = %+v", de)
	}
	if n := testutil.ToFloat64(g.metrics.Dead.WithLabelValues("shop")); n != 1 {
		t.Errorf("wxpush_webhook_dead_total = %v, want 1", n)
	}
	if strings.Contains(de.LastError, "k=v") || strings.Contains(de.LastError, "/hook") {
		t.Errorf("the error names the URL's path or query: %q", de.LastError)
	}
	waitFor(t, 10*time.Second, "the next event past the dead one", func() bool { return len(rcv.delivered()) == 1 })

	up.Store(true)
	if err := dl.Replay(context.Background(), de.Event.EventID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the replayed event", func() bool { return len(rcv.delivered()) == 2 })
	if got := rcv.delivered()[1]; got.Seq != 1 {
		t.Errorf("replayed %+v", got)
	}
	if err := dl.Replay(context.Background(), de.Event.EventID); err != ErrNotFound {
		t.Errorf("second replay: %v, want ErrNotFound", err)
	}
}

// TestRepeatedRunOfADoneEventSendsNothing: a task that runs again after
// its event was delivered (the previous event's end runs the next task, which
// may have just completed; asynq's RunTask re-runs a completed task) POSTs
// nothing.
func TestRepeatedRunOfADoneEventSendsNothing(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, nil)
	g := startRig(t, DelivererConfig{AllowPrivate: true}, 1)
	ev := event("T", 1, "sent")
	g.send(t, ev, rcv.srv.URL)
	waitFor(t, 10*time.Second, "the delivery", func() bool { return g.attempts(ResultDelivered) == 1 })
	// The attempt is counted before the handler returns: wait for asynq to
	// record the task completed (CI caught RunTask refusing a running task).
	waitFor(t, 10*time.Second, "the task to complete", func() bool {
		info, err := g.insp.GetTaskInfo(Queue, ev.EventID)
		return err == nil && info.State == asynq.TaskStateCompleted
	})
	if err := g.insp.RunTask(Queue, ev.EventID); err != nil { // the completed task, run again
		t.Fatalf("RunTask of the completed task: %v", err)
	}
	waitFor(t, 10*time.Second, "the second run", func() bool { return g.attempts(ResultDuplicate) == 1 })
	if n := len(rcv.all()); n != 1 {
		t.Errorf("the receiver got %d POSTs, want 1", n)
	}
}

// TestGoneStopsTheURL: 410 ends the event and every later one to that URL,
// which is not POSTed again; other URLs go on.
func TestGoneStopsTheURL(t *testing.T) {
	t.Parallel()
	gone := newReceiver(t, func(Event, int) int { return http.StatusGone })
	other := newReceiver(t, nil)
	g := startRig(t, DelivererConfig{AllowPrivate: true}, 1)
	g.send(t, event("G1", 1, "sent"), gone.srv.URL+"/x")
	waitFor(t, 10*time.Second, "the 410", func() bool { return g.attempts(ResultGone) == 1 })
	g.send(t, event("G2", 1, "sent"), gone.srv.URL+"/x")
	g.send(t, event("G3", 1, "sent"), other.srv.URL)
	waitFor(t, 10*time.Second, "the drop and the other delivery", func() bool {
		return g.attempts(ResultDropped) == 1 && len(other.delivered()) == 1
	})
	if n := len(gone.all()); n != 1 {
		t.Errorf("the gone URL got %d POSTs, want 1", n)
	}
}

// TestPrivateTargetRefused: with the SSRF guard on, a loopback receiver is
// never connected to; the event is dead at once, with the reason.
func TestPrivateTargetRefused(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, nil)
	g := startRig(t, DelivererConfig{AllowPrivate: false}, 1)
	g.send(t, event("P", 1, "sent"), rcv.srv.URL)
	dl := NewDeadLetters(g.insp, g.rdb)
	var page DeadPage
	waitFor(t, 10*time.Second, "a dead letter", func() bool {
		page, _ = dl.List(context.Background(), "", 0, 10)
		return page.Total == 1
	})
	if !strings.Contains(page.Events[0].LastError, "private") || len(rcv.all()) != 0 || g.attempts(ResultRefused) != 1 {
		t.Errorf("dead = %+v, receiver got %d", page.Events[0], len(rcv.all()))
	}
}

// TestSlowReceiverDoesNotStarveOthers: a receiver that hangs holds at most
// its per-endpoint share of the workers; another receiver's events all
// arrive meanwhile.
func TestSlowReceiverDoesNotStarveOthers(t *testing.T) {
	t.Parallel()
	slow := newReceiver(t, nil)
	slow.block = make(chan struct{})
	fast := newReceiver(t, nil)
	g := startRig(t, DelivererConfig{AllowPrivate: true, PerEndpoint: 2}, 6)
	for i := range 20 {
		g.send(t, event(fmt.Sprintf("S%d", i), 1, "sent"), slow.srv.URL)
	}
	for i := range 20 {
		g.send(t, event(fmt.Sprintf("F%d", i), 1, "sent"), fast.srv.URL)
	}
	waitFor(t, 20*time.Second, "the fast receiver's 20", func() bool { return len(fast.delivered()) == 20 })
	if p := slow.peak.Load(); p > 2 {
		t.Errorf("the slow receiver had %d POSTs in flight, limit 2", p)
	}
	if g.attempts(ResultBusy) == 0 {
		t.Error("no busy outcome counted")
	}
	close(slow.block)
	waitFor(t, 30*time.Second, "the slow receiver's 20", func() bool { return len(slow.delivered()) == 20 })
}

// TestBreakerOpensOnAFailingReceiver: after BreakerTrip consecutive failures
// the receiver is left alone (attempts counted breaker_open, not sent), then
// probed, and events arrive once it recovers.
func TestBreakerOpensOnAFailingReceiver(t *testing.T) {
	t.Parallel()
	var up atomic.Bool
	rcv := newReceiver(t, func(Event, int) int {
		if up.Load() {
			return http.StatusOK
		}
		return http.StatusBadGateway
	})
	g := startRig(t, DelivererConfig{AllowPrivate: true, BreakerTrip: 3, BreakerOpen: 300 * time.Millisecond}, 2)
	for i := range 10 {
		g.send(t, event(fmt.Sprintf("B%d", i), 1, "sent"), rcv.srv.URL)
	}
	waitFor(t, 20*time.Second, "the breaker to open", func() bool { return testutil.ToFloat64(g.metrics.BreakerTrips) >= 1 })
	up.Store(true)
	waitFor(t, 60*time.Second, "all 10 after recovery", func() bool { return len(rcv.delivered()) == 10 })
	waitFor(t, 10*time.Second, "no open breaker after recovery", func() bool { return testutil.ToFloat64(g.metrics.BreakersOpen) == 0 })
}

// TestRedirectNotFollowed: a 3xx is the receiver's answer (retried), never
// a request to where it points.
func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	target := newReceiver(t, nil)
	var hits atomic.Int32
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Redirect(w, r, target.srv.URL, http.StatusFound)
	}))
	t.Cleanup(redirect.Close)
	g := startRig(t, DelivererConfig{AllowPrivate: true, BreakerTrip: 100}, 1)
	g.send(t, event("R", 1, "sent"), redirect.URL)
	// The attempt is counted after the reply is read, so wait on the count
	// (waiting on the hits raced with the second attempt's counting).
	waitFor(t, 10*time.Second, "two attempts counted http_error", func() bool { return g.attempts(ResultHTTPError) >= 2 })
	if n, h := len(target.all()), hits.Load(); n != 0 || h < 2 {
		t.Errorf("redirect target got %d POSTs; the redirecting receiver got %d", n, h)
	}
}

// TestLaterEventWaitsForAnEarlierOneNotYetForwarded: the earlier event of a
// message may still sit with a forwarder that died (taken over 30 s later)
// while the later one was forwarded by another; the later one waits for it.
// (Fault case 9 caught seq 2 POSTed before seq 1 this way.)
func TestLaterEventWaitsForAnEarlierOneNotYetForwarded(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, nil)
	g := startRig(t, DelivererConfig{AllowPrivate: true}, 2)
	sent, delivered := event("F", 1, "sent"), event("F", 2, "delivered")
	g.send(t, delivered, rcv.srv.URL)
	waitFor(t, 10*time.Second, "the later event to wait", func() bool { return g.attempts(ResultWaiting) >= 2 })
	if n := len(rcv.all()); n != 0 {
		t.Fatalf("the later event was POSTed (%d) before the earlier one was forwarded", n)
	}
	g.send(t, sent, rcv.srv.URL)
	waitFor(t, 10*time.Second, "both events", func() bool { return len(rcv.delivered()) == 2 })
	if got := rcv.delivered(); got[0].Seq != 1 || got[1].Seq != 2 {
		t.Errorf("delivered in order %d, %d; want 1, 2", got[0].Seq, got[1].Seq)
	}

	// An event whose earlier one was forwarded without a webhook (a state
	// the app does not want) goes on at once; so does one whose earlier one
	// is missing for longer than the takeover could take.
	other := event("G", 3, "delivered")
	ctx := context.Background()
	if _, err := g.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		AddForwarded(ctx, p, "G", 1, time.Hour)
		AddForwarded(ctx, p, "G", 2, time.Hour)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	g.send(t, other, rcv.srv.URL)
	stale := event("H", 2, "delivered")
	stale.At = time.Now().Add(-forwardGrace - time.Second)
	g.send(t, stale, rcv.srv.URL)
	waitFor(t, 10*time.Second, "the events after skipped and long-missing ones", func() bool { return len(rcv.delivered()) == 4 })
}
