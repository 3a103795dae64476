package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/tasks"
)

// This file covers the operator endpoints: cancel, the dead list, retry of a dead
// message and resume of a parked app.

// postMessage enqueues the seed message (mutated) through the API and returns its id.
func postMessage(t *testing.T, b *bundle, mutate func(map[string]any)) string {
	t.Helper()
	if mutate == nil {
		mutate = func(map[string]any) {}
	}
	r := b.do(t, http.MethodPost, "/v1/messages", seedWith(t, mutate))
	var acc struct{ ID string }
	if err := json.Unmarshal(r.body, &acc); r.status != http.StatusAccepted || err != nil || acc.ID == "" {
		t.Fatalf("POST = %d %s, want 202", r.status, r.body)
	}
	return acc.ID
}

// fakeClock is a settable clock for a second Store on the bundle's Redis.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// clockedStore is a Store on b's Redis whose clock the test sets.
func clockedStore(b *bundle, start time.Time) (*delivery.Store, *fakeClock) {
	c := &fakeClock{now: start}
	return delivery.NewStore(b.rdb, delivery.Config{Now: c.Now}), c
}

// deadMessage stores a message of app that died at st's clock time.
func deadMessage(t *testing.T, st *delivery.Store, id, app string) {
	t.Helper()
	ctx := t.Context()
	if _, err := st.Create(ctx, delivery.NewMessage{ID: id, App: app, To: "open-" + id, Queue: tasks.QueueNormal,
		Body: fmt.Appendf(nil, `{"touser":"open-%s","template_id":"t","data":{"k":{"value":"v"}}}`, id)}); err != nil {
		t.Fatalf("Create(%s): %v", id, err)
	}
	if a, err := st.Begin(ctx, id); err != nil || !a.Proceed {
		t.Fatalf("Begin(%s) = %+v, %v", id, a, err)
	}
	tr, err := st.Finish(ctx, id, app, delivery.StateDead, &delivery.ErrorInfo{Code: -1, Msg: "system error"})
	if err != nil || tr.State != delivery.StateDead {
		t.Fatalf("Finish(%s, dead) = %+v, %v", id, tr, err)
	}
}

