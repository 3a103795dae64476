package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Batch limits of the API: a batch request holds at most MaxBatch messages and
// MaxBatchBytes of body. SendBatch splits larger slices to fit both.
const (
	MaxBatch      = 1000
	MaxBatchBytes = 8 << 20
)

// State is a message's place in its life cycle.
type State string

// Non-final states.
const (
	StateQueued    State = "queued"
	StateScheduled State = "scheduled"
	StateRetrying  State = "retrying"
	StateSent      State = "sent"
)

// Final states: a message in one never changes state again.
const (
	StateDelivered    State = "delivered"
	StateUserBlocked  State = "user_blocked"
	StateWeChatFailed State = "wechat_failed"
	StateRejected     State = "rejected"
	StateDead         State = "dead"
	StateExpired      State = "expired"
	StateCanceled     State = "canceled"
	StateUnconfirmed  State = "unconfirmed"
)

// Final reports whether s is a final state.
func (s State) Final() bool {
	switch s {
	case StateDelivered, StateUserBlocked, StateWeChatFailed, StateRejected,
		StateDead, StateExpired, StateCanceled, StateUnconfirmed:
		return true
	}
	return false
}

// Accepted is the API's answer to an accepted message: its id and first state
// (queued or scheduled; canceled after Cancel; queued after Retry).
type Accepted struct {
	ID    string `json:"id"`
	State State  `json:"state"`
}

// SendOption adjusts one Send or SendBatch call.
type SendOption func(*sendOptions)

type sendOptions struct {
	key      string
	progress func(done, total int)
}

