package delivery

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func (b *bundle) backlog(t *testing.T, app string) int64 {
	t.Helper()
	n, err := b.store.Backlog(b.ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestBacklogCountsUnfinished(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for i := 0; i < 4; i++ {
		b.create(t, fmt.Sprintf("Ym%d", i))
	}
	if n := b.backlog(t, "default"); n != 4 {
		t.Fatalf("backlog = %d, want 4", n)
	}
	// Every way to a final state releases the slot exactly once.
	b.store.Finish(b.ctx, "Ym0", "default", StateRejected, nil)
	b.store.Finish(b.ctx, "Ym0", "default", StateDead, nil) // already final: no second release
	b.store.Begin(b.ctx, "Ym1")
	b.store.MarkSent(b.ctx, "Ym1", "default", 11)
	if n := b.backlog(t, "default"); n != 3 {
		t.Errorf("after one rejected and one sent: backlog = %d, want 3 (sent is not final)", n)
	}
	b.store.ApplyCallback(b.ctx, "default", "11", StateDelivered, "success")
	b.store.ApplyCallback(b.ctx, "default", "11", StateDelivered, "success")
	b.store.Cancel(b.ctx, "Ym2")
	if err := b.store.Delete(b.ctx, "Ym3"); err != nil {
		t.Fatal(err)
	}
	if n := b.backlog(t, "default"); n != 0 {
		t.Errorf("backlog = %d after every message settled, want 0", n)
	}
}

func TestBacklogFullRefusesAndStoresNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	max := func(m *NewMessage) { m.MaxBacklog = 2 }
	b.create(t, "Ya", max)
	b.create(t, "Yb", max)
	if _, err := b.store.Create(b.ctx, NewMessage{ID: "Yc", App: "default", Body: []byte("{}"), MaxBacklog: 2}); !errors.Is(err, ErrBacklogFull) {
		t.Fatalf("third message: %v, want ErrBacklogFull", err)
	}
	if _, err := b.store.Get(b.ctx, "Yc"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a refused message was stored: %v", err)
	}
	b.store.Finish(b.ctx, "Ya", "default", StateRejected, nil)
	b.create(t, "Yc", max) // a slot is free again
}

func TestCreateBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.rdb.ScriptFlush(b.ctx) // a fresh Redis has no scripts: the batch must load them
	var ms []NewMessage
	for i := 0; i < 5; i++ {
		ms = append(ms, NewMessage{ID: fmt.Sprintf("Yb%d", i), App: "default", Body: []byte("{}"), MaxBacklog: 3})
	}
	ms = append(ms, NewMessage{ID: "Yb0", App: "default", Body: []byte("{}")}, // duplicate id
		NewMessage{ID: "Yb9", App: "other", Body: []byte("{}")}) // not other's shard
	res, err := b.store.CreateBatch(b.ctx, ms)
	if err != nil {
		t.Fatal(err)
	}
	want := []error{nil, nil, nil, ErrBacklogFull, ErrBacklogFull, ErrExists, ErrWrongShard}
	for i, r := range res {
		if !errors.Is(r.Err, want[i]) || (r.Err == nil) != (want[i] == nil) {
			t.Errorf("item %d: %v, want %v", i, r.Err, want[i])
		}
		if r.Err == nil && r.State != StateQueued {
			t.Errorf("item %d state %s", i, r.State)
		}
	}
	if n := b.backlog(t, "default"); n != 3 {
		t.Errorf("backlog = %d, want 3", n)
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Yq")
	tr, err := b.store.Cancel(b.ctx, "Yq")
	if err != nil || !tr.Changed || tr.State != StateCanceled {
		t.Fatalf("Cancel(queued) = %+v, %v", tr, err)
	}
	if a, _ := b.store.Begin(b.ctx, "Yq"); a.Proceed {
		t.Error("a canceled message may be sent")
	}

	// An attempt in flight wins the race: cancel is refused until it ends.
	b.create(t, "Yf")
	b.store.Begin(b.ctx, "Yf")
	if _, err := b.store.Cancel(b.ctx, "Yf"); !errors.Is(err, ErrInFlight) {
		t.Fatalf("Cancel during an attempt = %v, want ErrInFlight", err)
	}
	b.store.MarkRetrying(b.ctx, "Yf", ErrorInfo{Code: -1})
	if tr, err := b.store.Cancel(b.ctx, "Yf"); err != nil || tr.State != StateCanceled {
		t.Errorf("Cancel after the attempt failed = %+v, %v", tr, err)
	}

	// A worker that died mid-attempt blocks cancel only until the attempt timeout.
	b.create(t, "Yd")
	b.store.Begin(b.ctx, "Yd")
	b.clock.Advance(3 * time.Minute)
	if tr, err := b.store.Cancel(b.ctx, "Yd"); err != nil || tr.State != StateCanceled {
		t.Errorf("Cancel after a dead worker's attempt timed out = %+v, %v", tr, err)
	}

	// Sent is too late.
	b.create(t, "Ys")
	b.store.Begin(b.ctx, "Ys")
	b.store.MarkSent(b.ctx, "Ys", "default", 5)
	if tr, err := b.store.Cancel(b.ctx, "Ys"); err != nil || tr.Changed || tr.State != StateSent {
		t.Errorf("Cancel(sent) = %+v, %v; want unchanged", tr, err)
	}
	if _, err := b.store.Cancel(b.ctx, "Ynope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Cancel(missing) = %v", err)
	}
}

