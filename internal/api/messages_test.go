package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/tasks"
)

// seedWith returns the seed send request with mutate applied to its top level.
func seedWith(t testing.TB, mutate func(map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(seed(t, "template-send-request.json"), &m); err != nil {
		t.Fatal(err)
	}
	mutate(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withData replaces the seed's data with a single item given as raw JSON.
func withData(t testing.TB, key, raw string) []byte {
	t.Helper()
	return seedWith(t, func(m map[string]any) {
		m["data"] = map[string]json.RawMessage{"Left": json.RawMessage(`{"value":"6504.09"}`), key: json.RawMessage(raw)}
	})
}

// markSent moves message id through Begin and MarkSent with msgID, as a worker would.
func markSent(t *testing.T, b *bundle, id, app string, msgID int64) {
	t.Helper()
	a, err := b.store.Begin(t.Context(), id)
	if err != nil || !a.Proceed {
		t.Fatalf("Begin(%s) = %+v, %v", id, a, err)
	}
	tr, err := b.store.MarkSent(t.Context(), id, app, msgID)
	if err != nil || tr.State != delivery.StateSent {
		t.Fatalf("MarkSent(%s) = %+v, %v", id, tr, err)
	}
}

// queuedTask is one asynq task found in Redis.
type queuedTask struct {
	queue string
	kind  string // pending or scheduled
	info  *asynq.TaskInfo
	msg   tasks.DeliverPayload // deliverTasks: the message, in a delivery or chunk task
}

// allTasks lists every pending and scheduled asynq task in every queue.
func allTasks(t *testing.T, b *bundle) []queuedTask {
	t.Helper()
	queues, err := b.insp.Queues()
	if err != nil {
		t.Fatalf("asynq queues: %v", err)
	}
	var out []queuedTask
	for _, q := range queues {
		pending, err := b.insp.ListPendingTasks(q)
		if err != nil {
			t.Fatalf("pending tasks of %s: %v", q, err)
		}
		for _, ti := range pending {
			out = append(out, queuedTask{queue: q, kind: "pending", info: ti})
		}
		scheduled, err := b.insp.ListScheduledTasks(q)
		if err != nil {
			t.Fatalf("scheduled tasks of %s: %v", q, err)
		}
		for _, ti := range scheduled {
			out = append(out, queuedTask{queue: q, kind: "scheduled", info: ti})
		}
	}
	return out
}

func TestCreateMessage(t *testing.T) {
	t.Parallel()
	sendAt := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	expireAt := time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)
	farSendAt := time.Now().AddDate(0, 0, 364).UTC().Truncate(time.Second)
	tests := []struct {
		name     string
		mutate   func(map[string]any)
		app      string
		queue    string
		kind     string // asynq task kind
		state    delivery.State
		sendAt   time.Time
		expireAt time.Time
	}{
		{name: "seed request", mutate: func(map[string]any) {}, app: "default", queue: "normal", kind: "pending", state: delivery.StateQueued},
		{name: "priority normal", mutate: func(m map[string]any) { m["priority"] = "normal" }, app: "default", queue: "normal", kind: "pending", state: delivery.StateQueued},
		{name: "priority high", mutate: func(m map[string]any) { m["priority"] = "high" }, app: "default", queue: "high", kind: "pending", state: delivery.StateQueued},
		{name: "priority low", mutate: func(m map[string]any) { m["priority"] = "low" }, app: "default", queue: "low", kind: "pending", state: delivery.StateQueued},
		{name: "app shop", mutate: func(m map[string]any) { m["app"] = "shop" }, app: "shop", queue: "normal", kind: "pending", state: delivery.StateQueued},
		{name: "send_at in the future", mutate: func(m map[string]any) { m["send_at"] = sendAt.Format(time.RFC3339) },
			app: "default", queue: "normal", kind: "scheduled", state: delivery.StateScheduled, sendAt: sendAt},
		{name: "send_at in the future, +08:00", mutate: func(m map[string]any) {
			m["send_at"] = sendAt.In(time.FixedZone("CST", 8*3600)).Format(time.RFC3339)
			m["priority"] = "high"
		}, app: "default", queue: "high", kind: "scheduled", state: delivery.StateScheduled, sendAt: sendAt},
		{name: "send_at in the past", mutate: func(m map[string]any) { m["send_at"] = "2020-01-02T15:04:05Z" },
			app: "default", queue: "normal", kind: "pending", state: delivery.StateQueued, sendAt: time.Date(2020, 1, 2, 15, 4, 5, 0, time.UTC)},
		{name: "expire_at in the future", mutate: func(m map[string]any) { m["expire_at"] = expireAt.Format(time.RFC3339) },
			app: "default", queue: "normal", kind: "pending", state: delivery.StateQueued, expireAt: expireAt},
		{name: "send_at 364 days ahead", mutate: func(m map[string]any) { m["send_at"] = farSendAt.Format(time.RFC3339) },
			app: "default", queue: "normal", kind: "scheduled", state: delivery.StateScheduled, sendAt: farSendAt},
		{name: "openid of 64 bytes", mutate: func(m map[string]any) { m["touser"] = strings.Repeat("oA_-9", 12) + "oA_-" },
			app: "default", queue: "normal", kind: "pending", state: delivery.StateQueued},
		{name: "miniprogram", mutate: func(m map[string]any) {
			m["miniprogram"] = map[string]string{"appid": "wx1234567890", "pagepath": "index?foo=bar"}
		}, app: "default", queue: "normal", kind: "pending", state: delivery.StateQueued},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			body := seedWith(t, tt.mutate)
			r := b.do(t, http.MethodPost, "/v1/messages", body, "Content-Type", "application/json")
			if r.status != http.StatusAccepted {
				t.Fatalf("POST = %d %s, want 202", r.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q", ct)
			}
			var acc map[string]any
			if err := json.Unmarshal(r.body, &acc); err != nil {
				t.Fatalf("202 body %s: %v", r.body, err)
			}
			id, _ := acc["id"].(string)
			if len(acc) != 2 || id == "" || acc["state"] != string(tt.state) {
				t.Fatalf(`202 body = %s, want {"id":"…","state":%q}`, r.body, tt.state)
			}

			rec, err := b.store.Get(t.Context(), id)
			if err != nil {
				t.Fatalf("store.Get(%s): %v", id, err)
			}
			if rec.App != tt.app || rec.State != tt.state || rec.Queue != tt.queue || rec.Attempts != 0 {
				t.Errorf("record = app %q state %q queue %q attempts %d, want %q %q %q 0",
					rec.App, rec.State, rec.Queue, rec.Attempts, tt.app, tt.state, tt.queue)
			}
			if !tt.sendAt.IsZero() && (rec.SendAt == nil || !rec.SendAt.Equal(tt.sendAt)) {
				t.Errorf("record send_at = %v, want %v", rec.SendAt, tt.sendAt)
			}
			if !tt.expireAt.IsZero() && (rec.ExpireAt == nil || !rec.ExpireAt.Equal(tt.expireAt)) {
				t.Errorf("record expire_at = %v, want %v", rec.ExpireAt, tt.expireAt)
			}

			// The stored body is WeChat's send body: the request's WeChat fields and
			// nothing of wxpush's own.
			raw := rec.Body
			var sent map[string]any
			if err := json.Unmarshal(raw, &sent); err != nil {
				t.Fatalf("stored body %s: %v", raw, err)
			}
			var req map[string]any
			_ = json.Unmarshal(body, &req)
			for _, k := range []string{"touser", "template_id", "url", "topcolor", "data", "miniprogram"} {
				want, _ := json.Marshal(req[k])
				got, _ := json.Marshal(sent[k])
				if !bytes.Equal(want, got) {
					t.Errorf("stored body %s = %s, want %s", k, got, want)
				}
			}
			for _, k := range []string{"app", "priority", "send_at", "expire_at"} {
				if _, ok := sent[k]; ok {
					t.Errorf("stored WeChat body carries wxpush field %q: %s", k, raw)
				}
			}

			tasksFound := allTasks(t, b)
			if len(tasksFound) != 1 {
				t.Fatalf("asynq holds %d tasks, want exactly 1: %+v", len(tasksFound), tasksFound)
			}
			task := tasksFound[0]
			if task.queue != tt.queue || task.kind != tt.kind {
				t.Errorf("task is %s in queue %q, want %s in %q", task.kind, task.queue, tt.kind, tt.queue)
			}
			if task.info.ID != id || task.info.Type != tasks.TypeDeliver {
				t.Errorf("task id %q type %q, want %q %q", task.info.ID, task.info.Type, id, tasks.TypeDeliver)
			}
			var p tasks.DeliverPayload
			if err := json.Unmarshal(task.info.Payload, &p); err != nil || p.ID != id || p.App != tt.app {
				t.Errorf("task payload %s, want id %s app %s (%v)", task.info.Payload, id, tt.app, err)
			}
			if tt.kind == "scheduled" && !task.info.NextProcessAt.Equal(tt.sendAt) {
				t.Errorf("scheduled task runs at %v, want send_at %v", task.info.NextProcessAt, tt.sendAt)
			}

			for _, app := range []string{"default", "shop"} {
				want := 0.0
				if app == tt.app {
					want = 1
				}
				if n := b.enqueued(app); n != want {
					t.Errorf("wxpush_messages_enqueued_total{app=%q} = %v, want %v", app, n, want)
				}
			}
		})
	}
}

// TestCreateMessageBadInput: invariant 8 — each bad request gets a 4xx with a JSON
// error naming the field, and nothing reaches Redis or the metrics.
func TestCreateMessageBadInput(t *testing.T) {
	t.Parallel()
	good := seed(t, "template-send-request.json")
	compact := seedWith(t, func(map[string]any) {})
	now := time.Now().UTC()
	tests := []struct {
		name   string
		body   []byte
		status int
		code   string
		field  string // "" means the body as a whole
	}{
		{name: "invalid JSON", body: []byte(`{touser: "x"}`), status: 400, code: "invalid_json"},
		{name: "truncated JSON", body: good[:len(good)/2], status: 400, code: "invalid_json"},
		{name: "empty body", body: []byte{}, status: 400, code: "invalid_json"},
		{name: "whitespace body", body: []byte(" \n\t "), status: 400, code: "invalid_json"},
		{name: "JSON array", body: append(append([]byte("["), compact...), ']'), status: 400, code: "invalid_type"},
		{name: "JSON string", body: []byte(`"hello"`), status: 400, code: "invalid_type"},
		// null is not an object: say so rather than report its first missing field.
		{name: "JSON null", body: []byte(`null`), status: 400, code: "invalid_type", field: ""},
		{name: "missing touser", body: seedWith(t, func(m map[string]any) { delete(m, "touser") }), status: 400, code: "required", field: "touser"},
		{name: "blank touser", body: seedWith(t, func(m map[string]any) { m["touser"] = "  \t" }), status: 400, code: "required", field: "touser"},
		{name: "touser not a string", body: seedWith(t, func(m map[string]any) { m["touser"] = 42 }), status: 400, code: "invalid_type", field: "touser"},
		{name: "touser too long", body: seedWith(t, func(m map[string]any) { m["touser"] = strings.Repeat("o", 129) }), status: 400, code: "too_long", field: "touser"},
		{name: "missing template_id", body: seedWith(t, func(m map[string]any) { delete(m, "template_id") }), status: 400, code: "required", field: "template_id"},
		{name: "blank template_id", body: seedWith(t, func(m map[string]any) { m["template_id"] = " " }), status: 400, code: "required", field: "template_id"},
		{name: "missing data", body: seedWith(t, func(m map[string]any) { delete(m, "data") }), status: 400, code: "required", field: "data"},
		{name: "null data", body: seedWith(t, func(m map[string]any) { m["data"] = nil }), status: 400, code: "required", field: "data"},
		{name: "empty data", body: seedWith(t, func(m map[string]any) { m["data"] = map[string]any{} }), status: 400, code: "required", field: "data"},
		{name: "data an array", body: seedWith(t, func(m map[string]any) { m["data"] = []string{"x"} }), status: 400, code: "invalid_type", field: "data"},
		{name: "data value a string", body: withData(t, "Money", `"人民币260.00元"`), status: 400, code: "invalid_type", field: "data.Money"},
		{name: "data value a number", body: withData(t, "Money", `260`), status: 400, code: "invalid_type", field: "data.Money"},
		{name: "data value null", body: withData(t, "Money", `null`), status: 400, code: "invalid_type", field: "data.Money"},
		{name: "data value's value a number", body: withData(t, "Money", `{"value": 5}`), status: 400, code: "invalid_type", field: "data.Money.value"},
		{name: "data value's value an object", body: withData(t, "Money", `{"value": {"v":"x"}}`), status: 400, code: "invalid_type", field: "data.Money.value"},
		{name: "data value without value", body: withData(t, "Money", `{"color": "#173177"}`), status: 400, code: "required", field: "data.Money.value"},
		{name: "data value's value null", body: withData(t, "Money", `{"value": null}`), status: 400, code: "required", field: "data.Money.value"},
		{name: "unknown field in a data item", body: withData(t, "Money", `{"value": "x", "colour": "#fff"}`), status: 400, code: "unknown_field", field: "data.Money.colour"},
		{name: "unknown top-level field", body: seedWith(t, func(m map[string]any) { m["tousr"] = "x" }), status: 400, code: "unknown_field", field: "tousr"},
		{name: "client_msg_id is wxpush's own", body: seedWith(t, func(m map[string]any) { m["client_msg_id"] = "x" }), status: 400, code: "unknown_field", field: "client_msg_id"},
		// Regression: a nested unknown field was once named without its path.
		{name: "unknown field in miniprogram", body: seedWith(t, func(m map[string]any) {
			m["miniprogram"] = map[string]string{"appid": "wx1", "page": "p"}
		}), status: 400, code: "unknown_field", field: "miniprogram.page"},
		{name: "unknown app", body: seedWith(t, func(m map[string]any) { m["app"] = "nosuchapp" }), status: 400, code: "unknown_app", field: "app"},
		{name: "bad priority", body: seedWith(t, func(m map[string]any) { m["priority"] = "urgent" }), status: 400, code: "invalid_priority", field: "priority"},
		{name: "priority in capitals", body: seedWith(t, func(m map[string]any) { m["priority"] = "HIGH" }), status: 400, code: "invalid_priority", field: "priority"},
		{name: "bad send_at", body: seedWith(t, func(m map[string]any) { m["send_at"] = "tomorrow" }), status: 400, code: "invalid_time", field: "send_at"},
		{name: "send_at without zone", body: seedWith(t, func(m map[string]any) { m["send_at"] = "2030-01-02T15:04:05" }), status: 400, code: "invalid_time", field: "send_at"},
		{name: "send_at a number", body: seedWith(t, func(m map[string]any) { m["send_at"] = 1700000000 }), status: 400, code: "invalid_type", field: "send_at"},
		{name: "bad expire_at", body: seedWith(t, func(m map[string]any) { m["expire_at"] = "2030-13-45T00:00:00Z" }), status: 400, code: "invalid_time", field: "expire_at"},
		{name: "expire_at in the past", body: seedWith(t, func(m map[string]any) {
			m["expire_at"] = now.Add(-time.Minute).Format(time.RFC3339)
		}), status: 400, code: "in_past", field: "expire_at"},
		{name: "expire_at before send_at", body: seedWith(t, func(m map[string]any) {
			m["send_at"] = now.Add(2 * time.Hour).Format(time.RFC3339)
			m["expire_at"] = now.Add(time.Hour).Format(time.RFC3339)
		}), status: 400, code: "before_send_at", field: "expire_at"},
		{name: "expire_at equal to send_at", body: seedWith(t, func(m map[string]any) {
			m["send_at"] = now.Add(time.Hour).Format(time.RFC3339)
			m["expire_at"] = now.Add(time.Hour).Format(time.RFC3339)
		}), status: 400, code: "before_send_at", field: "expire_at"},
		{name: "url ftp", body: seedWith(t, func(m map[string]any) { m["url"] = "ftp://weixin.qq.com/download" }), status: 400, code: "invalid_url", field: "url"},
		{name: "url javascript", body: seedWith(t, func(m map[string]any) { m["url"] = "javascript:alert(1)" }), status: 400, code: "invalid_url", field: "url"},
		{name: "url relative", body: seedWith(t, func(m map[string]any) { m["url"] = "/download" }), status: 400, code: "invalid_url", field: "url"},
		{name: "url without host", body: seedWith(t, func(m map[string]any) { m["url"] = "https:///download" }), status: 400, code: "invalid_url", field: "url"},
		{name: "miniprogram without appid", body: seedWith(t, func(m map[string]any) {
			m["miniprogram"] = map[string]string{"pagepath": "index"}
		}), status: 400, code: "required", field: "miniprogram.appid"},
		{name: "miniprogram not an object", body: seedWith(t, func(m map[string]any) { m["miniprogram"] = "wx1" }), status: 400, code: "invalid_type", field: "miniprogram"},
		{name: "oversized body", body: seedWith(t, func(m map[string]any) {
			m["data"] = map[string]any{"Big": map[string]string{"value": strings.Repeat("x", 70<<10)}}
		}), status: 413, code: "too_large"},
		{name: "one byte over 64 KiB", body: padTo(compact, 64<<10+1), status: 413, code: "too_large"},
		{name: "trailing garbage", body: append(bytes.Clone(compact), []byte(" garbage")...), status: 400, code: "invalid_json"},
		{name: "two JSON objects", body: append(bytes.Clone(compact), compact...), status: 400, code: "invalid_json"},
		{name: "trailing comma", body: append(bytes.Clone(compact), ',', ' ', '{', '}'), status: 400, code: "invalid_json"},
		// Regression: json.Decoder.More() is false before '}' or ']', so a stray
		// closing brace or bracket after the object was once accepted.
		{name: "key spelled in another case", body: seedWith(t, func(m map[string]any) { m["TOUSER"] = "other" }), status: 400, code: "unknown_field", field: "TOUSER"},
		{name: "trailing close brace", body: append(bytes.Clone(compact), '}'), status: 400, code: "invalid_json"},
		{name: "trailing close bracket", body: append(bytes.Clone(compact), []byte("\n]")...), status: 400, code: "invalid_json"},
		// Issue 17.7: what encoding/json lets through silently.
		{name: "invalid UTF-8 in a value", body: bytes.Replace(compact, []byte("黄先生"), []byte("黄\xff生"), 1), status: 400, code: "invalid_utf8", field: "data.User.value"},
		{name: "cut-off UTF-8 in touser", body: bytes.Replace(compact, []byte(`"OPENID"`), []byte("\"OPEN\xe9\xbb\""), 1), status: 400, code: "invalid_utf8", field: "touser"},
		{name: "invalid UTF-8 in a key", body: bytes.Replace(compact, []byte(`"Left"`), []byte("\"Le\xc3ft\""), 1), status: 400, code: "invalid_utf8", field: "data.Le\uFFFDft"},
		{name: "touser with NUL", body: seedWith(t, func(m map[string]any) { m["touser"] = "oia2Tju\x00EGT" }), status: 400, code: "invalid_openid", field: "touser"},
		{name: "touser with a newline", body: seedWith(t, func(m map[string]any) { m["touser"] = "oia2Tju\nEGT" }), status: 400, code: "invalid_openid", field: "touser"},
		{name: "touser with XML", body: seedWith(t, func(m map[string]any) { m["touser"] = "o]]></FromUserName>" }), status: 400, code: "invalid_openid", field: "touser"},
		{name: "touser with a space", body: seedWith(t, func(m map[string]any) { m["touser"] = " oia2TjuEGT" }), status: 400, code: "invalid_openid", field: "touser"},
		{name: "touser of 65 bytes", body: seedWith(t, func(m map[string]any) { m["touser"] = strings.Repeat("o", 65) }), status: 400, code: "too_long", field: "touser"},
		{name: "touser twice", body: bytes.Replace(compact, []byte(`"touser":"OPENID"`), []byte(`"touser":"OPENID","touser":"oOther"`), 1), status: 400, code: "duplicate_key", field: "touser"},
		{name: "touser twice, once escaped", body: bytes.Replace(compact, []byte(`"touser":"OPENID"`), []byte(`"touser":"OPENID","\u0074ouser":"oOther"`), 1), status: 400, code: "duplicate_key", field: "touser"},
		{name: "data key twice", body: bytes.Replace(compact, []byte(`"Left":`), []byte(`"Left":{"value":"1"},"Left":`), 1), status: 400, code: "duplicate_key", field: "data.Left"},
		{name: "value twice in a data item", body: bytes.Replace(compact, []byte(`"value":"6504.09"`), []byte(`"value":"1","value":"6504.09"`), 1), status: 400, code: "duplicate_key", field: "data.Left.value"},
		// Issue 17.5: times that cannot be written back (past 9999 UTC) or are a mistake.
		{name: "send_at in year 10000 UTC", body: seedWith(t, func(m map[string]any) { m["send_at"] = "9999-12-31T23:00:00-05:00" }), status: 400, code: "out_of_range", field: "send_at"},
		{name: "expire_at in year 10000 UTC", body: seedWith(t, func(m map[string]any) { m["expire_at"] = "9999-12-31T23:00:00-05:00" }), status: 400, code: "out_of_range", field: "expire_at"},
		{name: "send_at in year -1 UTC", body: seedWith(t, func(m map[string]any) { m["send_at"] = "0000-01-01T00:00:00+01:00" }), status: 400, code: "out_of_range", field: "send_at"},
		{name: "send_at a year and a day ahead", body: seedWith(t, func(m map[string]any) {
			m["send_at"] = now.AddDate(1, 0, 1).Format(time.RFC3339)
		}), status: 400, code: "out_of_range", field: "send_at"},
		{name: "expire_at a year and a day ahead", body: seedWith(t, func(m map[string]any) {
			m["expire_at"] = now.AddDate(1, 0, 1).Format(time.RFC3339)
		}), status: 400, code: "out_of_range", field: "expire_at"},
		{name: "ttl past a year ahead", body: seedWith(t, func(m map[string]any) {
			m["send_at"] = now.AddDate(1, 0, -1).Format(time.RFC3339)
			m["ttl"] = "48h"
		}), status: 400, code: "out_of_range", field: "ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			r := b.do(t, http.MethodPost, "/v1/messages", tt.body)
			if r.status != tt.status {
				t.Fatalf("POST = %d %s, want %d", r.status, truncate(r.body), tt.status)
			}
			code, field := mustError(t, r)
			if code != tt.code || field != tt.field {
				t.Errorf("error code %q field %q, want code %q field %q (body %s)", code, field, tt.code, tt.field, r.body)
			}
			b.assertNothingStored(t)
		})
	}
}

