package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/ratelimit"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

// chunkBundle runs chunk tasks against the simulator and a real Redis.
type chunkBundle struct {
	*bundle
	queue   *fakeQueue
	handler *ChunkHandler
}

// handed is the delivery task the chunk handed message id off to, if any.
func (c *chunkBundle) handed(t *testing.T, id string) (enqueued, bool) {
	t.Helper()
	e, ok := c.queue.tasks[id]
	if ok && e.typ != TypeDeliver {
		t.Errorf("handed off a %s task for %s", e.typ, id)
	}
	return e, ok
}

// maxAttempts is the chunk tests' send budget.
const maxAttempts = 10

func setupChunk(t *testing.T, limits Limits, rules ...wechatsim.Rule) *chunkBundle {
	t.Helper()
	b := setupWith(t, limits, rules...)
	q := &fakeQueue{ids: map[string]bool{}}
	return &chunkBundle{bundle: b, queue: q,
		handler: NewChunkHandler(b.handler, b.store, q, RetryPolicy{Base: time.Second, Cap: time.Minute}, maxAttempts)}
}

// messages stores one record per openid, owned by chunk.
func (c *chunkBundle) messages(t *testing.T, chunk string, openIDs ...string) []string {
	t.Helper()
	ids := make([]string, len(openIDs))
	for i, o := range openIDs {
		ids[i] = c.enqueue(t, o, func(m *delivery.NewMessage) { m.Fanout = chunk; m.To = o })
	}
	return ids
}

func (c *chunkBundle) run(chunk string, ids ...string) error {
	p := chunkPayload{ID: chunk, Queue: QueueNormal, App: "default"}
	for _, id := range ids {
		to, _ := c.to.Load(id)
		p.Items = append(p.Items, chunkItem{ID: id, To: to.(string)})
	}
	b, _ := json.Marshal(p)
	return c.handler.ProcessTask(c.ctx, asynq.NewTask(TypeChunk, b))
}

func chunkOf(n int) string { return delivery.ChunkID("fanout-TEST", n) }

// waiting checks that messages were handed off to wait (their delay passing
// delayOK, described by when), with the whole budget, no attempt spent, and
// still queued (invariant 4).
func (c *chunkBundle) waiting(t *testing.T, ids []string, when string, delayOK func(time.Duration) bool) {
	t.Helper()
	for _, id := range ids {
		h, ok := c.handed(t, id)
		if !ok || !delayOK(h.delay) || h.maxRetry != maxAttempts-1 {
			t.Errorf("handed off %+v (%v), want %s with the whole budget", h, ok, when)
		}
		if m := c.record(t, id); m.Attempts != 0 || m.State != delivery.StateQueued {
			t.Errorf("waiting message = %s after %d attempts, want queued, none spent", m.State, m.Attempts)
		}
	}
}

// TestChunkDelivers: a chunk sends each of its messages once, with its id as
// client_msg_id, stores them sent, and hands nothing on.
func TestChunkDelivers(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil)
	ids := c.messages(t, chunkOf(0), "u1", "u2", "u3", "u4", "u5")
	if err := c.run(chunkOf(0), ids...); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		m := c.record(t, id)
		if m.State != delivery.StateSent || m.WeChatMsgID == "" || m.Attempts != 1 {
			t.Errorf("record %d = %+v, want sent with a msgid after one attempt", i, m)
		}
		if p := c.sim.Pair(fmt.Sprintf("u%d", i+1), id); p.Accepted != 1 {
			t.Errorf("simulator pair %d = %+v, want accepted once with client_msg_id = id", i, p)
		}
	}
	if n := len(c.queue.ids); n != 0 {
		t.Errorf("handed off %d tasks, want none", n)
	}
}

