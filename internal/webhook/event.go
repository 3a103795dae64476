package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"

	"github.com/wxpush/wxpush/internal/delivery"
)

// EventsStream is the global stream of state changes: entry id = event id,
// field "e" = the Event as JSON. GET /v1/events reads it.
const EventsStream = "wxpush:events"

// Queue is the asynq queue webhook deliveries run on.
const Queue = "webhooks"

// Event is one state change of a message, as POSTed and as streamed.
type Event struct {
	EventID     string              `json:"event_id"`
	ID          string              `json:"id"`
	App         string              `json:"app"`
	State       string              `json:"state"`
	Previous    string              `json:"previous"`
	Seq         int64               `json:"seq"`
	Attempts    int                 `json:"attempts"`
	WeChatMsgID string              `json:"wechat_msgid"`
	LastError   *delivery.ErrorInfo `json:"last_error"`
	At          time.Time           `json:"at"`
}

// MarshalJSON writes At as RFC 3339 with milliseconds, in UTC.
func (e Event) MarshalJSON() ([]byte, error) {
	return json.Marshal(wireEvent{
		EventID: e.EventID, ID: e.ID, App: e.App, State: e.State, Previous: e.Previous,
		Seq: e.Seq, Attempts: e.Attempts, WeChatMsgID: e.WeChatMsgID, LastError: e.LastError,
		At: e.At.UTC().Format(atLayout),
	})
}

// SignatureHeader is the header that carries Sign's value.
const SignatureHeader = "Wxpush-Signature"

// Sign is the Wxpush-Signature header value of body sent at t:
// "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>".
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}
