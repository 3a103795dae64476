package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/oklog/ulid/v2"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/wechat"
)

// Records is the part of the delivery store Submitter needs.
type Records interface {
	Create(ctx context.Context, m delivery.NewMessage) (delivery.State, error)
	CreateBatch(ctx context.Context, ms []delivery.NewMessage) ([]delivery.Created, error)
	Delete(ctx context.Context, id string) error
	Owned(ctx context.Context, ids ...string) error
	AppOf(ctx context.Context, id string) (string, error)
	Requeue(ctx context.Context, id, app string) (queue string, err error)
	Finish(ctx context.Context, id, app string, to delivery.State, e *delivery.ErrorInfo) (delivery.Transition, error)
	Get(ctx context.Context, id string) (*delivery.Message, error)
}

// Queue enqueues asynq tasks; *asynq.Client provides it.
type Queue interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// Tasks inspects and moves asynq tasks; *asynq.Inspector provides it.
type Tasks interface {
	DeleteTask(queue, id string) error
	ListRetryTasks(queue string, opts ...asynq.ListOption) ([]*asynq.TaskInfo, error)
	RunTask(queue, id string) error
}

var (
	_ Records = (*delivery.Store)(nil)
	_ Queue   = (*asynq.Client)(nil)
	_ Tasks   = (*asynq.Inspector)(nil)
)

// SubmitTimeout bounds how long a Submit or SubmitBatch may write records and
// enqueue their task, and so how long a record may wait for its task while its
// request is alive. The orphan sweep's cut-off is at least
// config.MinOrphanAfter, three times as long, which leaves room for clock skew
// between enqueuers and workers. The undo of a failed enqueue has as long again.
const SubmitTimeout = 10 * time.Second

// Submitter puts messages on the queue: it writes the record, then the task.
type Submitter struct {
	records  Records
	queue    Queue
	tasks    Tasks
	maxRetry int
	co       *coalescer // nil: each single message has a delivery task of its own
}

// NewSubmitter returns a Submitter; maxAttempts is the send budget of a message.
func NewSubmitter(records Records, queue Queue, tasks Tasks, maxAttempts int) *Submitter {
	return &Submitter{records: records, queue: queue, tasks: tasks, maxRetry: maxAttempts - 1}
}

// Coalesce makes Submit deliver concurrent single messages in chunk tasks, as
// a batch's are (see coalescer): fewer Redis round trips per message under
// load, none added when a message comes alone. Call it before the first
// Submit. A message with a send_at keeps a delivery task of its own.
func (s *Submitter) Coalesce() *Submitter {
	s.co = newCoalescer(s)
	return s
}

// Submit stores m and enqueues its delivery. When it returns nil the message is
// durable in Redis and will reach a final state. A failed enqueue is tried
// again until SubmitTimeout (see commit). On error nothing is accepted: the
// record is removed if the task could not be enqueued, and should the removal
// fail too, the orphan sweep ends it canceled (SweepOrphans).
func (s *Submitter) Submit(ctx context.Context, m delivery.NewMessage) (delivery.State, error) {
	if s.co != nil && m.SendAt.IsZero() {
		return s.co.submit(m)
	}
	ctx, cancel := context.WithTimeout(ctx, SubmitTimeout)
	defer cancel()
	state, err := s.records.Create(ctx, m)
	rerun := errors.Is(err, delivery.ErrExists)
	if err != nil && !rerun {
		return "", err
	}
	// rerun: an idempotent request whose earlier run stored this message (its id
	// derives from the Idempotency-Key) and died before answering. The message
	// stands; only its task may be missing, and asynq refuses a second one.
	err = s.commit(ctx, NewDeliverTask(m.ID, m.App, m.To), deliverOptions(m.Queue, m.SendAt, s.maxRetry)...)
	switch {
	case err == nil, rerun && errors.Is(err, asynq.ErrTaskIDConflict):
		// The task owns the message now. Should this fail, the message stays
		// listed as unowned and the orphan sweep finds its task and unlists it.
		_ = s.records.Owned(ctx, m.ID)
		return state, nil
	case rerun:
		return "", fmt.Errorf("tasks: enqueue: %w", err)
	}
	return "", s.undo(ctx, fmt.Errorf("tasks: enqueue: %w", err), m.ID)
}

