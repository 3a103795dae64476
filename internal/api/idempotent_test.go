package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/idempotency"
	"github.com/wxpush/wxpush/internal/secret"
)

// countTasks is how many pending or scheduled asynq tasks exist.
func countTasks(t *testing.T, b *bundle) int {
	t.Helper()
	return len(allTasks(t, b))
}

// checkReplay checks that second is first replayed: same status and body byte for
// byte, marked Idempotent-Replayed, while first was not.
func checkReplay(t *testing.T, first, second reply) {
	t.Helper()
	if first.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("first request is marked Idempotent-Replayed")
	}
	if second.status != first.status || !bytes.Equal(second.body, first.body) {
		t.Errorf("repeat = %d %s, want the first response %d %s", second.status, truncate(second.body), first.status, truncate(first.body))
	}
	if got := second.header.Get("Idempotent-Replayed"); got != "true" {
		t.Errorf("repeat Idempotent-Replayed = %q, want true", got)
	}
	if ct := second.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("replay Content-Type = %q", ct)
	}
}

// TestIdempotentReplay: the same key and body twice runs once and answers the
// second time with the first response (issue 4, item 6).
func TestIdempotentReplay(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		path    string
		body    []byte
		status  int
		records int
		tasks   int
	}{
		{name: "message", path: "/v1/messages", body: seed(t, "template-send-request.json"),
			status: http.StatusAccepted, records: 1, tasks: 1},
		{name: "batch", path: "/v1/messages/batch", body: batchOf(smallMessage("a"), []byte(`{}`), smallMessage("b")),
			status: http.StatusOK, records: 2, tasks: 1},
		// A 400 is an answer, not a "try again": it is kept and replayed too.
		{name: "bad request", path: "/v1/messages", body: []byte(`{"touser":""}`),
			status: http.StatusBadRequest, records: 0, tasks: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			const key = "order-4711-receipt"
			first := b.do(t, http.MethodPost, tt.path, tt.body, "Idempotency-Key", key)
			if first.status != tt.status {
				t.Fatalf("first = %d %s, want %d", first.status, truncate(first.body), tt.status)
			}
			second := b.do(t, http.MethodPost, tt.path, tt.body, "Idempotency-Key", key)
			checkReplay(t, first, second)
			if n := len(recordIDs(t, b)); n != tt.records {
				t.Errorf("%d records, want %d", n, tt.records)
			}
			if n := countTasks(t, b); n != tt.tasks {
				t.Errorf("%d asynq tasks, want %d", n, tt.tasks)
			}
			if n := b.enqueued("default"); n != float64(tt.records) {
				t.Errorf("enqueued{default} = %v, want %d: a replay is not a new message", n, tt.records)
			}

			// The same key with another request is a conflict and changes nothing.
			others := []struct{ path, body string }{
				{tt.path, string(tt.body) + " "},
				{"/v1/messages", `{"touser":"x"}`},
				{"/v1/messages/batch", `{"messages":[{"touser":"x"}]}`},
			}
			for _, o := range others {
				r := b.do(t, http.MethodPost, o.path, []byte(o.body), "Idempotency-Key", key)
				if r.status != http.StatusConflict {
					t.Fatalf("POST %s with a reused key = %d %s, want 409", o.path, r.status, truncate(r.body))
				}
				if code, field := mustError(t, r); code != "idempotency_key_reused" || field != "Idempotency-Key" {
					t.Errorf("code %q field %q, want idempotency_key_reused, Idempotency-Key", code, field)
				}
			}
			if n := len(recordIDs(t, b)); n != tt.records {
				t.Errorf("%d records after conflicts, want %d", n, tt.records)
			}
			if n := countTasks(t, b); n != tt.tasks {
				t.Errorf("%d asynq tasks after conflicts, want %d", n, tt.tasks)
			}
		})
	}
}

