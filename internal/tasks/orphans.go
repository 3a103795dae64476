package tasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
)

// TaskLookup finds an asynq task by queue and id; *asynq.Inspector provides it.
type TaskLookup interface {
	GetTaskInfo(queue, id string) (*asynq.TaskInfo, error)
}

// OrphanStore is the part of the delivery store the orphan sweep needs.
type OrphanStore interface {
	Unowned(ctx context.Context, before time.Time, limit int) ([]delivery.Unowned, error)
	Owned(ctx context.Context, ids ...string) error
	CancelOrphan(ctx context.Context, id string) (delivery.Transition, error)
}

var (
	_ TaskLookup  = (*asynq.Inspector)(nil)
	_ OrphanStore = (*delivery.Store)(nil)
)

// SweepOrphans ends the messages that no task owns and none ever will. Such a
// record is left when an enqueuer writes it and then dies, or loses Redis,
// before its task is enqueued (or before it can undo the write): its request
// got no 2xx, so it is not an accepted message, but it holds a slot of its
// app's backlog until it is final.
//
// It looks at up to limit records listed as unowned since before (a cut-off
// well past any request's life). A record whose batch fanout task still waits
// to run is left alone; one whose delivery task exists is unlisted; the others
// are settled canceled (a retry of their request with the same
// Idempotency-Key revives them). The fanout is looked up before the delivery
// task: a fanout that completes in between has enqueued the task by then.
func SweepOrphans(ctx context.Context, store OrphanStore, inspector TaskLookup, before time.Time, limit int) ([]delivery.Settled, error) {
	recs, err := store.Unowned(ctx, before, limit)
	if err != nil {
		return nil, err
	}
	var owned []string
	var settled []delivery.Settled
	for _, r := range recs {
		if (r.State != delivery.StateQueued && r.State != delivery.StateScheduled) || r.Attempts > 0 {
			owned = append(owned, r.ID) // gone, or a task has run it
			continue
		}
		if r.Fanout != "" {
			info, err := lookup(inspector, QueueHigh, r.Fanout)
			if err != nil {
				return settled, err
			}
			if info != nil && info.State != asynq.TaskStateArchived {
				continue // its fanout will enqueue its task
			}
		}
		info, err := lookup(inspector, r.Queue, r.ID)
		if err != nil {
			return settled, err
		}
		if info != nil {
			owned = append(owned, r.ID)
			continue
		}
		tr, err := store.CancelOrphan(ctx, r.ID)
		if err != nil && !errors.Is(err, delivery.ErrNotFound) {
			return settled, err
		}
		if tr.Changed {
			settled = append(settled, delivery.Settled{ID: r.ID, App: tr.App})
		}
	}
	if len(owned) > 0 {
		if err := store.Owned(ctx, owned...); err != nil {
			return settled, err
		}
	}
	return settled, nil
}

// lookup is the task, or nil when there is none.
func lookup(inspector TaskLookup, queue, id string) (*asynq.TaskInfo, error) {
	info, err := inspector.GetTaskInfo(queue, id)
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("tasks: look up task %s in %s: %w", id, queue, err)
	}
	return info, nil
}
