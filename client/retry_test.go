package client_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxpush/wxpush/client"
)

// reply is one scripted answer; hangup closes the connection without one.
type reply struct {
	status     int
	retryAfter string
	body       string
	hangup     bool
}

// TestRetryPolicy drives the retry loop against scripted answers (the last
// one repeats), without a deployment.
func TestRetryPolicy(t *testing.T) {
	t.Parallel()
	ok := reply{status: 202, body: `{"id":"01A","state":"queued"}`}
	busy := reply{status: 503, retryAfter: "0", body: `{"error":{"code":"storage_unavailable","message":"the message store (Redis) is unreachable"}}`}
	tests := []struct {
		name         string
		replies      []reply
		retries      int
		timeout      time.Duration // 0: none
		wantRequests int
		wantStatus   int    // of the *Error; 0 = success
		wantCode     string // of the *Error
	}{
		{"503 then success", []reply{busy, ok}, 3, 0, 2, 0, ""},
		{"429 then success", []reply{{status: 429, retryAfter: "0", body: `{"error":{"code":"backlog_full","message":"full","field":"app"}}`}, ok}, 3, 0, 2, 0, ""},
		{"502 from a proxy, HTML body", []reply{{status: 502, body: "<html>bad gateway</html>"}, ok}, 3, 0, 2, 0, ""},
		{"connection dropped", []reply{{hangup: true}, ok}, 3, 0, 2, 0, ""},
		{"first request still running", []reply{{status: 409, retryAfter: "0", body: `{"error":{"code":"idempotency_in_progress","message":"running","field":"Idempotency-Key"}}`}, ok}, 3, 0, 2, 0, ""},
		{"503 until the retries run out", []reply{busy}, 2, 0, 3, 503, "storage_unavailable"},
		{"no retries", []reply{busy}, 0, 0, 1, 503, "storage_unavailable"},
		{"400 is final", []reply{{status: 400, body: `{"error":{"code":"required","message":"touser is required","field":"touser"}}`}, ok}, 3, 0, 1, 400, "required"},
		{"409 key reused is final", []reply{{status: 409, body: `{"error":{"code":"idempotency_key_reused","message":"reused","field":"Idempotency-Key"}}`}, ok}, 3, 0, 1, 409, "idempotency_key_reused"},
		{"Retry-After beyond the deadline", []reply{{status: 429, retryAfter: "60", body: `{"error":{"code":"backlog_full","message":"full","field":"app"}}`}, ok}, 3, 2 * time.Second, 1, 429, "backlog_full"},
		{"500 without envelope", []reply{{status: 500, body: "boom"}}, 3, 0, 1, 500, "http_500"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			var keys []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				n := len(keys)
				keys = append(keys, r.Header.Get("Idempotency-Key"))
				mu.Unlock()
				rp := tt.replies[min(n, len(tt.replies)-1)]
				if rp.hangup {
					conn, _, _ := w.(http.Hijacker).Hijack()
					conn.Close()
					return
				}
				if rp.retryAfter != "" {
					w.Header().Set("Retry-After", rp.retryAfter)
				}
				w.WriteHeader(rp.status)
				_, _ = io.WriteString(w, rp.body)
			}))
			t.Cleanup(srv.Close)
			cl, err := client.New(srv.URL, client.WithRetries(tt.retries, time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			began := time.Now()
			a, err := cl.Send(ctx, msg("u"))
			mu.Lock()
			defer mu.Unlock()
			if len(keys) != tt.wantRequests {
				t.Errorf("%d requests, want %d", len(keys), tt.wantRequests)
			}
			for _, k := range keys {
				if k == "" || k != keys[0] {
					t.Errorf("Idempotency-Keys = %q, want one non-empty key", keys)
					break
				}
			}
			if tt.wantStatus == 0 {
				if err != nil || a.ID != "01A" {
					t.Errorf("Send = %+v, %v", a, err)
				}
				return
			}
			var e *client.Error
			if !errors.As(err, &e) || e.HTTPStatus != tt.wantStatus || e.Code != tt.wantCode {
				t.Errorf("error = %v (%+v), want %d %s", err, e, tt.wantStatus, tt.wantCode)
			}
			if tt.timeout > 0 && time.Since(began) > tt.timeout/2 {
				t.Errorf("gave up after %v; a Retry-After beyond the deadline should end the call at once", time.Since(began))
			}
		})
	}
}

// TestCanceledWhileWaiting: canceling the context ends the wait for a retry,
// and the error still carries the server's answer.
func TestCanceledWhileWaiting(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(503)
		_, _ = io.WriteString(w, `{"error":{"code":"storage_unavailable","message":"down"}}`)
	}))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The client closes the body once it has read the answer, just before it
	// waits: cancel then, and the wait must end at once.
	hc := &http.Client{Transport: roundTripper(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err == nil {
			resp.Body = closeHook{resp.Body, cancel}
		}
		return resp, err
	})}
	cl, _ := client.New(srv.URL, client.WithHTTPClient(hc))
	began := time.Now()
	_, err := cl.Status(ctx, "01A")
	var e *client.Error
	if !errors.As(err, &e) || e.HTTPStatus != 503 || !errors.Is(err, context.Canceled) {
		t.Errorf("error = %v, want the 503 and context.Canceled", err)
	}
	if time.Since(began) > 10*time.Second {
		t.Errorf("Status took %v after its context was canceled", time.Since(began))
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type closeHook struct {
	io.ReadCloser
	hook func()
}

func (c closeHook) Close() error {
	err := c.ReadCloser.Close()
	c.hook()
	return err
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, url, wantErr string
	}{
		{"plain", "http://127.0.0.1:8080", ""},
		{"path prefix and slash", "https://gw.example.com/wxpush/", ""},
		{"no scheme", "127.0.0.1:8080", "server URL"},
		{"other scheme", "ftp://example.com", "server URL"},
		{"query", "http://example.com/?a=1", "server URL"},
		{"password is not echoed", "ftp://user:hunter2@example.com", "server URL"},
		{"unparsable password is not echoed", "http://user:hunter2@exa mple.com:x", "server URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := client.New(tt.url)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("New(%q) = %v", tt.url, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("New(%q) = %v, want an error about %s", tt.url, err, tt.wantErr)
			case err != nil && strings.Contains(err.Error(), "hunter2"):
				t.Errorf("error reveals the password: %v", err)
			}
		})
	}
}
