package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
)

// TypeFanout enqueues the delivery tasks of a batch. The batch API writes every
// record and this one task in two Redis round trips; the worker then enqueues
// one TypeDeliver task per message. A message is durable once its record and the
// fanout task exist: if a worker dies halfway, asynq retries the fanout, and
// tasks already enqueued are recognised by their id and skipped.
const TypeFanout = "message:fanout"

// FanoutItem is one message of a batch.
type FanoutItem struct {
	ID     string    `json:"id"`
	App    string    `json:"app"`
	To     string    `json:"to,omitempty"`
	Queue  string    `json:"q"`
	SendAt time.Time `json:"at,omitzero"`
}

type fanoutPayload struct {
	Items []FanoutItem `json:"items"`
}

// FanoutHandler handles TypeFanout tasks.
type FanoutHandler struct {
	queue    Queue
	maxRetry int
}

// NewFanoutHandler returns a handler enqueueing on queue with the delivery retry budget.
func NewFanoutHandler(queue Queue, maxAttempts int) *FanoutHandler {
	return &FanoutHandler{queue: queue, maxRetry: maxAttempts - 1}
}

// ProcessTask implements asynq.Handler.
func (h *FanoutHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var p fanoutPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return fmt.Errorf("tasks: bad %s payload: %w", TypeFanout, asynq.SkipRetry)
	}
	for _, it := range p.Items {
		_, err := h.queue.EnqueueContext(ctx, NewDeliverTask(it.ID, it.App, it.To), deliverOptions(it.Queue, it.SendAt, h.maxRetry)...)
		if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
			return fmt.Errorf("tasks: fanout enqueue %s: %w", it.ID, err)
		}
	}
	return nil
}

func deliverOptions(queue string, sendAt time.Time, maxRetry int) []asynq.Option {
	opts := []asynq.Option{asynq.Queue(queue), asynq.MaxRetry(maxRetry), asynq.Timeout(attemptTimeout)}
	if !sendAt.IsZero() {
		opts = append(opts, asynq.ProcessAt(sendAt))
	}
	return opts
}

// attemptTimeout bounds one delivery attempt (token wait, rate-limit wait, send).
const attemptTimeout = 2 * time.Minute
