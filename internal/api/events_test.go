package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/webhook"
)

type sseEvent struct{ id, event, data string }

type eventsBundle struct {
	rdb     *redis.Client
	url     string
	metrics *api.EventsMetrics
	reg     *prometheus.Registry
}

func setupEvents(t *testing.T, opts ...func(*api.Deps)) *eventsBundle {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	reg := prometheus.NewRegistry()
	m := api.NewEventsMetrics(reg)
	d := api.Deps{
		Events:          rdb,
		EventsKeepalive: 100 * time.Millisecond,
		EventsMetrics:   m,
		Apps:            []api.App{{Name: "default"}, {Name: "shop"}},
		Logger:          logging.New(io.Discard, "debug", "json"),
	}
	for _, o := range opts {
		o(&d)
	}
	ts := httptest.NewServer(api.New(d).Handler())
	t.Cleanup(ts.Close)
	return &eventsBundle{rdb: rdb, url: ts.URL, metrics: m, reg: reg}
}

// add appends an event of app to the stream and returns its id.
func (b *eventsBundle) add(t *testing.T, app, msg, state string, seq int64) string {
	t.Helper()
	e := webhook.Event{ID: msg, App: app, State: state, Seq: seq, At: time.Now()}
	raw, _ := json.Marshal(e)
	id, err := b.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: webhook.EventsStream,
		Values: []string{"e", string(raw)}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// open starts a stream and returns its events (comments as event "comment").
func (b *eventsBundle) open(t *testing.T, ctx context.Context, query string, header http.Header) (<-chan sseEvent, *http.Response) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.url+"/v1/events"+query, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, resp
	}
	ch := make(chan sseEvent, 100)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev != (sseEvent{}) {
					ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
				ch <- sseEvent{event: "comment", data: strings.TrimSpace(line[1:])}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			case strings.HasPrefix(line, "retry: "):
				ev.event = "retry"
			}
		}
	}()
	return ch, resp
}

// next returns the next status or gap event, skipping comments and retry.
func next(t *testing.T, ch <-chan sseEvent) sseEvent {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("stream ended")
			}
			if ev.event == "comment" || ev.event == "retry" {
				continue
			}
			return ev
		case <-deadline:
			t.Fatal("no event within 10s")
		}
	}
}

