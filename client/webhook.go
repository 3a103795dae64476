package client

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// WebhookSignatureHeader is the header a status webhook's signature comes in.
const WebhookSignatureHeader = "Wxpush-Signature"

// VerifyWebhook's errors; branch on them with errors.Is.
var (
	// ErrWebhookFormat: the header is not "t=<unix seconds>,v1=<hex>".
	ErrWebhookFormat = errors.New("wxpush: webhook signature header is malformed")
	// ErrWebhookSignature: no v1 signature matches the body and secret.
	ErrWebhookSignature = errors.New("wxpush: webhook signature does not match")
	// ErrWebhookTooOld: the timestamp is further than tolerance from now
	// (a replayed or badly delayed request).
	ErrWebhookTooOld = errors.New("wxpush: webhook timestamp is outside the tolerance")
)

// WebhookEvent is the body of a status webhook and the data of a status
// event of GET /v1/events. Deliveries are at least once: deduplicate by
// EventID; Seq orders one message's events.
type WebhookEvent struct {
	EventID     string     `json:"event_id"`
	ID          string     `json:"id"`
	App         string     `json:"app"`
	State       State      `json:"state"`
	Previous    State      `json:"previous"`
	Seq         int64      `json:"seq"`
	Attempts    int        `json:"attempts"`
	WeChatMsgID string     `json:"wechat_msgid"`
	LastError   *LastError `json:"last_error"`
	At          time.Time  `json:"at"`
}

// VerifyWebhook checks a status webhook: header is its Wxpush-Signature
// value ("t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>", more
// than one v1 during a secret rotation), body the raw request body, exactly
// as received. It returns ErrWebhookFormat, ErrWebhookTooOld (|now - t| >
// tolerance; tolerance 0 skips the check) or ErrWebhookSignature; nil when
// the request is authentic. The comparison is in constant time.
func VerifyWebhook(secret []byte, header string, body []byte, tolerance time.Duration, now time.Time) error {
	var ts string
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrWebhookFormat
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != sha256.Size {
				return ErrWebhookFormat
			}
			sigs = append(sigs, b)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrWebhookFormat
	}
	if tolerance > 0 {
		d := now.Sub(time.Unix(sec, 0))
		if d > tolerance || d < -tolerance {
			return ErrWebhookTooOld
		}
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	want := mac.Sum(nil)
	ok := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			ok = true
		}
	}
	if !ok {
		return ErrWebhookSignature
	}
	return nil
}

// DeadWebhook is a status webhook whose delivery gave up.
type DeadWebhook struct {
	Event     WebhookEvent `json:"event"`
	URL       string       `json:"url"` // without userinfo, query or fragment
	LastError string       `json:"last_error"`
	Attempts  int          `json:"attempts"`
	DiedAt    time.Time    `json:"died_at"`
}

// DeadWebhookPage is one page of dead webhooks.
type DeadWebhookPage struct {
	Total  int           `json:"total"`
	Events []DeadWebhook `json:"events"`
	// NextOffset is the offset of the next page; 0 on the last page.
	NextOffset int `json:"next_offset,omitzero"`
}

// DeadWebhooks lists dead webhooks (GET /v1/webhooks/dead). app "" means
// every app; limit 0 means the server's default (50).
func (c *Client) DeadWebhooks(ctx context.Context, app string, offset, limit int) (DeadWebhookPage, error) {
	q := url.Values{}
	if app != "" {
		q.Set("app", app)
	}
	if offset != 0 {
		q.Set("offset", strconv.Itoa(offset))
	}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	path := "/v1/webhooks/dead"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var p DeadWebhookPage
	err := c.do(ctx, call{method: http.MethodGet, path: path}, &p)
	return p, err
}

// ReplayWebhook sends a dead webhook again, with a fresh delivery window
// (POST /v1/webhooks/dead/{event_id}/replay). One that is not dead (or was
// already replayed) is an *Error with Code "not_found".
func (c *Client) ReplayWebhook(ctx context.Context, eventID string) error {
	if eventID == "" {
		return localError("event_id", "required", "an event id is required")
	}
	return c.do(ctx, call{method: http.MethodPost, path: "/v1/webhooks/dead/" + url.PathEscape(eventID) + "/replay"}, nil)
}