// TestCancel: DELETE cancels what WeChat has not accepted, exactly once; an
// attempt in flight makes it a 409 to retry; sent or settled messages stay as
// they are; a canceled message is never sent (invariant 6).
func TestCancel(t *testing.T) {
	t.Parallel()
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	tests := []struct {
		name    string
		prepare func(t *testing.T, b *bundle) string // returns the id
		status  int
		code    string         // error code, "" for 200
		state   delivery.State // record state afterwards
	}{
		{name: "queued", prepare: func(t *testing.T, b *bundle) string { return postMessage(t, b, nil) },
			status: http.StatusOK, state: delivery.StateCanceled},
		{name: "scheduled", prepare: func(t *testing.T, b *bundle) string {
			return postMessage(t, b, func(m map[string]any) { m["send_at"] = future })
		}, status: http.StatusOK, state: delivery.StateCanceled},
		{name: "retrying", prepare: func(t *testing.T, b *bundle) string {
			id := postMessage(t, b, nil)
			if _, err := b.store.Begin(t.Context(), id); err != nil {
				t.Fatal(err)
			}
			if _, err := b.store.MarkRetrying(t.Context(), id, delivery.ErrorInfo{Code: -1, Msg: "system busy"}); err != nil {
				t.Fatal(err)
			}
			return id
		}, status: http.StatusOK, state: delivery.StateCanceled},
		{name: "attempt in flight", prepare: func(t *testing.T, b *bundle) string {
			id := postMessage(t, b, nil)
			if a, err := b.store.Begin(t.Context(), id); err != nil || !a.Proceed {
				t.Fatalf("Begin = %+v, %v", a, err)
			}
			return id
		}, status: http.StatusConflict, code: "in_flight", state: delivery.StateQueued},
		{name: "attempt of a worker that died, past its timeout", prepare: func(t *testing.T, b *bundle) string {
			id := postMessage(t, b, nil)
			st, _ := clockedStore(b, time.Now().Add(-3*time.Minute))
			if a, err := st.Begin(t.Context(), id); err != nil || !a.Proceed {
				t.Fatalf("Begin = %+v, %v", a, err)
			}
			return id
		}, status: http.StatusOK, state: delivery.StateCanceled},
		{name: "sent", prepare: func(t *testing.T, b *bundle) string {
			id := postMessage(t, b, nil)
			markSent(t, b, id, "default", 4242)
			return id
		}, status: http.StatusConflict, code: "not_cancelable", state: delivery.StateSent},
		{name: "delivered", prepare: func(t *testing.T, b *bundle) string {
			id := postMessage(t, b, nil)
			markSent(t, b, id, "default", 4343)
			if _, err := b.store.ApplyCallback(t.Context(), "default", "4343", delivery.StateDelivered, "success"); err != nil {
				t.Fatal(err)
			}
			return id
		}, status: http.StatusConflict, code: "not_cancelable", state: delivery.StateDelivered},
		{name: "dead", prepare: func(t *testing.T, b *bundle) string {
			deadMessage(t, b.store, "YD1", "default")
			return "YD1"
		}, status: http.StatusConflict, code: "not_cancelable", state: delivery.StateDead},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			id := tt.prepare(t, b)
			backlog, err := b.store.Backlog(t.Context(), "default")
			if err != nil {
				t.Fatal(err)
			}
			r := b.do(t, http.MethodDelete, "/v1/messages/"+id, nil)
			if r.status != tt.status {
				t.Fatalf("DELETE = %d %s, want %d", r.status, r.body, tt.status)
			}
			if tt.code != "" {
				if code, field := mustError(t, r); code != tt.code || field != "id" {
					t.Errorf("error code %q field %q, want %q, id", code, field, tt.code)
				}
				if tt.code == "in_flight" && r.header.Get("Retry-After") == "" {
					t.Error("in_flight without Retry-After")
				}
			} else if got := string(bytes.TrimSpace(r.body)); got != fmt.Sprintf(`{"id":%q,"state":"canceled"}`, id) {
				t.Errorf("DELETE body = %s, want {\"id\":%q,\"state\":\"canceled\"}", got, id)
			}
			if rec := b.record(t, id); rec.State != tt.state {
				t.Errorf("record state = %s, want %s", rec.State, tt.state)
			}
			wantCanceled := 0.0
			if tt.state == delivery.StateCanceled {
				wantCanceled = 1
			}
			if n := b.finished("default", delivery.StateCanceled); n != wantCanceled {
				t.Errorf("finished{canceled} = %v, want %v", n, wantCanceled)
			}
			if tt.state != delivery.StateCanceled {
				return
			}
			if n, err := b.store.Backlog(t.Context(), "default"); err != nil || n != backlog-1 {
				t.Errorf("backlog = %d, want %d: a canceled message frees its slot (%v)", n, backlog-1, err)
			}
			// Invariant 6: the worker's next look at it does not send it.
			if a, err := b.store.Begin(t.Context(), id); err != nil || a.Proceed || a.State != delivery.StateCanceled {
				t.Errorf("Begin after cancel = %+v, %v; want no send, state canceled", a, err)
			}
			// A repeated cancel is a 200 and counts nothing.
			again := b.do(t, http.MethodDelete, "/v1/messages/"+id, nil)
			if again.status != http.StatusOK || !bytes.Equal(again.body, r.body) {
				t.Errorf("repeated DELETE = %d %s, want 200 %s", again.status, again.body, r.body)
			}
			if n := b.finished("default", delivery.StateCanceled); n != 1 {
				t.Errorf("finished{canceled} = %v after a repeated cancel, want 1", n)
			}
		})
	}

	t.Run("unknown id", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		r := b.do(t, http.MethodDelete, "/v1/messages/01JNOSUCHMESSAGE0000000000", nil)
		if r.status != http.StatusNotFound {
			t.Fatalf("DELETE unknown = %d %s, want 404", r.status, r.body)
		}
		if code, field := mustError(t, r); code != "not_found" || field != "id" {
			t.Errorf("error code %q field %q, want not_found, id", code, field)
		}
		b.assertNothingStored(t)
	})
}

