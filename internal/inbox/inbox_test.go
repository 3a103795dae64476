package inbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/metrics"
	"github.com/wxpush/wxpush/internal/redistest"
)

type bundle struct {
	ctx    context.Context
	rdb    *redis.Client
	store  *delivery.Store
	inbox  *Inbox
	m      *Metrics
	counts *metrics.Metrics
	nonce  atomic.Int64
}

func setup(t *testing.T) *bundle {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	reg := prometheus.NewRegistry()
	b := &bundle{ctx: context.Background(), rdb: rdb,
		store: delivery.NewStore(rdb, delivery.Config{Retention: time.Hour, ConfirmTimeout: time.Hour, CallbackHold: time.Hour}),
		m:     NewMetrics(reg, rdb, []string{"default"}),
		counts: metrics.New(reg, metrics.Labels{Apps: []string{"default"},
			States: []string{"delivered", "user_blocked", "wechat_failed"}, Events: []string{"TEMPLATESENDJOBFINISH"},
			Outcome: []string{"applied", "duplicate", "held"}}),
	}
	b.inbox = New(rdb, b.m)
	return b
}

// sent makes message id sent with WeChat msgid msgID.
func (b *bundle) sent(t *testing.T, id string, msgID int64) {
	t.Helper()
	id = string(delivery.Shard("default")) + id
	if _, err := b.store.Create(b.ctx, delivery.NewMessage{ID: id, App: "default", Queue: "normal", To: "o1", Body: []byte(`{"touser":"o1"}`)}); err != nil {
		t.Fatal(err)
	}
	if a, err := b.store.Begin(b.ctx, id); err != nil || !a.Proceed {
		t.Fatalf("Begin(%s) = %+v, %v", id, a, err)
	}
	if _, err := b.store.MarkSent(b.ctx, id, "default", msgID); err != nil {
		t.Fatal(err)
	}
}

func resultXML(msgID int64, status string) []byte {
	return []byte(fmt.Sprintf(`<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName>`+
		`<CreateTime>%d</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>`+
		`<MsgID>%d</MsgID><Status><![CDATA[%s]]></Status></xml>`, time.Now().Unix(), msgID, status))
}

// push appends a result as the receiver does, with a fresh nonce.
func (b *bundle) push(t *testing.T, xml []byte) {
	t.Helper()
	n := strconv.FormatInt(b.nonce.Add(1), 10)
	use, err := b.inbox.Append(b.ctx, Entry{App: "default", Event: "TEMPLATESENDJOBFINISH", XML: xml, Received: time.Now()},
		strconv.FormatInt(time.Now().Unix(), 10), n, xml, time.Minute)
	if err != nil || use != Appended {
		t.Fatalf("Append = %v, %v", use, err)
	}
}

func (b *bundle) applier(name string, s Settler) *Applier {
	a := NewApplier(b.rdb, s, name, b.m, b.counts, slog.New(slog.NewTextHandler(io.Discard, nil)))
	a.Block = 10 * time.Millisecond
	return a
}

func (b *bundle) state(t *testing.T, id string) (delivery.State, int) {
	t.Helper()
	m, err := b.store.Get(b.ctx, string(delivery.Shard("default"))+id)
	if err != nil {
		t.Fatal(err)
	}
	callbacks := 0
	for _, h := range m.History {
		if h.Event == "callback" {
			callbacks++
		}
	}
	return m.State, callbacks
}

func (b *bundle) depth(t *testing.T) int64 {
	t.Helper()
	n, err := b.rdb.XLen(b.ctx, Stream).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// drain runs a's passes (claiming each time) until the inbox is empty.
func (b *bundle) drain(t *testing.T, a *Applier) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for b.depth(t) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the inbox still holds %d events after 20 s", b.depth(t))
		}
		if _, err := a.Once(b.ctx, true); err != nil {
			t.Logf("Once: %v", err)
		}
	}
}

