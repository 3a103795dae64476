package cli

import (
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/webhook"
)

// deadList stands in for webhook.DeadLetters behind the real API handler.
type deadList struct {
	mu     sync.Mutex
	events []webhook.DeadEvent
}

func (d *deadList) List(_ context.Context, app string, offset, limit int) (webhook.DeadPage, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var p webhook.DeadPage
	for _, e := range d.events {
		if app != "" && e.Event.App != app {
			continue
		}
		if p.Total >= offset && len(p.Events) < limit {
			p.Events = append(p.Events, e)
		}
		p.Total++
	}
	return p, nil
}

func (d *deadList) Replay(_ context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, e := range d.events {
		if e.Event.EventID == id {
			d.events = append(d.events[:i], d.events[i+1:]...)
			return nil
		}
	}
	return webhook.ErrNotFound
}

func TestWebhookCommands(t *testing.T) {
	t.Parallel()
	dl := &deadList{}
	for i, app := range []string{"shop", "default", "shop"} {
		id := []string{"1-0", "2-0", "3-0"}[i]
		dl.events = append(dl.events, webhook.DeadEvent{Event: webhook.Event{EventID: id, ID: "MSG" + id, App: app, State: "dead"},
			URL: "https://hooks.example.com/wx?token=s3cret", LastError: "status 503", Attempts: 17, DiedAt: time.Now()})
	}
	ts := httptest.NewServer(api.New(api.Deps{Apps: []api.App{{Name: "default"}, {Name: "shop"}},
		Webhooks: dl, Logger: logging.New(io.Discard, "debug", "json")}).Handler())
	defer ts.Close()

	r := wxpush(t, ts.URL, "", "webhooks", "dead", "-app", "shop", "-limit", "1")
	if r.code != 0 || !strings.Contains(r.stdout, "1-0") || strings.Contains(r.stdout, "3-0") ||
		!strings.Contains(r.stdout, "1-1 of 2 dead webhooks of app shop") ||
		!strings.Contains(r.stdout, "next page: wxpush webhooks dead -app shop -offset 1") {
		t.Errorf("webhooks dead: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout, "s3cret") {
		t.Errorf("the receiver URL's query is shown:\n%s", r.stdout)
	}
	r = wxpush(t, ts.URL, "", "-json", "webhooks", "dead")
	var page struct {
		Total  int `json:"total"`
		Events []struct {
			Event struct {
				EventID string `json:"event_id"`
			} `json:"event"`
		} `json:"events"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &page); err != nil || r.code != 0 || page.Total != 3 || len(page.Events) != 3 {
		t.Errorf("-json webhooks dead: exit %d, %v\n%s", r.code, err, r.stdout)
	}

	if r = wxpush(t, ts.URL, "", "webhooks", "replay", "2-0"); r.code != 0 || r.stdout != "2-0 replaying\n" {
		t.Errorf("webhooks replay: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r = wxpush(t, ts.URL, "", "webhooks", "replay", "2-0"); r.code != 1 || !strings.Contains(r.stderr, "no dead webhook") {
		t.Errorf("replay again: exit %d %q", r.code, r.stderr)
	}
	if r = wxpush(t, ts.URL, "", "webhooks", "dead"); !strings.Contains(r.stdout, "1-2 of 2 dead webhooks of any app") {
		t.Errorf("after the replay:\n%s", r.stdout)
	}
	for _, args := range [][]string{{"webhooks"}, {"webhooks", "nope"}, {"webhooks", "replay"}, {"webhooks", "dead", "extra"}} {
		if r = wxpush(t, ts.URL, "", args...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage)", args, r.code)
		}
	}
	if r = wxpush(t, ts.URL, "", "webhooks", "-h"); r.code != 0 || !strings.Contains(r.stdout, "usage: wxpush webhooks <command>") {
		t.Errorf("webhooks -h: exit %d %q", r.code, r.stdout)
	}
}
