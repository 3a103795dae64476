package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxpush/wxpush/client"
	"github.com/wxpush/wxpush/internal/servicetest"
)

// msg is a valid message for servicetest's template T1.
func msg(to string) client.Message {
	return client.Message{ToUser: to, TemplateID: "T1", Data: map[string]client.Value{"thing1": {Value: "order shipped"}}}
}

// setup starts a deployment and a client of its API.
func setup(t *testing.T, o servicetest.Options, opts ...client.Option) (*servicetest.Cluster, *client.Client) {
	t.Helper()
	c := servicetest.Start(t, o)
	cl, err := client.New(c.API, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c, cl
}

// waitState polls a message until it reaches want, failing on another final state.
func waitState(t *testing.T, cl *client.Client, id string, want client.State) client.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		s, err := cl.Status(ctx, id)
		switch {
		case err != nil:
			t.Fatalf("status %s: %v", id, err)
		case s.State == want:
			return s
		case s.State.Final():
			t.Fatalf("message %s is %s (%+v), want %s", id, s.State, s.LastError, want)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("message %s still %s, want %s", id, s.State, want)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func enqueued(t *testing.T, c *servicetest.Cluster) float64 {
	t.Helper()
	return servicetest.SumSeries(t, c.Scrape[:1], `wxpush_messages_enqueued_total{app="default"}`)
}

func TestSendReachesDelivered(t *testing.T) {
	t.Parallel()
	c, cl := setup(t, servicetest.Options{Workers: 1})
	tests := []struct {
		name string
		m    client.Message
	}{
		{"plain", msg("deliver_1")},
		{"every optional field", client.Message{App: "default", ToUser: "deliver_2", TemplateID: "T1",
			URL: "https://example.com/order/1", Data: map[string]client.Value{"thing1": {Value: "已发货", Color: "#173177"}},
			TTL: 10 * time.Minute, Priority: "high"}},
		{"mini program", client.Message{ToUser: "deliver_3", TemplateID: "T1",
			MiniProgram: &client.MiniProgram{AppID: "wxmini", PagePath: "pages/order?id=1"},
			Data:        map[string]client.Value{"thing1": {Value: "v"}}, ExpireAt: time.Now().Add(time.Hour)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := cl.Send(context.Background(), tt.m)
			if err != nil {
				t.Fatal(err)
			}
			if a.ID == "" || a.State != client.StateQueued {
				t.Fatalf("Send = %+v, want an id in state queued", a)
			}
			s := waitState(t, cl, a.ID, client.StateDelivered)
			if s.ID != a.ID || s.App != "default" || s.Kind != "template" || s.Attempts != 1 || s.WeChatMsgID == "" ||
				s.CreatedAt.IsZero() || s.SentAt.IsZero() || s.FinishedAt.IsZero() || len(s.History) == 0 {
				t.Errorf("status = %+v", s)
			}
			if tt.m.TTL != 0 || !tt.m.ExpireAt.IsZero() {
				if s.ExpireAt.IsZero() {
					t.Errorf("expire_at missing from %+v", s)
				}
			}
		})
	}
	if got := c.Sim.Stats().Pushed; got != len(tests) {
		t.Errorf("simulator pushed %d messages, want %d", got, len(tests))
	}
}

// frontProxy sits between the client and the enqueuer: it records every
// request's headers and lets fail decide, per request number (from 1), whether
// to answer 503 itself, and whether to forward the request first.
type frontProxy struct {
	srv     *httptest.Server
	mu      sync.Mutex
	headers []http.Header
	// replies holds the responses the enqueuer gave, swallowed ones included.
	replies []*http.Response
	bodies  []string
}

func newFrontProxy(t *testing.T, backend string, fail func(n int) (forward, fail bool)) *frontProxy {
	t.Helper()
	p := &frontProxy{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		p.mu.Lock()
		p.headers = append(p.headers, r.Header.Clone())
		n := len(p.headers)
		p.mu.Unlock()
		forward, failIt := fail(n)
		if forward {
			req, _ := http.NewRequestWithContext(r.Context(), r.Method, backend+r.URL.RequestURI(), bytes.NewReader(body))
			req.Header = r.Header.Clone()
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			rb, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			p.mu.Lock()
			p.replies = append(p.replies, resp)
			p.bodies = append(p.bodies, string(rb))
			p.mu.Unlock()
			if !failIt {
				for k, v := range resp.Header {
					w.Header()[k] = v
				}
				w.WriteHeader(resp.StatusCode)
				_, _ = w.Write(rb)
				return
			}
		}
		w.Header().Set("Retry-After", "0")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"error":{"code":"storage_unavailable","message":"try again"}}`)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *frontProxy) requests() []http.Header {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]http.Header(nil), p.headers...)
}

// TestSendRetriesWithOneKey: a 503 is retried with the same Idempotency-Key, and
// the result is exactly one message, whether the failed try reached the
// enqueuer or not.
func TestSendRetriesWithOneKey(t *testing.T) {
	t.Parallel()
	c, _ := setup(t, servicetest.Options{Workers: 1})
	tests := []struct {
		name string
		// forwardFirst: the enqueuer accepts the first try, but its answer is
		// lost (the proxy answers 503 instead).
		forwardFirst bool
		opts         []client.SendOption
	}{
		{"503 before the enqueuer", false, nil},
		{"answer lost after the enqueuer accepted", true, nil},
		{"caller's own key", true, []client.SendOption{client.IdempotencyKey("order-42-shipped")}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newFrontProxy(t, c.API, func(n int) (bool, bool) {
				if n == 1 {
					return tt.forwardFirst, true
				}
				return true, false
			})
			cl, err := client.New(p.srv.URL, client.WithRetries(3, time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			before := enqueued(t, c)
			a, err := cl.Send(context.Background(), msg(fmt.Sprintf("retry_%d", i)), tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			reqs := p.requests()
			if len(reqs) != 2 {
				t.Fatalf("%d requests, want 2 (one 503, one retry)", len(reqs))
			}
			key := reqs[0].Get("Idempotency-Key")
			if key == "" || reqs[1].Get("Idempotency-Key") != key {
				t.Errorf("Idempotency-Key = %q then %q, want the same non-empty key", key, reqs[1].Get("Idempotency-Key"))
			}
			if len(tt.opts) > 0 && key != "order-42-shipped" {
				t.Errorf("Idempotency-Key = %q, want the caller's", key)
			}
			if tt.forwardFirst {
				p.mu.Lock()
				replayed := p.replies[1].Header.Get("Idempotent-Replayed")
				var first client.Accepted
				_ = json.Unmarshal([]byte(p.bodies[0]), &first)
				p.mu.Unlock()
				if replayed != "true" || first.ID != a.ID {
					t.Errorf("retry got id %s (replayed %q); the lost answer had %s", a.ID, replayed, first.ID)
				}
			}
			if got := enqueued(t, c) - before; got != 1 {
				t.Errorf("enqueued %v messages, want exactly 1", got)
			}
			waitState(t, cl, a.ID, client.StateDelivered)
		})
	}
	if st := c.Sim.Stats(); st.SendRequests != len(tests) || len(st.Duplicates) != 0 {
		t.Errorf("simulator saw %d sends (duplicates %v), want %d", st.SendRequests, st.Duplicates, len(tests))
	}
}

func TestSendBadInput(t *testing.T) {
	t.Parallel()
	_, cl := setup(t, servicetest.Options{Workers: 1})
	with := func(f func(m *client.Message)) client.Message {
		m := msg("bad_1")
		f(&m)
		return m
	}
	tests := []struct {
		name        string
		m           client.Message
		field, code string
	}{
		{"no recipient", with(func(m *client.Message) { m.ToUser = "" }), "touser", "required"},
		{"unknown template", with(func(m *client.Message) { m.TemplateID = "T9" }), "template_id", "unknown_template"},
		{"wrong data key", with(func(m *client.Message) { m.Data = map[string]client.Value{"thing2": {Value: "v"}} }), "data", "missing_keys"},
		{"value too long", with(func(m *client.Message) {
			m.Data = map[string]client.Value{"thing1": {Value: strings.Repeat("长", 21)}}
		}), "data.thing1.value", "value_too_long"},
		{"relative url", with(func(m *client.Message) { m.URL = "/order/1" }), "url", "invalid_url"},
		{"bad priority", with(func(m *client.Message) { m.Priority = "urgent" }), "priority", "invalid_priority"},
		{"unknown app", with(func(m *client.Message) { m.App = "nope" }), "app", "unknown_app"},
		{"ttl and expire_at", with(func(m *client.Message) { m.TTL = time.Minute; m.ExpireAt = time.Now().Add(time.Hour) }), "ttl", "conflict"},
		{"expired already", with(func(m *client.Message) { m.ExpireAt = time.Now().Add(-time.Minute) }), "expire_at", "in_past"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cl.Send(context.Background(), tt.m)
			var e *client.Error
			if !errors.As(err, &e) {
				t.Fatalf("Send error = %v, want *client.Error", err)
			}
			if e.HTTPStatus != http.StatusBadRequest || e.Field != tt.field || e.Code != tt.code {
				t.Errorf("error = %+v, want 400 %s on %s", e, tt.code, tt.field)
			}
			if want := "wxpush: " + tt.field + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("Error() = %q, want it to start %q", err, want)
			}
		})
	}
}

// countingTransport counts the batch requests and keeps their keys.
type countingTransport struct {
	mu   sync.Mutex
	keys []string
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/v1/messages/batch" {
		c.mu.Lock()
		c.keys = append(c.keys, r.Header.Get("Idempotency-Key"))
		c.mu.Unlock()
	}
	return http.DefaultTransport.RoundTrip(r)
}

func TestSendBatch(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Workers: 1})
	// Scheduled an hour ahead, one second apart: nothing is sent, and each
	// record's send_at tells which message it is.
	start := time.Now().Add(time.Hour).Truncate(time.Second)
	build := func(n, bad int) []client.Message {
		ms := make([]client.Message, n)
		for i := range ms {
			ms[i] = msg(fmt.Sprintf("batch_%d", i))
			ms[i].SendAt = start.Add(time.Duration(i) * time.Second)
		}
		if bad >= 0 {
			ms[bad].ToUser = ""
		}
		return ms
	}
	tests := []struct {
		name     string
		n, bad   int // bad: index of an invalid message, or -1
		key      string
		wantKeys []string
	}{
		{"2500 valid messages", 2500, -1, "", nil},
		{"one invalid in the third request", 2500, 2100, "bulk-1", []string{"bulk-1", "bulk-1-1", "bulk-1-2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &countingTransport{}
			cl, err := client.New(c.API, client.WithHTTPClient(&http.Client{Transport: tr}))
			if err != nil {
				t.Fatal(err)
			}
			var progress []int
			opts := []client.SendOption{client.Progress(func(done, total int) {
				if total != tt.n {
					t.Errorf("progress total = %d, want %d", total, tt.n)
				}
				progress = append(progress, done)
			})}
			if tt.key != "" {
				opts = append(opts, client.IdempotencyKey(tt.key))
			}
			ms := build(tt.n, tt.bad)
			res, err := cl.SendBatch(context.Background(), ms, opts...)
			if err != nil {
				t.Fatal(err)
			}
			if len(tr.keys) != 3 {
				t.Fatalf("%d batch requests, want 3", len(tr.keys))
			}
			if tt.wantKeys != nil && fmt.Sprint(tr.keys) != fmt.Sprint(tt.wantKeys) {
				t.Errorf("keys = %v, want %v", tr.keys, tt.wantKeys)
			}
			if fmt.Sprint(progress) != "[1000 2000 2500]" {
				t.Errorf("progress = %v", progress)
			}
			wantRejected := 0
			if tt.bad >= 0 {
				wantRejected = 1
			}
			if len(res.Results) != tt.n || res.Rejected != wantRejected || res.Accepted != tt.n-wantRejected {
				t.Fatalf("result: accepted %d, rejected %d, %d results", res.Accepted, res.Rejected, len(res.Results))
			}
			seen := map[string]bool{}
			for i, r := range res.Results {
				if i == tt.bad {
					if r.Error == nil || r.Error.Field != fmt.Sprintf("messages[%d].touser", i) || r.Error.Code != "required" {
						t.Errorf("result %d = %+v, want a required error on messages[%d].touser", i, r.Error, i)
					}
					continue
				}
				// Ids derive from each chunk's Idempotency-Key and the item's index,
				// so they are not time-ordered; the order is checked below against
				// each message's send_at.
				if r.Error != nil || r.State != client.StateScheduled || r.ID == "" || seen[r.ID] {
					t.Fatalf("result %d = %+v (a missing or repeated id)", i, r)
				}
				seen[r.ID] = true
			}
			for _, i := range []int{0, 999, 1000, 1999, 2000, tt.n - 1} {
				s, err := cl.Status(context.Background(), res.Results[i].ID)
				if err != nil {
					t.Fatal(err)
				}
				if want := start.Add(time.Duration(i) * time.Second); !s.SendAt.Equal(want) {
					t.Errorf("result %d is the message sent at %v, want %v", i, s.SendAt, want)
				}
			}
			if tt.key == "" {
				return
			}
			// The same call again (a resume after a crash) enqueues nothing new.
			before := enqueued(t, c)
			again, err := cl.SendBatch(context.Background(), ms, client.IdempotencyKey(tt.key))
			if err != nil {
				t.Fatal(err)
			}
			for i := range again.Results {
				if again.Results[i].ID != res.Results[i].ID {
					t.Fatalf("repeat result %d = %s, want %s", i, again.Results[i].ID, res.Results[i].ID)
				}
			}
			if got := enqueued(t, c); got != before {
				t.Errorf("the repeated batch enqueued %v messages", got-before)
			}
		})
	}
}

// TestOperatorCalls: Dead, Retry, Cancel, Resume and Templates against a
// deployment where dead_* recipients fail three times (the attempt limit).
func TestOperatorCalls(t *testing.T) {
	t.Parallel()
	_, cl := setup(t, servicetest.Options{Workers: 1, Rules: "dead_*=system_busy:3, *=success",
		Env: map[string]string{"WXPUSH_MAX_ATTEMPTS": "3", "WXPUSH_RETRY_BASE": "10ms", "WXPUSH_RETRY_CAP": "20ms"}})
	ctx := context.Background()

	t.Run("dead, list, retry", func(t *testing.T) {
		a, err := cl.Send(ctx, msg("dead_1"))
		if err != nil {
			t.Fatal(err)
		}
		s := waitState(t, cl, a.ID, client.StateDead)
		if s.Attempts != 3 || s.LastError == nil || s.LastError.ErrCode != -1 {
			t.Errorf("dead status = %+v, last error %+v", s, s.LastError)
		}
		page, err := cl.Dead(ctx, "default", 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if page.Total != 1 || len(page.Messages) != 1 || page.Messages[0].ID != a.ID || page.Messages[0].State != client.StateDead || page.NextOffset != 0 {
			t.Fatalf("dead page = %+v", page)
		}
		if err := cl.Retry(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		waitState(t, cl, a.ID, client.StateDelivered)
		if page, err := cl.Dead(ctx, "", 0, 0); err != nil || page.Total != 0 {
			t.Errorf("dead list after retry = %+v, %v", page, err)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		m := msg("cancel_1")
		m.SendAt = time.Now().Add(time.Hour)
		a, err := cl.Send(ctx, m)
		if err != nil || a.State != client.StateScheduled {
			t.Fatalf("Send = %+v, %v", a, err)
		}
		for range 2 { // canceling again answers the same
			got, err := cl.Cancel(ctx, a.ID)
			if err != nil || got.ID != a.ID || got.State != client.StateCanceled {
				t.Fatalf("Cancel = %+v, %v", got, err)
			}
		}
		if s, err := cl.Status(ctx, a.ID); err != nil || s.State != client.StateCanceled || s.FinishedAt.IsZero() {
			t.Errorf("status after cancel = %+v, %v", s, err)
		}
	})
	t.Run("resume", func(t *testing.T) {
		r, err := cl.Resume(ctx, "default")
		if err != nil || r != (client.ResumeResult{App: "default"}) {
			t.Errorf("Resume = %+v, %v; want an app that was not parked", r, err)
		}
	})
	t.Run("templates", func(t *testing.T) {
		list, err := cl.Templates(ctx, "default")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].ID != "T1" || list[0].Title != "发货通知" || fmt.Sprint(list[0].Keys()) != "[thing1]" {
			t.Errorf("templates = %+v", list)
		}
	})

	delivered, err := cl.Send(ctx, msg("done_1"))
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, cl, delivered.ID, client.StateDelivered)
	errs := []struct {
		name        string
		call        func() error
		status      int
		code, field string
	}{
		{"status of an unknown id", func() error { _, err := cl.Status(ctx, "01NOPE"); return err }, 404, "not_found", "id"},
		{"status without id", func() error { _, err := cl.Status(ctx, ""); return err }, 0, "required", "id"},
		{"cancel a delivered message", func() error { _, err := cl.Cancel(ctx, delivered.ID); return err }, 409, "not_cancelable", "id"},
		{"cancel an unknown id", func() error { _, err := cl.Cancel(ctx, "01NOPE"); return err }, 404, "not_found", "id"},
		{"retry a delivered message", func() error { return cl.Retry(ctx, delivered.ID) }, 409, "not_dead", "id"},
		{"dead of an unknown app", func() error { _, err := cl.Dead(ctx, "nope", 0, 0); return err }, 400, "unknown_app", "app"},
		{"dead with a bad limit", func() error { _, err := cl.Dead(ctx, "", 0, 501); return err }, 400, "invalid_limit", "limit"},
		{"resume an unknown app", func() error { _, err := cl.Resume(ctx, "nope"); return err }, 404, "unknown_app", "app"},
		{"templates of an unknown app", func() error { _, err := cl.Templates(ctx, "nope"); return err }, 404, "unknown_app", "app"},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			var e *client.Error
			if err := tt.call(); !errors.As(err, &e) || e.HTTPStatus != tt.status || e.Code != tt.code || e.Field != tt.field {
				t.Errorf("error = %v (%+v), want %d %s on %s", err, e, tt.status, tt.code, tt.field)
			}
		})
	}
}

// TestAPIKey: the key is sent as a bearer token, and neither errors nor the
// client's string forms reveal it.
func TestAPIKey(t *testing.T) {
	t.Parallel()
	const key = "k-very-secret-0123456789"
	c := servicetest.Start(t, servicetest.Options{Workers: 1, Env: map[string]string{"WXPUSH_API_KEYS": key + ",other-key"}})
	var auth atomic.Value
	p := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Get("Authorization"))
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, c.API+r.URL.RequestURI(), r.Body)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(p.Close)

	good, _ := client.New(p.URL, client.WithAPIKey(key))
	a, err := good.Send(context.Background(), msg("key_1"))
	if err != nil {
		t.Fatal(err)
	}
	if got := auth.Load(); got != "Bearer "+key {
		t.Errorf("Authorization = %q, want the bearer key", got)
	}
	waitState(t, good, a.ID, client.StateDelivered)

	wrong, _ := client.New(c.API, client.WithAPIKey(key+"-wrong"))
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	unreachable, _ := client.New(closed.URL, client.WithAPIKey(key), client.WithRetries(0, 0))
	none, _ := client.New(c.API)
	tests := []struct {
		name   string
		cl     *client.Client
		status int // 0: a transport error
	}{
		{"wrong key", wrong, http.StatusUnauthorized},
		{"no key", none, http.StatusUnauthorized},
		{"server unreachable", unreachable, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cl.Send(context.Background(), msg("key_2"))
			var e *client.Error
			switch {
			case err == nil:
				t.Fatal("Send succeeded")
			case tt.status != 0 && (!errors.As(err, &e) || e.HTTPStatus != tt.status || e.Code != "unauthorized"):
				t.Errorf("error = %v, want %d unauthorized", err, tt.status)
			case tt.status == 0 && errors.As(err, &e):
				t.Errorf("error = %v, want a transport error", err)
			}
			for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
				if strings.Contains(s, key) {
					t.Errorf("error reveals the key: %s", s)
				}
			}
		})
	}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		for _, v := range []any{good, *good} {
			if s := fmt.Sprintf(f, v); strings.Contains(s, key) || !strings.Contains(s, "api key: set") {
				t.Errorf("Sprintf(%q) = %s", f, s)
			}
		}
	}
}