// TestCancelAfterInFlightAttempt: the in_flight answer is temporary; once the
// attempt has failed, the cancel succeeds.
func TestCancelAfterInFlightAttempt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := postMessage(t, b, nil)
	if _, err := b.store.Begin(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if r := b.do(t, http.MethodDelete, "/v1/messages/"+id, nil); r.status != http.StatusConflict {
		t.Fatalf("DELETE in flight = %d %s, want 409", r.status, r.body)
	}
	if _, err := b.store.MarkRetrying(t.Context(), id, delivery.ErrorInfo{Code: -1, Msg: "busy"}); err != nil {
		t.Fatal(err)
	}
	if r := b.do(t, http.MethodDelete, "/v1/messages/"+id, nil); r.status != http.StatusOK {
		t.Fatalf("DELETE after the attempt = %d %s, want 200", r.status, r.body)
	}
	if n := b.finished("default", delivery.StateCanceled); n != 1 {
		t.Errorf("finished{canceled} = %v, want 1", n)
	}
}

// listReply is the dead list, decoded strictly.
type listReply struct {
	Messages []struct {
		ID        string `json:"id"`
		App       string `json:"app"`
		Kind      string `json:"kind"`
		State     string `json:"state"`
		Attempts  int    `json:"attempts"`
		LastError *struct {
			Code int    `json:"errcode"`
			Msg  string `json:"errmsg"`
		} `json:"last_error"`
		CreatedAt  time.Time       `json:"created_at"`
		FinishedAt *time.Time      `json:"finished_at"`
		History    json.RawMessage `json:"history"`
	} `json:"messages"`
	Total      int64 `json:"total"`
	NextOffset *int  `json:"next_offset"`
}

func decodeList(t *testing.T, r reply) listReply {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("list = %d %s, want 200", r.status, r.body)
	}
	var lr listReply
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&lr); err != nil {
		t.Fatalf("list body %s: %v", r.body, err)
	}
	if lr.Messages == nil {
		t.Fatalf("list body %s: messages must be an array, not null", r.body)
	}
	return lr
}

