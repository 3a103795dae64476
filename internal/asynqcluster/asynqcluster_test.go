package asynqcluster_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/redistest"
)

// wxpush's queues and weights (tasks.QueueWeights), repeated here so that this
// package depends on asynq and redistest only.
const (
	qHigh   = "high"
	qNormal = "normal"
	qLow    = "low"
)

var weights = map[string]int{qHigh: 6, qNormal: 3, qLow: 1}

// crashWorkerEnv makes the test binary a doomed asynq worker (see
// runCrashWorker) instead of running tests.
const crashWorkerEnv = "ASYNQCLUSTER_CRASH_WORKER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(crashWorkerEnv); spec != "" {
		os.Exit(runCrashWorker(spec))
	}
	os.Exit(m.Run())
}

// env is one test's cluster with an asynq Client and Inspector on it.
type env struct {
	t       *testing.T
	cluster *redistest.Cluster
	opt     asynq.RedisClusterClientOpt
	rc      *redis.ClusterClient
	client  *asynq.Client
	insp    *asynq.Inspector
	log     *logSink
}

func newEnv(t *testing.T) *env {
	t.Helper()
	c := redistest.StartCluster(t, 3)
	e := &env{t: t, cluster: c, opt: asynq.RedisClusterClientOpt{Addrs: c.Addrs()}, rc: c.Client(t), log: &logSink{}}
	// Registered before any Server's Shutdown, so it runs after them: whatever
	// asynq's background parts (heartbeat, forwarder, recoverer, janitor,
	// syncer, subscriber) logged at warning level or above fails the test, as a
	// CROSSSLOT there would surface only in the log.
	t.Cleanup(func() {
		var bad []string
		for _, l := range e.log.lines() {
			if !slices.ContainsFunc(benignWarnings, func(p string) bool { return strings.HasPrefix(l, p) }) {
				bad = append(bad, l)
			}
		}
		if len(bad) > 0 {
			t.Errorf("asynq logged warnings or errors:\n%s", strings.Join(bad, "\n"))
		}
	})
	e.client = asynq.NewClient(e.opt)
	t.Cleanup(func() { _ = e.client.Close() })
	e.insp = asynq.NewInspector(e.opt)
	t.Cleanup(func() { _ = e.insp.Close() })
	return e
}

// serve starts an asynq Server over the cluster, shut down in t.Cleanup.
// Unset intervals default to short ones so that tests do not wait for asynq.
func (e *env) serve(cfg asynq.Config, h asynq.Handler) *asynq.Server {
	e.t.Helper()
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 4
	}
	if cfg.TaskCheckInterval == 0 {
		cfg.TaskCheckInterval = 20 * time.Millisecond
	}
	if cfg.DelayedTaskCheckInterval == 0 {
		cfg.DelayedTaskCheckInterval = 100 * time.Millisecond
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 2 * time.Second
	}
	cfg.Logger, cfg.LogLevel = e.log, asynq.WarnLevel
	srv := asynq.NewServer(e.opt, cfg)
	if err := srv.Start(h); err != nil {
		e.t.Fatalf("asynq Server.Start: %v", err)
	}
	e.t.Cleanup(srv.Shutdown)
	return srv
}

func (e *env) enqueue(task *asynq.Task, opts ...asynq.Option) *asynq.TaskInfo {
	e.t.Helper()
	info, err := e.client.Enqueue(task, opts...)
	if err != nil {
		e.t.Fatalf("Enqueue(%s): %v", task.Type(), err)
	}
	return info
}

func (e *env) queueInfo(q string) *asynq.QueueInfo {
	e.t.Helper()
	info, err := e.insp.GetQueueInfo(q)
	if err != nil {
		e.t.Fatalf("GetQueueInfo(%s): %v", q, err)
	}
	return info
}

func (e *env) taskInfo(q, id string) *asynq.TaskInfo {
	e.t.Helper()
	info, err := e.insp.GetTaskInfo(q, id)
	if err != nil {
		e.t.Fatalf("GetTaskInfo(%s, %s): %v", q, id, err)
	}
	return info
}

// waitState waits until task id in q is in state want.
func (e *env) waitState(q, id string, want asynq.TaskState) *asynq.TaskInfo {
	e.t.Helper()
	var info *asynq.TaskInfo
	waitFor(e.t, fmt.Sprintf("task %s in %s to be %v", id, q, want), func() bool {
		var err error
		info, err = e.insp.GetTaskInfo(q, id)
		return err == nil && info.State == want
	})
	return info
}

// waitGone waits until task id has been deleted from q (as Done does).
func (e *env) waitGone(q, id string) {
	e.t.Helper()
	waitFor(e.t, fmt.Sprintf("task %s in %s to be gone", id, q), func() bool {
		_, err := e.insp.GetTaskInfo(q, id)
		return errors.Is(err, asynq.ErrTaskNotFound)
	})
}

// ownerOf returns the address of the master that holds key.
func (e *env) ownerOf(key string) string {
	e.t.Helper()
	ctx := context.Background()
	slot, err := e.rc.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		e.t.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
	}
	shards, err := e.rc.ClusterShards(ctx).Result()
	if err != nil {
		e.t.Fatalf("CLUSTER SHARDS: %v", err)
	}
	for _, sh := range shards {
		for _, r := range sh.Slots {
			if r.Start <= slot && slot <= r.End {
				return net.JoinHostPort(sh.Nodes[0].IP, strconv.FormatInt(sh.Nodes[0].Port, 10))
			}
		}
	}
	e.t.Fatalf("no node owns slot %d", slot)
	return ""
}

