package tasks

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/redistest"
)

// TestReconcile: a message stored without its task (the enqueuer died between
// the two) gets its task from Reconcile; messages whose task exists, or that
// have been sent, only leave the list; a normal submission never enters it
// for long.
func TestReconcile(t *testing.T) {
	t.Parallel()
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	store := delivery.NewStore(rdb, delivery.Config{})
	client := asynq.NewClientFromRedisClient(rdb)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	sub := NewSubmitter(store, client, insp, 5)
	msg := func(id string, mod ...func(*delivery.NewMessage)) delivery.NewMessage {
		m := delivery.NewMessage{ID: delivery.IDFor("default", id), App: "default", To: "o_" + id, Queue: QueueNormal,
			Body: []byte(`{"touser":"o_` + id + `","template_id":"T1","data":{}}`)}
		for _, f := range mod {
			f(&m)
		}
		return m
	}
	create := func(m delivery.NewMessage) string {
		t.Helper()
		if _, err := store.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
		return m.ID
	}

	submitted := msg("0SUBMITTED")
	if _, err := sub.Submit(ctx, submitted); err != nil {
		t.Fatal(err)
	}
	orphan := create(msg("0ORPHAN"))
	later := create(msg("0LATER", func(m *delivery.NewMessage) { m.SendAt = time.Now().Add(time.Hour) }))
	withTask := create(msg("0WITHTASK"))
	if _, err := client.Enqueue(NewDeliverTask(withTask, "default", "o"), asynq.Queue(QueueNormal)); err != nil {
		t.Fatal(err)
	}
	sent := create(msg("0SENT"))
	if _, err := store.Begin(ctx, sent); err != nil {
		t.Fatal(err)
	}
	if _, err := store.MarkSent(ctx, sent, "default", 42); err != nil {
		t.Fatal(err)
	}

	// Nothing is reconciled before it is old enough: a live request may still
	// be between its two steps.
	if ids, err := sub.Reconcile(ctx, time.Now().Add(-time.Minute), 100); err != nil || len(ids) != 0 {
		t.Fatalf("Reconcile of old messages = %v, %v; want none", ids, err)
	}
	pending, _ := store.Unenqueued(ctx, time.Now().Add(time.Second), 100)
	slices.Sort(pending)
	want := []string{orphan, later, withTask, sent}
	slices.Sort(want)
	if !slices.Equal(pending, want) {
		t.Fatalf("unconfirmed enqueues = %v, want %v (not the normally submitted %s)", pending, want, submitted.ID)
	}

	ids, err := sub.Reconcile(ctx, time.Now().Add(time.Second), 100)
	slices.Sort(ids)
	wantIDs := []string{orphan, later}
	slices.Sort(wantIDs)
	if err != nil || !slices.Equal(ids, wantIDs) {
		t.Fatalf("Reconcile = %v, %v; want tasks for %s and %s only", ids, err, orphan, later)
	}
	if info, err := insp.GetTaskInfo(QueueNormal, orphan); err != nil || info.State != asynq.TaskStatePending {
		t.Errorf("orphan's task = %+v, %v; want pending", info, err)
	}
	if info, err := insp.GetTaskInfo(QueueNormal, later); err != nil || info.State != asynq.TaskStateScheduled {
		t.Errorf("scheduled orphan's task = %+v, %v; want scheduled for its send_at", info, err)
	}
	if _, err := insp.GetTaskInfo(QueueNormal, sent); !errors.Is(err, asynq.ErrTaskNotFound) {
		t.Errorf("a sent message got a task again: %v", err)
	}
	if left, _ := store.Unenqueued(ctx, time.Now().Add(time.Second), 100); len(left) != 0 {
		t.Errorf("after Reconcile %v are still unconfirmed", left)
	}
	if ids, err := sub.Reconcile(ctx, time.Now().Add(time.Second), 100); err != nil || len(ids) != 0 {
		t.Errorf("a second Reconcile = %v, %v; want nothing", ids, err)
	}
}
