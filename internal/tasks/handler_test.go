package tasks

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/metrics"
	"github.com/wxpush/wxpush/internal/ratelimit"
	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/wechat"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

const (
	testAppID  = "wxtest0000000001"
	testSecret = "sim-secret"
)

type bundle struct {
	handler *Handler
	store   *delivery.Store
	sim     *wechatsim.Server
	metrics *metrics.Metrics
	retried atomic.Int64 // what the fake asynq context reports
	ctx     context.Context
	to      sync.Map // message id → openid
}

func setup(t *testing.T, rules ...wechatsim.Rule) *bundle {
	t.Helper()
	return setupWith(t, nil, rules...)
}

func setupWith(t *testing.T, limits Limits, rules ...wechatsim.Rule) *bundle {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	sim, err := wechatsim.New(wechatsim.Config{
		Apps:  []wechatsim.App{{AppID: testAppID, Secret: testSecret, Token: "cbtoken"}},
		Rules: rules,
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(sim)
	t.Cleanup(func() { ts.Close(); sim.Close() })
	client := wechat.NewClient(ts.URL)
	b := &bundle{
		store:   delivery.NewStore(rdb, delivery.Config{}),
		sim:     sim,
		metrics: metrics.New(prometheus.NewRegistry(), metrics.Labels{}),
		ctx:     context.Background(),
	}
	creds := wechat.Credentials{App: "default", AppID: testAppID, Secret: testSecret}
	b.handler = NewHandler(HandlerDeps{
		Store:  b.store,
		Sender: client,
		Tokens: wechat.NewTokenStore(rdb, client, wechat.TokenStoreConfig{}),
		Apps: func(app string) (wechat.Credentials, bool) {
			return creds, app == "default"
		},
		Limiter: ratelimit.New(rdb, 0),
		Limits:  limits,
		Metrics: b.metrics,
		Logger:  logging.Discard(),
		Retries: func(context.Context) (int, int) { return int(b.retried.Load()), 9 },
	})
	return b
}

var seq atomic.Int64

func (b *bundle) enqueue(t *testing.T, openID string, mod ...func(*delivery.NewMessage)) string {
	t.Helper()
	m := delivery.NewMessage{App: "default", Queue: QueueNormal,
		Body: []byte(`{"touser":"` + openID + `","template_id":"T1","data":{"k":{"value":"v"}}}`)}
	for _, f := range mod {
		f(&m)
	}
	id := delivery.IDFor(m.App, fmt.Sprintf("msg-%d", seq.Add(1)))
	m.ID = id
	if _, err := b.store.Create(b.ctx, m); err != nil {
		t.Fatal(err)
	}
	b.to.Store(id, openID)
	return id
}

func (b *bundle) process(id string) error {
	to, _ := b.to.Load(id)
	return b.handler.ProcessTask(b.ctx, NewDeliverTask(id, "default", to.(string)))
}

func (b *bundle) record(t *testing.T, id string) *delivery.Message {
	t.Helper()
	m, err := b.store.Get(b.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDeliverSends(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.enqueue(t, "user-ok")
	if err := b.process(id); err != nil {
		t.Fatalf("ProcessTask: %v", err)
	}
	m := b.record(t, id)
	if m.State != delivery.StateSent || m.WeChatMsgID == "" || m.Attempts != 1 {
		t.Fatalf("record = %+v, want sent with a msgid", m)
	}
	// client_msg_id is the message id: the simulator counts the pair.
	if p := b.sim.Pair("user-ok", id); p.Accepted != 1 {
		t.Errorf("simulator pair (user-ok, %s) = %+v, want accepted once with client_msg_id = id", id, p)
	}
	if got := testutil.ToFloat64(b.metrics.Attempts.WithLabelValues("default", "ok")); got != 1 {
		t.Errorf("attempts{ok} = %v, want 1", got)
	}
}

// TestNeverResendsAccepted is invariant 2: a task redelivered after WeChat
// accepted the message (a crash after MarkSent, a duplicate task) sends nothing.
func TestNeverResendsAccepted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.enqueue(t, "user-1")
	if err := b.process(id); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := b.process(id); err != nil {
			t.Fatalf("redelivered task: %v", err)
		}
	}
	if st := b.sim.Stats(); st.SendRequests != 1 {
		t.Errorf("simulator saw %d send requests, want 1", st.SendRequests)
	}
	if m := b.record(t, id); m.Attempts != 1 {
		t.Errorf("attempts = %d, want 1", m.Attempts)
	}
}

func TestDeliverOutcomes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		outcome   wechatsim.Outcome
		retried   int64
		wantState delivery.State
		wantCode  int
		wantSkip  bool // asynq must not retry
		wantWait  bool // a throttling wait: not a failure
		result    string
	}{
		{name: "not following is permanent", outcome: wechatsim.OutcomeNotFollowing, wantState: delivery.StateRejected, wantCode: 43004, wantSkip: true, result: "permanent"},
		{name: "system busy retries", outcome: wechatsim.OutcomeSystemBusy, wantState: delivery.StateRetrying, wantCode: -1, result: "transient"},
		{name: "http 500 retries", outcome: wechatsim.OutcomeHTTP500, wantState: delivery.StateRetrying, result: "transient"},
		{name: "system busy on the last attempt is dead", outcome: wechatsim.OutcomeSystemBusy, retried: 9, wantState: delivery.StateDead, wantCode: -1, wantSkip: true, result: "transient"},
		{name: "frequency limit waits", outcome: wechatsim.OutcomeFrequencyLimit, retried: 9, wantState: delivery.StateRetrying, wantCode: 45011, wantWait: true, result: "throttled"},
		{name: "daily quota waits", outcome: wechatsim.OutcomeDailyQuota, retried: 9, wantState: delivery.StateRetrying, wantCode: 45009, wantWait: true, result: "quota"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, wechatsim.Rule{Outcome: tt.outcome})
			b.retried.Store(tt.retried)
			id := b.enqueue(t, "someone")
			err := b.process(id)
			if err == nil {
				t.Fatal("ProcessTask returned nil for a failed send")
			}
			if got := errors.Is(err, asynq.SkipRetry); got != tt.wantSkip {
				t.Errorf("SkipRetry = %v, want %v (err %v)", got, tt.wantSkip, err)
			}
			if got := !IsFailure(err); got != tt.wantWait {
				t.Errorf("throttling wait = %v, want %v", got, tt.wantWait)
			}
			if tt.wantWait {
				policy := RetryPolicy{Base: time.Second, Cap: time.Minute}
				if d := policy.RetryDelayFunc(0, err, nil); d < time.Second || d > 24*time.Hour+time.Minute {
					t.Errorf("throttling delay = %v", d)
				}
			}
			m := b.record(t, id)
			if m.State != tt.wantState {
				t.Errorf("state = %s, want %s", m.State, tt.wantState)
			}
			if tt.wantCode != 0 && (m.LastError == nil || m.LastError.Code != tt.wantCode) {
				t.Errorf("last_error = %+v, want errcode %d", m.LastError, tt.wantCode)
			}
			if tt.wantCode != 0 && (m.LastError == nil || !containsRID(m.LastError.Msg)) {
				t.Errorf("last_error.errmsg = %+v, want WeChat's errmsg with its rid", m.LastError)
			}
			if got := testutil.ToFloat64(b.metrics.Attempts.WithLabelValues("default", tt.result)); got != 1 {
				t.Errorf("attempts{%s} = %v, want 1", tt.result, got)
			}
			if tt.wantState.Final() {
				if got := testutil.ToFloat64(b.metrics.Finished.WithLabelValues("default", string(tt.wantState))); got != 1 {
					t.Errorf("finished{%s} = %v, want 1", tt.wantState, got)
				}
			}
		})
	}
}