// keysByNode returns every asynq key, keyed by the address of the node holding it.
func (e *env) keysByNode() map[string][]string {
	e.t.Helper()
	out := map[string][]string{}
	for _, n := range e.cluster.Nodes() {
		keys, err := n.Client(e.t).Keys(context.Background(), "asynq:*").Result()
		if err != nil {
			e.t.Fatalf("%s: KEYS: %v", n.Addr(), err)
		}
		slices.Sort(keys)
		out[n.Addr()] = keys
	}
	return out
}

// recorder is a handler that records which tasks it ran, and how often.
type recorder struct {
	mu    sync.Mutex
	runs  map[string]int // task id -> runs
	order []string       // task ids, in the order their runs started
	fn    func(ctx context.Context, t *asynq.Task, run int) error
}

func newRecorder(fn func(ctx context.Context, t *asynq.Task, run int) error) *recorder {
	return &recorder{runs: map[string]int{}, fn: fn}
}

func (r *recorder) ProcessTask(ctx context.Context, t *asynq.Task) error {
	id, _ := asynq.GetTaskID(ctx)
	r.mu.Lock()
	r.runs[id]++
	run := r.runs[id]
	r.order = append(r.order, id)
	r.mu.Unlock()
	if r.fn == nil {
		return nil
	}
	return r.fn(ctx, t, run)
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runs[id]
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.order)
}

func (r *recorder) ran() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.order)
}

// waitRuns waits until task id has run n times.
func (r *recorder) waitRuns(t *testing.T, id string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("task %s to run %d time(s)", id, n), func() bool { return r.count(id) >= n })
}

// benignWarnings are what asynq logs at warning level when things go as the
// tests intend.
var benignWarnings = []string{
	"WARN: Retry exhausted for task id=", // a task archived after its last retry
	"WARN: Quitting worker. task id=",    // Shutdown abandoning a handler after ShutdownTimeout
}

// logSink is an asynq Logger that keeps warnings and errors.
type logSink struct {
	mu  sync.Mutex
	buf []string
}

func (l *logSink) add(level string, args []any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, level+": "+fmt.Sprint(args...))
}

func (l *logSink) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.buf)
}

func (l *logSink) Debug(...any)      {}
func (l *logSink) Info(...any)       {}
func (l *logSink) Warn(args ...any)  { l.add("WARN", args) }
func (l *logSink) Error(args ...any) { l.add("ERROR", args) }
func (l *logSink) Fatal(args ...any) { l.add("FATAL", args) }

// waitTimeout bounds every wait; asynq here polls every 20-100 ms.
const waitTimeout = 15 * time.Second

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func task(typ, payload string) *asynq.Task { return asynq.NewTask(typ, []byte(payload)) }