// TestChunkHandsOffFailures: a failed attempt goes on in a task of its own with
// the budget less that attempt and a backoff; the chunk running again (its
// worker died after the hand-off) sends neither it nor the delivered ones again.
func TestChunkHandsOffFailures(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil, wechatsim.Rule{OpenID: "busy", Outcome: wechatsim.OutcomeSystemBusy})
	ids := c.messages(t, chunkOf(1), "ok1", "busy", "ok2")
	if err := c.run(chunkOf(1), ids...); err != nil {
		t.Fatal(err)
	}
	if m := c.record(t, ids[1]); m.State != delivery.StateRetrying || m.Attempts != 1 {
		t.Fatalf("failed message = %s after %d attempts, want retrying after 1", m.State, m.Attempts)
	}
	h, ok := c.handed(t, ids[1])
	if !ok || h.maxRetry != maxAttempts-2 || h.delay <= 0 {
		t.Fatalf("handed off %+v (%v), want a task with %d retries after a backoff", h, ok, maxAttempts-2)
	}
	sends := c.sim.Stats().SendRequests
	if err := c.run(chunkOf(1), ids...); err != nil {
		t.Fatalf("the chunk again: %v", err)
	}
	if got := c.sim.Stats().SendRequests; got != sends {
		t.Errorf("the chunk's second run sent %d more, want none", got-sends)
	}
	if m := c.record(t, ids[1]); m.Attempts != 1 {
		t.Errorf("handed-on message attempted %d times, want 1", m.Attempts)
	}
	if n := len(c.queue.ids); n != 1 {
		t.Errorf("%d tasks handed off, want 1", n)
	}
}

// TestChunkHandOffSurvivesCrash: a chunk that died after marking a message
// handed off but before its task was enqueued enqueues it when it runs again,
// without sending it itself.
func TestChunkHandOffSurvivesCrash(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil)
	ids := c.messages(t, chunkOf(2), "u1", "u2")
	if _, err := c.store.HandOff(c.ctx, chunkOf(2), ids[0]); err != nil {
		t.Fatal(err)
	}
	if err := c.run(chunkOf(2), ids...); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.handed(t, ids[0]); !ok {
		t.Error("the message marked handed off has no task")
	}
	if p := c.sim.Pair("u1", ids[0]); p.Requests != 0 {
		t.Errorf("the chunk sent a message it had handed off: %+v", p)
	}
	if m := c.record(t, ids[1]); m.State != delivery.StateSent {
		t.Errorf("the other message is %s, want sent", m.State)
	}
}

// failingSent is the store with MarkSentMany failing once, as when Redis goes
// away between WeChat's answer and its storing.
type failingSent struct {
	*delivery.Store
	failed bool
}

func (f *failingSent) MarkSentMany(ctx context.Context, acc []delivery.Accepted) ([]delivery.Transition, []error, error) {
	if !f.failed {
		f.failed = true
		return nil, nil, errors.New("connection reset")
	}
	return f.Store.MarkSentMany(ctx, acc)
}

// TestChunkResendsAfterCrashMidSend: a chunk whose sends WeChat accepted but
// could not store them runs again and sends them again with the same
// client_msg_id, which WeChat drops: the user gets each message once, and the
// message is stored sent (invariants 1 and 2).
func TestChunkResendsAfterCrashMidSend(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil)
	c.handler.store = &failingSent{Store: c.store}
	ids := c.messages(t, chunkOf(3), "u1", "u2")
	if err := c.run(chunkOf(3), ids...); err == nil {
		t.Fatal("a chunk that could not store its sends returned nil; asynq would not run it again")
	}
	if err := c.run(chunkOf(3), ids...); err != nil {
		t.Fatalf("the chunk again: %v", err)
	}
	for i, id := range ids {
		if m := c.record(t, id); m.State != delivery.StateSent || m.Attempts != 2 {
			t.Errorf("record %d = %s after %d attempts, want sent after 2", i, m.State, m.Attempts)
		}
		if p := c.sim.Pair(fmt.Sprintf("u%d", i+1), id); p.Requests != 2 || p.Pushed != 1 {
			t.Errorf("simulator pair %d = %+v, want sent twice and pushed once", i, p)
		}
	}
}

