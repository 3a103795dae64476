package service_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	wxclient "github.com/wxpush/wxpush/client"
	"github.com/wxpush/wxpush/internal/servicetest"
)

const hookSecret = "e2e-webhook-secret-0123456789"

// hookSink is a receiver that verifies each webhook with the client's
// VerifyWebhook and keeps the events.
type hookSink struct {
	t      *testing.T
	mu     sync.Mutex
	events []wxclient.WebhookEvent
}

func (h *hookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := wxclient.VerifyWebhook([]byte(hookSecret), r.Header.Get(wxclient.WebhookSignatureHeader), body, time.Minute, time.Now()); err != nil {
		h.t.Errorf("webhook: %v", err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var ev wxclient.WebhookEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		h.t.Errorf("webhook body %q: %v", body, err)
	}
	h.mu.Lock()
	h.events = append(h.events, ev)
	h.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (h *hookSink) byMessage() map[string][]wxclient.WebhookEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string][]wxclient.WebhookEvent{}
	for _, ev := range h.events {
		out[ev.ID] = append(out[ev.ID], ev)
	}
	return out
}

func withStatusURL(t *testing.T, openID, url string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(servicetest.MessageBody(openID)), &m); err != nil {
		t.Fatal(err)
	}
	m["status_url"] = url
	b, _ := json.Marshal(m)
	return string(b)
}

// TestWebhooksEndToEnd: messages that end in each final state WeChat
// decides (delivered, user_blocked, wechat_failed, rejected) POST their sent
// and final events to their status_url, signed with the app's secret, in
// order, with the documented body.
func TestWebhooksEndToEnd(t *testing.T) {
	t.Parallel()
	sink := &hookSink{t: t}
	recv := httptest.NewServer(sink)
	defer recv.Close()
	c := servicetest.Start(t, servicetest.Options{
		Workers: 1,
		Rules:   "block_*=user_block,fail_*=system_failed,nf_*=not_following,*=success",
		Env: map[string]string{"WXPUSH_WEBHOOK_SECRET": hookSecret, "WXPUSH_WEBHOOK_ALLOW_PRIVATE": "true",
			"WXPUSH_WEBHOOK_RETRY_BASE": "50ms", "WXPUSH_WEBHOOK_RETRY_CAP": "200ms"},
	})
	want := map[string][]string{} // message id → states in order
	for _, tc := range []struct{ openID, final string }{
		{"ok_1", "delivered"}, {"ok_2", "delivered"}, {"block_1", "user_blocked"},
		{"fail_1", "wechat_failed"}, {"nf_1", "rejected"},
	} {
		code, body := servicetest.Do(t, http.MethodPost, c.API+"/v1/messages", withStatusURL(t, tc.openID, recv.URL+"/hooks/wx?src=e2e"))
		if code != http.StatusAccepted {
			t.Fatalf("POST %s: %d %s", tc.openID, code, body)
		}
		var r struct{ ID string }
		_ = json.Unmarshal([]byte(body), &r)
		want[r.ID] = []string{"sent", tc.final}
		if tc.final == "rejected" {
			want[r.ID] = []string{"rejected"}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := sink.byMessage()
		done := len(got) == len(want)
		for id, states := range want {
			done = done && len(got[id]) >= len(states)
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			for n, l := range c.Logs() {
				t.Logf("--- %s\n%s", n, l)
			}
			t.Fatalf("webhooks after 30 s: %+v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for id, evs := range sink.byMessage() {
		states := want[id]
		if len(evs) != len(states) {
			t.Errorf("%s: %d webhooks, want %d (%v): %+v", id, len(evs), len(states), states, evs)
			continue
		}
		for i, ev := range evs {
			if string(ev.State) != states[i] || ev.Seq != int64(i+1) || ev.App != "default" || ev.EventID == "" || ev.At.IsZero() {
				t.Errorf("%s webhook %d = %+v, want state %s seq %d", id, i, ev, states[i], i+1)
			}
			if i > 0 && string(ev.Previous) != states[i-1] {
				t.Errorf("%s webhook %d: previous %q, want %q", id, i, ev.Previous, states[i-1])
			}
		}
		last := evs[len(evs)-1]
		if (last.State == "user_blocked" || last.State == "delivered") && last.WeChatMsgID == "" {
			t.Errorf("%s: final webhook without wechat_msgid: %+v", id, last)
		}
		if last.State == "rejected" && (last.LastError == nil || last.LastError.ErrCode != 43004) {
			t.Errorf("%s: rejected webhook's last_error = %+v, want errcode 43004", id, last.LastError)
		}
	}
}

// TestStatusURLRefused: a status_url that is not http(s), targets a private
// address, is too long, or names an app without a webhook secret is a 400
// naming status_url, and nothing is enqueued.
func TestStatusURLRefused(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Env: map[string]string{"WXPUSH_WEBHOOK_SECRET": hookSecret}})
	noSecret := servicetest.Start(t, servicetest.Options{})
	for name, tc := range map[string]struct {
		api, url string
	}{
		"scheme":    {c.API, "ftp://hooks.example.com/x"},
		"loopback":  {c.API, "http://127.0.0.1:8080/hook"},
		"metadata":  {c.API, "http://169.254.169.254/latest/meta-data"},
		"localhost": {c.API, "http://localhost/hook"},
		"long":      {c.API, "https://hooks.example.com/" + strings.Repeat("a", 3000)},
		"no secret": {noSecret.API, "https://hooks.example.com/x"},
	} {
		code, body := servicetest.Do(t, http.MethodPost, tc.api+"/v1/messages", withStatusURL(t, "u_"+strings.ReplaceAll(name, " ", "_"), tc.url))
		var e struct {
			Error struct{ Code, Field string }
		}
		_ = json.Unmarshal([]byte(body), &e)
		if code != http.StatusBadRequest || e.Error.Field != "status_url" {
			t.Errorf("%s: %d %s, want 400 naming status_url", name, code, body)
		}
		batch := fmt.Sprintf(`{"messages":[%s]}`, withStatusURL(t, "u_batch", tc.url))
		code, body = servicetest.Do(t, http.MethodPost, tc.api+"/v1/messages/batch", batch)
		if !strings.Contains(body, `"field":"messages[0].status_url"`) {
			t.Errorf("%s in a batch: %d %s, want an item error naming messages[0].status_url", name, code, body)
		}
	}
	if n := servicetest.SumSeries(t, []string{c.API + "/metrics"}, "wxpush_messages_enqueued_total"); n != 0 {
		t.Errorf("%v messages enqueued, want 0", n)
	}
}