// TestListDead: dead messages of one app, newest first, paginated by offset
// with next_offset until the last page.
func TestListDead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	start := time.Now().Add(-time.Hour)
	st, clock := clockedStore(b, start)
	// Ids sort the opposite way to their death times, so an order by id cannot
	// pass for newest first.
	died := []string{"Ydead-9", "Ydead-8", "Ydead-7", "Ydead-6", "Ydead-5"}
	for i, id := range died {
		clock.Set(start.Add(time.Duration(i) * time.Second))
		deadMessage(t, st, id, "default")
	}
	deadMessage(t, st, "9shop-dead", "shop")
	// Not dead: not listed.
	if _, err := b.store.Finish(t.Context(), postMessage(t, b, nil), "default", delivery.StateRejected, nil); err != nil {
		t.Fatal(err)
	}
	postMessage(t, b, nil)
	newestFirst := slices.Clone(died)
	slices.Reverse(newestFirst)

	two, four := 2, 4
	tests := []struct {
		name  string
		query string
		ids   []string
		total int64
		next  *int
	}{
		{name: "first page", query: "state=dead&app=default&limit=2", ids: newestFirst[0:2], total: 5, next: &two},
		{name: "second page", query: "state=dead&app=default&limit=2&offset=2", ids: newestFirst[2:4], total: 5, next: &four},
		{name: "last page", query: "state=dead&app=default&limit=2&offset=4", ids: newestFirst[4:], total: 5},
		{name: "past the end", query: "state=dead&app=default&offset=9", ids: nil, total: 5},
		{name: "default limit", query: "state=dead&app=default", ids: newestFirst, total: 5},
		{name: "app defaults to default", query: "state=dead", ids: newestFirst, total: 5},
		{name: "exact last page", query: "state=dead&app=default&limit=5", ids: newestFirst, total: 5},
		{name: "other app", query: "state=dead&app=shop", ids: []string{"9shop-dead"}, total: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			lr := decodeList(t, b.do(t, http.MethodGet, "/v1/messages?"+tt.query, nil))
			var ids []string
			for _, m := range lr.Messages {
				ids = append(ids, m.ID)
				if m.State != "dead" || m.LastError == nil || m.LastError.Code != -1 || m.LastError.Msg != "system error" || m.FinishedAt == nil {
					t.Errorf("listed %s: state %s last_error %+v finished_at %v, want dead, {-1 system error}, set",
						m.ID, m.State, m.LastError, m.FinishedAt)
				}
			}
			if !slices.Equal(ids, tt.ids) {
				t.Errorf("ids = %v, want %v (newest first)", ids, tt.ids)
			}
			if lr.Total != tt.total {
				t.Errorf("total = %d, want %d", lr.Total, tt.total)
			}
			switch {
			case tt.next == nil && lr.NextOffset != nil:
				t.Errorf("next_offset = %d on the last page, want none", *lr.NextOffset)
			case tt.next != nil && (lr.NextOffset == nil || *lr.NextOffset != *tt.next):
				t.Errorf("next_offset = %v, want %d", lr.NextOffset, *tt.next)
			}
		})
	}
}

// TestListDeadBadQuery: every bad parameter is a 400 naming it.
func TestListDeadBadQuery(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tests := []struct {
		name  string
		query string
		code  string
		field string
	}{
		{name: "no state", query: "app=default", code: "unsupported_state", field: "state"},
		{name: "state queued", query: "state=queued", code: "unsupported_state", field: "state"},
		{name: "state in capitals", query: "state=DEAD", code: "unsupported_state", field: "state"},
		{name: "unknown app", query: "state=dead&app=nosuchapp", code: "unknown_app", field: "app"},
		{name: "limit zero", query: "state=dead&limit=0", code: "invalid_limit", field: "limit"},
		{name: "limit negative", query: "state=dead&limit=-1", code: "invalid_limit", field: "limit"},
		{name: "limit too large", query: "state=dead&limit=501", code: "invalid_limit", field: "limit"},
		{name: "limit not a number", query: "state=dead&limit=ten", code: "invalid_limit", field: "limit"},
		{name: "limit fractional", query: "state=dead&limit=1.5", code: "invalid_limit", field: "limit"},
		{name: "offset negative", query: "state=dead&offset=-1", code: "invalid_offset", field: "offset"},
		{name: "offset not a number", query: "state=dead&offset=x", code: "invalid_offset", field: "offset"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := b.do(t, http.MethodGet, "/v1/messages?"+tt.query, nil)
			if r.status != http.StatusBadRequest {
				t.Fatalf("GET ?%s = %d %s, want 400", tt.query, r.status, r.body)
			}
			if code, field := mustError(t, r); code != tt.code || field != tt.field {
				t.Errorf("error code %q field %q, want %q %q", code, field, tt.code, tt.field)
			}
		})
	}
	b.assertNothingStored(t)
}