// TestEnqueueAndProcessAcrossQueues: every enqueue flavour wxpush uses or
// might use, into wxpush's three weighted queues, is processed by one Server;
// conflicts and duplicates are reported with asynq's sentinel errors; every key
// of a queue sits on that queue's master.
func TestEnqueueAndProcessAcrossQueues(t *testing.T) {
	t.Parallel()
	e := newEnv(t)

	want := map[string]int{} // queue -> tasks that must be processed
	var ids []string
	add := func(q string, info *asynq.TaskInfo) {
		want[q]++
		ids = append(ids, info.ID)
	}
	for _, q := range []string{qHigh, qNormal, qLow} {
		for i := range 5 {
			info := e.enqueue(task("plain", fmt.Sprintf("%s-%d", q, i)), asynq.Queue(q))
			if info.State != asynq.TaskStatePending || info.Queue != q {
				t.Fatalf("Enqueue into %s: state %v queue %q, want pending in %s", q, info.State, info.Queue, q)
			}
			add(q, info)
		}
	}

	// Scheduled (ProcessIn): scheduleCmd.
	sched := e.enqueue(task("scheduled", "s"), asynq.Queue(qNormal), asynq.ProcessIn(time.Second))
	if sched.State != asynq.TaskStateScheduled {
		t.Fatalf("ProcessIn: state %v, want scheduled", sched.State)
	}
	add(qNormal, sched)

	// TaskID, as wxpush enqueues every delivery: a second task with the same
	// id in the same queue is refused, immediate or scheduled.
	byID := e.enqueue(task("by-id", "a"), asynq.Queue(qHigh), asynq.TaskID("msg-1"))
	add(qHigh, byID)
	for _, opts := range [][]asynq.Option{
		{asynq.Queue(qHigh), asynq.TaskID("msg-1")},
		{asynq.Queue(qHigh), asynq.TaskID("msg-1"), asynq.ProcessIn(time.Hour)},
	} {
		if _, err := e.client.Enqueue(task("by-id", "b"), opts...); !errors.Is(err, asynq.ErrTaskIDConflict) {
			t.Errorf("second Enqueue with TaskID msg-1: err = %v, want ErrTaskIDConflict", err)
		}
	}
	schedByID := e.enqueue(task("by-id", "c"), asynq.Queue(qLow), asynq.TaskID("msg-2"), asynq.ProcessIn(time.Second))
	add(qLow, schedByID)
	if _, err := e.client.Enqueue(task("by-id", "d"), asynq.Queue(qLow), asynq.TaskID("msg-2")); !errors.Is(err, asynq.ErrTaskIDConflict) {
		t.Errorf("Enqueue with the TaskID of a scheduled task: err = %v, want ErrTaskIDConflict", err)
	}

	// Unique: enqueueUniqueCmd / scheduleUniqueCmd; the lock key
	// asynq:{low}:unique:… shares the queue's hash tag.
	uniq := e.enqueue(task("unique", "u"), asynq.Queue(qLow), asynq.Unique(time.Minute))
	add(qLow, uniq)
	if _, err := e.client.Enqueue(task("unique", "u"), asynq.Queue(qLow), asynq.Unique(time.Minute)); !errors.Is(err, asynq.ErrDuplicateTask) {
		t.Errorf("second Unique Enqueue: err = %v, want ErrDuplicateTask", err)
	}
	uniqSched := e.enqueue(task("unique", "v"), asynq.Queue(qLow), asynq.Unique(time.Minute), asynq.ProcessIn(time.Second))
	add(qLow, uniqSched)
	if _, err := e.client.Enqueue(task("unique", "v"), asynq.Queue(qLow), asynq.Unique(time.Minute), asynq.ProcessIn(time.Second)); !errors.Is(err, asynq.ErrDuplicateTask) {
		t.Errorf("second scheduled Unique Enqueue: err = %v, want ErrDuplicateTask", err)
	}

	// Retention: markAsCompleteCmd keeps the task as completed.
	kept := e.enqueue(task("kept", "k"), asynq.Queue(qNormal), asynq.Retention(time.Hour))
	add(qNormal, kept)

	// Before any Server: the Inspector sees what was enqueued.
	if qs, err := e.insp.Queues(); err != nil || !sameSet(qs, []string{qHigh, qNormal, qLow}) {
		t.Fatalf("Inspector.Queues() = %v, %v; want high, normal, low", qs, err)
	}
	if n := e.queueInfo(qLow).Scheduled; n != 2 {
		t.Errorf("low: Scheduled = %d before processing, want 2", n)
	}

	rec := newRecorder(nil)
	e.serve(asynq.Config{Queues: weights}, rec)
	for _, id := range ids {
		rec.waitRuns(t, id, 1)
	}

	// Done released the unique lock (doneUniqueCmd): the same task is
	// accepted again.
	e.waitGone(qLow, uniq.ID)
	again := e.enqueue(task("unique", "u"), asynq.Queue(qLow), asynq.Unique(time.Minute))
	add(qLow, again)
	rec.waitRuns(t, again.ID, 1)

	if info := e.waitState(qNormal, kept.ID, asynq.TaskStateCompleted); info.CompletedAt.IsZero() {
		t.Errorf("retained task: CompletedAt is zero")
	}
	for _, id := range ids {
		if n := rec.count(id); n != 1 {
			t.Errorf("task %s ran %d times, want 1", id, n)
		}
	}
	if n, w := rec.total(), len(ids); n != w {
		t.Errorf("handler ran %d times, want %d", n, w)
	}
	for q, n := range want {
		var info *asynq.QueueInfo
		waitFor(t, q+" stats to settle", func() bool {
			info = e.queueInfo(q)
			return info.Processed == n
		})
		if info.Pending+info.Active+info.Scheduled+info.Retry+info.Archived != 0 || info.Failed != 0 || info.ProcessedTotal != n {
			t.Errorf("%s: %+v, want %d processed and nothing left", q, *info, n)
		}
		if wantDone := map[string]int{qNormal: 1}[q]; info.Completed != wantDone {
			t.Errorf("%s: Completed = %d, want %d", q, info.Completed, wantDone)
		}
	}

	// Where the keys are: every key of a queue on that queue's master, and
	// only these global keys outside the queues.
	owners := map[string]string{}
	for _, q := range []string{qHigh, qNormal, qLow} {
		owners[q] = e.ownerOf("asynq:{" + q + "}:pending")
	}
	globals := map[string]bool{}
	for node, keys := range e.keysByNode() {
		for _, k := range keys {
			if q, ok := queueOfKey(k); ok {
				if owners[q] != node {
					t.Errorf("key %s is on %s, want on %s with the rest of queue %s", k, node, owners[q], q)
				}
				continue
			}
			if e.ownerOf(k) != node {
				t.Errorf("key %s is on %s, not on its slot's master", k, node)
			}
			// asynq:servers:{host:pid:uuid} -> asynq:servers:{…}
			if i := strings.IndexByte(k, '{'); i >= 0 {
				k = k[:i] + "{…}"
			}
			globals[k] = true
		}
	}
	gotGlobals := slices.Sorted(maps.Keys(globals))
	// asynq:workers:{…} exists only while the server has a task in hand.
	wantGlobals := []string{"asynq:queues", "asynq:servers", "asynq:servers:{…}", "asynq:workers"}
	gotGlobals = slices.DeleteFunc(gotGlobals, func(k string) bool { return k == "asynq:workers:{…}" })
	if !slices.Equal(gotGlobals, wantGlobals) {
		t.Errorf("keys outside any queue: %v, want %v (and asynq:workers:{…})", gotGlobals, wantGlobals)
	}
	// CRC16 puts wxpush's queues in slots that redis-cli's even three-way
	// split (0-5460, 5461-10922, 10923-16383) gives to three different masters.
	for q, want := range map[string]int64{qHigh: 9976, qNormal: 136, qLow: 15214} {
		if got := slotOf(t, e, q); got != want {
			t.Errorf("slot of queue %s = %d, want %d", q, got, want)
		}
	}
	if owners[qHigh] == owners[qNormal] || owners[qNormal] == owners[qLow] || owners[qHigh] == owners[qLow] {
		t.Errorf("queue masters %v, want three different masters", owners)
	}
	t.Logf("queue masters: high %s (slot %d), normal %s (slot %d), low %s (slot %d); asynq:queues on %s, asynq:servers on %s, asynq:workers on %s",
		owners[qHigh], slotOf(t, e, qHigh), owners[qNormal], slotOf(t, e, qNormal), owners[qLow], slotOf(t, e, qLow),
		e.ownerOf("asynq:queues"), e.ownerOf("asynq:servers"), e.ownerOf("asynq:workers"))
}

