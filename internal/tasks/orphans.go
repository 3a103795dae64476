package tasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
)

// TaskLookup finds an asynq task by queue and id, and runs an archived one
// again; *asynq.Inspector provides it.
type TaskLookup interface {
	GetTaskInfo(queue, id string) (*asynq.TaskInfo, error)
	RunTask(queue, id string) error
}

// OrphanStore is the part of the delivery store the orphan sweep needs.
type OrphanStore interface {
	Unowned(ctx context.Context, before time.Time, limit int) ([]delivery.Unowned, error)
	Owned(ctx context.Context, ids ...string) error
	Postpone(ctx context.Context, ids ...string) error
	CancelOrphan(ctx context.Context, id string, cutoff time.Time) (delivery.Transition, error)
	ReturnDead(ctx context.Context, id, app string, cutoff time.Time) (delivery.Transition, error)
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
// It looks at up to limit records listed as unowned since before cutoff (well
// past any request's life):
//   - a record whose delivery task exists is unlisted;
//   - one whose batch's fanout task exists waits for it (its listing is
//     renewed); a fanout that gave up (archived) is run again, since its
//     batch was acknowledged;
//   - one whose batch's chunk task exists is unlisted (an archived chunk is
//     run again too);
//   - the others are settled canceled. A retry of their request with the same
//     Idempotency-Key revives them.
//
// A requeued dead message (queued, with attempts) is listed from its retry's
// claim until its new task begins it: with its task it is unlisted, without
// one it goes back to dead (its retry's enqueuer died between the claim and
// the enqueue), where it can be retried again. It is not in the returned list,
// which holds the canceled orphans.
//
// The fanout is looked up before the chunk, and the chunk before the
// delivery task: a fanout that completes in between has enqueued the chunk
// by then, and a chunk has begun its messages or handed them off. A failed
// lookup skips its record and the pass goes on; the first error is returned
// with what was settled.
func SweepOrphans(ctx context.Context, store OrphanStore, inspector TaskLookup, cutoff time.Time, limit int) ([]delivery.Settled, error) {
	recs, err := store.Unowned(ctx, cutoff, limit)
	if err != nil {
		return nil, err
	}
	var owned, waiting []string
	var settled []delivery.Settled
	var errs []error
	for _, r := range recs {
		if r.State == delivery.StateQueued && r.Attempts > 0 {
			// A requeued dead message that its new task has not begun yet.
			// The task that gave up before the retry (archived) never runs
			// again: the retry's enqueuer died before replacing it.
			info, err := lookup(inspector, r.Queue, r.ID)
			switch {
			case err != nil:
				errs = append(errs, err)
			case info != nil && info.State != asynq.TaskStateArchived && info.State != asynq.TaskStateCompleted:
				owned = append(owned, r.ID)
			default:
				if _, err := store.ReturnDead(ctx, r.ID, r.App, cutoff); err != nil && !errors.Is(err, delivery.ErrNotFound) {
					errs = append(errs, err)
				}
			}
			continue
		}
		if (r.State != delivery.StateQueued && r.State != delivery.StateScheduled) || r.Attempts > 0 {
			owned = append(owned, r.ID) // gone, or a task has run it
			continue
		}
		fanout, chunk := delivery.FanoutOf(r.Fanout)
		if fanout != "" {
			wait, err := pending(inspector, QueueHigh, fanout)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if wait {
				waiting = append(waiting, r.ID)
				continue
			}
		}
		if chunk != "" {
			// The fanout has enqueued the chunk, which owns the message.
			run, err := pending(inspector, r.Queue, chunk)
			switch {
			case err != nil:
				errs = append(errs, err)
				continue
			case run:
				owned = append(owned, r.ID)
				continue
			}
		}
		info, err := lookup(inspector, r.Queue, r.ID)
		switch {
		case err != nil:
			errs = append(errs, err)
			continue
		case info != nil:
			owned = append(owned, r.ID)
			continue
		}
		tr, err := store.CancelOrphan(ctx, r.ID, cutoff)
		switch {
		case err != nil && !errors.Is(err, delivery.ErrNotFound):
			errs = append(errs, err)
		case tr.Changed:
			settled = append(settled, delivery.Settled{ID: r.ID, App: tr.App})
		}
	}
	if len(owned) > 0 {
		errs = append(errs, store.Owned(ctx, owned...))
	}
	if len(waiting) > 0 {
		errs = append(errs, store.Postpone(ctx, waiting...))
	}
	if err := errors.Join(errs...); err != nil {
		return settled, fmt.Errorf("tasks: orphan sweep: %w", err)
	}
	return settled, nil
}

// pending reports whether a batch's fanout or chunk task id exists and will
// run: one that gave up (archived) is run again, since its batch was
// acknowledged.
func pending(inspector TaskLookup, queue, id string) (bool, error) {
	info, err := lookup(inspector, queue, id)
	if err != nil || info == nil {
		return false, err
	}
	if info.State == asynq.TaskStateArchived {
		if err := inspector.RunTask(queue, id); err != nil {
			return false, fmt.Errorf("tasks: run archived %s: %w", id, err)
		}
	}
	return true, nil
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
