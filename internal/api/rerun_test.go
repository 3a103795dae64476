package api_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/wxpush/wxpush/internal/delivery"
)

// TestIdempotentRerunAfterLostResponse: the enqueuer stored the message but died
// before storing the response (modelled by deleting the claim), so the client's
// retry runs the request again. The message id derives from the key, so the rerun
// finds the stored message instead of creating a second one.
func TestIdempotentRerunAfterLostResponse(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := seed(t, "template-send-request.json")
	batch := []byte(`{"messages":[` + string(body) + `,` + string(body) + `]}`)
	for _, tt := range []struct{ path, key string }{{"/v1/messages", "lost-1"}, {"/v1/messages/batch", "lost-2"}} {
		first := b.do(t, http.MethodPost, tt.path, pick(tt.path, body, batch), "Idempotency-Key", tt.key)
		if first.status/100 != 2 {
			t.Fatalf("%s first = %d %s", tt.path, first.status, first.body)
		}
		keys, _ := b.rdb.Keys(t.Context(), "wxpush:idem:*"+tt.key).Result()
		if len(keys) != 1 {
			t.Fatalf("idempotency entries for %s: %v", tt.key, keys)
		}
		b.rdb.Del(t.Context(), keys[0]) // the response was never stored
		again := b.do(t, http.MethodPost, tt.path, pick(tt.path, body, batch), "Idempotency-Key", tt.key)
		if again.status != first.status || string(again.body) != string(first.body) {
			t.Errorf("%s rerun = %d %s, want the first answer %d %s", tt.path, again.status, again.body, first.status, first.body)
		}
	}
	records, _ := b.rdb.Keys(t.Context(), delivery.RecordKeyPattern).Result()
	if len(records) != 3 {
		t.Errorf("%d records after two requests and their reruns, want 3 (1 + 2)", len(records))
	}
	if backlog, _ := b.store.Backlog(t.Context(), "default"); backlog != 3 {
		t.Errorf("backlog = %v, want 3 messages counted once", backlog)
	}
	// Without a key every request is new.
	one := b.do(t, http.MethodPost, "/v1/messages", body)
	two := b.do(t, http.MethodPost, "/v1/messages", body)
	var a1, a2 struct{ ID string }
	json.Unmarshal(one.body, &a1)
	json.Unmarshal(two.body, &a2)
	if a1.ID == "" || a1.ID == a2.ID {
		t.Errorf("requests without a key got ids %q and %q, want two fresh ids", a1.ID, a2.ID)
	}
}

func pick(path string, single, batch []byte) []byte {
	if path == "/v1/messages" {
		return single
	}
	return batch
}