// TestCreateMessageBodyLimit: a body of exactly 64 KiB is still accepted.
func TestCreateMessageBodyLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := padTo(seedWith(t, func(map[string]any) {}), 64<<10)
	if r := b.do(t, http.MethodPost, "/v1/messages", body); r.status != http.StatusAccepted {
		t.Fatalf("POST of exactly 64 KiB = %d %s, want 202", r.status, r.body)
	}
}

// padTo pads a JSON body with trailing whitespace to n bytes.
func padTo(b []byte, n int) []byte {
	return append(bytes.Clone(b), bytes.Repeat([]byte{' '}, n-len(b))...)
}

func truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

// TestCreateMessageMasksOpenID: invariant 7 — the accepted message is logged with
// the openid masked.
func TestCreateMessageMasksOpenID(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const openid = "oia2TjuEGTNoeX76QEjQNrcURxG8"
	r := b.do(t, http.MethodPost, "/v1/messages", seedWith(t, func(m map[string]any) { m["touser"] = openid }))
	if r.status != http.StatusAccepted {
		t.Fatalf("POST = %d %s", r.status, r.body)
	}
	logs := b.logs.String()
	if strings.Contains(logs, openid) {
		t.Errorf("logs carry the whole openid:\n%s", logs)
	}
	if !strings.Contains(logs, "oia2****G8") {
		t.Errorf("logs lack the masked openid oia2****G8:\n%s", logs)
	}
}