func containsRID(s string) bool {
	for i := 0; i+5 <= len(s); i++ {
		if s[i:i+5] == "rid: " {
			return true
		}
	}
	return false
}

// TestTokenErrorRefreshesOnce: a 40001 invalidates the token, fetches a new one
// and re-sends at once, within the same attempt.
func TestTokenErrorRefreshesOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, wechatsim.Rule{Outcome: wechatsim.OutcomeTokenInvalid, Times: 1})
	id := b.enqueue(t, "user-t")
	if err := b.process(id); err != nil {
		t.Fatalf("ProcessTask: %v", err)
	}
	st := b.sim.Stats()
	if st.TokenFetches[testAppID] != 2 || st.SendRequests != 2 || st.Accepted != 1 {
		t.Errorf("simulator stats = %+v, want 2 token fetches, 2 sends, 1 accepted", st)
	}
	if m := b.record(t, id); m.State != delivery.StateSent || m.Attempts != 1 {
		t.Errorf("record = %s after %d attempts, want sent after 1", m.State, m.Attempts)
	}
}

// TestTokenErrorTwiceIsTransient: a token error that survives the refresh is not
// retried in a loop; the attempt fails and backs off.
func TestTokenErrorTwiceIsTransient(t *testing.T) {
	t.Parallel()
	b := setup(t, wechatsim.Rule{Outcome: wechatsim.OutcomeTokenInvalid})
	id := b.enqueue(t, "user-t")
	err := b.process(id)
	if err == nil || errors.Is(err, asynq.SkipRetry) || !IsFailure(err) {
		t.Fatalf("err = %v, want a retryable failure", err)
	}
	if st := b.sim.Stats(); st.TokenFetches[testAppID] != 2 || st.SendRequests != 2 {
		t.Errorf("simulator stats = %+v, want exactly one refresh and one re-send", st)
	}
}

