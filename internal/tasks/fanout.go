package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
)

// TypeFanout enqueues the tasks of a batch. The batch API writes every record
// and this one task in two Redis round trips; the worker then enqueues one
// TypeChunk task per ChunkSize messages of one app and priority to be sent
// now, and one TypeDeliver task per message with a send_at. A message is
// durable once its record and the fanout task exist: if a worker dies
// halfway, asynq retries the fanout, and tasks already enqueued are recognised
// by their id and skipped.
const TypeFanout = "message:fanout"

// FanoutItem is one message of a batch.
type FanoutItem struct {
	ID     string    `json:"id"`
	App    string    `json:"app"`
	To     string    `json:"to,omitempty"`
	Queue  string    `json:"q"`
	SendAt time.Time `json:"at,omitzero"`
	// Chunk is the chunk task that delivers the message (delivery.ChunkID);
	// "" for a message with a task of its own.
	Chunk string `json:"c,omitempty"`
}

type fanoutPayload struct {
	Items []FanoutItem `json:"items"`
}

// Owner records that messages' delivery tasks exist; *delivery.Store provides it.
type Owner interface {
	Owned(ctx context.Context, ids ...string) error
}

// FanoutHandler handles TypeFanout tasks.
type FanoutHandler struct {
	queue    Queue
	owner    Owner
	maxRetry int
}

// NewFanoutHandler returns a handler enqueueing on queue with the delivery
// retry budget, and telling owner once the tasks exist.
func NewFanoutHandler(queue Queue, owner Owner, maxAttempts int) *FanoutHandler {
	return &FanoutHandler{queue: queue, owner: owner, maxRetry: maxAttempts - 1}
}

// ProcessTask implements asynq.Handler.
func (h *FanoutHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var p fanoutPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return fmt.Errorf("tasks: bad %s payload: %w", TypeFanout, asynq.SkipRetry)
	}
	ids := make([]string, len(p.Items))
	var chunks []string // in order of first item
	byChunk := map[string]*chunkPayload{}
	for i, it := range p.Items {
		ids[i] = it.ID
		if it.Chunk != "" {
			c, ok := byChunk[it.Chunk]
			if !ok {
				c = &chunkPayload{ID: it.Chunk, Queue: it.Queue, App: it.App}
				byChunk[it.Chunk] = c
				chunks = append(chunks, it.Chunk)
			}
			c.Items = append(c.Items, chunkItem{ID: it.ID, To: it.To})
			continue
		}
		_, err := h.queue.EnqueueContext(ctx, NewDeliverTask(it.ID, it.App, it.To), deliverOptions(it.Queue, it.SendAt, h.maxRetry)...)
		if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
			return fmt.Errorf("tasks: fanout enqueue %s: %w", it.ID, err)
		}
	}
	for _, id := range chunks {
		b, _ := json.Marshal(byChunk[id]) // strings cannot fail
		_, err := h.queue.EnqueueContext(ctx, asynq.NewTask(TypeChunk, b),
			asynq.TaskID(id), asynq.Queue(byChunk[id].Queue), asynq.MaxRetry(chunkMaxRetry), asynq.Timeout(attemptTimeout))
		if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
			return fmt.Errorf("tasks: fanout enqueue %s: %w", id, err)
		}
	}
	// A failure here leaves the messages listed as unowned: the orphan sweep
	// finds their tasks and unlists them, so the fanout need not run again.
	_ = h.owner.Owned(ctx, ids...)
	return nil
}

func deliverOptions(queue string, sendAt time.Time, maxRetry int) []asynq.Option {
	opts := []asynq.Option{asynq.Queue(queue), asynq.MaxRetry(maxRetry), asynq.Timeout(attemptTimeout)}
	if !sendAt.IsZero() {
		opts = append(opts, asynq.ProcessAt(sendAt))
	}
	return opts
}

// chunkMaxRetry is a chunk's budget for failing as a whole (Redis errors);
// its messages' own failures are handed to their own tasks.
const chunkMaxRetry = 25

// attemptTimeout bounds one delivery attempt (token wait, rate-limit wait, send).
const attemptTimeout = 2 * time.Minute