// TestListDeadVanishedRecord: a dead message's record can disappear before its
// entry in the app's dead index (Redis evicting a key that has a TTL, a
// retention or clock that differs between processes). Following next_offset
// must still visit every listed message once and end.
// (Regression: next_offset once counted the records found, not the index
// entries read, and stalled on a vanished record.)
func TestListDeadVanishedRecord(t *testing.T) {
	t.Parallel()
	b := setup(t)
	start := time.Now().Add(-time.Hour)
	st, clock := clockedStore(b, start)
	for i, id := range []string{"Yold", "Ygone", "Ynew"} {
		clock.Set(start.Add(time.Duration(i) * time.Second))
		deadMessage(t, st, id, "default")
	}
	if err := b.rdb.Del(t.Context(), delivery.RecordKey("Ygone")).Err(); err != nil {
		t.Fatal(err)
	}
	var seen []string
	offset := 0
	for page := 0; ; page++ {
		if page == 5 {
			t.Fatalf("still paging after %d pages of limit 1 over 3 entries (seen %v, next_offset %d)", page, seen, offset)
		}
		lr := decodeList(t, b.do(t, http.MethodGet, fmt.Sprintf("/v1/messages?state=dead&limit=1&offset=%d", offset), nil))
		for _, m := range lr.Messages {
			seen = append(seen, m.ID)
		}
		if lr.NextOffset == nil {
			break
		}
		if *lr.NextOffset <= offset {
			t.Fatalf("next_offset %d does not move past offset %d (seen %v)", *lr.NextOffset, offset, seen)
		}
		offset = *lr.NextOffset
	}
	if !slices.Equal(seen, []string{"Ynew", "Yold"}) {
		t.Errorf("paging saw %v, want [new old]", seen)
	}
}

// TestRetryDead: a dead message goes back to queued with its id (so its
// client_msg_id), leaves the dead list, and gets a fresh delivery task that
// replaces asynq's archived one.
func TestRetryDead(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		archived bool // asynq still holds the archived task of the last attempt
	}{
		{name: "archived task replaced", archived: true},
		{name: "no task left in asynq", archived: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			const id = "Ydead-1"
			deadMessage(t, b.store, id, "default")
			deadMessage(t, b.store, "Ydead-2", "default")
			if tt.archived {
				client := asynq.NewClientFromRedisClient(b.rdb)
				if _, err := client.EnqueueContext(t.Context(), tasks.NewDeliverTask(id, "default", "open-"+id), asynq.Queue(tasks.QueueNormal)); err != nil {
					t.Fatal(err)
				}
				if err := b.insp.ArchiveTask(tasks.QueueNormal, id); err != nil {
					t.Fatal(err)
				}
			}
			backlog, _ := b.store.Backlog(t.Context(), "default")

			r := b.do(t, http.MethodPost, "/v1/messages/"+id+"/retry", nil)
			if r.status != http.StatusAccepted {
				t.Fatalf("retry = %d %s, want 202", r.status, r.body)
			}
			if got, want := string(bytes.TrimSpace(r.body)), fmt.Sprintf(`{"id":%q,"state":"queued"}`, id); got != want {
				t.Errorf("retry body = %s, want %s", got, want)
			}
			rec := b.record(t, id)
			if rec.State != delivery.StateQueued || rec.Queue != tasks.QueueNormal {
				t.Errorf("record state %s queue %s, want queued normal", rec.State, rec.Queue)
			}
			if rec.History[len(rec.History)-1].Event != "requeued" {
				t.Errorf("last history event = %+v, want requeued", rec.History[len(rec.History)-1])
			}
			// Invariant 1: a requeued message is not lost to the retention of dead ones.
			if ttl, err := b.rdb.PTTL(t.Context(), delivery.RecordKey(id)).Result(); err != nil || ttl != -1 {
				t.Errorf("requeued record expires in %v (%v), want no expiry", ttl, err)
			}
			if n, _ := b.store.Backlog(t.Context(), "default"); n != backlog+1 {
				t.Errorf("backlog = %d, want %d", n, backlog+1)
			}
			lr := decodeList(t, b.do(t, http.MethodGet, "/v1/messages?state=dead&app=default", nil))
			if lr.Total != 1 || len(lr.Messages) != 1 || lr.Messages[0].ID != "Ydead-2" {
				t.Errorf("dead list after retry = %+v, want only dead-2", lr)
			}

			info, err := b.insp.GetTaskInfo(tasks.QueueNormal, id)
			if err != nil {
				t.Fatalf("no asynq task %s after retry: %v", id, err)
			}
			if info.State != asynq.TaskStatePending || info.Type != tasks.TypeDeliver || info.Retried != 0 || info.MaxRetry != 9 {
				t.Errorf("task %s: state %v type %s retried %d max %d, want pending %s 0 9",
					id, info.State, info.Type, info.Retried, info.MaxRetry, tasks.TypeDeliver)
			}
			var p tasks.DeliverPayload
			if err := json.Unmarshal(info.Payload, &p); err != nil || p.ID != id || p.App != "default" || p.To != "open-"+id {
				t.Errorf("payload %s, want id %s app default to open-%s (%v)", info.Payload, id, id, err)
			}
			if archived, err := b.insp.ListArchivedTasks(tasks.QueueNormal); err != nil || len(archived) != 0 {
				t.Errorf("archived tasks after retry: %d (%v), want 0", len(archived), err)
			}

			// Now queued: a second retry is refused.
			again := b.do(t, http.MethodPost, "/v1/messages/"+id+"/retry", nil)
			if again.status != http.StatusConflict {
				t.Fatalf("second retry = %d %s, want 409", again.status, again.body)
			}
			if code, field := mustError(t, again); code != "not_dead" || field != "id" {
				t.Errorf("second retry: code %q field %q, want not_dead, id", code, field)
			}
		})
	}
}

