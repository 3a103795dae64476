package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
)

// TypeChunk delivers up to ChunkSize messages of one app from a batch in one
// task: their attempts begin in one Redis round trip, the sends run side by
// side, and WeChat's acceptances are stored in one round trip. A message the
// chunk cannot finish on its first attempt (a failure to retry, a rate-limit
// wait, a parked app) goes on with a TypeDeliver task of its own, as if it
// had come alone.
//
// Each record names the chunk that owns it (delivery.ChunkID), so a chunk
// that runs again (its worker died, Redis failed mid-way) sends only what it
// still owns and is not sent or final, and makes sure the tasks of the
// messages it handed off exist. An idempotent retry of the batch puts the
// same messages in chunks of its own: whichever chunk begins a message first
// owns it (delivery.Store.BeginMany), so none is sent twice and none is left
// to a chunk that never runs.
const TypeChunk = "message:chunk"

// ChunkSize is the most messages a chunk task holds.
const ChunkSize = 16

// chunkPayload names its task (the owner its records name) and queue, where
// the messages it hands off go.
type chunkPayload struct {
	ID    string      `json:"id"`
	Queue string      `json:"q"`
	App   string      `json:"app"`
	Items []chunkItem `json:"items"`
}

type chunkItem struct {
	ID string `json:"id"`
	To string `json:"to,omitempty"`
}

// ChunkStore is the part of the delivery store a chunk needs beyond Store.
type ChunkStore interface {
	BeginMany(ctx context.Context, owner string, ids []string) ([]delivery.Attempt, []error, error)
	MarkSentMany(ctx context.Context, acc []delivery.Accepted) ([]delivery.Transition, []error, error)
	HandOff(ctx context.Context, owner string, ids ...string) ([]string, error)
}

var _ ChunkStore = (*delivery.Store)(nil)

// ChunkHandler handles TypeChunk tasks with a Handler's sending and outcomes.
type ChunkHandler struct {
	h        *Handler
	store    ChunkStore
	queue    Queue
	policy   RetryPolicy
	maxRetry int
}

// NewChunkHandler returns a chunk handler sending through h; a message it
// hands off is enqueued on queue with the delivery retry budget less the
// attempts spent, its first retry spaced by policy.
func NewChunkHandler(h *Handler, store ChunkStore, queue Queue, policy RetryPolicy, maxAttempts int) *ChunkHandler {
	return &ChunkHandler{h: h, store: store, queue: queue, policy: policy, maxRetry: maxAttempts - 1}
}

// handoff is a message the chunk passes to a TypeDeliver task of its own.
type handoff struct {
	item     chunkItem
	delay    time.Duration
	maxRetry int
	marked   bool // the record names the handoff already (Attempt.HandedOff)
}

// ProcessTask implements asynq.Handler.
func (c *ChunkHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var p chunkPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil || p.ID == "" || p.Queue == "" || len(p.Items) == 0 {
		c.h.log.Error("dropping task with a bad payload", "type", t.Type())
		return fmt.Errorf("tasks: bad %s payload: %w", TypeChunk, asynq.SkipRetry)
	}
	owner, queue := p.ID, p.Queue
	perApp, perRecipient := c.h.limits(p.App)
	if perApp.IsZero() && perRecipient.IsZero() {
		offs, err := c.deliver(ctx, owner, p.App, p.Items)
		return errors.Join(err, c.enqueueHandoffs(ctx, owner, queue, p.App, offs))
	}
	// Rate limits: one message at a time, each sent as soon as it has its
	// permit, so that the sends keep the limiter's spacing.
	var offs []handoff
	var errs []error
	for _, it := range p.Items {
		wait, err := c.h.throttle(ctx, DeliverPayload{ID: it.ID, App: p.App, To: it.To})
		if err != nil {
			errs = append(errs, fmt.Errorf("tasks: rate limit: %w", err))
			break
		}
		if wait > 0 {
			offs = append(offs, handoff{item: it, delay: wait, maxRetry: c.maxRetry})
			continue
		}
		more, err := c.deliver(ctx, owner, p.App, []chunkItem{it})
		offs = append(offs, more...)
		if err != nil {
			errs = append(errs, err)
			break
		}
	}
	errs = append(errs, c.enqueueHandoffs(ctx, owner, queue, p.App, offs))
	return errors.Join(errs...)
}

