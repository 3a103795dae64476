package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/ratelimit"
	"github.com/wxpush/wxpush/internal/wechat"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

// TestRateLimitDefersWithoutFailure is invariant 4 for the rate limiter: a
// message over the app's rate is rescheduled, not failed, and spends no attempt.
func TestRateLimitDefersWithoutFailure(t *testing.T) {
	t.Parallel()
	b := setupWith(t, func(string) (ratelimit.Limit, ratelimit.Limit) {
		return ratelimit.Limit{Max: 1, Window: time.Hour, Burst: 1}, ratelimit.Limit{}
	})
	first, second := b.enqueue(t, "u1"), b.enqueue(t, "u2")
	if err := b.process(first); err != nil {
		t.Fatal(err)
	}
	b.retried.Store(9) // even on the last attempt, waiting is not failing
	err := b.process(second)
	if err == nil || IsFailure(err) || errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("over the limit: err = %v; want a deferral that is not a failure", err)
	}
	if d := (RetryPolicy{Base: time.Second, Cap: time.Minute}).RetryDelayFunc(9, err, nil); d < 50*time.Minute {
		t.Errorf("deferral = %v, want about the hour the bucket needs", d)
	}
	m := b.record(t, second)
	if m.State != delivery.StateQueued || m.Attempts != 0 {
		t.Errorf("deferred message = %s after %d attempts; want queued, 0", m.State, m.Attempts)
	}
	if st := b.sim.Stats(); st.SendRequests != 1 {
		t.Errorf("simulator saw %d sends, want 1", st.SendRequests)
	}
	if got := testutil.ToFloat64(b.metrics.RateLimitWaits.WithLabelValues("default", "app")); got != 1 {
		t.Errorf("rate-limit waits = %v, want 1", got)
	}
}

// TestRecipientLimitDefers: the per-recipient limit holds back a second message
// to the same user but not one to another user.
func TestRecipientLimitDefers(t *testing.T) {
	t.Parallel()
	b := setupWith(t, func(string) (ratelimit.Limit, ratelimit.Limit) {
		return ratelimit.Limit{}, ratelimit.Limit{Max: 1, Window: time.Hour, Burst: 1}
	})
	a1, a2, other := b.enqueue(t, "alice"), b.enqueue(t, "alice"), b.enqueue(t, "bob")
	if err := b.process(a1); err != nil {
		t.Fatal(err)
	}
	if err := b.process(a2); err == nil || IsFailure(err) {
		t.Errorf("second message to alice: %v, want a deferral", err)
	}
	if err := b.process(other); err != nil {
		t.Errorf("message to bob: %v, want sent", err)
	}
	if m := b.record(t, a2); m.State != delivery.StateQueued {
		t.Errorf("deferred message state %s, want queued (never dropped)", m.State)
	}
}

// TestQuotaParksApp: 45009 parks the app, so its next message waits without
// calling WeChat or spending an attempt, until the app is resumed.
func TestQuotaParksApp(t *testing.T) {
	t.Parallel()
	b := setup(t, wechatsim.Rule{Outcome: wechatsim.OutcomeDailyQuota, Times: 1})
	first, second := b.enqueue(t, "u1"), b.enqueue(t, "u2")
	if err := b.process(first); err == nil || IsFailure(err) {
		t.Fatalf("45009: %v, want a wait that is not a failure", err)
	}
	err := b.process(second)
	if err == nil || IsFailure(err) || !errors.Is(err, errParked) {
		t.Fatalf("message of a parked app: %v, want deferred as parked", err)
	}
	if st := b.sim.Stats(); st.SendRequests != 1 {
		t.Errorf("a parked app called WeChat: %d sends, want 1", st.SendRequests)
	}
	if m := b.record(t, second); m.Attempts != 0 {
		t.Errorf("parked message spent %d attempts", m.Attempts)
	}
	if _, err := b.store.Resume(b.ctx, "default"); err != nil {
		t.Fatal(err)
	}
	if err := b.process(second); err != nil {
		t.Errorf("after resume: %v, want sent", err)
	}
}

// fakeQueue records enqueued tasks and refuses duplicate ids like asynq.
type fakeQueue struct {
	ids   map[string]bool
	tasks map[string]enqueued // what was enqueued under each id
	fail  int                 // fail the call with this 1-based index
	lost  int                 // enqueue on the call with this index, but answer with an error
	n     int
}

// enqueued is a task's type and the options a test looks at.
type enqueued struct {
	typ      string
	maxRetry int
	delay    time.Duration
}

func (q *fakeQueue) EnqueueContext(_ context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error) {
	q.n++
	if q.n == q.fail {
		return nil, errors.New("redis down")
	}
	// The task's id: a TaskID option, else the delivery task's own (its
	// message id, set by NewDeliverTask).
	p, _ := parseDeliverPayload(task.Payload())
	key := p.ID
	for _, o := range opts {
		if o.Type() == asynq.TaskIDOpt {
			key = o.Value().(string)
		}
	}
	if q.ids[key] {
		return nil, asynq.ErrTaskIDConflict
	}
	q.ids[key] = true
	e := enqueued{typ: task.Type()}
	for _, o := range opts {
		switch o.Type() {
		case asynq.MaxRetryOpt:
			e.maxRetry = o.Value().(int)
		case asynq.ProcessInOpt:
			e.delay = o.Value().(time.Duration)
		}
	}
	if q.tasks == nil {
		q.tasks = map[string]enqueued{}
	}
	q.tasks[key] = e
	if q.n == q.lost {
		return nil, errors.New("connection reset: the reply was lost")
	}
	return &asynq.TaskInfo{ID: key}, nil
}