// SubmitBatch stores many messages in one pipelined round trip and enqueues one
// fanout task for those accepted (two round trips in all). Per-message refusals
// (a full backlog) are in the results; an error means nothing was accepted. It
// sets each message's Fanout to the fanout task's id.
func (s *Submitter) SubmitBatch(ctx context.Context, ms []delivery.NewMessage) ([]delivery.Created, error) {
	if len(ms) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, SubmitTimeout)
	defer cancel()
	// Each record names the fanout task that will enqueue its delivery task, so
	// that the orphan sweep leaves it alone while that task exists. Every run
	// has its own: an idempotent rerun renames it in the records it finds still
	// waiting for a task (see delivery.Store.Create), whatever became of the
	// first run's fanout.
	fanout := "fanout-" + ulid.Make().String()
	assignChunks(fanout, ms)
	created, err := s.records.CreateBatch(ctx, ms)
	if err != nil {
		return nil, err
	}
	var items []FanoutItem
	var fresh []string // ids this call created, to undo if the fanout fails
	for i, c := range created {
		if errors.Is(c.Err, delivery.ErrExists) {
			// An earlier run of this idempotent request stored it (see Submit):
			// it stands, and the fanout skips a task that exists.
			created[i].Err = nil
		} else if c.Err != nil {
			continue
		} else {
			fresh = append(fresh, ms[i].ID)
		}
		m := ms[i]
		it := FanoutItem{ID: m.ID, App: m.App, To: m.To, Queue: m.Queue, SendAt: m.SendAt}
		if m.Fanout != fanout {
			it.Chunk = m.Fanout
		}
		items = append(items, it)
	}
	if len(items) == 0 {
		return created, nil
	}
	b, _ := json.Marshal(fanoutPayload{Items: items}) // plain strings and times cannot fail
	// The fanout runs on the high queue: it only moves work, and a batch should
	// not wait behind the backlog it is adding to.
	err = s.commit(ctx, asynq.NewTask(TypeFanout, b), asynq.Queue(QueueHigh), asynq.MaxRetry(25), asynq.TaskID(fanout))
	if err != nil {
		return nil, s.undo(ctx, fmt.Errorf("tasks: enqueue fanout: %w", err), fresh...)
	}
	return created, nil
}

// commit enqueues the task that makes a submission durable. Redis may apply
// the enqueue and then fail before its answer arrives (a crash, a lost
// connection), so a failed try is repeated with the same task id until ctx
// ends: a task that exists by then (asynq.ErrTaskIDConflict on a later try)
// was enqueued by an earlier one. Without this, the request would be answered
// with an error while its messages go out, and the producer's retry would
// send them twice. An error on the first try is returned as it is.
func (s *Submitter) commit(ctx context.Context, task *asynq.Task, opts ...asynq.Option) error {
	wait := 50 * time.Millisecond
	for try := 0; ; try++ {
		_, err := s.queue.EnqueueContext(ctx, task, opts...)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, asynq.ErrTaskIDConflict):
			if try == 0 {
				return err
			}
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// assignChunks names each message's owner: the chunk task that will deliver
// it, ChunkSize messages of one app and queue to a chunk in batch order, or,
// for a message with a send_at, the fanout, which enqueues a task of its own.
// An idempotent retry of the same batch assigns the same chunks.
func assignChunks(fanout string, ms []delivery.NewMessage) {
	type group struct{ queue, app string }
	type open struct{ n, size int }
	groups := map[group]open{}
	next := 0
	for i := range ms {
		if !ms[i].SendAt.IsZero() {
			ms[i].Fanout = fanout
			continue
		}
		g := group{ms[i].Queue, ms[i].App}
		c, ok := groups[g]
		if !ok || c.size == ChunkSize {
			c = open{n: next}
			next++
		}
		c.size++
		groups[g] = c
		ms[i].Fanout = delivery.ChunkID(fanout, c.n)
	}
}

// undo removes records whose task could not be enqueued, so that an error
// response leaves nothing behind.
func (s *Submitter) undo(ctx context.Context, cause error, ids ...string) error {
	// The undo runs even when the request is gone, within the same bound.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), SubmitTimeout)
	defer cancel()
	errs := []error{cause}
	for _, id := range ids {
		if err := s.records.Delete(ctx, id); err != nil {
			errs = append(errs, err)
			break // Redis is down: the rest would fail the same way
		}
	}
	return errors.Join(errs...)
}

// Requeue sends a dead message again with its id, client_msg_id and a fresh
// retry budget: the record goes back to queued, asynq's archived task is
// replaced by a new one with the same id.
//
// The record's dead → queued change is the claim: of concurrent retries of one
// message exactly one makes it, and only that one touches the asynq task. (A
// loser that dropped the task first would delete the task the winner had just
// enqueued under the same id, and strand the message queued with no task.)
// Should the task not be enqueued, the claimant puts the message back to dead,
// where a later retry finds it.
func (s *Submitter) Requeue(ctx context.Context, id string) error {
	app, err := s.records.AppOf(ctx, id)
	if err != nil {
		return err
	}
	m, err := s.records.Get(ctx, id)
	if err != nil {
		return err
	}
	if m.State != delivery.StateDead {
		return delivery.ErrNotDead // spares the losers of a race most round trips
	}
	queue, err := s.records.Requeue(ctx, id, app)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, SubmitTimeout)
	defer cancel()
	err = s.tasks.DeleteTask(queue, id)
	if err != nil && !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound) {
		return s.unclaim(ctx, fmt.Errorf("tasks: requeue: drop archived task: %w", err), id, app)
	}
	var body struct {
		ToUser string `json:"touser"`
	}
	_ = json.Unmarshal(m.Body, &body)
	_, err = s.queue.EnqueueContext(ctx, NewDeliverTask(id, app, body.ToUser), deliverOptions(queue, time.Time{}, s.maxRetry)...)
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return s.unclaim(ctx, fmt.Errorf("tasks: requeue: %w", err), id, app)
	}
	return nil
}

