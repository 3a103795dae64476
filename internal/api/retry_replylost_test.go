package api_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/tasks"
)

// TestRetryPossibleDuplicate: a dead message one of whose attempts may have
// reached WeChat without its reply is not requeued unless the caller says
// force=true: past WeChat's client_msg_id window a retry may deliver it twice.
func TestRetryPossibleDuplicate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	const id = "Ylost-1"
	if _, err := b.store.Create(ctx, delivery.NewMessage{ID: id, App: "default", Queue: tasks.QueueNormal,
		Body: []byte(`{"touser":"open-lost","template_id":"t","data":{"k":{"value":"v"}}}`)}); err != nil {
		t.Fatal(err)
	}
	if a, err := b.store.Begin(ctx, id); err != nil || !a.Proceed {
		t.Fatalf("Begin = %+v, %v", a, err)
	}
	if _, err := b.store.MarkAmbiguous(ctx, id, "default", "open-lost", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Finish(ctx, id, "default", delivery.StateDead, &delivery.ErrorInfo{Msg: "http status 500"}); err != nil {
		t.Fatal(err)
	}
	deadMessage(t, b.store, "Yplain-1", "default")

	tests := []struct {
		name, path string
		status     int
		code       string
	}{
		{name: "without force", path: "/v1/messages/" + id + "/retry", status: http.StatusConflict, code: "possible_duplicate"},
		{name: "force=false", path: "/v1/messages/" + id + "/retry?force=false", status: http.StatusConflict, code: "possible_duplicate"},
		{name: "not a boolean", path: "/v1/messages/" + id + "/retry?force=maybe", status: http.StatusConflict, code: "possible_duplicate"},
		{name: "no lost reply", path: "/v1/messages/Yplain-1/retry", status: http.StatusAccepted},
		{name: "unknown id", path: "/v1/messages/Ynone/retry", status: http.StatusNotFound, code: "not_found"},
		{name: "forced", path: "/v1/messages/" + id + "/retry?force=true", status: http.StatusAccepted},
	}
	for _, tt := range tests { // in order: the forced retry comes last
		r := b.do(t, http.MethodPost, tt.path, nil)
		if r.status != tt.status {
			t.Fatalf("%s: POST %s = %d %s, want %d", tt.name, tt.path, r.status, r.body, tt.status)
		}
		if tt.code != "" {
			if code, _ := mustError(t, r); code != tt.code {
				t.Errorf("%s: code %q, want %q", tt.name, code, tt.code)
			}
		}
		if tt.status == http.StatusConflict {
			if rec := b.record(t, id); rec.State != delivery.StateDead {
				t.Errorf("%s: a refused retry left the message %s, want dead", tt.name, rec.State)
			}
		}
	}
	if rec := b.record(t, id); rec.State != delivery.StateQueued {
		t.Errorf("after the forced retry the message is %s, want queued", rec.State)
	}
}