// TestChunkClaims: an idempotent retry of a batch puts the same message in a
// second chunk; whichever chunk begins it first sends it, and the other
// leaves it alone.
func TestChunkClaims(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil)
	// The retry renamed the record to its own chunk (4); the first run's
	// chunk (5) runs first.
	ids := c.messages(t, chunkOf(4), "u1")
	if err := c.run(chunkOf(5), ids...); err != nil {
		t.Fatal(err)
	}
	if m := c.record(t, ids[0]); m.State != delivery.StateSent {
		t.Fatalf("the chunk that ran first left it %s, want sent", m.State)
	}
	if err := c.run(chunkOf(4), ids...); err != nil {
		t.Fatal(err)
	}
	if st := c.sim.Stats(); st.SendRequests != 1 {
		t.Errorf("%d sends, want 1", st.SendRequests)
	}
	if n := len(c.queue.ids); n != 0 {
		t.Errorf("handed off %d, want none", n)
	}
}

// TestChunkRateLimitLeavesOthers: a rate-limited chunk hands off only the
// messages it owns; one another chunk has begun stays that chunk's, without a
// task of its own that could send it at the same time (invariant 2).
func TestChunkRateLimitLeavesOthers(t *testing.T) {
	t.Parallel()
	limits := func(string) (ratelimit.Limit, ratelimit.Limit) {
		return ratelimit.Limit{Max: 1, Window: time.Minute, Burst: 1}, ratelimit.Limit{}
	}
	c := setupChunk(t, limits)
	ids := c.messages(t, chunkOf(10), "u1", "u2")
	if _, _, err := c.store.BeginMany(c.ctx, chunkOf(11), ids[1:]); err != nil {
		t.Fatal(err)
	}
	if err := c.run(chunkOf(10), ids...); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.handed(t, ids[1]); ok {
		t.Error("the rate-limited chunk gave another chunk's message a task of its own")
	}
}

// TestChunkThrottledByWeChat: a 45011 goes on in a task of its own after the
// next minute, with the whole budget (invariant 4).
func TestChunkThrottledByWeChat(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil, wechatsim.Rule{Outcome: wechatsim.OutcomeFrequencyLimit, Times: 1})
	ids := c.messages(t, chunkOf(12), "u1")
	if err := c.run(chunkOf(12), ids...); err != nil {
		t.Fatal(err)
	}
	h, ok := c.handed(t, ids[0])
	if !ok || h.maxRetry != maxAttempts-1 || h.delay <= 0 || h.delay > time.Minute+5*time.Second {
		t.Errorf("handed off %+v (%v), want after the next minute with the whole budget", h, ok)
	}
	if m := c.record(t, ids[0]); m.State != delivery.StateRetrying {
		t.Errorf("record = %s, want retrying", m.State)
	}
}

// TestChunkParkedHandsOff: the messages of a parked app are handed off at once,
// without an attempt (invariant 4), to wait in their tasks where a resume
// finds them.
func TestChunkParkedHandsOff(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil)
	ids := c.messages(t, chunkOf(6), "u1", "u2")
	if err := c.store.Park(c.ctx, "default", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := c.run(chunkOf(6), ids...); err != nil {
		t.Fatal(err)
	}
	c.waiting(t, ids, "at once", func(d time.Duration) bool { return d == 0 })
	if st := c.sim.Stats(); st.SendRequests != 0 {
		t.Errorf("a parked app's chunk sent %d", st.SendRequests)
	}
}

// TestChunkRateLimited: with a rate limit, the chunk sends what has a permit
// and hands the rest on to wait for theirs, spending no attempt (invariant 4).
func TestChunkRateLimited(t *testing.T) {
	t.Parallel()
	limits := func(string) (ratelimit.Limit, ratelimit.Limit) {
		return ratelimit.Limit{Max: 1, Window: time.Minute, Burst: 1}, ratelimit.Limit{}
	}
	c := setupChunk(t, limits)
	ids := c.messages(t, chunkOf(7), "u1", "u2", "u3")
	if err := c.run(chunkOf(7), ids...); err != nil {
		t.Fatal(err)
	}
	if m := c.record(t, ids[0]); m.State != delivery.StateSent {
		t.Errorf("the first message = %s, want sent on the one permit", m.State)
	}
	c.waiting(t, ids[1:], "after a wait", func(d time.Duration) bool { return d > 0 })
	if st := c.sim.Stats(); st.SendRequests != 1 {
		t.Errorf("%d sends under a limit of one, want 1", st.SendRequests)
	}
}