func TestAppendRemembersTheNonce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	xml := resultXML(1, "success")
	app := func(body []byte) Use {
		use, err := b.inbox.Append(b.ctx, Entry{App: "default", Event: "TEMPLATESENDJOBFINISH", XML: body, Received: time.Now()}, "1700000000", "n1", body, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return use
	}
	if u := app(xml); u != Appended {
		t.Fatalf("first append = %v, want Appended", u)
	}
	if u := app(xml); u != Retried {
		t.Errorf("same nonce, same body = %v, want Retried", u)
	}
	if u := app(resultXML(2, "success")); u != Replayed {
		t.Errorf("same nonce, another body = %v, want Replayed", u)
	}
	if n := b.depth(t); n != 1 {
		t.Errorf("the inbox holds %d events, want 1: a retry or a replay must not append", n)
	}
	if v := testutil.ToFloat64(b.m.Appended.WithLabelValues("default")); v != 1 {
		t.Errorf("appended_total = %v, want 1", v)
	}
}

func TestApplierSettlesInBatches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const n = 300
	for i := range n {
		b.sent(t, fmt.Sprintf("m%03d", i), int64(1000+i))
		b.push(t, resultXML(int64(1000+i), []string{"success", "failed:user block", "failed: system failed"}[i%3]))
	}
	if _, ok, _ := Oldest(b.ctx, b.rdb); !ok {
		t.Fatal("Oldest reports an empty inbox with 300 events in it")
	}
	var calls atomic.Int32
	a := b.applier("a1", countingSettler{b.store, &calls})
	b.drain(t, a)
	for i := range n {
		want := []delivery.State{delivery.StateDelivered, delivery.StateUserBlocked, delivery.StateWeChatFailed}[i%3]
		if st, cb := b.state(t, fmt.Sprintf("m%03d", i)); st != want || cb != 1 {
			t.Fatalf("m%03d: %s with %d callbacks, want %s with 1", i, st, cb, want)
		}
	}
	if c := calls.Load(); c > 3 {
		t.Errorf("%d apply round trips for %d events, want at most 3 (batches of %d)", c, n, DefaultBatch)
	}
	if v := testutil.ToFloat64(b.m.Applied.WithLabelValues("default")); v != n {
		t.Errorf("applied_total = %v, want %d", v, n)
	}
	if v := testutil.ToFloat64(b.counts.Finished.WithLabelValues("default", "delivered")); v != n/3 {
		t.Errorf("finished_total{delivered} = %v, want %d", v, n/3)
	}
	if c := testutil.CollectAndCount(b.m.Lag); c != 1 {
		t.Errorf("lag histogram has %d series", c)
	}
	if _, ok, _ := Oldest(b.ctx, b.rdb); ok {
		t.Error("Oldest reports an event after the inbox was drained")
	}
}

type countingSettler struct {
	s     Settler
	calls *atomic.Int32
}

func (c countingSettler) ApplyCallbacks(ctx context.Context, in []delivery.CallbackInput) ([]delivery.CallbackResult, []error, error) {
	c.calls.Add(1)
	return c.s.ApplyCallbacks(ctx, in)
}

// dyingSettler applies the first half of a batch and then "dies": it returns
// an error, as a process killed after its script ran and before it
// acknowledged would leave the entries.
type dyingSettler struct{ s Settler }

var errKilled = errors.New("applier killed")

func (d dyingSettler) ApplyCallbacks(ctx context.Context, in []delivery.CallbackInput) ([]delivery.CallbackResult, []error, error) {
	if _, _, err := d.s.ApplyCallbacks(ctx, in[:len(in)/2]); err != nil {
		return nil, nil, err
	}
	return nil, nil, errKilled
}

func TestApplierKilledMidBatchAppliesOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const n = 40
	for i := range n {
		b.sent(t, fmt.Sprintf("k%02d", i), int64(5000+i))
		b.push(t, resultXML(int64(5000+i), "success"))
	}
	dead := b.applier("dead", dyingSettler{b.store})
	if _, err := dead.Once(b.ctx, false); !errors.Is(err, errKilled) {
		t.Fatalf("the dying applier's pass = %v, want it killed", err)
	}
	// Half the results took effect, none was acknowledged.
	if b.depth(t) != n {
		t.Fatalf("inbox depth %d after the kill, want %d (nothing acknowledged)", b.depth(t), n)
	}
	heir := b.applier("heir", b.store)
	heir.ClaimAfter = 20 * time.Millisecond
	b.drain(t, heir)
	for i := range n {
		if st, cb := b.state(t, fmt.Sprintf("k%02d", i)); st != delivery.StateDelivered || cb != 1 {
			t.Fatalf("k%02d: %s with %d callback history entries, want delivered with exactly 1", i, st, cb)
		}
	}
	dup := testutil.ToFloat64(b.counts.Callbacks.WithLabelValues("default", "TEMPLATESENDJOBFINISH", "duplicate"))
	applied := testutil.ToFloat64(b.counts.Callbacks.WithLabelValues("default", "TEMPLATESENDJOBFINISH", "applied"))
	if dup != n/2 || applied != n/2 {
		t.Errorf("the heir counted %v duplicate and %v applied, want %d each (the dead one had applied half)", dup, applied, n/2)
	}
	if v := testutil.ToFloat64(b.counts.Finished.WithLabelValues("default", "delivered")); v != n/2 {
		t.Errorf("the heir counted %v finished, want %d: a result applied again must not count twice", v, n/2)
	}
}

// failingSettler fails the results for one msgid in Redis, every time.
type failingSettler struct {
	s     Settler
	msgID string
}

func (f failingSettler) ApplyCallbacks(ctx context.Context, in []delivery.CallbackInput) ([]delivery.CallbackResult, []error, error) {
	rs, errs, err := f.s.ApplyCallbacks(ctx, in)
	if err != nil {
		return rs, errs, err
	}
	for i, c := range in {
		if c.MsgID == f.msgID {
			errs[i] = errors.New("WRONGTYPE Operation against a key holding the wrong kind of value")
		}
	}
	return rs, errs, nil
}

func TestPoisonEventsAreParked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sent(t, "p1", 7001)
	b.push(t, resultXML(7001, "success"))
	if err := b.rdb.XAdd(b.ctx, &redis.XAddArgs{Stream: Stream, Values: []any{fieldApp, "default", fieldEvent, "TEMPLATESENDJOBFINISH",
		fieldXML, "<xml><MsgID>7002", fieldReceived, time.Now().UnixMilli()}}).Err(); err != nil {
		t.Fatal(err)
	}
	b.sent(t, "p3", 7003)
	b.push(t, resultXML(7003, "success"))
	b.sent(t, "p4", 7004)
	b.push(t, resultXML(7004, "success"))

	a := b.applier("a1", failingSettler{b.store, "7003"})
	if _, err := a.Once(b.ctx, false); err != nil {
		t.Fatal(err)
	}
	// The good ones are not held back by either poison event.
	for _, id := range []string{"p1", "p4"} {
		if st, _ := b.state(t, id); st != delivery.StateDelivered {
			t.Errorf("%s is %s after the first pass, want delivered", id, st)
		}
	}
	passes := 1
	for b.depth(t) > 0 && passes < 20 {
		if _, err := a.Once(b.ctx, false); err != nil {
			t.Fatal(err)
		}
		passes++
	}
	if b.depth(t) != 0 {
		t.Fatalf("the inbox still holds %d events after %d passes", b.depth(t), passes)
	}
	parked, err := ListParked(b.ctx, b.rdb, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(parked) != 2 {
		t.Fatalf("parked = %+v, want the malformed event and the failing one", parked)
	}
	reasons := map[string]bool{}
	for _, p := range parked {
		reasons[p.Reason[:len(ReasonMalformed)]] = p.XML != ""
	}
	if !reasons[ReasonMalformed] || testutil.ToFloat64(b.m.Parked.WithLabelValues(ReasonMalformed)) != 1 ||
		testutil.ToFloat64(b.m.Parked.WithLabelValues(ReasonGaveUp)) != 1 {
		t.Errorf("parked reasons %+v; metrics malformed %v gave_up %v", parked,
			testutil.ToFloat64(b.m.Parked.WithLabelValues(ReasonMalformed)), testutil.ToFloat64(b.m.Parked.WithLabelValues(ReasonGaveUp)))
	}
	if f := testutil.ToFloat64(b.m.Failed); f != DefaultMaxDeliveries {
		t.Errorf("apply failures = %v, want %d before it is parked", f, DefaultMaxDeliveries)
	}
}