func TestGetMessage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	post := func(t *testing.T) string {
		t.Helper()
		r := b.do(t, http.MethodPost, "/v1/messages", seed(t, "template-send-request.json"))
		var acc struct{ ID string }
		if err := json.Unmarshal(r.body, &acc); r.status != http.StatusAccepted || err != nil {
			t.Fatalf("POST = %d %s", r.status, r.body)
		}
		return acc.ID
	}
	tests := []struct {
		name     string
		prepare  func(t *testing.T) string // returns the id
		state    string
		attempts float64
		msgid    string // wechat_msgid, "" when absent
		history  []string
	}{
		{name: "queued", prepare: post, state: "queued", history: []string{"enqueued"}},
		{name: "sent", prepare: func(t *testing.T) string {
			id := post(t)
			markSent(t, b, id, "default", 9007199254740993) // above 2^53: must stay exact
			return id
		}, state: "sent", attempts: 1, msgid: "9007199254740993", history: []string{"enqueued", "sent"}},
		{name: "delivered", prepare: func(t *testing.T) string {
			id := post(t)
			markSent(t, b, id, "default", 77)
			if _, err := b.store.ApplyCallback(t.Context(), "default", "77", delivery.StateDelivered, "success"); err != nil {
				t.Fatal(err)
			}
			return id
		}, state: "delivered", attempts: 1, msgid: "77", history: []string{"enqueued", "sent", "callback"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now().Add(-time.Second)
			id := tt.prepare(t)
			r := b.do(t, http.MethodGet, "/v1/messages/"+id, nil)
			if r.status != http.StatusOK {
				t.Fatalf("GET = %d %s, want 200", r.status, r.body)
			}
			var got map[string]any
			if err := json.Unmarshal(r.body, &got); err != nil {
				t.Fatalf("GET body %s: %v", r.body, err)
			}
			if got["id"] != id || got["app"] != "default" || got["state"] != tt.state || got["attempts"] != tt.attempts {
				t.Errorf("GET = %s, want id %s app default state %s attempts %v", r.body, id, tt.state, tt.attempts)
			}
			created, _ := got["created_at"].(string)
			ct, err := time.Parse(time.RFC3339Nano, created)
			if err != nil || ct.Before(before) || ct.After(time.Now().Add(time.Second)) {
				t.Errorf("created_at = %q, want an RFC 3339 time of now (%v)", created, err)
			}
			if tt.msgid == "" {
				if _, ok := got["wechat_msgid"]; ok {
					t.Errorf("unsent message shows wechat_msgid: %s", r.body)
				}
			} else if s, ok := got["wechat_msgid"].(string); !ok || s != tt.msgid {
				t.Errorf("wechat_msgid = %#v, want the string %q", got["wechat_msgid"], tt.msgid)
			}
			hist, ok := got["history"].([]any)
			if !ok || len(hist) != len(tt.history) {
				t.Fatalf("history = %#v, want events %v", got["history"], tt.history)
			}
			for i, h := range hist {
				ev, _ := h.(map[string]any)
				if ev["event"] != tt.history[i] {
					t.Errorf("history[%d].event = %v, want %s", i, ev["event"], tt.history[i])
				}
			}
		})
	}

	t.Run("unknown id", func(t *testing.T) {
		r := b.do(t, http.MethodGet, "/v1/messages/01JNOSUCHMESSAGE0000000000", nil)
		if r.status != http.StatusNotFound {
			t.Fatalf("GET unknown = %d %s, want 404", r.status, r.body)
		}
		if code, field := mustError(t, r); code != "not_found" || field != "id" {
			t.Errorf("error code %q field %q, want not_found, id", code, field)
		}
	})
}

