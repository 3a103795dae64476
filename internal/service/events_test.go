package service_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/service"
	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/webhook"
)

// TestEventStreamWired: the enqueuer serves GET /v1/events from the global
// event stream, and the dead-webhook list answers (the routes are wired, not
// 404 not_configured).
func TestEventStreamWired(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{})
	rdb := c.Redis.Client(t)
	id, err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: webhook.EventsStream,
		Values: map[string]any{"e": `{"event_id":"x","id":"Y1","app":"default","state":"sent","seq":1}`}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, c.API+"/v1/events", nil)
	req.Header.Set("Last-Event-ID", "0-0")
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("GET /v1/events = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if sc.Text() == "id: "+id {
			break
		}
	}
	if sc.Err() != nil {
		t.Fatalf("stream ended before event %s: %v", id, sc.Err())
	}
	if code, body := servicetest.Do(t, http.MethodGet, c.API+"/v1/webhooks/dead", ""); code != http.StatusOK {
		t.Errorf("GET /v1/webhooks/dead = %d %s, want 200", code, body)
	}
}

// TestShutdownEndsEventStreams: an enqueuer with a client still listening on
// GET /v1/events stops promptly and cleanly: its open streams are closed at
// shutdown instead of holding the graceful shutdown until its deadline.
func TestShutdownEndsEventStreams(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{})
	env := c.Env(t)
	addr := servicetest.FreeAddr(t)
	env["WXPUSH_HTTP_ADDR"] = addr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- service.RunEnqueuer(ctx, func(k string) string { return env[k] }, io.Discard, io.Discard)
	}()
	servicetest.WaitHTTP(t, "http://"+addr+"/healthz")
	resp, err := http.Get("http://" + addr + "/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/events = %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("enqueuer with an open event stream stopped with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("enqueuer did not stop")
	}
}