// An event that kills every applier that takes it is parked after
// MaxDeliveries takeovers: each claim counts one delivery.
func TestEventKillingEveryApplierIsParked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sent(t, "z1", 9001)
	b.push(t, resultXML(9001, "success"))
	killer := &killingSettler{}
	first := b.applier("victim-0", killer)
	if _, err := first.Once(b.ctx, false); err == nil {
		t.Fatal("the killing settler did not fail")
	}
	deadline := time.Now().Add(10 * time.Second)
	for i := 1; b.depth(t) > 0; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("the event is still in the inbox after %d tries", i)
		}
		next := b.applier(fmt.Sprintf("victim-%d", i), killer)
		next.ClaimAfter = time.Millisecond
		_, _ = next.Once(b.ctx, true)
	}
	parked, _ := ListParked(b.ctx, b.rdb, 10)
	if len(parked) != 1 || parked[0].Reason[:len(ReasonGaveUp)] != ReasonGaveUp {
		t.Fatalf("parked = %+v, want the killing event, gave_up", parked)
	}
	if n := killer.calls.Load(); n != DefaultMaxDeliveries {
		t.Errorf("the event was applied %d times before it was parked, want %d", n, DefaultMaxDeliveries)
	}
}

type killingSettler struct{ calls atomic.Int32 }

func (k *killingSettler) ApplyCallbacks(context.Context, []delivery.CallbackInput) ([]delivery.CallbackResult, []error, error) {
	k.calls.Add(1)
	return nil, nil, errKilled
}

// Redis lost everything (no persistence): the group is made again and new
// events are applied.
func TestGroupMadeAgainAfterRedisLostIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.applier("a1", b.store)
	b.sent(t, "g1", 8001)
	b.push(t, resultXML(8001, "success"))
	b.drain(t, a)
	if err := b.rdb.FlushAll(b.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	b.sent(t, "g2", 8002)
	b.push(t, resultXML(8002, "success"))
	b.drain(t, a)
	if st, _ := b.state(t, "g2"); st != delivery.StateDelivered {
		t.Errorf("g2 is %s after the group was lost, want delivered", st)
	}
}

// With Redis unreachable the depth gauges are left out, not made invalid:
// an invalid metric fails the whole scrape of the process.
func TestDepthCollectorWithRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	reg := prometheus.NewRegistry()
	NewMetrics(reg, rdb, []string{"default"})
	if n, err := testutil.GatherAndCount(reg, "wxpush_inbox_depth", "wxpush_inbox_oldest_age_seconds"); err != nil || n != 2 {
		t.Fatalf("with Redis up: %d series, %v; want both gauges", n, err)
	}
	srv.Stop(t)
	if _, err := reg.Gather(); err != nil {
		t.Errorf("with Redis down the scrape fails: %v", err)
	}
}

