package webhook

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// ErrNotFound is Replay's error for an event id that is not dead-lettered.
var ErrNotFound = errors.New("webhook: no such dead event")

// DeadEvent is one webhook whose delivery window ran out (or whose receiver
// refused it for good), kept in the asynq archive of the "webhooks" queue.
type DeadEvent struct {
	Event     Event
	URL       string
	LastError string
	Attempts  int
	DiedAt    time.Time
}

// DeadPage is one page of dead events, with the total count of the filter.
type DeadPage struct {
	Total  int
	Events []DeadEvent
}

// DeadLetters lists and replays dead webhooks. Asynq keeps an archived task
// for 90 days and at most 10,000 archived tasks per queue (the oldest go
// first): the dead-letter list inherits those caps.
type DeadLetters struct {
	insp *asynq.Inspector
	rdb  redis.UniversalClient
}

// NewDeadLetters reads the archive through insp; rdb is where replays are
// marked (the Redis of the asynq queues).
func NewDeadLetters(insp *asynq.Inspector, rdb redis.UniversalClient) *DeadLetters {
	return &DeadLetters{insp: insp, rdb: rdb}
}

// List returns the dead events of app ("" = every app), newest archive order
// as asynq keeps it, skipping offset and returning at most limit.
func (d *DeadLetters) List(ctx context.Context, app string, offset, limit int) (DeadPage, error) {
	var page DeadPage
	const size = 500
	for n := 1; ; n++ {
		if err := ctx.Err(); err != nil {
			return page, err
		}
		infos, err := d.insp.ListArchivedTasks(Queue, asynq.PageSize(size), asynq.Page(n))
		if errors.Is(err, asynq.ErrQueueNotFound) {
			return page, nil
		}
		if err != nil {
			return page, fmt.Errorf("webhook: list dead events: %w", err)
		}
		for _, ti := range infos {
			de, ok := deadEvent(ti)
			if !ok || (app != "" && de.Event.App != app) {
				continue
			}
			if page.Total >= offset && len(page.Events) < limit {
				page.Events = append(page.Events, de)
			}
			page.Total++
		}
		if len(infos) < size {
			return page, nil
		}
	}
}

func deadEvent(ti *asynq.TaskInfo) (DeadEvent, bool) {
	if ti.Type != TypeDeliver {
		return DeadEvent{}, false
	}
	p, err := decodePayload(ti.Payload)
	if err != nil {
		return DeadEvent{}, false
	}
	return DeadEvent{Event: p.Event, URL: p.URL, LastError: ti.LastErr, Attempts: ti.Retried + 1, DiedAt: ti.LastFailedAt}, true
}

// Replay sends a dead event again, with a fresh delivery window, regardless
// of the order of its message's later events (which went on without it).
func (d *DeadLetters) Replay(ctx context.Context, eventID string) error {
	ti, err := d.insp.GetTaskInfo(Queue, eventID)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) ||
		(err == nil && ti.State != asynq.TaskStateArchived) {
		return ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("webhook: replay %s: %w", eventID, err)
	}
	if err := d.rdb.Set(ctx, replayKey(eventID), time.Now().UnixMilli(), 0).Err(); err != nil {
		return fmt.Errorf("webhook: replay %s: %w", eventID, err)
	}
	if err := d.insp.RunTask(Queue, eventID); err != nil {
		if errors.Is(err, asynq.ErrTaskNotFound) {
			return ErrNotFound
		}
		return fmt.Errorf("webhook: replay %s: %w", eventID, err)
	}
	return nil
}

// replayKey marks a replayed event: its window restarts at the value (ms) and
// it skips the order check. Deliver deletes it when the event is done.
func replayKey(eventID string) string { return "wxpush:webhook:replay:" + eventID }
