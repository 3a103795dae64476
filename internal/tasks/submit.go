package tasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
)

// Records is the part of the delivery store Submitter needs.
type Records interface {
	Create(ctx context.Context, m delivery.NewMessage) (delivery.State, error)
	Delete(ctx context.Context, id string) error
}

// Queue enqueues asynq tasks; *asynq.Client provides it.
type Queue interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// Submitter accepts messages: it writes the record, then the task.
type Submitter struct {
	records  Records
	queue    Queue
	maxRetry int
}

// NewSubmitter returns a Submitter; maxAttempts is the send budget of a message.
func NewSubmitter(records Records, queue Queue, maxAttempts int) *Submitter {
	return &Submitter{records: records, queue: queue, maxRetry: maxAttempts - 1}
}

// Submit stores m and enqueues its delivery. When it returns nil the message is
// durable in Redis and will reach a final state. On error nothing is left behind
// (the record is removed if the task could not be enqueued).
func (s *Submitter) Submit(ctx context.Context, m delivery.NewMessage) (delivery.State, error) {
	state, err := s.records.Create(ctx, m)
	if err != nil {
		return "", err
	}
	opts := []asynq.Option{asynq.Queue(m.Queue), asynq.MaxRetry(s.maxRetry), asynq.Timeout(2 * time.Minute)}
	if !m.SendAt.IsZero() {
		opts = append(opts, asynq.ProcessAt(m.SendAt))
	}
	if _, err := s.queue.EnqueueContext(ctx, NewDeliverTask(m.ID, m.App), opts...); err != nil {
		if derr := s.records.Delete(context.WithoutCancel(ctx), m.ID); derr != nil {
			err = errors.Join(err, derr)
		}
		return "", fmt.Errorf("tasks: enqueue: %w", err)
	}
	return state, nil
}