// A parked event replayed goes back into the inbox once, keeps its receive
// time, and is applied.
func TestParkedEventReplayed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sent(t, "r1", 6001)
	b.push(t, resultXML(6001, "success"))
	failing := b.applier("a1", failingSettler{b.store, "6001"})
	for b.depth(t) > 0 {
		if _, err := failing.Once(b.ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	pe := NewParkedEvents(b.rdb)
	list, total, err := pe.List(b.ctx, 10)
	if err != nil || total != 1 || len(list) != 1 {
		t.Fatalf("parked = %+v (total %d), %v; want the failing event", list, total, err)
	}
	for range 2 {
		if err := pe.Replay(b.ctx, list[0].ID); err != nil && !errors.Is(err, ErrNotParked) {
			t.Fatal(err)
		}
	}
	if err := pe.Replay(b.ctx, list[0].ID); !errors.Is(err, ErrNotParked) {
		t.Errorf("a replayed event replayed again: %v, want ErrNotParked", err)
	}
	if n := b.depth(t); n != 1 {
		t.Fatalf("the inbox holds %d events after two replays, want 1", n)
	}
	if at, _, _ := Oldest(b.ctx, b.rdb); !at.Equal(list[0].Received) {
		t.Errorf("replayed event received %s, want its first receipt %s", at, list[0].Received)
	}
	b.drain(t, b.applier("a2", b.store))
	if st, cb := b.state(t, "r1"); st != delivery.StateDelivered || cb != 1 {
		t.Errorf("r1 is %s with %d callbacks after the replay, want delivered with 1", st, cb)
	}
}

// An applier stopped with nothing pending leaves the group; one stopped with
// events it never acknowledged stays, so that they can be claimed.
func TestStoppedApplierLeavesTheGroup(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sent(t, "l1", 3001)
	b.push(t, resultXML(3001, "success"))
	consumers := func() map[string]int64 {
		cs, err := b.rdb.XInfoConsumers(b.ctx, Stream, Group).Result()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for _, c := range cs {
			out[c.Name] = c.Pending
		}
		return out
	}
	run := func(a *Applier, until func() bool) {
		ctx, cancel := context.WithCancel(b.ctx)
		done := make(chan struct{})
		go func() { defer close(done); a.Run(ctx) }()
		deadline := time.Now().Add(10 * time.Second)
		for !until() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
		<-done
	}
	run(b.applier("clean", b.store), func() bool { return b.depth(t) == 0 })
	if _, ok := consumers()["clean"]; ok {
		t.Errorf("an applier with nothing pending is still a consumer: %v", consumers())
	}
	b.sent(t, "l2", 3002)
	b.push(t, resultXML(3002, "success"))
	run(b.applier("killed", killingSettlerFor()), func() bool { return consumers()["killed"] == 1 })
	if n, ok := consumers()["killed"]; !ok || n != 1 {
		t.Errorf("an applier holding an unacknowledged event left the group: %v", consumers())
	}
}

func killingSettlerFor() Settler { return &killingSettler{} }

// A read whose reply was lost (the connection broke after Redis ran
// XREADGROUP) leaves its events in the applier's own pending list. Nothing
// failed in the applier's eyes, and no other applier claims its own
// entries from a live one's list for it: its claim passes read them again.
func TestApplierReadsItsOwnLostRead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.applier("a1", b.store)
	if _, err := a.Once(b.ctx, false); err != nil { // makes the group
		t.Fatal(err)
	}
	b.sent(t, "l1", 9501)
	b.push(t, resultXML(9501, "success"))
	// The read a1's connection lost the reply of.
	if err := b.rdb.XReadGroup(b.ctx, &redis.XReadGroupArgs{Group: Group, Consumer: "a1", Streams: []string{Stream, ">"}, Count: 10}).Err(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := a.Once(b.ctx, true); err != nil {
			t.Fatal(err)
		}
	}
	if st, cb := b.state(t, "l1"); st != delivery.StateDelivered || cb != 1 || b.depth(t) != 0 {
		t.Fatalf("l1 is %s with %d callbacks, inbox depth %d; want delivered once and the inbox empty", st, cb, b.depth(t))
	}
}

// flakySettler fails as a Redis that is failing over does, for the first
// failures calls: the round trip itself (odd calls) or each result with a
// TRYAGAIN reply (even calls).
type flakySettler struct {
	s        Settler
	failures int32
	calls    *atomic.Int32
}

