package webhook

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/delivery"
)

// The vector was computed independently (Python's hmac module).
func TestSignFixedVector(t *testing.T) {
	t.Parallel()
	got := Sign([]byte("whsec"), time.Unix(1796630400, 0), []byte(`{"a":1}`))
	want := "t=1796630400,v1=e3420b312fa903b00f57e901b0c68edece192f30a495d83043b4744d87464253"
	if got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

func TestEventJSONShape(t *testing.T) {
	t.Parallel()
	e := Event{EventID: "1-0", ID: "Ym1", App: "default", State: "dead", Previous: "retrying", Seq: 2,
		Attempts: 5, LastError: &delivery.ErrorInfo{Code: -1, Msg: "system busy"},
		At: time.Date(2026, 12, 7, 5, 0, 0, 123456789, time.FixedZone("x", 3600))}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"event_id":"1-0","id":"Ym1","app":"default","state":"dead","previous":"retrying","seq":2,"attempts":5,"wechat_msgid":"","last_error":{"errcode":-1,"errmsg":"system busy"},"at":"2026-12-07T04:00:00.123Z"}`
	if string(b) != want {
		t.Fatalf("Event JSON = %s\nwant          %s", b, want)
	}
	var back Event
	if err := json.Unmarshal(b, &back); err != nil || !back.At.Equal(e.At.Truncate(time.Millisecond)) {
		t.Fatalf("round trip = %+v, %v", back, err)
	}
}
