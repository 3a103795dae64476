package tasks

import (
	"errors"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
)

// TestRequeueClaimWithoutTaskGoesBackToDead: an enqueuer that dies between a
// retry's claim (the record's dead → queued) and enqueueing the new task leaves
// the message queued with no task that will run. The orphan sweep puts such a message back to
// dead once the cut-off has passed — where a later retry takes it — and leaves
// alone a claim still within the cut-off and a retry whose task exists.
// (Before: the sweep took a message with attempts for owned, and it stayed
// queued for ever: issue 17, item 1.)
func TestRequeueClaimWithoutTaskGoesBackToDead(t *testing.T) {
	t.Parallel()
	b := setupOrphans(t)
	const n = 5
	lost := make([]string, n)
	for i := range lost {
		lost[i] = b.deadMessage(t)
		if i == 0 {
			// This one's enqueuer died before it even dropped the task that
			// gave up (archived), which will never run again.
			if _, err := b.client.Enqueue(NewDeliverTask(lost[i], "default", "o1"), asynq.Queue(QueueNormal), asynq.TaskID(lost[i])); err != nil {
				t.Fatal(err)
			}
			if err := b.insp.ArchiveTask(QueueNormal, lost[i]); err != nil {
				t.Fatal(err)
			}
		}
		// The claim alone: the enqueuer is killed before it enqueues the task.
		if _, err := b.store.Requeue(b.ctx, lost[i], "default"); err != nil {
			t.Fatal(err)
		}
	}
	done := b.deadMessage(t)
	sub := NewSubmitter(b.store, b.client, b.insp, 3)
	if err := sub.Requeue(b.ctx, done); err != nil {
		t.Fatal(err)
	}

	// Within the cut-off a claimant may still be enqueueing: nothing moves.
	if _, err := SweepOrphans(b.ctx, b.store, b.insp, b.clock.Now().Add(-time.Minute), 100); err != nil {
		t.Fatal(err)
	}
	for _, id := range lost {
		if st := b.state(t, id); st != delivery.StateQueued {
			t.Fatalf("%s is %s after a sweep within the cut-off, want still queued", id, st)
		}
	}

	b.clock.Advance(time.Hour)
	settled, err := SweepOrphans(b.ctx, b.store, b.insp, b.clock.Now().Add(-time.Minute), 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(settled) != 0 {
		t.Errorf("sweep reported %v as canceled orphans, want none (requeued messages go back to dead)", settled)
	}
	stranded := 0
	for _, id := range lost {
		st := b.state(t, id)
		info, err := b.insp.GetTaskInfo(QueueNormal, id)
		if st == delivery.StateQueued && (errors.Is(err, asynq.ErrTaskNotFound) || err == nil && info.State == asynq.TaskStateArchived) {
			stranded++
		}
		if st != delivery.StateDead {
			t.Errorf("%s is %s after the sweep, want back to dead", id, st)
		}
	}
	t.Logf("%d of %d claimed retries whose enqueuer died stranded queued without a task", stranded, n)
	if st := b.state(t, done); st != delivery.StateQueued {
		t.Errorf("the completed retry's message is %s, want queued (its task exists)", st)
	}
	if info, err := b.insp.GetTaskInfo(QueueNormal, done); err != nil || info.State != asynq.TaskStatePending {
		t.Errorf("the completed retry's task: %+v, %v; want it pending", info, err)
	}
	if got := b.unowned(t); len(got) != 0 {
		t.Errorf("unowned after the sweep = %v, want none", got)
	}
	page, err := b.store.ListDead(b.ctx, "default", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if page.Total != n {
		t.Errorf("dead list holds %d, want the %d returned messages", page.Total, n)
	}
	if got, _ := b.store.Backlog(b.ctx, "default"); got != 1 {
		t.Errorf("backlog = %d, want 1 (the completed retry only)", got)
	}
	// Back in the dead list, a message can be retried again, for real this time.
	if err := sub.Requeue(b.ctx, lost[0]); err != nil {
		t.Fatalf("retry of a returned message: %v", err)
	}
	if info, err := b.insp.GetTaskInfo(QueueNormal, lost[0]); err != nil || info.State != asynq.TaskStatePending {
		t.Errorf("its task: %+v, %v; want it pending", info, err)
	}
}