func waitClients(t *testing.T, m *api.EventsMetrics, want float64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); testutil.ToFloat64(m.Clients) != want; {
		if time.Now().After(deadline) {
			t.Fatalf("wxpush_events_stream_clients = %v, want %v", testutil.ToFloat64(m.Clients), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEventsStreamInOrderFilteredAndResumable(t *testing.T) {
	b := setupEvents(t)
	old := b.add(t, "default", "before", "sent", 1) // before the stream opens: not sent
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, resp := b.open(t, ctx, "?app=shop", nil)
	if ch == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	waitClients(t, b.metrics, 1)
	var ids []string
	for i := range 5 {
		ids = append(ids, b.add(t, "shop", fmt.Sprint("m", i), "sent", int64(i+1)))
		b.add(t, "default", fmt.Sprint("d", i), "sent", int64(i+1))
	}
	for i, id := range ids {
		ev := next(t, ch)
		var e webhook.Event
		if err := json.Unmarshal([]byte(ev.data), &e); err != nil {
			t.Fatalf("data %q: %v", ev.data, err)
		}
		if ev.id != id || ev.event != "status" || e.App != "shop" || e.ID != fmt.Sprint("m", i) {
			t.Fatalf("event %d = %+v (%+v), want id %s of app shop", i, ev, e, id)
		}
	}
	_ = old

	// Resume after the second shop event: exactly the later ones (both apps).
	ch2, resp := b.open(t, ctx, "", http.Header{"Last-Event-ID": {ids[1]}})
	if ch2 == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	all, err := b.rdb.XRange(ctx, webhook.EventsStream, "("+ids[1], "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range all {
		if ev := next(t, ch2); ev.id != m.ID {
			t.Fatalf("resumed event = %s, want %s", ev.id, m.ID)
		}
	}
	// ?last_event_id= and the comma list work too.
	ch3, resp := b.open(t, ctx, "?app=default,shop&last_event_id="+ids[3], nil)
	if ch3 == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ev := next(t, ch3); ev.id <= ids[3] {
		t.Fatalf("first resumed event %s is not after %s", ev.id, ids[3])
	}

	// Disconnecting ends every handler.
	cancel()
	waitClients(t, b.metrics, 0)
}

func TestEventsStreamGapAndKeepalive(t *testing.T) {
	b := setupEvents(t)
	first := b.add(t, "default", "a", "sent", 1)
	second := b.add(t, "default", "a", "delivered", 2)
	// Trim the first: a client that had seen an earlier id missed entries.
	if err := b.rdb.XTrimMaxLen(t.Context(), webhook.EventsStream, 1).Err(); err != nil {
		t.Fatal(err)
	}
	ch, resp := b.open(t, t.Context(), "", http.Header{"Last-Event-ID": {"1-0"}})
	if ch == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ev := next(t, ch); ev.event != "gap" {
		t.Fatalf("first event = %+v, want a gap", ev)
	}
	if ev := next(t, ch); ev.id != second {
		t.Fatalf("after the gap = %+v, want %s (not the trimmed %s)", ev, second, first)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-ch:
			if ev.event == "comment" && ev.data == "keepalive" {
				return
			}
		case <-deadline:
			t.Fatal("no keepalive")
		}
	}
}

func TestEventsStreamRefusals(t *testing.T) {
	b := setupEvents(t, func(d *api.Deps) { d.MaxEventStreams = 1 })
	for _, c := range []struct {
		query, field string
		header       http.Header
	}{
		{"?app=nope", "app", nil},
		{"?last_event_id=x-1", "last_event_id", nil},
		{"", "Last-Event-ID", http.Header{"Last-Event-ID": {"12-x"}}},
	} {
		_, resp := b.open(t, t.Context(), c.query, c.header)
		var body struct {
			Error struct{ Code, Field string }
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || body.Error.Field != c.field {
			t.Errorf("%s %v: %d %+v, want 400 naming %s", c.query, c.header, resp.StatusCode, body.Error, c.field)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if ch, resp := b.open(t, ctx, "", nil); ch == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	waitClients(t, b.metrics, 1)
	_, resp := b.open(t, t.Context(), "", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a stream past the bound: %d, want 503", resp.StatusCode)
	}
	cancel()
	waitClients(t, b.metrics, 0)
	if probs, err := testutil.GatherAndLint(b.reg); err != nil || len(probs) > 0 {
		t.Errorf("promlint: %v %v", probs, err)
	}
}

// TestEventsStreamOutlivesWriteTimeout: the server's WriteTimeout would cut a
// stream; each write extends the deadline.
func TestEventsStreamOutlivesWriteTimeout(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	m := api.NewEventsMetrics(prometheus.NewRegistry())
	ts := httptest.NewUnstartedServer(api.New(api.Deps{Events: rdb, EventsKeepalive: 50 * time.Millisecond, EventsMetrics: m,
		Apps: []api.App{{Name: "default"}}, Logger: logging.New(io.Discard, "debug", "json")}).Handler())
	ts.Config.WriteTimeout = 300 * time.Millisecond
	ts.Start()
	t.Cleanup(ts.Close)
	b := &eventsBundle{rdb: rdb, url: ts.URL, metrics: m}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, resp := b.open(t, ctx, "", nil)
	if ch == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// Keepalives for three WriteTimeouts, then an event must still arrive.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		select {
		case _, ok := <-ch:
			if !ok {
				t.Fatal("the stream ended at the server's WriteTimeout")
			}
		case <-time.After(time.Until(deadline)):
		}
	}
	id := b.add(t, "default", "late", "sent", 1)
	if ev := next(t, ch); ev.id != id {
		t.Fatalf("event = %+v, want %s", ev, id)
	}
	cancel()
	waitClients(t, m, 0)
}