// TestRetryRefused: only dead messages can be retried.
func TestRetryRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	queued := postMessage(t, b, nil)
	rejected := postMessage(t, b, nil)
	if _, err := b.store.Finish(t.Context(), rejected, "default", delivery.StateRejected, &delivery.ErrorInfo{Code: 43004, Msg: "require subscribe"}); err != nil {
		t.Fatal(err)
	}
	sent := postMessage(t, b, nil)
	markSent(t, b, sent, "default", 99)
	tests := []struct {
		name   string
		id     string
		status int
		code   string
		state  delivery.State // unchanged record state
	}{
		{name: "queued", id: queued, status: http.StatusConflict, code: "not_dead", state: delivery.StateQueued},
		{name: "rejected", id: rejected, status: http.StatusConflict, code: "not_dead", state: delivery.StateRejected},
		{name: "sent", id: sent, status: http.StatusConflict, code: "not_dead", state: delivery.StateSent},
		{name: "unknown", id: "01JNOSUCHMESSAGE0000000000", status: http.StatusNotFound, code: "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.do(t, http.MethodPost, "/v1/messages/"+tt.id+"/retry", nil)
			if r.status != tt.status {
				t.Fatalf("retry = %d %s, want %d", r.status, r.body, tt.status)
			}
			if code, field := mustError(t, r); code != tt.code || field != "id" {
				t.Errorf("code %q field %q, want %q, id", code, field, tt.code)
			}
			if tt.state != "" {
				if rec := b.record(t, tt.id); rec.State != tt.state {
					t.Errorf("record state = %s, want %s unchanged", rec.State, tt.state)
				}
			}
		})
	}
	if n := len(deliverTasks(t, b)); n != 3 {
		t.Errorf("%d delivery tasks, want 3: a refused retry enqueues nothing", n)
	}
}

// quietLogger drops asynq's own logging.
type quietLogger struct{}

func (quietLogger) Debug(...any) {}
func (quietLogger) Info(...any)  {}
func (quietLogger) Warn(...any)  {}
func (quietLogger) Error(...any) {}
func (quietLogger) Fatal(...any) {}

