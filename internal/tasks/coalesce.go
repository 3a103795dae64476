package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/oklog/ulid/v2"

	"github.com/wxpush/wxpush/internal/delivery"
)

// coalescer turns concurrent single submissions into chunk tasks. Messages of
// one app and queue that arrive while that group's previous write is in
// flight wait for it to finish and then go together: their records in one
// pipelined round trip, one TypeChunk task per ChunkSize of them. A message
// that arrives alone goes alone at once, so it waits for no timer; under load
// the writes batch by themselves. A write that hangs holds the next one back
// for slowFlush at most. Each Submit returns only after its own record
// and its chunk task are stored.
//
// The records name their chunk ("solo-<ulid>.<n>", see delivery.ChunkID), as
// a batch's do, and no fanout task exists: the orphan sweep finds the chunk
// task and leaves them alone, or ends them canceled when it never came. An
// idempotent retry of a request lands in a chunk of its own and the chunks'
// claim rule decides which one sends (delivery.Store.BeginMany).
type coalescer struct {
	s      *Submitter
	mu     sync.Mutex
	groups map[groupKey]*group
}

type groupKey struct{ app, queue string }

// group is one app and queue's waiting submissions; writing says a flush loop
// runs for it.
type group struct {
	waiting []*waiter
	writing bool
}

type waiter struct {
	m    delivery.NewMessage
	done chan submitted
}

type submitted struct {
	state delivery.State
	err   error
}

// maxFlush bounds the messages one flush writes: four chunk tasks.
const maxFlush = 4 * ChunkSize

func newCoalescer(s *Submitter) *coalescer {
	return &coalescer{s: s, groups: map[groupKey]*group{}}
}

// submit stores m in a chunk task with whichever messages of its group wait
// with it, and returns once they are durable (or failed).
func (c *coalescer) submit(m delivery.NewMessage) (delivery.State, error) {
	w := &waiter{m: m, done: make(chan submitted, 1)}
	k := groupKey{m.App, m.Queue}
	c.mu.Lock()
	g := c.groups[k]
	if g == nil {
		g = &group{}
		c.groups[k] = g
	}
	g.waiting = append(g.waiting, w)
	lead := !g.writing
	g.writing = true
	c.mu.Unlock()
	if lead {
		go c.flushLoop(k, g)
	}
	r := <-w.done
	return r.state, r.err
}

// slowFlush is how long a group's next write waits for the one in flight. A
// write that takes longer (Redis is down and its task's enqueue is being
// retried, see Submitter.commit) no longer holds the messages behind it: they
// go in a write of their own, which answers them (503) as soon as it fails.
const slowFlush = 50 * time.Millisecond

// flushLoop writes the group's waiting messages until none wait.
func (c *coalescer) flushLoop(k groupKey, g *group) {
	for {
		c.mu.Lock()
		n := min(len(g.waiting), maxFlush)
		if n == 0 {
			g.writing = false
			delete(c.groups, k)
			c.mu.Unlock()
			return
		}
		ws := g.waiting[:n:n]
		g.waiting = g.waiting[n:]
		c.mu.Unlock()
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.flush(ws)
		}()
		t := time.NewTimer(slowFlush)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
	}
}

// flush writes ws's records in one round trip and their chunk tasks side by
// side, and answers each waiter. The write is bounded by SubmitTimeout, not by
// any one request's context: the others share it.
func (c *coalescer) flush(ws []*waiter) {
	ctx, cancel := context.WithTimeout(context.Background(), SubmitTimeout)
	defer cancel()
	solo := "solo-" + ulid.Make().String()
	ms := make([]delivery.NewMessage, len(ws))
	for i, w := range ws {
		ms[i] = w.m
		ms[i].Fanout = delivery.ChunkID(solo, i/ChunkSize)
	}
	created, err := c.s.records.CreateBatch(ctx, ms)
	if err != nil {
		for _, w := range ws {
			w.done <- submitted{err: err}
		}
		return
	}
	var wg sync.WaitGroup
	for start := 0; start < len(ws); start += ChunkSize {
		end := min(start+ChunkSize, len(ws))
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.commitChunk(ctx, ms[start].Fanout, ws[start:end], ms[start:end], created[start:end])
		}()
	}
	wg.Wait()
}

// commitChunk enqueues the chunk task of ms and answers their waiters. A
// message whose record exists (a retry of its request) goes in the chunk too;
// one refused (a full backlog) is answered with its refusal.
func (c *coalescer) commitChunk(ctx context.Context, chunk string, ws []*waiter, ms []delivery.NewMessage, created []delivery.Created) {
	p := chunkPayload{ID: chunk, Queue: ms[0].Queue, App: ms[0].App}
	var in []int       // indexes of the messages in the chunk
	var fresh []string // ids this call created, to undo if the task fails
	for i, cr := range created {
		switch {
		case errors.Is(cr.Err, delivery.ErrExists):
		case cr.Err != nil:
			ws[i].done <- submitted{err: cr.Err}
			continue
		default:
			fresh = append(fresh, ms[i].ID)
		}
		p.Items = append(p.Items, chunkItem{ID: ms[i].ID, To: ms[i].To})
		in = append(in, i)
	}
	if len(in) == 0 {
		return
	}
	b, _ := json.Marshal(p) // strings cannot fail
	err := c.s.commit(ctx, asynq.NewTask(TypeChunk, b),
		asynq.TaskID(chunk), asynq.Queue(p.Queue), asynq.MaxRetry(chunkMaxRetry), asynq.Timeout(attemptTimeout))
	if err != nil {
		err = c.s.undo(ctx, fmt.Errorf("tasks: enqueue chunk: %w", err), fresh...)
	}
	for _, i := range in {
		if err != nil {
			ws[i].done <- submitted{err: err}
		} else {
			ws[i].done <- submitted{state: created[i].State}
		}
	}
}