// TestIdempotencyKeyInvalid: a key longer than 255 bytes or with anything but
// printable ASCII is a 400 naming the header, and the request does not run.
func TestIdempotencyKeyInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		key   string
		valid bool
	}{
		{name: "256 bytes", key: strings.Repeat("k", 256)},
		{name: "1000 bytes", key: strings.Repeat("k", 1000)},
		{name: "tab", key: "order\t1"},
		{name: "NUL", key: "order\x001"},
		{name: "escape", key: "order\x1b[31m"},
		{name: "DEL", key: "order\x7f"},
		{name: "non-ASCII", key: "订单-1"},
		{name: "invalid UTF-8", key: "order-\xff"},
		{name: "255 bytes", key: strings.Repeat("k", 255), valid: true},
		{name: "printable punctuation and spaces", key: `order 1/2 {x}:"y"~`, valid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			// Straight to the handler: the HTTP client would refuse to send some of these.
			r := b.serve(t, "127.0.0.1:40000", http.MethodPost, "/v1/messages", seed(t, "template-send-request.json"),
				"Idempotency-Key", tt.key)
			if tt.valid {
				if r.status != http.StatusAccepted {
					t.Fatalf("POST = %d %s, want 202", r.status, r.body)
				}
				again := b.serve(t, "127.0.0.1:40000", http.MethodPost, "/v1/messages", seed(t, "template-send-request.json"),
					"Idempotency-Key", tt.key)
				checkReplay(t, r, again)
				return
			}
			if r.status != http.StatusBadRequest {
				t.Fatalf("POST = %d %s, want 400", r.status, r.body)
			}
			if code, field := mustError(t, r); code != "invalid_idempotency_key" || field != "Idempotency-Key" {
				t.Errorf("code %q field %q, want invalid_idempotency_key, Idempotency-Key", code, field)
			}
			b.assertNothingStored(t)
		})
	}
}

// TestIdempotencyRetryAfterRefusal: a "try again" answer (429 here) is not kept:
// the same key runs for real once the backlog has room.
func TestIdempotencyRetryAfterRefusal(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxBacklog("default", 1))
	const key = "retry-me"
	body := seed(t, "template-send-request.json")
	blocker := postMessage(t, b, nil)

	refused := b.do(t, http.MethodPost, "/v1/messages", body, "Idempotency-Key", key)
	if refused.status != http.StatusTooManyRequests {
		t.Fatalf("POST with a full backlog = %d %s, want 429", refused.status, refused.body)
	}
	if code, _ := mustError(t, refused); code != "backlog_full" {
		t.Errorf("code %q, want backlog_full", code)
	}
	// Still full: the retry runs again (and is refused again), it is no replay.
	again := b.do(t, http.MethodPost, "/v1/messages", body, "Idempotency-Key", key)
	if again.status != http.StatusTooManyRequests || again.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("retry while full = %d (replayed %q), want a fresh 429", again.status, again.header.Get("Idempotent-Replayed"))
	}

	if _, err := b.store.Finish(t.Context(), blocker, "default", delivery.StateRejected, nil); err != nil {
		t.Fatal(err)
	}
	accepted := b.do(t, http.MethodPost, "/v1/messages", body, "Idempotency-Key", key)
	if accepted.status != http.StatusAccepted || accepted.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("retry after room was made = %d %s (replayed %q), want a fresh 202",
			accepted.status, accepted.body, accepted.header.Get("Idempotent-Replayed"))
	}
	checkReplay(t, accepted, b.do(t, http.MethodPost, "/v1/messages", body, "Idempotency-Key", key))
	if n := len(recordIDs(t, b)); n != 2 {
		t.Errorf("%d records, want 2 (the blocker and the one accepted)", n)
	}
}