func TestDeadListAndRequeue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("Yd%d", i)
		b.create(t, id)
		b.store.Begin(b.ctx, id)
		b.store.Finish(b.ctx, id, "default", StateDead, &ErrorInfo{Code: -1, Msg: "system error"})
		b.clock.Advance(time.Second)
	}
	p1, err := b.store.ListDead(b.ctx, "default", 0, 2)
	if err != nil || p1.Total != 3 || len(p1.Messages) != 2 || p1.Messages[0].ID != "Yd2" || p1.Messages[1].ID != "Yd1" || p1.Next != 2 {
		t.Fatalf("ListDead page 1 = %v (total %d, next %d), %v; want d2, d1 of 3, next 2", ids(p1.Messages), p1.Total, p1.Next, err)
	}
	if p2, _ := b.store.ListDead(b.ctx, "default", 2, 2); len(p2.Messages) != 1 || p2.Messages[0].ID != "Yd0" || p2.Next != 0 {
		t.Errorf("ListDead page 2 = %v next %d, want d0 and no next page", ids(p2.Messages), p2.Next)
	}
	if other, _ := b.store.ListDead(b.ctx, "other", 0, 10); len(other.Messages) != 0 || other.Total != 0 {
		t.Errorf("another app's dead list = %v", ids(other.Messages))
	}

	q, err := b.store.Requeue(b.ctx, "Yd1", "default")
	if err != nil || q != "normal" {
		t.Fatalf("Requeue = %q, %v", q, err)
	}
	m, _ := b.store.Get(b.ctx, "Yd1")
	if m.State != StateQueued || m.FinishedAt != nil || b.ttl(t, recordKey("Yd1")) != -1 || b.ttl(t, bodyKey("Yd1")) != -1 || len(m.Body) == 0 {
		t.Errorf("requeued record = %s finished %v ttl %v (body %v, %d bytes); want queued, no finish time, no expiry, its body",
			m.State, m.FinishedAt, b.ttl(t, recordKey("Yd1")), b.ttl(t, bodyKey("Yd1")), len(m.Body))
	}
	if p, _ := b.store.ListDead(b.ctx, "default", 0, 10); p.Total != 2 {
		t.Errorf("dead list holds %d after a requeue, want 2", p.Total)
	}
	if _, err := b.store.Requeue(b.ctx, "Yd1", "default"); !errors.Is(err, ErrNotDead) {
		t.Errorf("Requeue(queued) = %v, want ErrNotDead", err)
	}
	if n := b.backlog(t, "default"); n != 1 {
		t.Errorf("backlog after requeue = %d, want 1", n)
	}
	// Dead entries leave the list with their retention.
	b.clock.Advance(49 * time.Hour)
	if p, _ := b.store.ListDead(b.ctx, "default", 0, 10); p.Total != 0 {
		t.Errorf("dead list holds %d past retention", p.Total)
	}
}

func ids(ms []*Message) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}

func TestParkDefersWithoutAttempts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Yp")
	b.create(t, "No", func(m *NewMessage) { m.App = "other" })
	until := b.clock.Now().Add(time.Hour)
	if err := b.store.Park(b.ctx, "default", until); err != nil {
		t.Fatal(err)
	}
	b.store.Park(b.ctx, "default", b.clock.Now().Add(time.Minute)) // never shortens
	a, err := b.store.Begin(b.ctx, "Yp")
	if err != nil || a.Proceed || !a.ParkedUntil.Equal(until) {
		t.Fatalf("Begin on a parked app = %+v, %v; want deferred until %v", a, err, until)
	}
	if a, _ := b.store.Begin(b.ctx, "No"); !a.Proceed {
		t.Error("another app is blocked by the park")
	}
	if m, _ := b.store.Get(b.ctx, "Yp"); m.Attempts != 0 || m.State != StateQueued {
		t.Errorf("a parked message spent an attempt or changed: %+v", m)
	}
	parked, _ := b.store.ParkedApps(b.ctx)
	if len(parked) != 1 || !parked["default"].Equal(until) {
		t.Errorf("ParkedApps = %v", parked)
	}
	if was, err := b.store.Resume(b.ctx, "default"); !was || err != nil {
		t.Errorf("Resume = %v, %v", was, err)
	}
	if a, _ := b.store.Begin(b.ctx, "Yp"); !a.Proceed {
		t.Error("still parked after Resume")
	}
	// A park that ran out lets messages through by itself.
	b.store.Park(b.ctx, "other", b.clock.Now().Add(time.Minute))
	b.clock.Advance(2 * time.Minute)
	b.create(t, "No2", func(m *NewMessage) { m.App = "other" })
	if a, _ := b.store.Begin(b.ctx, "No2"); !a.Proceed {
		t.Error("an expired park still blocks")
	}
}