// TestFanoutResumes: a fanout that died halfway is retried, and the tasks it
// already enqueued are skipped, not duplicated.
func TestFanoutResumes(t *testing.T) {
	q := &fakeQueue{ids: map[string]bool{}, fail: 3}
	owner := &fakeOwner{}
	h := NewFanoutHandler(q, owner, 10)
	// Messages with a task of their own (send_at), and chunks of two and one.
	items := []FanoutItem{{ID: "a", App: "x", Queue: QueueNormal}, {ID: "b", App: "x", Queue: QueueNormal},
		{ID: "c", App: "x", Queue: QueueLow}, {ID: "d", App: "x", Queue: QueueHigh},
		{ID: "e", App: "x", Queue: QueueNormal, Chunk: "F.0"}, {ID: "f", App: "x", Queue: QueueNormal, Chunk: "F.0"},
		{ID: "g", App: "x", Queue: QueueLow, Chunk: "F.1"}}
	b, _ := json.Marshal(fanoutPayload{Items: items})
	task := asynq.NewTask(TypeFanout, b)
	if err := h.ProcessTask(context.Background(), task); err == nil {
		t.Fatal("fanout with a failing enqueue returned nil; asynq would not retry it")
	}
	if len(owner.ids) != 0 {
		t.Errorf("a fanout that failed halfway said %v are owned; their tasks may not exist", owner.ids)
	}
	if err := h.ProcessTask(context.Background(), task); err != nil {
		t.Fatalf("retried fanout: %v", err)
	}
	if want := []string{"F.0", "F.1", "a", "b", "c", "d"}; len(q.ids) != len(want) || !q.ids["F.0"] || !q.ids["F.1"] {
		t.Errorf("enqueued %v, want %v exactly once", q.ids, want)
	}
	if want := []string{"a", "b", "c", "d", "e", "f", "g"}; !slices.Equal(owner.ids, want) {
		t.Errorf("owned %v, want %v once their tasks exist", owner.ids, want)
	}
}

// fakeOwner records the ids said to be owned.
type fakeOwner struct{ ids []string }

func (o *fakeOwner) Owned(_ context.Context, ids ...string) error {
	o.ids = append(o.ids, ids...)
	return nil
}

// TestConfigErrorStopsApp: a wrong secret (40125 from the token endpoint) stops
// the app: no fetch loop, no spent attempts, its next message waits without
// calling WeChat at all.
func TestConfigErrorStopsApp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.handler.apps = func(app string) (wechat.Credentials, bool) {
		return wechat.Credentials{App: app, AppID: testAppID, Secret: "wrong-secret"}, true
	}
	first, second := b.enqueue(t, "u1"), b.enqueue(t, "u2")
	err := b.process(first)
	if err == nil || IsFailure(err) {
		t.Fatalf("config error: %v, want a wait that spends no attempt", err)
	}
	if d := (RetryPolicy{Base: time.Second, Cap: time.Minute}).RetryDelayFunc(0, err, nil); d < 59*time.Minute {
		t.Errorf("stopped for %v, want about %v", d, ConfigStop)
	}
	if err := b.process(second); !errors.Is(err, errParked) {
		t.Fatalf("next message of a stopped app: %v, want parked", err)
	}
	st := b.sim.Stats()
	if st.TokenFetches[testAppID] != 0 || st.SendRequests != 0 {
		t.Errorf("simulator stats %+v: a stopped app must not call WeChat again", st)
	}
	if got := testutil.ToFloat64(b.metrics.ConfigErrors.WithLabelValues("default")); got != 1 {
		t.Errorf("config errors = %v, want 1", got)
	}
	if got := testutil.ToFloat64(b.metrics.Attempts.WithLabelValues("default", "config")); got != 1 {
		t.Errorf("attempts{config} = %v, want 1", got)
	}
}

type fakeTemplates struct{ invalidated []string }

func (f *fakeTemplates) Invalidate(_ context.Context, app string) error {
	f.invalidated = append(f.invalidated, app)
	return nil
}

type fixedSender struct{ err error }

func (s fixedSender) SendTemplate(context.Context, string, *wechat.TemplateMessage) (int64, error) {
	return 0, s.err
}
func (s fixedSender) SendSubscribe(context.Context, string, *wechat.SubscribeMessage) (int64, error) {
	return 0, s.err
}

// TestInvalidTemplateRefreshesCache: WeChat's 40037 means the app's template set
// changed: the message is rejected and the template cache invalidated.
func TestInvalidTemplateRefreshesCache(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tpl := &fakeTemplates{}
	b.handler.tpl = tpl
	b.handler.sender = fixedSender{err: &wechat.APIError{API: "template/send", Code: 40037, Msg: "invalid template_id rid: 1"}}
	id := b.enqueue(t, "u1")
	if err := b.process(id); !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("40037: %v, want a settled rejection", err)
	}
	if m := b.record(t, id); m.State != delivery.StateRejected || m.LastError == nil || m.LastError.Code != 40037 {
		t.Errorf("record = %+v", m)
	}
	if len(tpl.invalidated) != 1 || tpl.invalidated[0] != "default" {
		t.Errorf("template cache invalidations = %v, want [default]", tpl.invalidated)
	}
	b.handler.sender = fixedSender{err: &wechat.APIError{API: "template/send", Code: 43004, Msg: "require subscribe"}}
	b.process(b.enqueue(t, "u2"))
	if len(tpl.invalidated) != 1 {
		t.Errorf("another permanent error invalidated the template cache: %v", tpl.invalidated)
	}
}
