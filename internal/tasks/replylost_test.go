package tasks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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

func TestMayHaveReached(t *testing.T) {
	t.Parallel()
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "errcode", err: &wechat.APIError{API: "template/send", Code: -1, Msg: "system error"}, want: false},
		{name: "http 500", err: &wechat.TransportError{API: "template/send", StatusCode: 500, Err: errors.New("500")}, want: true},
		{name: "timeout", err: &wechat.TransportError{API: "template/send", Err: fmt.Errorf("Post: timeout: %w", context.DeadlineExceeded)}, want: true},
		{name: "reset after the request", err: &wechat.TransportError{API: "template/send", Err: fmt.Errorf("Post: %w", reset)}, want: true},
		{name: "bad reply", err: &wechat.TransportError{API: "template/send", Err: errors.New("decode reply: EOF")}, want: true},
		{name: "no connection", err: &wechat.TransportError{API: "template/send", Err: fmt.Errorf("Post: %w", dial)}, want: false},
		{name: "not a wechat error", err: errors.New("tasks: no turn to send"), want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mayHaveReached(tt.err); got != tt.want {
				t.Errorf("mayHaveReached(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// lostBundle is a handler on the simulator whose result callbacks come to
// events, for the test to apply as the API's callback handler does.
type lostBundle struct {
	*bundle
	events chan *wechat.Event
}

func setupLost(t *testing.T, wrap func(Sender) Sender, rules ...wechatsim.Rule) *lostBundle {
	t.Helper()
	events := make(chan *wechat.Event, 16)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if ev, err := wechat.ParseEvent(body); err == nil && ev.Event == wechat.EventTemplateSendJobFinish {
			events <- ev
		}
		io.WriteString(w, "success")
	}))
	t.Cleanup(recv.Close)
	rdb := redistest.Start(t).Client(t)
	sim, err := wechatsim.New(wechatsim.Config{
		Apps:  []wechatsim.App{{AppID: testAppID, Secret: testSecret, Token: "cbtoken", CallbackURL: recv.URL}},
		Rules: rules,
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(sim)
	t.Cleanup(func() { ts.Close(); sim.Close() })
	client := wechat.NewClient(ts.URL)
	b := &lostBundle{bundle: &bundle{
		store:   delivery.NewStore(rdb, delivery.Config{}),
		sim:     sim,
		metrics: metrics.New(prometheus.NewRegistry(), metrics.Labels{}),
		ctx:     context.Background(),
	}, events: events}
	var sender Sender = client
	if wrap != nil {
		sender = wrap(client)
	}
	creds := wechat.Credentials{App: "default", AppID: testAppID, Secret: testSecret}
	b.handler = NewHandler(HandlerDeps{
		Store: b.store, Sender: sender,
		Tokens:  wechat.NewTokenStore(rdb, client, wechat.TokenStoreConfig{}),
		Apps:    func(app string) (wechat.Credentials, bool) { return creds, app == "default" },
		Limiter: ratelimit.New(rdb, 0),
		Metrics: b.metrics,
		Logger:  logging.Discard(),
		Retries: func(context.Context) (int, int) { return int(b.retried.Load()), 9 },
	})
	return b
}

// apply waits for the simulator's next result callback and applies it as
// the callback handler does, with its openid and CreateTime.
func (b *lostBundle) apply(t *testing.T) delivery.CallbackResult {
	t.Helper()
	select {
	case ev := <-b.events:
		to := delivery.StateWeChatFailed
		if wechat.ParseDeliveryStatus(ev.Status) == wechat.DeliverySuccess {
			to = delivery.StateDelivered
		}
		rs, errs, err := b.store.ApplyCallbacks(b.ctx, []delivery.CallbackInput{{App: "default", MsgID: ev.MsgID, To: to, Raw: ev.Status,
			OpenID: ev.FromUserName, CreateTime: time.Unix(ev.CreateTime, 0)}})
		if err != nil || errs[0] != nil {
			t.Fatalf("ApplyCallbacks: %v, %v", errs, err)
		}
		return rs[0]
	case <-time.After(10 * time.Second):
		t.Fatal("no result callback from the simulator within 10s")
	}
	return delivery.CallbackResult{}
}

// possiblySent reports whether the record's history marks a lost reply.
func possiblySent(m *delivery.Message) bool {
	for _, e := range m.History {
		if e.Event == delivery.EventPossiblySent {
			return true
		}
	}
	return false
}

// TestReplyLostThenDeadSettledByCallback: WeChat delivers the first attempt
// but its reply is lost (HTTP 500); the next attempt fails and the message
// ends dead; WeChat's success callback, for a msgid the worker never
// stored, then settles it delivered.
func TestReplyLostThenDeadSettledByCallback(t *testing.T) {
	t.Parallel()
	b := setupLost(t, nil,
		wechatsim.Rule{OpenID: "user-lost", Outcome: wechatsim.OutcomeReplyLost, Times: 1},
		wechatsim.Rule{OpenID: "user-lost", Outcome: wechatsim.OutcomeHTTP500})
	id := b.enqueue(t, "user-lost")
	if err := b.process(id); err == nil || errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("first attempt = %v, want a retry", err)
	}
	if m := b.record(t, id); m.State != delivery.StateRetrying || !possiblySent(m) {
		t.Fatalf("after the lost reply: state %s, history %+v; want retrying, marked possibly sent", m.State, m.History)
	}
	b.retried.Store(9)
	if err := b.process(id); !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("last attempt = %v, want settled", err)
	}
	if m := b.record(t, id); m.State != delivery.StateDead || !delivery.PossibleDuplicate(m) {
		t.Fatalf("state %s, possible duplicate %v; want dead, true", m.State, delivery.PossibleDuplicate(m))
	}
	r := b.apply(t)
	if r.Outcome != delivery.CallbackCorrected || r.ID != id || r.State != delivery.StateDelivered {
		t.Fatalf("callback = %+v, want corrected %s delivered", r, id)
	}
	m := b.record(t, id)
	if m.State != delivery.StateDelivered || m.WeChatMsgID == "" || delivery.PossibleDuplicate(m) {
		t.Errorf("record = state %s msgid %q; want delivered with WeChat's msgid", m.State, m.WeChatMsgID)
	}
	if p := b.sim.Pair("user-lost", id); p.Pushed != 1 {
		t.Errorf("simulator pushed it %d times, want once", p.Pushed)
	}
	// Counted finished once, as dead, by the worker; the correction is the callback's outcome.
	if got := testutil.ToFloat64(b.metrics.Finished.WithLabelValues("default", "dead")); got != 1 {
		t.Errorf("finished{dead} = %v, want 1", got)
	}
}