func slotOf(t *testing.T, e *env, q string) int64 {
	t.Helper()
	slot, err := e.insp.ClusterKeySlot(q)
	if err != nil {
		t.Fatalf("Inspector.ClusterKeySlot(%s): %v", q, err)
	}
	return slot
}

// queueOfKey returns the queue of a per-queue key, asynq:{<queue>}:….
func queueOfKey(k string) (string, bool) {
	rest, ok := strings.CutPrefix(k, "asynq:{")
	if !ok {
		return "", false
	}
	q, _, ok := strings.Cut(rest, "}:")
	return q, ok
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestStrictPriorityAcrossMasters: with StrictPriority and one worker, the
// Server drains high, then normal, then low, though the three queues live on
// different masters (Dequeue runs one script per queue, in order).
func TestStrictPriorityAcrossMasters(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	queueOf := map[string]string{}
	for _, q := range []string{qLow, qNormal, qHigh} {
		for i := range 4 {
			info := e.enqueue(task("plain", fmt.Sprintf("%s-%d", q, i)), asynq.Queue(q))
			queueOf[info.ID] = q
		}
	}
	rec := newRecorder(nil)
	e.serve(asynq.Config{Concurrency: 1, Queues: weights, StrictPriority: true}, rec)
	waitFor(t, "12 tasks to run", func() bool { return rec.total() == 12 })
	var got []string
	for _, id := range rec.ran() {
		got = append(got, queueOf[id])
	}
	want := []string{qHigh, qHigh, qHigh, qHigh, qNormal, qNormal, qNormal, qNormal, qLow, qLow, qLow, qLow}
	if !slices.Equal(got, want) {
		t.Errorf("queues in processing order: %v, want %v", got, want)
	}
}

var errBoom = errors.New("boom")

// errLater is an error that IsFailure does not count (as wxpush's retryAfter).
type errLater struct{}

func (errLater) Error() string { return "later" }

// TestRetry: a failed task goes to the retry set with the error and a
// retry count, is listed by ListRetryTasks, and runs again once
// RetryDelayFunc's delay has passed (retryCmd, then forwardCmd). An error
// that IsFailure rejects is retried without counting as a failure.
func TestRetry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rec := newRecorder(func(_ context.Context, tk *asynq.Task, run int) error {
		if run > 1 {
			return nil
		}
		if tk.Type() == "later" {
			return errLater{}
		}
		return errBoom
	})
	e.serve(asynq.Config{
		Queues: weights,
		// Long enough to see the task sit in the retry set, short enough
		// for the test.
		RetryDelayFunc: func(int, error, *asynq.Task) time.Duration { return 1500 * time.Millisecond },
		IsFailure:      func(err error) bool { return !errors.As(err, new(errLater)) },
	}, rec)

	failing := e.enqueue(task("boom", "1"), asynq.Queue(qNormal), asynq.MaxRetry(3))
	later := e.enqueue(task("later", "2"), asynq.Queue(qNormal), asynq.MaxRetry(3))

	info := e.waitState(qNormal, failing.ID, asynq.TaskStateRetry)
	if info.Retried != 1 || info.LastErr != errBoom.Error() || info.NextProcessAt.Before(time.Now()) {
		t.Errorf("failed task in retry: retried %d, last error %q, next at %v; want 1, %q, in the future",
			info.Retried, info.LastErr, info.NextProcessAt, errBoom)
	}
	laterInfo := e.waitState(qNormal, later.ID, asynq.TaskStateRetry)
	if laterInfo.Retried != 0 || laterInfo.LastErr != "later" {
		t.Errorf("not-a-failure task in retry: retried %d, last error %q; want 0, \"later\"", laterInfo.Retried, laterInfo.LastErr)
	}
	listed, err := e.insp.ListRetryTasks(qNormal)
	if err != nil {
		t.Fatalf("ListRetryTasks: %v", err)
	}
	if got := taskIDs(listed); !sameSet(got, []string{failing.ID, later.ID}) {
		t.Errorf("ListRetryTasks = %v, want %v", got, []string{failing.ID, later.ID})
	}
	if q := e.queueInfo(qNormal); q.Retry != 2 || q.Failed != 1 {
		t.Errorf("normal while retrying: Retry %d Failed %d, want 2 and 1", q.Retry, q.Failed)
	}

	rec.waitRuns(t, failing.ID, 2)
	rec.waitRuns(t, later.ID, 2)
	e.waitGone(qNormal, failing.ID)
	e.waitGone(qNormal, later.ID)
	// retryCmd counts a failure as processed and failed; a non-failure not at all.
	waitFor(t, "normal stats", func() bool {
		q := e.queueInfo(qNormal)
		return q.Processed == 3 && q.Failed == 1 && q.Retry == 0 && q.Pending == 0
	})
}

func taskIDs(infos []*asynq.TaskInfo) []string {
	var ids []string
	for _, i := range infos {
		ids = append(ids, i.ID)
	}
	return ids
}

