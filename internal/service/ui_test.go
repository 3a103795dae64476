package service_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/servicetest"
)

// TestWebUI: asynqmon is served under /ui on the enqueuer, read-only, and shows
// task payloads with openids masked.
func TestWebUI(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{})
	const openID = "oia2TjuEGTNoeX76QEjQNrcURxG8"
	sendAt := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	servicetest.PostMessage(t, c.API, `{"touser":"`+openID+`","template_id":"T1","send_at":"`+sendAt+`","data":{"thing1":{"value":"v"}}}`)

	code, body := servicetest.Do(t, http.MethodGet, c.API+"/ui/", "")
	if code != http.StatusOK || !strings.Contains(body, "<html") {
		t.Fatalf("GET /ui/ = %d %.200s", code, body)
	}
	code, body = servicetest.Do(t, http.MethodGet, c.API+"/ui/api/queues/normal/scheduled_tasks", "")
	if code != http.StatusOK || !strings.Contains(body, "oia2****G8") {
		t.Fatalf("scheduled tasks = %d %.300s; want the task with its openid masked", code, body)
	}
	if strings.Contains(body, openID) {
		t.Errorf("the UI shows a full openid: %.300s", body)
	}
	if code, _ := servicetest.Do(t, http.MethodDelete, c.API+"/ui/api/queues/normal", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("a write through the read-only UI = %d, want 405", code)
	}
}

// TestWebUIBehindAPIKeys: with API keys the UI needs one, like the API.
func TestWebUIBehindAPIKeys(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Env: map[string]string{"WXPUSH_API_KEYS": "ui-key-1"}})
	if code, _ := servicetest.Do(t, http.MethodGet, c.API+"/ui/", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /ui/ without a key = %d, want 401", code)
	}
	req, _ := http.NewRequest(http.MethodGet, c.API+"/ui/api/queues", nil)
	req.Header.Set("Authorization", "Bearer ui-key-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /ui/api/queues with the key = %d, want 200", resp.StatusCode)
	}
}

// TestAPIRateLimitPerKey: each API key gets its own request rate, shared by all
// enqueuers; past it the API answers 429 with Retry-After, and another key is
// not affected.
func TestAPIRateLimitPerKey(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Env: map[string]string{
		"WXPUSH_API_KEYS": "key-one,key-two", "WXPUSH_API_RATE": "1", "WXPUSH_API_BURST": "3"}})
	get := func(key string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, c.API+"/v1/messages/nope", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i := 0; i < 3; i++ {
		if resp := get("key-one"); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("request %d within the burst = %d, want 404", i, resp.StatusCode)
		}
	}
	resp := get("key-one")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("past the burst = %d (Retry-After %q), want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if resp := get("key-two"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("another key = %d, want its own budget", resp.StatusCode)
	}
	if code, _ := servicetest.Do(t, http.MethodGet, c.API+"/healthz", ""); code != http.StatusOK {
		t.Errorf("healthz is rate limited: %d", code)
	}
}