// runWorker runs an asynq server with h on b's Redis until done holds, then
// shuts it down. Every failed task is retried an hour later, so it stays in the
// retry set for the rest of the test.
func runWorker(t *testing.T, b *bundle, h asynq.Handler, what string, done func() bool) {
	t.Helper()
	srv := asynq.NewServerFromRedisClient(b.rdb, asynq.Config{
		Concurrency:       20,
		Queues:            tasks.QueueWeights,
		RetryDelayFunc:    func(int, error, *asynq.Task) time.Duration { return time.Hour },
		IsFailure:         tasks.IsFailure,
		TaskCheckInterval: 20 * time.Millisecond,
		Logger:            quietLogger{},
		LogLevel:          asynq.FatalLevel,
	})
	if err := srv.Start(h); err != nil {
		t.Fatalf("start asynq server: %v", err)
	}
	defer srv.Shutdown()
	waitFor(t, what, done)
}

// retryTasks returns the delivery tasks in asynq's retry set, by message id.
func retryTasks(t *testing.T, b *bundle) map[string]*asynq.TaskInfo {
	t.Helper()
	out := map[string]*asynq.TaskInfo{}
	for q := range tasks.QueueWeights {
		infos, err := b.insp.ListRetryTasks(q, asynq.PageSize(5000))
		if errors.Is(err, asynq.ErrQueueNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("retry tasks of %s: %v", q, err)
		}
		for _, ti := range infos {
			out[ti.ID] = ti
		}
	}
	return out
}

// deliverHandler is the worker's real delivery handler. It is only run here on
// parked apps, which it defers before it needs WeChat, tokens or credentials.
func deliverHandler(b *bundle) *tasks.Handler {
	return tasks.NewHandler(tasks.HandlerDeps{Store: b.store, Metrics: b.metrics, Logger: logging.Discard()})
}

// TestResume: resuming a parked app lifts the park and runs at once its messages
// that were waiting for the quota reset, and only those.
func TestResume(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	until := time.Now().Add(time.Hour)
	for _, app := range []string{"default", "shop"} {
		if err := b.store.Park(ctx, app, until); err != nil {
			t.Fatal(err)
		}
	}
	parked := []string{postMessage(t, b, nil), postMessage(t, b, func(m map[string]any) { m["priority"] = "high" })}
	failing := postMessage(t, b, nil) // waits for an ordinary retry, not for the quota
	shop := postMessage(t, b, func(m map[string]any) { m["app"] = "shop" })

	deliver := deliverHandler(b)
	h := asynq.HandlerFunc(func(ctx context.Context, task *asynq.Task) error {
		var p tasks.DeliverPayload
		if err := json.Unmarshal(task.Payload(), &p); err == nil && p.ID == failing {
			return errors.New("tasks: send: errcode -1: system busy")
		}
		return deliver.ProcessTask(ctx, task)
	})
	runWorker(t, b, h, "all four messages to wait in the retry set", func() bool { return len(retryTasks(t, b)) == 4 })
	waiting := retryTasks(t, b)
	for _, id := range append(slices.Clone(parked), shop) {
		if rec := b.record(t, id); rec.Attempts != 0 {
			t.Errorf("parked message %s spent %d attempts, want 0", id, rec.Attempts)
		}
		if ti := waiting[id]; ti == nil || ti.Retried != 0 {
			t.Errorf("parked message %s: retry task %+v, want one that spent no retry", id, ti)
		}
	}

	type resumeBody struct {
		App     string `json:"app"`
		Resumed bool   `json:"resumed"`
		Woken   int    `json:"woken"`
	}
	r := b.do(t, http.MethodPost, "/v1/apps/default/resume", nil)
	var got resumeBody
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); r.status != http.StatusOK || err != nil {
		t.Fatalf("resume = %d %s, want 200 (%v)", r.status, r.body, err)
	}
	if want := (resumeBody{App: "default", Resumed: true, Woken: 2}); got != want {
		t.Errorf("resume = %+v, want %+v", got, want)
	}
	apps, err := b.store.ParkedApps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := apps["default"]; ok || len(apps) != 1 {
		t.Errorf("parked apps after resuming default = %v, want only shop", apps)
	}
	left := retryTasks(t, b)
	for _, id := range parked {
		if _, ok := left[id]; ok {
			t.Errorf("message %s still waits in the retry set after resume", id)
		}
		rec := b.record(t, id)
		info, err := b.insp.GetTaskInfo(rec.Queue, id)
		if err != nil || info.State != asynq.TaskStatePending {
			t.Errorf("task %s after resume: %+v, %v; want pending", id, info, err)
		}
	}
	for _, id := range []string{failing, shop} {
		if _, ok := left[id]; !ok {
			t.Errorf("message %s was woken; only default's parked messages should be", id)
		}
	}

	tests := []struct {
		name   string
		app    string
		status int
		want   resumeBody
	}{
		{name: "again: not parked any more", app: "default", status: http.StatusOK, want: resumeBody{App: "default"}},
		{name: "unknown app", app: "nosuchapp", status: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.do(t, http.MethodPost, "/v1/apps/"+tt.app+"/resume", nil)
			if r.status != tt.status {
				t.Fatalf("resume = %d %s, want %d", r.status, r.body, tt.status)
			}
			if tt.status == http.StatusNotFound {
				if code, field := mustError(t, r); code != "unknown_app" || field != "app" {
					t.Errorf("code %q field %q, want unknown_app, app", code, field)
				}
				return
			}
			var got resumeBody
			if err := json.Unmarshal(r.body, &got); err != nil || got != tt.want {
				t.Errorf("resume = %s, want %+v (%v)", r.body, tt.want, err)
			}
		})
	}
}

