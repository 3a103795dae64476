package tasks

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/oklog/ulid/v2"

	"github.com/wxpush/wxpush/internal/config"
	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/redistest"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type orphanBundle struct {
	store  *delivery.Store
	client *asynq.Client
	insp   *asynq.Inspector
	clock  *testClock
	ctx    context.Context
}

func setupOrphans(t *testing.T) *orphanBundle {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	c := &testClock{t: time.Now()}
	return &orphanBundle{
		store:  delivery.NewStore(rdb, delivery.Config{Retention: time.Hour, Now: c.Now}),
		client: asynq.NewClientFromRedisClient(rdb),
		insp:   asynq.NewInspectorFromRedisClient(rdb),
		clock:  c,
		ctx:    context.Background(),
	}
}

func newMessage(fanout string) delivery.NewMessage {
	return delivery.NewMessage{ID: delivery.IDFor("default", ulid.Make().String()), App: "default", To: "o1",
		Queue: QueueNormal, Body: []byte(`{"touser":"o1"}`), Fanout: fanout}
}

func (b *orphanBundle) create(t *testing.T, fanout string) string {
	t.Helper()
	m := newMessage(fanout)
	if _, err := b.store.Create(b.ctx, m); err != nil {
		t.Fatal(err)
	}
	return m.ID
}