// TestIdempotencyScopedPerAPIKey: two API keys are two callers; one caller's
// Idempotency-Key never answers for another's request.
func TestIdempotencyScopedPerAPIKey(t *testing.T) {
	t.Parallel()
	const key1, key2 = "k1-0123456789abcdef-secret", "k2-fedcba9876543210-secret"
	b := setup(t, func(d *api.Deps) { d.APIKeys = []secret.Value{key1, key2} })
	body := seed(t, "template-send-request.json")
	tests := []struct {
		name     string
		apiKey   string
		replayed bool
	}{
		{name: "first caller", apiKey: key1},
		{name: "second caller, same Idempotency-Key", apiKey: key2},
		{name: "first caller again", apiKey: key1, replayed: true},
		{name: "second caller again", apiKey: key2, replayed: true},
	}
	ids := map[string]string{} // API key → message id
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.do(t, http.MethodPost, "/v1/messages", body, "Authorization", "Bearer "+tt.apiKey, "Idempotency-Key", "shared-key")
			var acc struct{ ID string }
			if err := json.Unmarshal(r.body, &acc); r.status != http.StatusAccepted || err != nil {
				t.Fatalf("POST = %d %s, want 202", r.status, r.body)
			}
			if got := r.header.Get("Idempotent-Replayed") == "true"; got != tt.replayed {
				t.Errorf("replayed = %v, want %v", got, tt.replayed)
			}
			if prev, ok := ids[tt.apiKey]; ok && prev != acc.ID {
				t.Errorf("id %s, want the caller's earlier %s", acc.ID, prev)
			}
			for k, id := range ids {
				if k != tt.apiKey && id == acc.ID {
					t.Errorf("caller got another caller's message %s", id)
				}
			}
			ids[tt.apiKey] = acc.ID
		})
	}
	if n := len(recordIDs(t, b)); n != 2 {
		t.Errorf("%d records, want 2 (one per caller)", n)
	}
	for _, k := range b.keys(t, "wxpush:idem:*") {
		if strings.Contains(k, key1) || strings.Contains(k, key2) {
			t.Errorf("idempotency key %q reveals an API key", k)
		}
	}
}

// TestIdempotencyConcurrent: ten identical requests at once with one key create
// one message; each of the others gets the replay or a 409 to retry.
func TestIdempotencyConcurrent(t *testing.T) {
	t.Parallel()
	const n = 10
	b := setup(t)
	body := seed(t, "template-send-request.json")
	replies := make([]reply, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			// b.do calls t.Fatal, which only the test goroutine may call.
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, b.url+"/v1/messages", bytes.NewReader(body))
			if err != nil {
				errs[i] = err
				return
			}
			req.Header.Set("Idempotency-Key", "concurrent-key")
			resp, err := b.client.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			rb, err := io.ReadAll(resp.Body)
			replies[i], errs[i] = reply{status: resp.StatusCode, header: resp.Header, body: rb}, err
		})
	}
	close(start)
	wg.Wait()

	var ran, replayed, busy int
	var first []byte
	for i, r := range replies {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		switch {
		case r.status == http.StatusAccepted:
			if first == nil {
				first = r.body
			} else if !bytes.Equal(r.body, first) {
				t.Errorf("202 bodies differ: %s and %s", r.body, first)
			}
			if r.header.Get("Idempotent-Replayed") == "true" {
				replayed++
			} else {
				ran++
			}
		case r.status == http.StatusConflict:
			if code, _ := mustError(t, r); code != "idempotency_in_progress" {
				t.Errorf("409 code %q, want idempotency_in_progress", code)
			}
			if r.header.Get("Retry-After") == "" {
				t.Error("idempotency_in_progress without Retry-After")
			}
			busy++
		default:
			t.Errorf("request %d = %d %s", i, r.status, r.body)
		}
	}
	if ran != 1 || ran+replayed+busy != n {
		t.Errorf("%d ran, %d replayed, %d in progress; want exactly 1 ran of %d", ran, replayed, busy, n)
	}
	if n := len(recordIDs(t, b)); n != 1 {
		t.Errorf("%d records, want 1", n)
	}
	if n := countTasks(t, b); n != 1 {
		t.Errorf("%d asynq tasks, want 1", n)
	}
	checkReplay(t, reply{status: http.StatusAccepted, header: http.Header{}, body: first},
		b.do(t, http.MethodPost, "/v1/messages", body, "Idempotency-Key", "concurrent-key"))
}