// TestResumeWakesEveryPage: a parked app with more waiting messages than one
// page of asynq's retry listing (500) gets all of them woken.
//
// (Regression: waking while paging through the shrinking retry set once left
// 500 of 1200 messages parked.)
func TestResumeWakesEveryPage(t *testing.T) {
	t.Parallel()
	const n = 1200
	b := setup(t)
	ctx := t.Context()
	if err := b.store.Park(ctx, "default", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for sent := 0; sent < n; {
		size := min(n-sent, 1000)
		items := make([][]byte, size)
		for i := range items {
			items[i] = smallMessage(fmt.Sprintf("open-%d", sent+i))
		}
		if br := decodeBatch(t, b.do(t, http.MethodPost, "/v1/messages/batch", batchOf(items...))); br.Accepted != size {
			t.Fatalf("batch accepted %d of %d", br.Accepted, size)
		}
		sent += size
	}
	mux := asynq.NewServeMux()
	mux.Handle(tasks.TypeDeliver, deliverHandler(b))
	client := asynq.NewClientFromRedisClient(b.rdb)
	mux.Handle(tasks.TypeFanout, tasks.NewFanoutHandler(client, b.store, 10))
	mux.Handle(tasks.TypeChunk, tasks.NewChunkHandler(deliverHandler(b), b.store, client, tasks.RetryPolicy{Base: time.Second, Cap: time.Minute}, 10))
	runWorker(t, b, mux, fmt.Sprintf("%d parked messages in the retry set", n), func() bool { return len(retryTasks(t, b)) == n })

	r := b.do(t, http.MethodPost, "/v1/apps/default/resume", nil)
	var got struct {
		Resumed bool `json:"resumed"`
		Woken   int  `json:"woken"`
	}
	if err := json.Unmarshal(r.body, &got); r.status != http.StatusOK || err != nil {
		t.Fatalf("resume = %d %s (%v)", r.status, r.body, err)
	}
	left := len(retryTasks(t, b))
	if !got.Resumed || got.Woken != n || left != 0 {
		t.Errorf("resume woke %d, %d still wait in the retry set; want %d woken, 0 waiting", got.Woken, left, n)
	}
}