func collect(opts []SendOption) sendOptions {
	var o sendOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// IdempotencyKey sends key as the Idempotency-Key (printable ASCII, at most 255
// bytes), so that repeating the call — from another process, after a crash —
// within the server's window returns the first answer and enqueues nothing new.
// SendBatch sends its first request with key and request i > 0 with "key-i".
// Without this option each call makes a random key, kept across its own retries.
func IdempotencyKey(key string) SendOption {
	return func(o *sendOptions) { o.key = key }
}

// Progress has SendBatch call fn after each request with the number of
// messages answered so far and in all. fn runs on the calling goroutine.
func Progress(fn func(done, total int)) SendOption {
	return func(o *sendOptions) { o.progress = fn }
}

// Send enqueues one message (POST /v1/messages).
func (c *Client) Send(ctx context.Context, m Message, opts ...SendOption) (Accepted, error) {
	o := collect(opts)
	if o.key == "" {
		o.key = newKey()
	}
	body, err := json.Marshal(m)
	if err != nil {
		return Accepted{}, fmt.Errorf("wxpush: encoding the message: %w", err)
	}
	var a Accepted
	err = c.do(ctx, call{method: http.MethodPost, path: "/v1/messages", body: body, idemKey: o.key}, &a)
	return a, err
}

// BatchResult is the outcome of SendBatch: one item per message, in order.
type BatchResult struct {
	Accepted int         `json:"accepted"`
	Rejected int         `json:"rejected"`
	Results  []BatchItem `json:"results"`
}

// BatchItem is one message's outcome: accepted (ID, State) or not (Error, whose
// Field is indexed in the whole slice given to SendBatch: "messages[1500].touser").
type BatchItem struct {
	ID    string `json:"id,omitempty"`
	State State  `json:"state,omitempty"`
	Error *Error `json:"error,omitempty"`
}

// SendBatch enqueues messages (POST /v1/messages/batch) in requests of at most
// MaxBatch messages and MaxBatchBytes, one after another, each with its own
// idempotency key. Each message is accepted or rejected on its own.
//
// When a request fails as a whole (after its retries), SendBatch returns the
// error with the results so far: messages [0, len(Results)) were answered,
// the rest were not sent. Calling again with the same messages and the same
// IdempotencyKey resumes without enqueueing any message twice.
func (c *Client) SendBatch(ctx context.Context, ms []Message, opts ...SendOption) (BatchResult, error) {
	o := collect(opts)
	if o.key == "" {
		o.key = newKey()
	}
	res := BatchResult{Results: make([]BatchItem, 0, len(ms))}
	bodies := make([][]byte, len(ms))
	for i, m := range ms {
		b, err := json.Marshal(m)
		if err != nil {
			return res, fmt.Errorf("wxpush: encoding message %d: %w", i, err)
		}
		bodies[i] = b
	}
	for n, ch := range chunks(bodies) {
		key := o.key
		if n > 0 {
			key = o.key + "-" + strconv.Itoa(n)
		}
		var buf bytes.Buffer
		buf.WriteString(`{"messages":[`)
		for i, b := range bodies[ch.lo:ch.hi] {
			if i > 0 {
				buf.WriteByte(',')
			}
			buf.Write(b)
		}
		buf.WriteString(`]}`)
		var br BatchResult
		if err := c.do(ctx, call{method: http.MethodPost, path: "/v1/messages/batch", body: buf.Bytes(), idemKey: key}, &br); err != nil {
			return res, err
		}
		if len(br.Results) != ch.hi-ch.lo {
			return res, fmt.Errorf("wxpush: batch of messages %d to %d: the server answered %d results for %d messages",
				ch.lo, ch.hi-1, len(br.Results), ch.hi-ch.lo)
		}
		for j, item := range br.Results {
			if item.Error != nil {
				item.Error.Field = reindex(item.Error.Field, j, ch.lo+j)
				res.Rejected++
			} else {
				res.Accepted++
			}
			res.Results = append(res.Results, item)
		}
		if o.progress != nil {
			o.progress(len(res.Results), len(ms))
		}
	}
	return res, nil
}

type span struct{ lo, hi int }

// chunks splits bodies into spans that fit one batch request. A message too
// large for any batch gets a span of its own, for the server to refuse.
func chunks(bodies [][]byte) []span {
	const envelope = len(`{"messages":[]}`)
	var out []span
	lo, size := 0, envelope
	for i, b := range bodies {
		if i > lo && (i-lo == MaxBatch || size+1+len(b) > MaxBatchBytes) {
			out = append(out, span{lo, i})
			lo, size = i, envelope
		}
		size += len(b) + 1
	}
	if lo < len(bodies) {
		out = append(out, span{lo, len(bodies)})
	}
	return out
}

// reindex rewrites the chunk-relative "messages[j]…" of a batch error field.
func reindex(field string, j, i int) string {
	if rest, ok := strings.CutPrefix(field, "messages["+strconv.Itoa(j)+"]"); ok {
		return "messages[" + strconv.Itoa(i) + "]" + rest
	}
	return field
}

// Status is a message's record (GET /v1/messages/{id}).
type Status struct {
	ID       string `json:"id"`
	App      string `json:"app"`
	Kind     string `json:"kind"` // "template" or "subscribe"
	State    State  `json:"state"`
	Attempts int    `json:"attempts"`
	// WeChatMsgID is WeChat's msgid, once WeChat accepted the message.
	WeChatMsgID string     `json:"wechat_msgid,omitempty"`
	LastError   *LastError `json:"last_error,omitempty"`
	// WeChatStatus is the raw Status of WeChat's result callback.
	WeChatStatus string    `json:"wechat_status,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	SendAt       time.Time `json:"send_at,omitzero"`
	ExpireAt     time.Time `json:"expire_at,omitzero"`
	SentAt       time.Time `json:"sent_at,omitzero"`
	FinishedAt   time.Time `json:"finished_at,omitzero"`
	History      []Event   `json:"history"`
}

// LastError is the last error WeChat (or the transport) reported.
type LastError struct {
	ErrCode int    `json:"errcode"`
	ErrMsg  string `json:"errmsg"`
}

// Event is one line of a message's history.
type Event struct {
	At      time.Time `json:"at"`
	Event   string    `json:"event"`
	State   State     `json:"state,omitempty"`
	ErrCode int       `json:"errcode,omitempty"`
	ErrMsg  string    `json:"errmsg,omitempty"`
	Status  string    `json:"status,omitempty"` // WeChat's raw callback Status
	Note    string    `json:"note,omitempty"`
}

// Status returns the record of message id.
func (c *Client) Status(ctx context.Context, id string) (Status, error) {
	var s Status
	if id == "" {
		return s, localError("id", "required", "a message id is required")
	}
	err := c.do(ctx, call{method: http.MethodGet, path: "/v1/messages/" + url.PathEscape(id)}, &s)
	return s, err
}

// Cancel cancels a message WeChat has not accepted (DELETE /v1/messages/{id});
// canceling a canceled message succeeds again. A message in the middle of an
// attempt is asked again after Retry-After (within the retries); once sent it
// cannot be canceled: *Error with Code "not_cancelable".
func (c *Client) Cancel(ctx context.Context, id string) (Accepted, error) {
	var a Accepted
	if id == "" {
		return a, localError("id", "required", "a message id is required")
	}
	err := c.do(ctx, call{method: http.MethodDelete, path: "/v1/messages/" + url.PathEscape(id)}, &a)
	return a, err
}

// DeadPage is one page of an app's dead messages, newest first.
type DeadPage struct {
	Messages []Status `json:"messages"`
	Total    int64    `json:"total"` // dead messages of the app in all
	// NextOffset is the offset of the next page; 0 on the last page.
	NextOffset int `json:"next_offset,omitzero"`
}

// Dead lists an app's dead messages (GET /v1/messages?state=dead). app ""
// means the server's default app; limit 0 means the server's default (50).
func (c *Client) Dead(ctx context.Context, app string, offset, limit int) (DeadPage, error) {
	q := url.Values{"state": {string(StateDead)}}
	if app != "" {
		q.Set("app", app)
	}
	if offset != 0 {
		q.Set("offset", strconv.Itoa(offset))
	}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var p DeadPage
	err := c.do(ctx, call{method: http.MethodGet, path: "/v1/messages?" + q.Encode()}, &p)
	return p, err
}

// Retry requeues a dead message with its id (POST /v1/messages/{id}/retry).
// A message that is not dead is an *Error with Code "not_dead" — also when a
// first try whose answer was lost already requeued it.
func (c *Client) Retry(ctx context.Context, id string) error {
	if id == "" {
		return localError("id", "required", "a message id is required")
	}
	return c.do(ctx, call{method: http.MethodPost, path: "/v1/messages/" + url.PathEscape(id) + "/retry"}, nil)
}

// ResumeResult is the answer of Resume.
type ResumeResult struct {
	App     string `json:"app"`
	Resumed bool   `json:"resumed"` // the app was parked
	Woken   int    `json:"woken"`   // waiting messages moved forward
}

// Resume lifts an app's park (daily quota or configuration error) and wakes its
// waiting messages (POST /v1/apps/{app}/resume). Resuming twice is harmless.
func (c *Client) Resume(ctx context.Context, app string) (ResumeResult, error) {
	var r ResumeResult
	if app == "" {
		return r, localError("app", "required", "an app name is required")
	}
	err := c.do(ctx, call{method: http.MethodPost, path: "/v1/apps/" + url.PathEscape(app) + "/resume"}, &r)
	return r, err
}

// Template is one of an app's template-message templates, as WeChat lists them.
type Template struct {
	ID              string `json:"template_id"`
	Title           string `json:"title"`
	PrimaryIndustry string `json:"primary_industry"`
	DeputyIndustry  string `json:"deputy_industry"`
	// Content holds the {{key.DATA}} placeholders: the keys Message.Data needs.
	Content string `json:"content"`
	Example string `json:"example"`
}

// placeholder matches {{key.DATA}}; WeChat tolerates spaces inside the braces.
var placeholder = regexp.MustCompile(`\{\{\s*([A-Za-z0-9_]+)\.DATA\s*\}\}`)

// Keys returns the data keys of the template's placeholders in the order they
// first appear: the keys a message's Data must hold.
func (t Template) Keys() []string {
	var keys []string
	for _, m := range placeholder.FindAllStringSubmatch(t.Content, -1) {
		if !slices.Contains(keys, m[1]) {
			keys = append(keys, m[1])
		}
	}
	return keys
}

// Templates lists an app's templates (GET /v1/apps/{app}/templates).
func (c *Client) Templates(ctx context.Context, app string) ([]Template, error) {
	if app == "" {
		return nil, localError("app", "required", "an app name is required")
	}
	var r struct {
		Templates []Template `json:"templates"`
	}
	err := c.do(ctx, call{method: http.MethodGet, path: "/v1/apps/" + url.PathEscape(app) + "/templates"}, &r)
	return r.Templates, err
}