func (f flakySettler) ApplyCallbacks(ctx context.Context, in []delivery.CallbackInput) ([]delivery.CallbackResult, []error, error) {
	n := f.calls.Add(1)
	switch {
	case n > f.failures:
		return f.s.ApplyCallbacks(ctx, in)
	case n%2 == 1:
		return nil, nil, fmt.Errorf("delivery: apply callbacks: %w", &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET})
	}
	errs := make([]error, len(in))
	for i := range errs {
		errs[i] = fmt.Errorf("delivery: apply callback: %w", errors.New("TRYAGAIN Multiple keys request during rehashing of slot"))
	}
	return make([]delivery.CallbackResult, len(in)), errs, nil
}

// Redis unavailable for longer than MaxDeliveries passes (a failover) is no
// reason to park good events: they are applied once it is back.
func TestRedisUnavailableParksNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sent(t, "f1", 9601)
	b.push(t, resultXML(9601, "success"))
	var calls atomic.Int32
	a := b.applier("a1", flakySettler{s: b.store, failures: 3 * DefaultMaxDeliveries, calls: &calls})
	for i := 0; b.depth(t) > 0 && i < 10*DefaultMaxDeliveries; i++ {
		_, _ = a.Once(b.ctx, false)
	}
	if parked, _ := ListParked(b.ctx, b.rdb, 10); len(parked) != 0 {
		t.Fatalf("parked %+v while Redis was unavailable, want nothing", parked)
	}
	if st, cb := b.state(t, "f1"); st != delivery.StateDelivered || cb != 1 {
		t.Fatalf("f1 is %s with %d callbacks after %d applies, want delivered once", st, cb, calls.Load())
	}
}

// An id without its sequence number names no parked event, even though
// XRANGE would range over every entry of its millisecond: replaying it must
// append nothing (before, each call appended the millisecond's first entry
// again and left it parked).
func TestReplayNeedsTheWholeID(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, id := range []string{"1000-0", "1000-1"} {
		if err := b.rdb.XAdd(b.ctx, &redis.XAddArgs{Stream: ParkedStream, ID: id, Values: []any{fieldApp, "default",
			fieldEvent, "TEMPLATESENDJOBFINISH", fieldXML, string(resultXML(6100, "success")), fieldReceived, 1000}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	pe := NewParkedEvents(b.rdb)
	for range 3 {
		if err := pe.Replay(b.ctx, "1000"); !errors.Is(err, ErrNotParked) {
			t.Fatalf("Replay(1000) = %v, want ErrNotParked", err)
		}
	}
	if n := b.depth(t); n != 0 {
		t.Fatalf("the inbox holds %d events after replays of a partial id, want 0", n)
	}
	if err := pe.Replay(b.ctx, "1000-1"); err != nil {
		t.Fatal(err)
	}
	left, _ := ListParked(b.ctx, b.rdb, 10)
	if n := b.depth(t); n != 1 || len(left) != 1 || left[0].ID != "1000-0" {
		t.Fatalf("after replaying 1000-1: inbox %d, parked %+v; want 1 and only 1000-0 left", n, left)
	}
}

// A result whose status wxpush cannot read (a spelling WeChat adds later) is
// parked as malformed, its XML kept to be replayed by a wxpush that reads it.
func TestUnknownStatusIsParked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sent(t, "u1", 6201)
	b.push(t, resultXML(6201, "pending"))
	if _, err := b.applier("a1", b.store).Once(b.ctx, false); err != nil {
		t.Fatal(err)
	}
	parked, _ := ListParked(b.ctx, b.rdb, 10)
	if len(parked) != 1 || !strings.HasPrefix(parked[0].Reason, ReasonMalformed) || !strings.Contains(parked[0].Reason, "pending") ||
		!strings.Contains(parked[0].XML, "<MsgID>6201</MsgID>") {
		t.Fatalf("parked = %+v, want the result with status pending, malformed", parked)
	}
	if st, _ := b.state(t, "u1"); st != delivery.StateSent || b.depth(t) != 0 {
		t.Errorf("u1 is %s, inbox depth %d; want sent and the inbox empty", st, b.depth(t))
	}
}