// callbackFirst is a Sender on which WeChat's result callback of a send
// whose reply is lost arrives, and is applied, before the reply's failure
// reaches the worker.
type callbackFirst struct {
	Sender
	arrived func()
}

func (c callbackFirst) SendTemplate(ctx context.Context, token string, msg *wechat.TemplateMessage) (int64, error) {
	id, err := c.Sender.SendTemplate(ctx, token, msg)
	if err != nil {
		c.arrived()
	}
	return id, err
}

// TestReplyLostCallbackFirst: the callback comes while the lost reply is on
// its way and is held; the worker's failure then finds it, and the message
// is delivered, not retried.
func TestReplyLostCallbackFirst(t *testing.T) {
	t.Parallel()
	var b *lostBundle
	held := make(chan delivery.CallbackResult, 1)
	b = setupLost(t, func(s Sender) Sender {
		return callbackFirst{Sender: s, arrived: func() { held <- b.apply(t) }}
	}, wechatsim.Rule{OpenID: "user-lost", Outcome: wechatsim.OutcomeReplyLost})
	id := b.enqueue(t, "user-lost")
	if err := b.process(id); !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("attempt = %v, want settled", err)
	}
	if r := <-held; r.Outcome != delivery.CallbackHeld {
		t.Fatalf("callback = %+v, want held", r)
	}
	m := b.record(t, id)
	if m.State != delivery.StateDelivered || m.Attempts != 1 || m.WeChatMsgID == "" {
		t.Errorf("record = state %s attempts %d msgid %q; want delivered after 1 attempt", m.State, m.Attempts, m.WeChatMsgID)
	}
	if got := testutil.ToFloat64(b.metrics.Finished.WithLabelValues("default", "delivered")); got != 1 {
		t.Errorf("finished{delivered} = %v, want 1", got)
	}
}

// TestDefiniteErrorIsNotPossiblySent: an errcode is WeChat's answer.
func TestDefiniteErrorIsNotPossiblySent(t *testing.T) {
	t.Parallel()
	b := setupLost(t, nil, wechatsim.Rule{OpenID: "user-busy", Outcome: wechatsim.OutcomeSystemBusy})
	id := b.enqueue(t, "user-busy")
	b.process(id)
	if m := b.record(t, id); m.State != delivery.StateRetrying || possiblySent(m) {
		t.Errorf("state %s, possibly sent %v; want retrying, not marked", m.State, possiblySent(m))
	}
}
