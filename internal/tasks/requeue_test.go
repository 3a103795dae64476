package tasks

import (
	"context"
	"errors"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
)

// deadMessage creates a message and lets it die after one attempt.
func (b *orphanBundle) deadMessage(t *testing.T) string {
	t.Helper()
	id := b.create(t, "")
	if _, err := b.store.Begin(b.ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Finish(b.ctx, id, "default", delivery.StateDead, &delivery.ErrorInfo{Code: -1, Msg: "system error"}); err != nil {
		t.Fatal(err)
	}
	return id
}

// staleRecords reads a message as it was before another retry requeued it,
// as a retry racing that one does.
type staleRecords struct {
	Records
	seen *delivery.Message
}

func (s staleRecords) Get(context.Context, string) (*delivery.Message, error) { return s.seen, nil }

// TestRequeueLoserLeavesTheTask: a retry that lost the race (it read the
// message dead, but another retry requeued it first) answers ErrNotDead and
// never touches the task the winner enqueued under the message's id. (Before
// the fix the loser deleted that task first, stranding the message queued
// with no task: issue 17, item 1.)
func TestRequeueLoserLeavesTheTask(t *testing.T) {
	t.Parallel()
	b := setupOrphans(t)
	id := b.deadMessage(t)
	seen, err := b.store.Get(b.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	winner := NewSubmitter(b.store, b.client, b.insp, 3)
	if err := winner.Requeue(b.ctx, id); err != nil {
		t.Fatalf("winner: %v", err)
	}
	loser := NewSubmitter(staleRecords{Records: b.store, seen: seen}, b.client, b.insp, 3)
	if err := loser.Requeue(b.ctx, id); !errors.Is(err, delivery.ErrNotDead) {
		t.Fatalf("loser: %v, want ErrNotDead", err)
	}
	if info, err := b.insp.GetTaskInfo(QueueNormal, id); err != nil || info.State != asynq.TaskStatePending {
		t.Fatalf("the winner's task after the loser's retry: %+v, %v; want it pending", info, err)
	}
	if st := b.state(t, id); st != delivery.StateQueued {
		t.Errorf("state %s, want queued", st)
	}
}
