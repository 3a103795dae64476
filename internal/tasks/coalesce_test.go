package tasks

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/oklog/ulid/v2"

	"github.com/wxpush/wxpush/internal/delivery"
)

// lockedQueue is a fakeQueue safe for the coalescer's concurrent enqueues
// that keeps each task.
type lockedQueue struct {
	mu    sync.Mutex
	q     *fakeQueue
	tasks []*asynq.Task
}

func (l *lockedQueue) EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	info, err := l.q.EnqueueContext(ctx, task, opts...)
	if err == nil {
		l.tasks = append(l.tasks, task)
	}
	return info, err
}

func (c *coalescer) waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, g := range c.groups {
		n += len(g.waiting)
	}
	return n
}

func singleMessage(i int) delivery.NewMessage {
	to := fmt.Sprintf("oCoalesce%02d", i)
	return delivery.NewMessage{ID: delivery.IDFor("default", ulid.Make().String()), App: "default", Queue: QueueNormal, To: to,
		Body: []byte(fmt.Sprintf(`{"touser":%q,"template_id":"T1","data":{"k":{"value":"v"}}}`, to))}
}

// TestCoalescedSinglesShareChunks: single messages that arrive while their
// group's write is in flight go together in chunk tasks of at most ChunkSize,
// each Submit returns once its own chunk is stored, and the chunks deliver
// every message once.
func TestCoalescedSinglesShareChunks(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil)
	q := &lockedQueue{q: &fakeQueue{ids: map[string]bool{}}}
	s := NewSubmitter(c.store, q, nil, maxAttempts).Coalesce()
	// The group's write is in flight: the submissions below wait behind it
	// and lead none of their own.
	k := groupKey{"default", QueueNormal}
	g := &group{writing: true}
	s.co.mu.Lock()
	s.co.groups[k] = g
	s.co.mu.Unlock()
	const n = 40
	ms := make([]delivery.NewMessage, n)
	errs := make(chan error, n)
	for i := range ms {
		ms[i] = singleMessage(i)
		c.to.Store(ms[i].ID, ms[i].To)
		go func() {
			state, err := s.Submit(context.Background(), ms[i])
			if err == nil && state != delivery.StateQueued {
				err = fmt.Errorf("state %s, want queued", state)
			}
			errs <- err
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); s.co.waiting() < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d submissions waiting", s.co.waiting())
		}
	}
	// The write in flight ends; its loop takes the waiting ones in one write.
	go s.co.flushLoop(k, g)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// 40 in one write: 16 + 16 + 8.
	if len(q.tasks) != 3 {
		t.Fatalf("%d tasks for %d singles, want 3 chunks", len(q.tasks), n)
	}
	carried := 0
	for _, task := range q.tasks {
		items, err := Carried(task.Type(), task.Payload())
		if err != nil || task.Type() != TypeChunk || len(items) > ChunkSize {
			t.Fatalf("task %s with %d items (%v), want a chunk of at most %d", task.Type(), len(items), err, ChunkSize)
		}
		carried += len(items)
		if err := c.handler.ProcessTask(c.ctx, task); err != nil {
			t.Fatal(err)
		}
	}
	if carried != n {
		t.Errorf("chunks carry %d messages, want %d", carried, n)
	}
	for _, m := range ms {
		if r := c.record(t, m.ID); r.State != delivery.StateSent || r.Attempts != 1 {
			t.Errorf("%s = %s after %d attempts, want sent after 1", m.ID, r.State, r.Attempts)
		}
		if p := c.sim.Pair(m.To, m.ID); p.Accepted != 1 {
			t.Errorf("%s accepted %d times, want once", m.ID, p.Accepted)
		}
	}
}

// TestCoalescedEnqueueFailureAcceptsNothing: when a chunk task cannot be
// stored, its messages' Submits fail and their records are gone.
func TestCoalescedEnqueueFailureAcceptsNothing(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil)
	s := NewSubmitter(c.store, failingQueue{}, nil, maxAttempts).Coalesce()
	m := singleMessage(0)
	if _, err := s.Submit(context.Background(), m); err == nil {
		t.Fatal("Submit succeeded with Redis refusing the chunk task")
	}
	if _, err := c.store.Get(c.ctx, m.ID); !errors.Is(err, delivery.ErrNotFound) {
		t.Errorf("record after a failed submit: %v, want ErrNotFound", err)
	}
}

// failingQueue fails every enqueue, as a Redis that refuses writes does.
type failingQueue struct{}

func (failingQueue) EnqueueContext(context.Context, *asynq.Task, ...asynq.Option) (*asynq.TaskInfo, error) {
	return nil, errors.New("redis down")
}

// hangFirst hangs its first enqueue until release is closed (Redis stalled
// under one write) and enqueues the others at once.
type hangFirst struct {
	mu      sync.Mutex
	calls   int
	hanging chan struct{} // closed once the first enqueue hangs
	release chan struct{}
}

func (h *hangFirst) EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error) {
	h.mu.Lock()
	h.calls++
	first := h.calls == 1
	h.mu.Unlock()
	if first {
		close(h.hanging)
		<-h.release
	}
	return &asynq.TaskInfo{}, nil
}

// TestCoalescedWriteDoesNotWaitForAHungOne: a message of a group whose write
// hangs is written on its own after slowFlush, instead of waiting behind it
// (with Redis down, every request would wait out the hung one's retries
// instead of being answered 503 at once).
func TestCoalescedWriteDoesNotWaitForAHungOne(t *testing.T) {
	t.Parallel()
	c := setupChunk(t, nil)
	q := &hangFirst{hanging: make(chan struct{}), release: make(chan struct{})}
	defer close(q.release)
	s := NewSubmitter(c.store, q, nil, maxAttempts).Coalesce()
	go s.Submit(context.Background(), singleMessage(0))
	<-q.hanging
	done := make(chan error, 1)
	go func() {
		_, err := s.Submit(context.Background(), singleMessage(1))
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(SubmitTimeout / 2):
		t.Fatal("a single message waited behind its group's hung write")
	}
}