func (b *orphanBundle) state(t *testing.T, id string) delivery.State {
	t.Helper()
	m, err := b.store.Get(b.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return m.State
}

func (b *orphanBundle) unowned(t *testing.T) []string {
	t.Helper()
	recs, err := b.store.Unowned(b.ctx, b.clock.Now().Add(time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestSweepOrphans: of the records no one said were owned, the sweep cancels
// those with no task and no fanout, unlists those whose delivery or chunk
// task exists,
// postpones those whose fanout has yet to run (running one that gave up, as
// its batch was acknowledged), and leaves young ones.
func TestSweepOrphans(t *testing.T) {
	t.Parallel()
	b := setupOrphans(t)
	enqueue := func(task *asynq.Task, opts ...asynq.Option) {
		t.Helper()
		if _, err := b.client.Enqueue(task, opts...); err != nil {
			t.Fatal(err)
		}
	}
	// Its task exists; only the Owned call after the enqueue was lost.
	withTask := b.create(t, "")
	enqueue(NewDeliverTask(withTask, "default", "o1"), asynq.Queue(QueueNormal), asynq.TaskID(withTask))
	// Its batch's fanout is still pending.
	waiting := b.create(t, "fanout-w")
	enqueue(asynq.NewTask(TypeFanout, []byte(`{}`)), asynq.Queue(QueueHigh), asynq.TaskID("fanout-w"))
	// Its batch's fanout gave up (archived) before enqueueing its task.
	gaveUp := b.create(t, "fanout-g")
	enqueue(asynq.NewTask(TypeFanout, []byte(`{}`)), asynq.Queue(QueueHigh), asynq.TaskID("fanout-g"))
	if err := b.insp.ArchiveTask(QueueHigh, "fanout-g"); err != nil {
		t.Fatal(err)
	}
	// Its batch's fanout has run and enqueued its chunk.
	inChunk := b.create(t, delivery.ChunkID("fanout-c", 0))
	enqueue(asynq.NewTask(TypeChunk, []byte(`{}`)), asynq.Queue(QueueNormal), asynq.TaskID(delivery.ChunkID("fanout-c", 0)))
	// Its chunk gave up (archived).
	chunkGaveUp := b.create(t, delivery.ChunkID("fanout-a", 0))
	enqueue(asynq.NewTask(TypeChunk, []byte(`{}`)), asynq.Queue(QueueNormal), asynq.TaskID(delivery.ChunkID("fanout-a", 0)))
	if err := b.insp.ArchiveTask(QueueNormal, delivery.ChunkID("fanout-a", 0)); err != nil {
		t.Fatal(err)
	}
	// No task, and batches whose fanout never got enqueued.
	single := b.create(t, "")
	batch := b.create(t, "fanout-never")
	chunked := b.create(t, delivery.ChunkID("fanout-never2", 3))
	b.clock.Advance(time.Hour)
	young := b.create(t, "")

	settled, err := SweepOrphans(b.ctx, b.store, b.insp, b.clock.Now().Add(-time.Minute), 100)
	if err != nil {
		t.Fatal(err)
	}
	var ended []string
	for _, s := range settled {
		ended = append(ended, s.ID)
		if s.App != "default" {
			t.Errorf("settled %+v, want app default", s)
		}
	}
	slices.Sort(ended)
	want := []string{single, batch, chunked}
	slices.Sort(want)
	if !slices.Equal(ended, want) {
		t.Errorf("settled %v, want the three orphans %v", ended, want)
	}
	for id, st := range map[string]delivery.State{withTask: delivery.StateQueued, waiting: delivery.StateQueued,
		young: delivery.StateQueued, gaveUp: delivery.StateQueued, inChunk: delivery.StateQueued, chunkGaveUp: delivery.StateQueued,
		single: delivery.StateCanceled, batch: delivery.StateCanceled, chunked: delivery.StateCanceled} {
		if got := b.state(t, id); got != st {
			t.Errorf("%s = %s, want %s", id, got, st)
		}
	}
	left := []string{waiting, gaveUp, young}
	slices.Sort(left)
	if got := b.unowned(t); !slices.Equal(got, left) {
		t.Errorf("still unowned %v, want those waiting for their fanout and the young one %v", got, left)
	}
	if info, err := b.insp.GetTaskInfo(QueueHigh, "fanout-g"); err != nil || info.State != asynq.TaskStatePending {
		t.Errorf("the fanout that gave up = %+v, %v, want pending again", info, err)
	}
	if info, err := b.insp.GetTaskInfo(QueueNormal, delivery.ChunkID("fanout-a", 0)); err != nil || info.State != asynq.TaskStatePending {
		t.Errorf("the chunk that gave up = %+v, %v, want pending again", info, err)
	}
	if n, _ := b.store.Backlog(b.ctx, "default"); n != 6 {
		t.Errorf("backlog = %d, want 6 (the orphans' slots released)", n)
	}
	// The waiting records' listing was renewed: the same cut-off sees none.
	if again, err := b.store.Unowned(b.ctx, b.clock.Now().Add(-time.Minute), 100); err != nil || len(again) != 0 {
		t.Errorf("listed before the cut-off after the sweep: %+v, %v, want none (postponed)", again, err)
	}

	// The producer retries with the same Idempotency-Key (the same id): the
	// message is accepted after all, and gets its task.
	retry := newMessage("")
	retry.ID = single
	state, err := NewSubmitter(b.store, b.client, b.insp, 10).Submit(b.ctx, retry)
	if err != nil || state != delivery.StateQueued {
		t.Fatalf("Submit(retry of an orphan) = %s, %v, want queued", state, err)
	}
	if got := b.state(t, single); got != delivery.StateQueued {
		t.Errorf("revived orphan = %s, want queued", got)
	}
	if _, err := b.insp.GetTaskInfo(QueueNormal, single); err != nil {
		t.Errorf("revived orphan's task: %v", err)
	}
}

// TestSubmitLeavesNothingUnowned: a single submit unlists its record once its
// task is enqueued; a batch's records stay listed, naming their chunk of the
// fanout, until the fanout has enqueued the chunk's task.
func TestSubmitLeavesNothingUnowned(t *testing.T) {
	t.Parallel()
	b := setupOrphans(t)
	s := NewSubmitter(b.store, b.client, b.insp, 10)
	if _, err := s.Submit(b.ctx, newMessage("")); err != nil {
		t.Fatal(err)
	}
	if got := b.unowned(t); len(got) != 0 {
		t.Errorf("unowned after Submit = %v, want none", got)
	}
	ms := []delivery.NewMessage{newMessage(""), newMessage("")}
	if _, err := s.SubmitBatch(b.ctx, ms); err != nil {
		t.Fatal(err)
	}
	recs, err := b.store.Unowned(b.ctx, b.clock.Now().Add(time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Fanout == "" || recs[1].Fanout != recs[0].Fanout {
		t.Fatalf("unowned after SubmitBatch = %+v, want both, naming one chunk", recs)
	}
	fanout, chunk := delivery.FanoutOf(recs[0].Fanout)
	if chunk != delivery.ChunkID(fanout, 0) {
		t.Fatalf("the records name %q, want chunk 0 of their fanout", recs[0].Fanout)
	}
	info, err := b.insp.GetTaskInfo(QueueHigh, fanout)
	if err != nil {
		t.Fatalf("the fanout task %s: %v", fanout, err)
	}
	var p fanoutPayload
	if err := json.Unmarshal(info.Payload, &p); err != nil || len(p.Items) != 2 {
		t.Fatalf("fanout payload %s: %v", info.Payload, err)
	}
	h := NewFanoutHandler(b.client, b.store, 10)
	if err := h.ProcessTask(b.ctx, asynq.NewTask(TypeFanout, info.Payload)); err != nil {
		t.Fatal(err)
	}
	if got := b.unowned(t); len(got) != 0 {
		t.Errorf("unowned after the fanout = %v, want none", got)
	}
	info, err = b.insp.GetTaskInfo(QueueNormal, chunk)
	if err != nil {
		t.Fatalf("the chunk task %s: %v", chunk, err)
	}
	var c chunkPayload
	if err := json.Unmarshal(info.Payload, &c); err != nil || len(c.Items) != 2 || info.Type != TypeChunk {
		t.Fatalf("chunk task %s %s: %v, want both messages", info.Type, info.Payload, err)
	}
}

// TestSubmitCommitsThroughLostReply: when Redis enqueues a submission's task
// but its answer is lost, the submission is not answered with an error (the
// producer's retry would push the message twice): it tries again, finds the
// task there, and accepts.
func TestSubmitCommitsThroughLostReply(t *testing.T) {
	t.Parallel()
	b := setupOrphans(t)
	q := &fakeQueue{ids: map[string]bool{}, lost: 1}
	m := newMessage("")
	if _, err := NewSubmitter(b.store, q, b.insp, 10).Submit(b.ctx, m); err != nil {
		t.Fatalf("Submit with a lost reply: %v, want accepted", err)
	}
	if !q.ids[m.ID] || len(q.ids) != 1 || q.n != 2 {
		t.Errorf("tasks %v after %d enqueues, want the message's one task, found on the second try", q.ids, q.n)
	}
	if got := b.state(t, m.ID); got != delivery.StateQueued {
		t.Errorf("record = %s, want queued", got)
	}

	q = &fakeQueue{ids: map[string]bool{}, lost: 1}
	ms := []delivery.NewMessage{newMessage(""), newMessage("")}
	created, err := NewSubmitter(b.store, q, b.insp, 10).SubmitBatch(b.ctx, ms)
	if err != nil || len(created) != 2 || created[0].Err != nil || created[1].Err != nil {
		t.Fatalf("SubmitBatch with a lost reply: %+v, %v, want both accepted", created, err)
	}
	fanout, _ := delivery.FanoutOf(ms[0].Fanout)
	if !q.ids[fanout] || len(q.ids) != 1 {
		t.Errorf("tasks %v, want the batch's one fanout %s", q.ids, fanout)
	}
	for _, m := range ms {
		if got := b.state(t, m.ID); got != delivery.StateQueued {
			t.Errorf("record = %s, want queued", got)
		}
	}
	// A try that did not reach Redis is simply repeated.
	q = &fakeQueue{ids: map[string]bool{}, fail: 1}
	m = newMessage("")
	if _, err := NewSubmitter(b.store, q, b.insp, 10).Submit(b.ctx, m); err != nil || !q.ids[m.ID] {
		t.Errorf("Submit after a failed try: %v, tasks %v; want accepted with its task", err, q.ids)
	}
}

// TestOrphanCutOffOutlivesRequests: the least orphan cut-off configuration
// accepts leaves a request's bounded time to store and enqueue three times
// over, for clock skew between enqueuers and workers.
func TestOrphanCutOffOutlivesRequests(t *testing.T) {
	if config.MinOrphanAfter < 3*SubmitTimeout {
		t.Errorf("config.MinOrphanAfter = %v, want at least 3 × SubmitTimeout (%v)", config.MinOrphanAfter, SubmitTimeout)
	}
}

// TestRequeueFailureLeavesDead: a requeue whose task cannot be enqueued puts
// the message back to dead, where a later requeue can take it, instead of
// leaving it queued without a task.
func TestRequeueFailureLeavesDead(t *testing.T) {
	t.Parallel()
	b := setupOrphans(t)
	id := b.create(t, "")
	if err := b.store.Owned(b.ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Finish(b.ctx, id, "default", delivery.StateDead, &delivery.ErrorInfo{Code: -1, Msg: "system error"}); err != nil {
		t.Fatal(err)
	}
	failing := NewSubmitter(b.store, &fakeQueue{ids: map[string]bool{}, fail: 1}, b.insp, 10)
	if err := failing.Requeue(b.ctx, id); err == nil {
		t.Fatal("Requeue with a failing enqueue returned nil")
	}
	if got := b.state(t, id); got != delivery.StateDead {
		t.Fatalf("after a failed requeue the message is %s, want dead", got)
	}
	if n, _ := b.store.Backlog(b.ctx, "default"); n != 0 {
		t.Errorf("backlog = %d, want 0", n)
	}
	if err := NewSubmitter(b.store, b.client, b.insp, 10).Requeue(b.ctx, id); err != nil {
		t.Fatalf("a second requeue: %v", err)
	}
	if got := b.state(t, id); got != delivery.StateQueued {
		t.Errorf("after the second requeue the message is %s, want queued", got)
	}
	if _, err := b.insp.GetTaskInfo(QueueNormal, id); err != nil {
		t.Errorf("its task: %v", err)
	}
}