func TestSweepLock(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first, err := b.store.TrySweepLock(b.ctx, time.Minute)
	second, _ := b.store.TrySweepLock(b.ctx, time.Minute)
	if err != nil || !first || second {
		t.Errorf("sweep lock = %v then %v (%v); want exactly one winner", first, second, err)
	}
}

// TestCreateBatchConcurrentScriptLoad: batches racing on a Redis with an empty
// script cache each see some items fail NOSCRIPT and others succeed (another
// batch loaded the script meanwhile); only the failed ones may run again.
func TestCreateBatchConcurrentScriptLoad(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for round := 0; round < 5; round++ {
		b.rdb.ScriptFlush(b.ctx)
		errs := make(chan error, 4*200)
		done := make(chan struct{})
		for g := 0; g < 4; g++ {
			go func() {
				defer func() { done <- struct{}{} }()
				var ms []NewMessage
				for i := 0; i < 200; i++ {
					ms = append(ms, NewMessage{ID: fmt.Sprintf("Yc%d-%d-%d", round, g, i), App: "default", Body: []byte("{}")})
				}
				res, err := b.store.CreateBatch(b.ctx, ms)
				if err != nil {
					errs <- err
					return
				}
				for _, r := range res {
					if r.Err != nil {
						errs <- r.Err
					}
				}
			}()
		}
		for g := 0; g < 4; g++ {
			<-done
		}
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	if n := b.backlog(t, "default"); n != 5*4*200 {
		t.Errorf("backlog = %d, want %d", n, 5*4*200)
	}
}

// TestBacklogByState: the per-state counts follow every transition and never
// go negative or linger at zero.
func TestBacklogByState(t *testing.T) {
	t.Parallel()
	b := setup(t)
	states := func() map[State]int64 {
		t.Helper()
		all, err := b.store.Backlogs(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return all["default"].ByState
	}
	want := func(step string, w map[State]int64) {
		t.Helper()
		got := states()
		if len(got) != len(w) {
			t.Errorf("%s: by state = %v, want %v", step, got, w)
			return
		}
		for k, v := range w {
			if got[k] != v {
				t.Errorf("%s: by state = %v, want %v", step, got, w)
				return
			}
		}
	}
	b.create(t, "Ya")
	b.create(t, "Yb")
	b.create(t, "Ys", func(m *NewMessage) { m.SendAt = b.clock.Now().Add(time.Hour) })
	want("created", map[State]int64{StateQueued: 2, StateScheduled: 1})
	b.store.Begin(b.ctx, "Ya")
	b.store.MarkRetrying(b.ctx, "Ya", ErrorInfo{Code: -1})
	b.store.MarkRetrying(b.ctx, "Ya", ErrorInfo{Code: -1})
	want("retrying", map[State]int64{StateQueued: 1, StateRetrying: 1, StateScheduled: 1})
	b.store.Begin(b.ctx, "Ya")
	b.store.MarkSent(b.ctx, "Ya", "default", 9)
	want("sent", map[State]int64{StateQueued: 1, StateSent: 1, StateScheduled: 1})
	b.store.ApplyCallback(b.ctx, "default", "9", StateDelivered, "success")
	b.store.Cancel(b.ctx, "Ys")
	b.store.Finish(b.ctx, "Yb", "default", StateDead, nil)
	want("all final", map[State]int64{})
	b.store.Requeue(b.ctx, "Yb", "default")
	want("requeued", map[State]int64{StateQueued: 1})
	b.store.Delete(b.ctx, "Yb")
	want("deleted", map[State]int64{})
	if all, _ := b.store.Backlogs(b.ctx); all["default"].Total != 0 {
		t.Errorf("total = %d, want 0", all["default"].Total)
	}
}

// TestLoadScripts: after LoadScripts a fresh Redis runs every transition
// without a NOSCRIPT round trip.
func TestLoadScripts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if err := b.rdb.ScriptFlush(b.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.store.LoadScripts(b.ctx); err != nil {
		t.Fatal(err)
	}
	for _, sc := range []*redis.Script{createScript, deleteScript, beginScript, sentScript, callbackScript,
		retryScript, finishScript, requeueScript} {
		if ok, err := sc.Exists(b.ctx, b.rdb).Result(); err != nil || !ok[0] {
			t.Errorf("script %s not loaded: %v %v", sc.Hash(), ok, err)
		}
	}
}
