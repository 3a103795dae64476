package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/secret"
)

// recordingSubmitter accepts every message and remembers it. POST /v1/messages
// needs only Submit; the embedded (nil) interface makes any other method panic,
// which the fuzzer would report.
type recordingSubmitter struct {
	api.Submitter
	mu    sync.Mutex
	calls []delivery.NewMessage
}

func (r *recordingSubmitter) Submit(_ context.Context, m delivery.NewMessage) (delivery.State, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, m)
	return delivery.StateQueued, nil
}

func (r *recordingSubmitter) since(n int) []delivery.NewMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery.NewMessage(nil), r.calls[n:]...)
}

func (r *recordingSubmitter) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// openID is what an accepted touser must be.
var openID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// FuzzCreateMessage feeds arbitrary bodies to POST /v1/messages: the API never
// answers 5xx, every 4xx is the documented JSON error, and a 202 means the message
// was handed to the submitter exactly once, well formed.
func FuzzCreateMessage(f *testing.F) {
	good := seed(f, "template-send-request.json")
	f.Add(good)
	for _, s := range []string{
		``,
		`[]`,
		`null`,
		`{}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v"}}}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":5}}}`,
		`{"touser":"o","template_id":"t","data":{"k":"v"}}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v","x":1}}}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v"}},"app":"shop","priority":"high","send_at":"2030-01-02T15:04:05+08:00","expire_at":"2030-01-03T15:04:05Z"}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v"}},"miniprogram":{"pagepath":"p"}}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v"}},"url":"javascript:x"}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v"}}} trailing`,
		`{"touser":"\ud800","template_id":"t","data":{"\u0000":{"value":"\udfff"}}}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v"}},"ttl":"10m"}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v"}},"ttl":1e300}`,
		// Issue 17: what encoding/json lets through silently, and times past 9999.
		"{\"touser\":\"o\",\"template_id\":\"t\",\"data\":{\"k\":{\"value\":\"\xff\"}}}",
		"{\"touser\":\"o\xc3\",\"template_id\":\"t\",\"data\":{\"k\xe9\":{\"value\":\"v\"}}}",
		`{"touser":"o\u0000x","template_id":"t","data":{"k":{"value":"v"}}}`,
		`{"touser":"o\nx","template_id":"t","data":{"k":{"value":"v"}}}`,
		`{"touser":"o","touser":"p","template_id":"t","data":{"k":{"value":"v"}}}`,
		`{"touser":"o","\u0074ouser":"p","template_id":"t","data":{"k":{"value":"v"}}}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v"},"k":{"value":"w"}}}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v","value":"w"}}}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v"}},"send_at":"9999-12-31T23:00:00-05:00"}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v"}},"expire_at":"9999-12-31T23:59:59-00:01"}`,
		`{"touser":"o","template_id":"t","data":{"k":{"value":"v"}},"send_at":"0000-01-01T00:00:00+01:00"}`,
	} {
		f.Add([]byte(s))
	}

	fake := &recordingSubmitter{}
	reg := prometheus.NewRegistry()
	h := api.New(api.Deps{
		Submit:   fake,
		Apps:     []api.App{{Name: "default", Token: secret.Value(defaultToken)}, {Name: "shop", Token: secret.Value(shopToken)}},
		Metrics:  newMetrics(reg),
		Gatherer: reg,
		Logger:   logging.Discard(),
	}).Handler()

	f.Fuzz(func(t *testing.T, body []byte) {
		before := fake.count()
		req := httptest.NewRequest(http.MethodPost, "/v1/messages", bytes.NewReader(body))
		req.RemoteAddr = "127.0.0.1:40000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		calls := fake.since(before)

		switch {
		case rec.Code >= 500:
			t.Fatalf("status %d for body %q: %s", rec.Code, body, rec.Body)
		case rec.Code == http.StatusAccepted:
			if len(calls) != 1 {
				t.Fatalf("202 with %d Submit calls for body %q", len(calls), body)
			}
			m := calls[0]
			var acc struct{ ID, State string }
			if err := json.Unmarshal(rec.Body.Bytes(), &acc); err != nil || acc.ID != m.ID || acc.State != "queued" {
				t.Fatalf("202 body %s does not name the submitted id %s (%v)", rec.Body, m.ID, err)
			}
			if m.App != "default" && m.App != "shop" {
				t.Fatalf("submitted unknown app %q", m.App)
			}
			if m.Queue != "high" && m.Queue != "normal" && m.Queue != "low" {
				t.Fatalf("submitted unknown queue %q", m.Queue)
			}
			var sent struct {
				ToUser     string                       `json:"touser"`
				TemplateID string                       `json:"template_id"`
				Data       map[string]map[string]string `json:"data"`
			}
			if err := json.Unmarshal(m.Body, &sent); err != nil {
				t.Fatalf("submitted body %q is not a send body: %v", m.Body, err)
			}
			if strings.TrimSpace(sent.ToUser) == "" || strings.TrimSpace(sent.TemplateID) == "" || len(sent.Data) == 0 {
				t.Fatalf("submitted body lacks touser, template_id or data: %s", m.Body)
			}
			if !m.ExpireAt.IsZero() && !m.SendAt.IsZero() && !m.ExpireAt.After(m.SendAt) {
				t.Fatalf("submitted expire_at %v not after send_at %v", m.ExpireAt, m.SendAt)
			}
			// An accepted request was exactly one JSON value, valid UTF-8, for
			// an openid, and its times can be written back.
			if !json.Valid(body) || !utf8.Valid(body) {
				t.Fatalf("202 for a body that is not one valid JSON value: %q", body)
			}
			if !openID.MatchString(sent.ToUser) {
				t.Fatalf("202 for touser %q, not an openid", sent.ToUser)
			}
			if _, err := json.Marshal([]time.Time{m.SendAt, m.ExpireAt}); err != nil {
				t.Fatalf("202 for times that cannot be encoded (%v): %q", err, body)
			}
		case rec.Code >= 400:
			if len(calls) != 0 {
				t.Fatalf("status %d but Submit was called", rec.Code)
			}
			var e struct {
				Error *struct{ Code, Message, Field string } `json:"error"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == nil || e.Error.Code == "" {
				t.Fatalf("status %d without a JSON error code: %q (%v)", rec.Code, rec.Body, err)
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Fatalf("error Content-Type %q", ct)
			}
		default:
			t.Fatalf("unexpected status %d for body %q", rec.Code, body)
		}
	})
}