// discardSubmitter accepts every message and keeps none: the benchmarks measure
// the API's own work.
type discardSubmitter struct{ api.Submitter }

func (discardSubmitter) Submit(context.Context, delivery.NewMessage) (delivery.State, error) {
	return delivery.StateQueued, nil
}

// benchBody is a normal message of about 1 KB: the seed with every optional field.
func benchBody(b *testing.B) []byte {
	b.Helper()
	body := seedWith(b, func(m map[string]any) {
		m["touser"] = "oia2TjuEGTNoeX76QEjQNrcURxG8"
		m["app"] = "shop"
		m["priority"] = "high"
		m["ttl"] = "1h"
		m["send_at"] = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		m["miniprogram"] = map[string]string{"appid": "wx0123456789abcdef", "pagepath": "pages/order/index?id=42"}
		data := m["data"].(map[string]any)
		data["Remark"] = map[string]string{"value": "如有疑问，请拨打客服热线 400-000-0000，我们将竭诚为您服务。", "color": "#173177"}
		data["Shop"] = map[string]string{"value": "Example Store (Shanghai Pudong, No. 42)", "color": "#173177"}
		data["Order"] = map[string]string{"value": "2026010215040542", "color": "#173177"}
	})
	if len(body) < 900 || len(body) > 1200 {
		b.Fatalf("bench body is %d bytes, want about 1 KB", len(body))
	}
	return body
}