// TestArchiveAndInspectorTaskOps: SkipRetry and exhausted retries archive
// (archiveCmd); the Inspector lists, runs, archives and deletes tasks in every
// state wxpush meets (runTaskCmd, archiveTaskCmd, deleteTaskCmd).
func TestArchiveAndInspectorTaskOps(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var fixed sync.Map // task id -> true: the handler now succeeds
	rec := newRecorder(func(ctx context.Context, tk *asynq.Task, _ int) error {
		id, _ := asynq.GetTaskID(ctx)
		if _, ok := fixed.Load(id); ok {
			return nil
		}
		switch tk.Type() {
		case "skip":
			return fmt.Errorf("bad payload: %w", asynq.SkipRetry)
		case "park":
			return errors.New("parked")
		}
		return errBoom
	})
	e.serve(asynq.Config{
		Queues: weights,
		RetryDelayFunc: func(_ int, _ error, tk *asynq.Task) time.Duration {
			if tk.Type() == "park" {
				return time.Hour
			}
			return 0
		},
	}, rec)

	skip := e.enqueue(task("skip", "1"), asynq.Queue(qHigh), asynq.MaxRetry(5))
	exhaust := e.enqueue(task("fail", "2"), asynq.Queue(qHigh), asynq.MaxRetry(1))
	info := e.waitState(qHigh, skip.ID, asynq.TaskStateArchived)
	if info.Retried != 0 || !strings.Contains(info.LastErr, "bad payload") || rec.count(skip.ID) != 1 {
		t.Errorf("SkipRetry task: retried %d, last error %q, runs %d; want 0, bad payload…, 1", info.Retried, info.LastErr, rec.count(skip.ID))
	}
	info = e.waitState(qHigh, exhaust.ID, asynq.TaskStateArchived)
	if info.Retried != 1 || info.LastErr != errBoom.Error() || rec.count(exhaust.ID) != 2 {
		t.Errorf("exhausted task: retried %d, last error %q, runs %d; want 1, %q, 2", info.Retried, info.LastErr, rec.count(exhaust.ID), errBoom)
	}
	archived, err := e.insp.ListArchivedTasks(qHigh)
	if err != nil {
		t.Fatalf("ListArchivedTasks: %v", err)
	}
	if got := taskIDs(archived); !sameSet(got, []string{skip.ID, exhaust.ID}) {
		t.Errorf("ListArchivedTasks = %v, want %v", got, []string{skip.ID, exhaust.ID})
	}

	// RunTask on an archived task: it runs again (and now succeeds).
	fixed.Store(skip.ID, true)
	if err := e.insp.RunTask(qHigh, skip.ID); err != nil {
		t.Fatalf("RunTask(archived): %v", err)
	}
	rec.waitRuns(t, skip.ID, 2)
	e.waitGone(qHigh, skip.ID)
	// DeleteTask on an archived task.
	if err := e.insp.DeleteTask(qHigh, exhaust.ID); err != nil {
		t.Fatalf("DeleteTask(archived): %v", err)
	}
	if _, err := e.insp.GetTaskInfo(qHigh, exhaust.ID); !errors.Is(err, asynq.ErrTaskNotFound) {
		t.Errorf("GetTaskInfo after DeleteTask: err = %v, want ErrTaskNotFound", err)
	}

	// A task parked in the retry set for an hour: RunTask takes it out now
	// (what wxpush's ListRetryTasks + RunTask do), DeleteTask removes another.
	park := e.enqueue(task("park", "3"), asynq.Queue(qLow), asynq.MaxRetry(5))
	park2 := e.enqueue(task("park", "4"), asynq.Queue(qLow), asynq.MaxRetry(5), asynq.Unique(time.Hour))
	e.waitState(qLow, park.ID, asynq.TaskStateRetry)
	e.waitState(qLow, park2.ID, asynq.TaskStateRetry)
	fixed.Store(park.ID, true)
	if err := e.insp.RunTask(qLow, park.ID); err != nil {
		t.Fatalf("RunTask(retry): %v", err)
	}
	rec.waitRuns(t, park.ID, 2)
	e.waitGone(qLow, park.ID)
	if err := e.insp.DeleteTask(qLow, park2.ID); err != nil {
		t.Fatalf("DeleteTask(retry): %v", err)
	}
	// deleteTaskCmd released the unique lock with the task.
	e.enqueue(task("park", "4"), asynq.Queue(qLow), asynq.Unique(time.Hour), asynq.ProcessIn(time.Hour))

	// Scheduled and pending tasks: ArchiveTask, then RunTask or DeleteTask.
	// "idle" is served by no Server, so its pending task stays pending.
	sched := e.enqueue(task("ok", "5"), asynq.Queue(qNormal), asynq.ProcessIn(time.Hour))
	pending := e.enqueue(task("ok", "6"), asynq.Queue("idle"))
	if got := e.taskInfo("idle", pending.ID).State; got != asynq.TaskStatePending {
		t.Fatalf("idle task: state %v, want pending", got)
	}
	for _, tc := range []struct{ q, id string }{{qNormal, sched.ID}, {"idle", pending.ID}} {
		if err := e.insp.ArchiveTask(tc.q, tc.id); err != nil {
			t.Fatalf("ArchiveTask(%s, %s): %v", tc.q, tc.id, err)
		}
		e.waitState(tc.q, tc.id, asynq.TaskStateArchived)
	}
	fixed.Store(sched.ID, true)
	if err := e.insp.RunTask(qNormal, sched.ID); err != nil {
		t.Fatalf("RunTask(archived, was scheduled): %v", err)
	}
	rec.waitRuns(t, sched.ID, 1)
	if err := e.insp.DeleteTask("idle", pending.ID); err != nil {
		t.Fatalf("DeleteTask(archived, was pending): %v", err)
	}
	if q := e.queueInfo("idle"); q.Size != 0 {
		t.Errorf("idle: Size = %d after DeleteTask, want 0", q.Size)
	}
	// Errors are asynq's sentinels, not Redis errors.
	if err := e.insp.RunTask(qNormal, "no-such-task"); !errors.Is(err, asynq.ErrTaskNotFound) {
		t.Errorf("RunTask(missing): err = %v, want ErrTaskNotFound", err)
	}
	if err := e.insp.DeleteTask("no-such-queue", "x"); !errors.Is(err, asynq.ErrQueueNotFound) {
		t.Errorf("DeleteTask(missing queue): err = %v, want ErrQueueNotFound", err)
	}
	if q := e.queueInfo(qHigh); q.Archived != 0 || q.Failed != 3 || q.Processed != 4 {
		t.Errorf("high: Archived %d Failed %d Processed %d, want 0, 3, 4", q.Archived, q.Failed, q.Processed)
	}
}

