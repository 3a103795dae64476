package service_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
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

// TestEventStreamCarriesStateChanges: a message's state changes reach GET
// /v1/events end to end (the scripts' outbox, the worker's forwarder): sent
// then delivered, numbered 1 and 2, each event's event_id its SSE id.
func TestEventStreamCarriesStateChanges(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Workers: 1})
	id := servicetest.PostMessage(t, c.API, servicetest.MessageBody("oEvents1"))
	servicetest.WaitFinal(t, c.API, id, 20*time.Second)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, c.API+"/v1/events", nil)
	req.Header.Set("Last-Event-ID", "0-0")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []string
	sc := bufio.NewScanner(resp.Body)
	sseID := ""
	for len(got) < 2 && sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "id: "); ok {
			sseID = v
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var ev struct {
			EventID  string `json:"event_id"`
			ID       string `json:"id"`
			State    string `json:"state"`
			Previous string `json:"previous"`
			Seq      int64  `json:"seq"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			t.Fatalf("event %q: %v", data, err)
		}
		if ev.ID != id {
			continue
		}
		if ev.EventID != sseID {
			t.Errorf("event_id %q, SSE id %q: want the same", ev.EventID, sseID)
		}
		got = append(got, fmt.Sprintf("%d %s→%s", ev.Seq, ev.Previous, ev.State))
	}
	if want := []string{"1 queued→sent", "2 sent→delivered"}; strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("events of %s = %v, want %v", id, got, want)
	}
}