// deliver begins the items' attempts, sends them side by side and stores the
// acceptances, and returns the messages to hand off. An error means Redis
// failed: the chunk runs again and takes up what it still owns.
func (c *ChunkHandler) deliver(ctx context.Context, owner, app string, items []chunkItem) ([]handoff, error) {
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.ID
	}
	as, berrs, err := c.store.BeginMany(ctx, owner, ids)
	if err != nil {
		return nil, fmt.Errorf("tasks: begin: %w", err)
	}
	var offs []handoff
	var errs []error
	type sending struct {
		i     int
		msgID int64
		err   error // nil: accepted
	}
	var sends []*sending
	logs := make([]*slog.Logger, len(items))
	for i, it := range items {
		a := as[i]
		logs[i] = c.h.log.With("msg_id", it.ID, "app", app)
		switch {
		case a.Elsewhere:
			continue // another chunk of a retried batch owns it
		case a.HandedOff:
			offs = append(offs, handoff{item: it, maxRetry: c.maxRetry, marked: true})
			continue
		}
		proceed, err := c.h.begun(logs[i], a, berrs[i])
		var ra *retryAfter
		switch {
		case errors.As(err, &ra):
			offs = append(offs, c.handoffOf(it, err))
		case err != nil:
			errs = append(errs, err) // Redis failed for this one: the chunk runs again
		}
		if !proceed {
			continue
		}
		sends = append(sends, &sending{i: i})
	}
	var wg sync.WaitGroup
	for _, s := range sends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			it := items[s.i]
			s.msgID, logs[s.i], s.err = c.h.try(ctx, logs[s.i], it.ID, as[s.i], 0, c.maxRetry)
		}()
	}
	wg.Wait()
	var acc []delivery.Accepted
	var accepted []int
	for _, s := range sends {
		switch {
		case s.err == nil:
			acc = append(acc, delivery.Accepted{ID: items[s.i].ID, App: app, MsgID: s.msgID})
			accepted = append(accepted, s.i)
		case !errors.Is(s.err, asynq.SkipRetry):
			offs = append(offs, c.handoffOf(items[s.i], s.err))
		}
	}
	if len(acc) > 0 {
		// Should this fail, WeChat has the messages; the chunk's next run sends
		// them again with the same client_msg_id, which WeChat drops.
		trs, serrs, err := c.store.MarkSentMany(ctx, acc)
		if err != nil {
			return offs, errors.Join(append(errs, fmt.Errorf("tasks: store sent: %w", err))...)
		}
		for j, i := range accepted {
			if serrs[j] != nil {
				errs = append(errs, fmt.Errorf("tasks: store sent: %w", serrs[j]))
				continue
			}
			c.h.recordSent(logs[i], app, acc[j].MsgID, trs[j])
		}
	}
	return offs, errors.Join(errs...)
}

// handoffOf passes on a message whose attempt was deferred or failed, as
// ProcessTask would have returned it to asynq.
func (c *ChunkHandler) handoffOf(it chunkItem, outcome error) handoff {
	var ra *retryAfter
	switch {
	case errors.As(outcome, &ra) && ra.park:
		// A parked app's messages wait in asynq's retry set, where a resume
		// finds them (Submitter.WakeApp): the task runs now and parks there.
		return handoff{item: it, maxRetry: c.maxRetry}
	case errors.As(outcome, &ra):
		return handoff{item: it, delay: ra.delay, maxRetry: c.maxRetry}
	}
	// A failed attempt: the task has the budget less this attempt.
	return handoff{item: it, delay: c.policy.Delay(0), maxRetry: c.maxRetry - 1}
}

// enqueueHandoffs marks the messages as handed off and enqueues their tasks:
// only those the chunk owns get one (see delivery.Store.HandOff). A task that
// exists already (the chunk ran before) is left as it is.
func (c *ChunkHandler) enqueueHandoffs(ctx context.Context, owner, queue, app string, offs []handoff) error {
	if len(offs) == 0 {
		return nil
	}
	var mark []string
	for _, o := range offs {
		if !o.marked {
			mark = append(mark, o.item.ID)
		}
	}
	mine := map[string]bool{}
	if len(mark) > 0 {
		marked, err := c.store.HandOff(ctx, owner, mark...)
		if err != nil {
			return fmt.Errorf("tasks: hand off: %w", err)
		}
		for _, id := range marked {
			mine[id] = true
		}
	}
	for _, o := range offs {
		if !o.marked && !mine[o.item.ID] {
			continue // another chunk owns it, or it is gone
		}
		opts := deliverOptions(queue, time.Time{}, max(0, o.maxRetry))
		if o.delay > 0 {
			opts = append(opts, asynq.ProcessIn(o.delay))
		}
		_, err := c.queue.EnqueueContext(ctx, NewDeliverTask(o.item.ID, app, o.item.To), opts...)
		if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
			return fmt.Errorf("tasks: hand off %s: %w", o.item.ID, err)
		}
	}
	return nil
}

// Carried returns the messages a TypeDeliver or TypeChunk task carries (for
// tools and tests that look into asynq's queues), or an error for another
// task type or a bad payload.
func Carried(taskType string, payload []byte) ([]DeliverPayload, error) {
	switch taskType {
	case TypeDeliver:
		p, err := parseDeliverPayload(payload)
		if err != nil {
			return nil, err
		}
		return []DeliverPayload{p}, nil
	case TypeChunk:
		var p chunkPayload
		if err := json.Unmarshal(payload, &p); err != nil {
			return nil, fmt.Errorf("tasks: bad %s payload: %w", TypeChunk, err)
		}
		out := make([]DeliverPayload, len(p.Items))
		for i, it := range p.Items {
			out[i] = DeliverPayload{ID: it.ID, App: p.App, To: it.To}
		}
		return out, nil
	}
	return nil, fmt.Errorf("tasks: a %s task carries no messages", taskType)
}