// TestQueueAdminOps: what asynqmon's writable UI does besides single tasks:
// bulk archive, run and delete (archiveAllPendingCmd, archiveAllCmd, runAllCmd,
// deleteAllPendingCmd), pause and resume (dequeueCmd skips a paused queue) and
// DeleteQueue (removeQueueForceCmd).
func TestQueueAdminOps(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const q = "admin"
	for i := range 3 {
		e.enqueue(task("x", fmt.Sprint(i)), asynq.Queue(q))
		e.enqueue(task("x", fmt.Sprint(i)), asynq.Queue(q), asynq.ProcessIn(time.Hour))
	}
	for _, op := range []struct {
		name string
		fn   func(string) (int, error)
		want int
	}{
		{"ArchiveAllPendingTasks", e.insp.ArchiveAllPendingTasks, 3},
		{"ArchiveAllScheduledTasks", e.insp.ArchiveAllScheduledTasks, 3},
		{"RunAllArchivedTasks", e.insp.RunAllArchivedTasks, 6},
		{"DeleteAllPendingTasks", e.insp.DeleteAllPendingTasks, 6},
	} {
		if n, err := op.fn(q); err != nil || n != op.want {
			t.Errorf("%s(%s) = %d, %v; want %d", op.name, q, n, err, op.want)
		}
	}
	if info := e.queueInfo(q); info.Size != 0 {
		t.Errorf("%s after the bulk ops: Size = %d, want 0", q, info.Size)
	}

	if err := e.insp.PauseQueue(q); err != nil {
		t.Fatalf("PauseQueue: %v", err)
	}
	rec := newRecorder(nil)
	e.serve(asynq.Config{Queues: map[string]int{q: 1}}, rec)
	paused := e.enqueue(task("x", "p"), asynq.Queue(q))
	time.Sleep(300 * time.Millisecond) // 15 of the Server's 20 ms polls
	if n := rec.count(paused.ID); n != 0 || !e.queueInfo(q).Paused {
		t.Fatalf("task in a paused queue ran %d times (paused %v), want 0", n, e.queueInfo(q).Paused)
	}
	if err := e.insp.UnpauseQueue(q); err != nil {
		t.Fatalf("UnpauseQueue: %v", err)
	}
	rec.waitRuns(t, paused.ID, 1)
	e.waitGone(q, paused.ID)

	e.enqueue(task("x", "left"), asynq.Queue(q), asynq.ProcessIn(time.Hour))
	if err := e.insp.DeleteQueue(q, true); err != nil {
		t.Fatalf("DeleteQueue(%s, force): %v", q, err)
	}
	if qs, err := e.insp.Queues(); err != nil || slices.Contains(qs, q) {
		t.Errorf("Queues() after DeleteQueue = %v, %v; want no %s", qs, err, q)
	}
	for node, keys := range e.keysByNode() {
		for _, k := range keys {
			if strings.HasPrefix(k, "asynq:{"+q+"}:t:") {
				t.Errorf("task key %s left on %s after DeleteQueue", k, node)
			}
		}
	}
}