// unclaim puts a requeued message whose task could not be enqueued back to
// dead: queued without a task it would wait for ever, and could not be
// retried (it is no longer dead). Redis failed a moment ago, so the change is
// tried again, within SubmitTimeout, even when the request is gone.
func (s *Submitter) unclaim(ctx context.Context, cause error, id, app string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), SubmitTimeout)
	defer cancel()
	wait := 50 * time.Millisecond
	for {
		_, err := s.records.Finish(ctx, id, app, delivery.StateDead, nil)
		if err == nil {
			return cause
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(cause, fmt.Errorf("tasks: requeue: back to dead: %w", err))
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// WakeApp runs now the app's messages that wait for a quota reset or a
// configuration fix (after an operator resumed the app). It returns how many it
// woke. The matching tasks are collected first: running one removes it from the
// retry list, which would shift the pages under a paging loop.
func (s *Submitter) WakeApp(ctx context.Context, app string) (int, error) {
	type ref struct{ queue, id string }
	var waiting []ref
	for queue := range QueueWeights {
		for page := 1; ; page++ {
			infos, err := s.tasks.ListRetryTasks(queue, asynq.Page(page), asynq.PageSize(500))
			if errors.Is(err, asynq.ErrQueueNotFound) {
				break
			}
			if err != nil {
				return 0, fmt.Errorf("tasks: wake %s: %w", app, err)
			}
			for _, t := range infos {
				p, perr := parseDeliverPayload(t.Payload)
				if t.Type == TypeDeliver && perr == nil && p.App == app && waitingForQuota(t.LastErr) {
					waiting = append(waiting, ref{queue, t.ID})
				}
			}
			if len(infos) < 500 {
				break
			}
		}
	}
	woken := 0
	for _, w := range waiting {
		if err := s.tasks.RunTask(w.queue, w.id); err == nil {
			woken++
		}
	}
	return woken, nil
}

// waitingForQuota recognises the tasks a park holds back: those deferred as
// parked, and those whose own attempt hit the quota or a configuration error.
func waitingForQuota(lastErr string) bool {
	if strings.Contains(lastErr, errParked.Error()) || strings.Contains(lastErr, "errcode 45009") {
		return true
	}
	var code int
	if _, after, ok := strings.Cut(lastErr, "errcode "); ok {
		fmt.Sscanf(after, "%d", &code)
	}
	return code != 0 && wechat.ClassOf(code) == wechat.ClassConfig
}