// TestChunkLastAttempt: with a budget of one attempt, a chunk's failed send is
// final (dead) and nothing is handed off.
func TestChunkLastAttempt(t *testing.T) {
	t.Parallel()
	b := setupWith(t, nil, wechatsim.Rule{Outcome: wechatsim.OutcomeSystemBusy})
	q := &fakeQueue{ids: map[string]bool{}}
	c := &chunkBundle{bundle: b, queue: q, handler: NewChunkHandler(b.handler, b.store, q, RetryPolicy{Base: time.Second, Cap: time.Minute}, 1)}
	ids := c.messages(t, chunkOf(8), "u1")
	if err := c.run(chunkOf(8), ids...); err != nil {
		t.Fatal(err)
	}
	if m := c.record(t, ids[0]); m.State != delivery.StateDead {
		t.Errorf("record = %s, want dead", m.State)
	}
	if n := len(q.ids); n != 0 {
		t.Errorf("handed off %d, want none", n)
	}
}

// TestChunkRedisFailureRunsAgain: when Redis fails, the chunk returns an
// error so that asynq runs it again; nothing was sent.
func TestChunkRedisFailureRunsAgain(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil)
	ids := c.messages(t, chunkOf(9), "u1")
	ctx, cancel := context.WithCancel(c.ctx)
	cancel()
	p, _ := json.Marshal(chunkPayload{ID: chunkOf(9), Queue: QueueNormal, App: "default", Items: []chunkItem{{ID: ids[0], To: "u1"}}})
	err := c.handler.ProcessTask(ctx, asynq.NewTask(TypeChunk, p))
	if err == nil || errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("chunk without Redis: %v, want an error asynq retries", err)
	}
	if st := c.sim.Stats(); st.SendRequests != 0 {
		t.Errorf("%d sends, want none", st.SendRequests)
	}
}

// TestChunkNeverSendsExpiredOrCanceled: in a chunk, a message past its
// expiry is settled expired and one canceled by the API stays canceled;
// neither is sent, and the others in the chunk are (invariant 6).
func TestChunkNeverSendsExpiredOrCanceled(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil)
	owner := chunkOf(13)
	late := c.enqueue(t, "late", func(m *delivery.NewMessage) {
		m.Fanout, m.To, m.ExpireAt = owner, "late", time.Now().Add(-time.Second)
	})
	canceled := c.messages(t, owner, "gone")[0]
	if _, err := c.store.Cancel(c.ctx, canceled); err != nil {
		t.Fatal(err)
	}
	ok := c.messages(t, owner, "ok")[0]
	if err := c.run(owner, late, canceled, ok); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]delivery.State{late: delivery.StateExpired, canceled: delivery.StateCanceled, ok: delivery.StateSent} {
		if m := c.record(t, id); m.State != want {
			t.Errorf("%s = %s, want %s", id, m.State, want)
		}
	}
	if p := c.sim.Pair("late", late); p.Requests != 0 {
		t.Errorf("the expired message was sent: %+v", p)
	}
	if p := c.sim.Pair("gone", canceled); p.Requests != 0 {
		t.Errorf("the canceled message was sent: %+v", p)
	}
	if got := testutil.ToFloat64(c.metrics.Finished.WithLabelValues("default", "expired")); got != 1 {
		t.Errorf("finished{expired} = %v, want 1", got)
	}
	if n := len(c.queue.ids); n != 0 {
		t.Errorf("handed off %d, want none", n)
	}
}