// TestInspectorStatsAndAsynqmon: the read side wxpush's metrics and UI use
// (GetQueueInfo with its MEMORY USAGE script, Queues, History, Servers,
// ClusterKeySlot, ClusterNodes) and asynqmon's JSON API on a cluster.
func TestInspectorStatsAndAsynqmon(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	release := make(chan struct{})
	rec := newRecorder(func(ctx context.Context, tk *asynq.Task, _ int) error {
		if tk.Type() == "block" {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return nil
	})
	for i := range 3 {
		e.enqueue(task("ok", fmt.Sprint(i)), asynq.Queue(qHigh))
	}
	for i := range 5 {
		e.enqueue(task("ok", fmt.Sprint(i)), asynq.Queue("idle"))
	}
	e.serve(asynq.Config{Queues: weights}, rec)
	t.Cleanup(func() { close(release) })
	blocked := e.enqueue(task("block", "b"), asynq.Queue(qLow))
	e.waitState(qLow, blocked.ID, asynq.TaskStateActive)
	rec.waitRuns(t, blocked.ID, 1)
	waitFor(t, "3 high tasks", func() bool { return e.queueInfo(qHigh).Processed == 3 })

	idle := e.queueInfo("idle")
	if idle.Pending != 5 || idle.Size != 5 || idle.MemoryUsage <= 0 || idle.Latency <= 0 {
		t.Errorf("idle: %+v, want 5 pending, memory and latency > 0", *idle)
	}
	if low := e.queueInfo(qLow); low.Active != 1 {
		t.Errorf("low: Active = %d, want 1", low.Active)
	}
	hist, err := e.insp.History(qHigh, 3)
	if err != nil || len(hist) != 3 || hist[0].Processed != 3 || hist[1].Processed != 0 {
		t.Errorf("History(high, 3) = %+v, %v; want 3 days, today 3 processed", hist, err)
	}
	// Not the ErrQueueNotFound sentinel (GetQueueInfo does not translate
	// asynq's internal error), on a cluster as on one Redis.
	if _, err := e.insp.GetQueueInfo("no-such-queue"); err == nil || !strings.Contains(err.Error(), `queue "no-such-queue" does not exist`) {
		t.Errorf("GetQueueInfo(missing): err = %v, want queue \"no-such-queue\" does not exist", err)
	}

	// Servers reads asynq:servers, then each server's key and its workers'.
	var servers []*asynq.ServerInfo
	waitFor(t, "one server with one active worker", func() bool {
		servers, err = e.insp.Servers()
		return err == nil && len(servers) == 1 && len(servers[0].ActiveWorkers) == 1
	})
	if s := servers[0]; !maps.Equal(s.Queues, weights) || s.ActiveWorkers[0].TaskID != blocked.ID {
		t.Errorf("Servers()[0]: queues %v, active %v; want %v and task %s", s.Queues, s.ActiveWorkers[0], weights, blocked.ID)
	}

	// ClusterKeySlot and ClusterNodes place each queue on one master.
	for _, q := range []string{qHigh, qNormal, qLow} {
		nodes, err := e.insp.ClusterNodes(q)
		if err != nil || len(nodes) != 1 || nodes[0].Addr != e.ownerOf("asynq:{"+q+"}:t:x") {
			t.Errorf("ClusterNodes(%s) = %v, %v; want the one master of asynq:{%s}", q, nodes, err, q)
		}
	}

	// asynqmon, as wxpush mounts it (read-only), with a cluster client.
	mon := asynqmon.New(asynqmon.Options{RootPath: "/ui", RedisConnOpt: e.opt, ReadOnly: true})
	t.Cleanup(func() { _ = mon.Close() })
	srv := httptest.NewServer(mon)
	t.Cleanup(srv.Close)

	var queues struct {
		Queues []struct {
			Queue     string `json:"queue"`
			Size      int    `json:"size"`
			Pending   int    `json:"pending"`
			Active    int    `json:"active"`
			Processed int    `json:"processed"`
		} `json:"queues"`
	}
	getJSON(t, srv.URL+"/ui/api/queues", &queues)
	got := map[string][3]int{}
	for _, q := range queues.Queues {
		got[q.Queue] = [3]int{q.Pending, q.Active, q.Processed}
	}
	wantQ := map[string][3]int{qHigh: {0, 0, 3}, qLow: {0, 1, 0}, "idle": {5, 0, 0}}
	if len(got) != len(wantQ) {
		t.Errorf("asynqmon /api/queues: %v, want %v ([pending active processed])", got, wantQ)
	}
	for q, w := range wantQ {
		if got[q] != w {
			t.Errorf("asynqmon /api/queues %s: %v, want %v ([pending active processed])", q, got[q], w)
		}
	}

	var info struct {
		Cluster        bool `json:"cluster"`
		QueueLocations []struct {
			Queue   string   `json:"queue"`
			KeySlot int64    `json:"keyslot"`
			Nodes   []string `json:"nodes"`
		} `json:"queue_locations"`
		Info map[string]string `json:"info"`
	}
	getJSON(t, srv.URL+"/ui/api/redis_info", &info)
	if !info.Cluster || info.Info["cluster_state"] != "ok" || len(info.QueueLocations) != 3 {
		t.Errorf("asynqmon /api/redis_info: cluster %v, state %q, %d queue locations; want true, ok, 3",
			info.Cluster, info.Info["cluster_state"], len(info.QueueLocations))
	}
	for _, l := range info.QueueLocations {
		if len(l.Nodes) != 1 || l.Nodes[0] != e.ownerOf("asynq:{"+l.Queue+"}:pending") || l.KeySlot != slotOf(t, e, l.Queue) {
			t.Errorf("asynqmon queue location %+v: want the slot and master of asynq:{%s}", l, l.Queue)
		}
	}

	var servs struct {
		Servers []struct {
			ActiveWorkers []struct {
				TaskID string `json:"task_id"`
			} `json:"active_workers"`
		} `json:"servers"`
	}
	getJSON(t, srv.URL+"/ui/api/servers", &servs)
	if len(servs.Servers) != 1 || len(servs.Servers[0].ActiveWorkers) != 1 || servs.Servers[0].ActiveWorkers[0].TaskID != blocked.ID {
		t.Errorf("asynqmon /api/servers = %+v, want one server running %s", servs, blocked.ID)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s (%v)", url, resp.StatusCode, body, err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", url, err, body)
	}
}

// TestCancelProcessing: Inspector.CancelProcessing reaches the running
// handler through pub/sub (asynq:cancel) on a cluster.
func TestCancelProcessing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	canceled := make(chan error, 1)
	rec := newRecorder(func(ctx context.Context, _ *asynq.Task, _ int) error {
		<-ctx.Done()
		canceled <- ctx.Err()
		return ctx.Err()
	})
	e.serve(asynq.Config{
		Queues:         weights,
		RetryDelayFunc: func(int, error, *asynq.Task) time.Duration { return time.Hour },
	}, rec)
	info := e.enqueue(task("block", "c"), asynq.Queue(qNormal), asynq.MaxRetry(3))
	rec.waitRuns(t, info.ID, 1)
	// The Server's subscription may not be in place yet: a message published
	// before it is lost, so publish until the handler sees it.
	deadline := time.Now().Add(waitTimeout)
	for {
		if err := e.insp.CancelProcessing(info.ID); err != nil {
			t.Fatalf("CancelProcessing: %v", err)
		}
		select {
		case err := <-canceled:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("handler's ctx.Err() = %v, want context.Canceled", err)
			}
			got := e.waitState(qNormal, info.ID, asynq.TaskStateRetry)
			if got.LastErr != context.Canceled.Error() {
				t.Errorf("canceled task: last error %q, want %q", got.LastErr, context.Canceled)
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("handler not canceled within %v", waitTimeout)
		}
	}
}