func TestExpiredIsNeverSent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.enqueue(t, "late", func(m *delivery.NewMessage) { m.ExpireAt = time.Now().Add(-time.Second) })
	if err := b.process(id); err != nil {
		t.Fatalf("ProcessTask: %v", err)
	}
	if st := b.sim.Stats(); st.SendRequests != 0 {
		t.Errorf("an expired message was sent (%d requests)", st.SendRequests)
	}
	if m := b.record(t, id); m.State != delivery.StateExpired {
		t.Errorf("state = %s, want expired", m.State)
	}
}

func TestRetryPolicy(t *testing.T) {
	p := RetryPolicy{Base: time.Second, Cap: 10 * time.Minute}
	tests := []struct {
		name      string
		n         int
		max, mean time.Duration
	}{
		{"first retry about a second", 0, 2 * time.Second, time.Second},
		{"doubles", 3, 16 * time.Second, 8 * time.Second},
		{"capped", 30, 10 * time.Minute, 5 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const draws = 4000
			var sum time.Duration
			seen := map[time.Duration]bool{}
			for i := 0; i < draws; i++ {
				d := p.Delay(tt.n)
				if d < 0 || d > tt.max {
					t.Fatalf("Delay(%d) = %v, want in [0, %v]", tt.n, d, tt.max)
				}
				sum += d
				seen[d] = true
			}
			// Full jitter: uniform on [0, max], so the mean is max/2 (±5 %).
			if mean := sum / draws; mean < tt.mean*95/100 || mean > tt.mean*105/100 {
				t.Errorf("mean Delay(%d) = %v, want about %v", tt.n, mean, tt.mean)
			}
			if len(seen) < draws/2 {
				t.Errorf("Delay(%d) took only %d distinct values: no jitter", tt.n, len(seen))
			}
		})
	}
}

func TestThrottleWaits(t *testing.T) {
	now := time.Date(2026, 11, 26, 15, 59, 30, 0, time.UTC) // 23:59:30 in Shanghai
	if d := nextMinute(now); d < 30*time.Second || d > 35*time.Second {
		t.Errorf("nextMinute = %v, want 30–35 s", d)
	}
	if d := nextQuotaReset(now); d < 30*time.Second || d > 90*time.Second {
		t.Errorf("nextQuotaReset at 23:59:30 Shanghai = %v, want 30–90 s", d)
	}
}

// TestSendWaitsItsTurn: with the worker's sends in flight at their bound, a
// send waits for a turn; one whose task ends meanwhile never reached WeChat
// and spends nothing (invariant 4): asynq reschedules it without a failure.
func TestSendWaitsItsTurn(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.handler.sends = make(chan struct{}, 1)
	b.handler.sends <- struct{}{} // the one turn is taken
	id := b.enqueue(t, "user-1")
	ctx, cancel := context.WithTimeout(b.ctx, 50*time.Millisecond)
	defer cancel()
	to, _ := b.to.Load(id)
	err := b.handler.ProcessTask(ctx, NewDeliverTask(id, "default", to.(string)))
	if err == nil || IsFailure(err) {
		t.Fatalf("a send that got no turn: %v, want a wait that is not a failure", err)
	}
	if st := b.sim.Stats(); st.SendRequests != 0 {
		t.Errorf("%d sends reached WeChat, want none", st.SendRequests)
	}
	for _, class := range []string{"ok", "transient"} {
		if got := testutil.ToFloat64(b.metrics.Attempts.WithLabelValues("default", class)); got != 0 {
			t.Errorf("attempts{%s} = %v, want 0", class, got)
		}
	}
	<-b.handler.sends
	if err := b.process(id); err != nil {
		t.Fatalf("with a turn free: %v", err)
	}
	if m := b.record(t, id); m.State != delivery.StateSent {
		t.Errorf("record = %s, want sent", m.State)
	}
}