// cancelOnWrite cancels the request's context once the response is written, as
// net/http does when the client hangs up (its timeout fired) at that moment.
type cancelOnWrite struct {
	*httptest.ResponseRecorder
	cancel context.CancelFunc
}

func (c *cancelOnWrite) WriteHeader(status int) {
	c.ResponseRecorder.WriteHeader(status)
	c.cancel()
}

// TestIdempotencyClientGone: a client that gives up after the message was
// accepted retries with the same key; it must get the first answer back, never
// a second message.
//
// (Regression: the outcome was once recorded with the request context, which
// net/http cancels when the client leaves, so a retry ran the request again.)
func TestIdempotencyClientGone(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := seed(t, "template-send-request.json")
	const key = "client-gone"
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/messages", bytes.NewReader(body))
	req.RemoteAddr = "127.0.0.1:40000"
	req.Header.Set("Idempotency-Key", key)
	w := &cancelOnWrite{ResponseRecorder: httptest.NewRecorder(), cancel: cancel}
	b.handler.ServeHTTP(w, req)
	if w.Code != http.StatusAccepted {
		t.Fatalf("first POST = %d %s, want 202", w.Code, w.Body)
	}
	first := reply{status: w.Code, header: w.Header(), body: w.Body.Bytes()}

	retry := b.do(t, http.MethodPost, "/v1/messages", body, "Idempotency-Key", key)
	checkReplay(t, first, retry)
	if n := len(recordIDs(t, b)); n != 1 {
		t.Errorf("%d records, want 1", n)
	}
}

// stalledSubmit fails the next Submit as a stalled Redis does, and takes the
// idempotency store down with it for the first release attempt.
type stalledSubmit struct {
	api.Submitter
	stall *stallingIdem
	once  sync.Once
}

func (s *stalledSubmit) Submit(ctx context.Context, m delivery.NewMessage) (delivery.State, error) {
	failed := false
	s.once.Do(func() { failed = true; s.stall.failAborts.Store(1) })
	if failed {
		return "", errors.New("redis: i/o timeout")
	}
	return s.Submitter.Submit(ctx, m)
}

// stallingIdem fails the first failAborts releases, then recovers.
type stallingIdem struct {
	api.Idempotency
	failAborts atomic.Int32
}

func (s *stallingIdem) Abort(ctx context.Context, c *idempotency.Claim) error {
	if s.failAborts.Add(-1) >= 0 {
		return errors.New("redis: i/o timeout")
	}
	return s.Idempotency.Abort(ctx, c)
}

// TestIdempotencyKeyFreeAfterStall: a request answered 503 "nothing was
// accepted" during a Redis stall frees its Idempotency-Key, even when the
// first release fails as well (the stall was still on): the client's
// immediate retry runs and is accepted, it does not meet
// idempotency_in_progress until the lease lapses (issue 17, item 6).
func TestIdempotencyKeyFreeAfterStall(t *testing.T) {
	t.Parallel()
	var idem *stallingIdem
	b := setup(t, func(d *api.Deps) {
		idem = &stallingIdem{Idempotency: d.Idem}
		d.Idem = idem
		d.Submit = &stalledSubmit{Submitter: d.Submit, stall: idem}
	})
	body := seed(t, "template-send-request.json")
	const key = "stalled-order-17"
	first := b.do(t, http.MethodPost, "/v1/messages", body, "Idempotency-Key", key)
	if first.status != http.StatusServiceUnavailable {
		t.Fatalf("POST during the stall = %d %s, want 503", first.status, first.body)
	}
	if idem.failAborts.Load() == 1 {
		t.Fatal("the release was not attempted")
	}
	retry := b.do(t, http.MethodPost, "/v1/messages", body, "Idempotency-Key", key)
	if retry.status != http.StatusAccepted || retry.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("immediate retry = %d %s, want a fresh 202 (the key must be free)", retry.status, retry.body)
	}
	checkReplay(t, retry, b.do(t, http.MethodPost, "/v1/messages", body, "Idempotency-Key", key))
	if n := len(recordIDs(t, b)); n != 1 {
		t.Errorf("%d records, want 1", n)
	}
}