// BenchmarkCreateMessage: the API's cost of one POST /v1/messages of about
// 1 KB (validation included), without Redis.
func BenchmarkCreateMessage(b *testing.B) {
	reg := prometheus.NewRegistry()
	h := api.New(api.Deps{
		Submit:   discardSubmitter{},
		Apps:     []api.App{{Name: "default"}, {Name: "shop"}},
		Metrics:  newMetrics(reg),
		Gatherer: reg,
		Logger:   logging.Discard(),
	}).Handler()
	body := benchBody(b)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/messages", bytes.NewReader(body))
		req.RemoteAddr = "127.0.0.1:40000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusAccepted {
			b.Fatalf("POST = %d %s", rec.Code, rec.Body)
		}
	}
}

// TestUnencodableRecord (issue 17.5): a record whose time cannot be written as
// RFC 3339 (one stored before send_at and expire_at were bounded) is a 500 with
// the JSON error body and a logged cause, for GET and for the dead list, never
// an empty 200.
func TestUnencodableRecord(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	year10000 := time.Date(10000, 1, 1, 4, 0, 0, 0, time.UTC) // 9999-12-31T23:00:00-05:00
	id := delivery.IDFor("default", ulid.Make().String())
	if _, err := b.store.Create(ctx, delivery.NewMessage{ID: id, App: "default", To: "oFar", Queue: tasks.QueueNormal,
		Body: []byte(`{"touser":"oFar","template_id":"t","data":{"k":{"value":"v"}}}`), ExpireAt: year10000}); err != nil {
		t.Fatal(err)
	}
	if a, err := b.store.Begin(ctx, id); err != nil || !a.Proceed {
		t.Fatalf("Begin = %+v, %v", a, err)
	}
	if _, err := b.store.Finish(ctx, id, "default", delivery.StateDead, &delivery.ErrorInfo{Code: -1, Msg: "system error"}); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v1/messages/" + id, "/v1/messages?state=dead&app=default"} {
		t.Run(path, func(t *testing.T) {
			r := b.do(t, http.MethodGet, path, nil)
			if r.status != http.StatusInternalServerError {
				t.Fatalf("GET = %d %q, want 500", r.status, r.body)
			}
			if code, _ := mustError(t, r); code != "internal" {
				t.Errorf("error code %q, want internal", code)
			}
		})
	}
	if logs := b.logs.String(); strings.Count(logs, "could not encode the response") != 2 || !strings.Contains(logs, "year outside of range") {
		t.Errorf("logs do not carry both failures and their cause:\n%s", logs)
	}
}