// TestShutdownRequeuesActiveTask: a Server shut down while a handler runs
// hands the task back to pending once ShutdownTimeout passes (requeueCmd), and
// the next Server runs it, with no retry counted.
func TestShutdownRequeuesActiveTask(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	first := newRecorder(func(ctx context.Context, _ *asynq.Task, _ int) error {
		<-ctx.Done()
		return ctx.Err()
	})
	srv := e.serve(asynq.Config{Queues: weights, ShutdownTimeout: 200 * time.Millisecond}, first)
	info := e.enqueue(task("slow", "s"), asynq.Queue(qHigh), asynq.MaxRetry(3))
	first.waitRuns(t, info.ID, 1)
	srv.Shutdown()
	got := e.taskInfo(qHigh, info.ID)
	if got.State != asynq.TaskStatePending || got.Retried != 0 {
		t.Fatalf("after Shutdown: state %v retried %d, want pending, 0", got.State, got.Retried)
	}

	var retries int
	second := newRecorder(func(ctx context.Context, _ *asynq.Task, _ int) error {
		retries, _ = asynq.GetRetryCount(ctx)
		return nil
	})
	e.serve(asynq.Config{Queues: weights}, second)
	second.waitRuns(t, info.ID, 1)
	e.waitGone(qHigh, info.ID)
	if retries != 0 {
		t.Errorf("requeued task ran with retry count %d, want 0", retries)
	}
}

// TestCrashedWorkerTaskRecovered: a worker process killed mid-task leaves the
// task active with a lease in asynq:{q}:lease; once the lease has long
// expired, a new Server's recoverer (listLeaseExpiredCmd, then retryCmd) puts
// it back and it runs again, counted as one failed attempt. Waiting for that in
// real time takes 60-120 s (lease 30 s + the recoverer's 30 s margin, checked at
// Server start and then every minute), so the test backdates the lease.
func TestCrashedWorkerTaskRecovered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	const q = qNormal
	info := e.enqueue(task("doomed", "d"), asynq.Queue(q), asynq.MaxRetry(3))

	// A worker in another process takes the task and never finishes it.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashWorkerEnv+"="+strings.Join(e.cluster.Addrs(), ",")+"|"+q)
	stdin, err := cmd.StdinPipe() // the worker exits when this closes, should the test die
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	started := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "running "); ok {
				started <- id
			}
		}
		close(started)
	}()
	select {
	case id, ok := <-started:
		if !ok || id != info.ID {
			t.Fatalf("worker reported %q (ok %v), want running %s; stderr:\n%s", id, ok, info.ID, stderr.String())
		}
	case <-time.After(waitTimeout):
		t.Fatalf("worker did not start the task within %v; stderr:\n%s", waitTimeout, stderr.String())
	}

	// Kill it: no Shutdown, no requeue.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if got := e.taskInfo(q, info.ID); got.State != asynq.TaskStateActive {
		t.Fatalf("after the crash: state %v, want active", got.State)
	}
	leaseKey := "asynq:{" + q + "}:lease"
	lease, err := e.rc.ZScore(ctx, leaseKey, info.ID).Result()
	if err != nil {
		t.Fatalf("ZSCORE %s: %v", leaseKey, err)
	}
	if until := time.Until(time.Unix(int64(lease), 0)); until < 20*time.Second || until > 31*time.Second {
		t.Errorf("lease expires in %v, want about 30 s", until)
	}
	// Pretend the crash was two minutes ago.
	if n, err := e.rc.ZAddXX(ctx, leaseKey, redis.Z{Score: float64(time.Now().Add(-2 * time.Minute).Unix()), Member: info.ID}).Result(); err != nil || n != 0 {
		t.Fatalf("backdate the lease: %d, %v", n, err)
	}

	var retries int
	rec := newRecorder(func(ctx context.Context, _ *asynq.Task, _ int) error {
		retries, _ = asynq.GetRetryCount(ctx)
		return nil
	})
	e.serve(asynq.Config{Queues: weights, RetryDelayFunc: func(int, error, *asynq.Task) time.Duration { return 0 }}, rec)
	rec.waitRuns(t, info.ID, 1)
	e.waitGone(q, info.ID)
	if retries != 1 {
		t.Errorf("recovered task ran with retry count %d, want 1", retries)
	}
	waitFor(t, q+" stats", func() bool {
		s := e.queueInfo(q)
		return s.Processed == 2 && s.Failed == 1 && s.Active == 0
	})
}

// runCrashWorker runs an asynq Server over the cluster in spec ("addr,addr|queue")
// whose handler announces the task on stdout and then blocks forever. It returns
// when stdin closes; the test normally SIGKILLs it first.
func runCrashWorker(spec string) int {
	addrs, q, _ := strings.Cut(spec, "|")
	srv := asynq.NewServer(asynq.RedisClusterClientOpt{Addrs: strings.Split(addrs, ",")}, asynq.Config{
		Concurrency:       1,
		Queues:            map[string]int{q: 1},
		TaskCheckInterval: 20 * time.Millisecond,
		LogLevel:          asynq.ErrorLevel,
	})
	err := srv.Start(asynq.HandlerFunc(func(ctx context.Context, _ *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		fmt.Printf("running %s\n", id)
		select {}
	}))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}
