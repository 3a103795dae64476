package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/webhook"
)

// fakeDead stands in for webhook.DeadLetters.
type fakeDead struct {
	mu       sync.Mutex
	events   []webhook.DeadEvent
	replayed []string
	failApp  string // List of this app fails
}

func (f *fakeDead) List(_ context.Context, app string, offset, limit int) (webhook.DeadPage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var p webhook.DeadPage
	if app != "" && app == f.failApp {
		return p, errors.New("redis down")
	}
	for _, d := range f.events {
		if app != "" && d.Event.App != app {
			continue
		}
		if p.Total >= offset && len(p.Events) < limit {
			p.Events = append(p.Events, d)
		}
		p.Total++
	}
	return p, nil
}

func (f *fakeDead) Replay(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id == "9-9" {
		return errors.New("redis down")
	}
	for i, d := range f.events {
		if d.Event.EventID == id {
			f.events = append(f.events[:i], f.events[i+1:]...)
			f.replayed = append(f.replayed, id)
			return nil
		}
	}
	return webhook.ErrNotFound
}

func webhooksServer(t *testing.T, dead api.DeadWebhooks) string {
	t.Helper()
	d := api.Deps{Apps: []api.App{{Name: "default"}, {Name: "shop"}}, Logger: logging.New(io.Discard, "debug", "json")}
	if dead != nil {
		d.Webhooks = dead
	}
	ts := httptest.NewServer(api.New(d).Handler())
	t.Cleanup(ts.Close)
	return ts.URL
}

func getJSON(t *testing.T, method, url string, v any) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

type deadBody struct {
	Total  int `json:"total"`
	Events []struct {
		Event     webhook.Event `json:"event"`
		URL       string        `json:"url"`
		LastError string        `json:"last_error"`
		Attempts  int           `json:"attempts"`
		DiedAt    time.Time     `json:"died_at"`
	} `json:"events"`
	NextOffset *int `json:"next_offset"`
	Error      struct{ Code, Field string }
}

func TestDeadWebhooksListAndReplay(t *testing.T) {
	died := time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC)
	f := &fakeDead{}
	for i, app := range []string{"shop", "default", "shop"} {
		id := []string{"1-0", "2-0", "3-0"}[i]
		f.events = append(f.events, webhook.DeadEvent{
			Event: webhook.Event{EventID: id, ID: "m" + id, App: app, State: "dead", Seq: 3},
			URL:   "https://user:pw@hooks.example.com/wx?token=s3cret#frag", LastError: "status 500",
			Attempts: 17, DiedAt: died})
	}
	url := webhooksServer(t, f)

	var b deadBody
	if st := getJSON(t, "GET", url+"/v1/webhooks/dead?app=shop&limit=1", &b); st != 200 {
		t.Fatalf("status %d", st)
	}
	if b.Total != 2 || len(b.Events) != 1 || b.NextOffset == nil || *b.NextOffset != 1 {
		t.Fatalf("page = %+v", b)
	}
	e := b.Events[0]
	if e.Event.EventID != "1-0" || e.Attempts != 17 || e.LastError != "status 500" || !e.DiedAt.Equal(died) {
		t.Errorf("event = %+v", e)
	}
	if e.URL != "https://hooks.example.com/wx" {
		t.Errorf("url = %q: userinfo, query and fragment must go", e.URL)
	}
	b = deadBody{}
	getJSON(t, "GET", url+"/v1/webhooks/dead?app=shop&offset=1", &b)
	if b.Total != 2 || len(b.Events) != 1 || b.Events[0].Event.EventID != "3-0" || b.NextOffset != nil {
		t.Errorf("second page = %+v", b)
	}
	b = deadBody{}
	if getJSON(t, "GET", url+"/v1/webhooks/dead", &b); b.Total != 3 {
		t.Errorf("all apps: total %d", b.Total)
	}
	for q, field := range map[string]string{"?app=nope": "app", "?limit=0": "limit", "?offset=-1": "offset"} {
		b = deadBody{}
		if st := getJSON(t, "GET", url+"/v1/webhooks/dead"+q, &b); st != 400 || b.Error.Field != field {
			t.Errorf("%s: %d %+v, want 400 naming %s", q, st, b.Error, field)
		}
	}

	if st := getJSON(t, "POST", url+"/v1/webhooks/dead/2-0/replay", nil); st != http.StatusAccepted {
		t.Errorf("replay: %d", st)
	}
	if strings.Join(f.replayed, ",") != "2-0" {
		t.Errorf("replayed %v", f.replayed)
	}
	b = deadBody{}
	if st := getJSON(t, "POST", url+"/v1/webhooks/dead/2-0/replay", &b); st != 404 || b.Error.Field != "event_id" {
		t.Errorf("replay again: %d %+v, want 404", st, b.Error)
	}
	if st := getJSON(t, "POST", url+"/v1/webhooks/dead/bogus/replay", &b); st != 400 {
		t.Errorf("bad id: %d, want 400", st)
	}
}

func TestDeadWebhooksNotConfigured(t *testing.T) {
	url := webhooksServer(t, nil)
	var b deadBody
	if st := getJSON(t, "GET", url+"/v1/webhooks/dead", &b); st != 404 || b.Error.Code != "not_configured" {
		t.Errorf("%d %+v", st, b.Error)
	}
}
