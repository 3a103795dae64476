package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/tasks"
	"github.com/wxpush/wxpush/internal/templates"
	"github.com/wxpush/wxpush/internal/wechat"
)

// maxMessageBytes bounds one message, alone or as a batch item; a template
// message is well under 4 KiB.
const maxMessageBytes = 64 << 10

var errMessageTooLarge = &apiError{Status: http.StatusRequestEntityTooLarge, Code: "too_large",
	Message: fmt.Sprintf("the message is larger than %d bytes", maxMessageBytes)}

// messageRequest is the API's message body: WeChat's send body plus wxpush fields.
type messageRequest struct {
	ToUser      string                     `json:"touser"`
	TemplateID  string                     `json:"template_id"`
	URL         string                     `json:"url"`
	MiniProgram json.RawMessage            `json:"miniprogram"`
	Data        map[string]json.RawMessage `json:"data"`
	Color       string                     `json:"color"`
	TopColor    string                     `json:"topcolor"`
	App         string                     `json:"app"`
	SendAt      string                     `json:"send_at"`
	ExpireAt    string                     `json:"expire_at"`
	TTL         json.RawMessage            `json:"ttl"`
	Priority    string                     `json:"priority"`
	Kind        string                     `json:"kind"` // "template" (default) or "subscribe"
	Page        string                     `json:"page"` // subscribe messages: the page opened on tap
	StatusURL   string                     `json:"status_url"`
}

// Message kinds.
const (
	kindTemplate  = "template"
	kindSubscribe = tasks.KindSubscribe
)

type miniProgramRequest struct {
	AppID    string `json:"appid"`
	PagePath string `json:"pagepath"`
}

type dataItemRequest struct {
	Value *string `json:"value"`
	Color string  `json:"color"`
}

// parseMessage validates a request and returns the record to create and the body
// to send.
func (s *Server) parseMessage(ctx context.Context, b []byte, index int, now time.Time, sess *templates.Session) (delivery.NewMessage, *apiError) {
	if len(b) > maxMessageBytes {
		// Only a batch item can be: a single message's body is cut off at the limit.
		return delivery.NewMessage{}, errMessageTooLarge
	}
	var req messageRequest
	if e := decodeStrict(b, &req, ""); e != nil {
		return delivery.NewMessage{}, e
	}
	if e := checkKeys(b, "", -1); e != nil {
		return delivery.NewMessage{}, e
	}
	if req.App == "" {
		req.App = s.defaultApp
	}
	if !s.hasApp(req.App) {
		return delivery.NewMessage{}, badField("app", "unknown_app", fmt.Sprintf("app %q is not configured", req.App))
	}
	if e := checkOpenID("touser", req.ToUser); e != nil {
		return delivery.NewMessage{}, e
	}
	if strings.TrimSpace(req.TemplateID) == "" {
		return delivery.NewMessage{}, badField("template_id", "required", "template_id is required")
	}
	if req.URL != "" {
		if u, err := url.Parse(req.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return delivery.NewMessage{}, badField("url", "invalid_url", "url must be an absolute http(s) URL")
		}
	}
	msg := wechat.TemplateMessage{ToUser: req.ToUser, TemplateID: req.TemplateID, URL: req.URL,
		Color: req.Color, TopColor: req.TopColor, Data: map[string]wechat.DataItem{}}
	if len(req.MiniProgram) > 0 && string(req.MiniProgram) != "null" {
		var mp miniProgramRequest
		if e := decodeStrict(req.MiniProgram, &mp, "miniprogram"); e != nil {
			return delivery.NewMessage{}, e
		}
		if mp.AppID == "" {
			return delivery.NewMessage{}, badField("miniprogram.appid", "required", "miniprogram.appid is required when miniprogram is set")
		}
		msg.MiniProgram = &wechat.MiniProgram{AppID: mp.AppID, PagePath: mp.PagePath}
	}
	if len(req.Data) == 0 {
		return delivery.NewMessage{}, badField("data", "required", `data is required: {"<key>":{"value":"…"}} for each template placeholder`)
	}
	for key, raw := range req.Data {
		field := "data." + key
		var item dataItemRequest
		if e := decodeStrict(raw, &item, field); e != nil {
			return delivery.NewMessage{}, e
		}
		if item.Value == nil {
			return delivery.NewMessage{}, badField(field+".value", "required", field+` must be {"value": "…"}`)
		}
		msg.Data[key] = wechat.DataItem{Value: *item.Value, Color: item.Color}
	}
	queue, ok := tasks.QueueFor(req.Priority)
	if !ok {
		return delivery.NewMessage{}, badField("priority", "invalid_priority", "priority must be high, normal or low")
	}
	var body any = &msg
	switch req.Kind {
	case "", kindTemplate:
		if req.Page != "" {
			return delivery.NewMessage{}, badField("page", "not_for_kind", "page is for subscribe messages; template messages take url or miniprogram")
		}
	case kindSubscribe:
		sub, e := subscribeBody(&req, &msg)
		if e != nil {
			return delivery.NewMessage{}, e
		}
		body = sub
	default:
		return delivery.NewMessage{}, badField("kind", "invalid_kind", "kind must be template or subscribe")
	}
	m := delivery.NewMessage{ID: delivery.IDFor(req.App, messageID(ctx, index)), App: req.App, To: req.ToUser, Queue: queue,
		MaxBacklog: s.appMaxBacklog(req.App)}
	if req.Kind == kindSubscribe {
		m.Kind = kindSubscribe
	}
	var e *apiError
	if m.StatusURL, e = s.statusURL(req.App, req.StatusURL); e != nil {
		return m, e
	}
	if m.SendAt, e = parseTime("send_at", req.SendAt, now); e != nil {
		return m, e
	}
	if m.ExpireAt, e = parseTime("expire_at", req.ExpireAt, now); e != nil {
		return m, e
	}
	if len(req.TTL) > 0 && string(req.TTL) != "null" {
		if !m.ExpireAt.IsZero() {
			return m, badField("ttl", "conflict", "give expire_at or ttl, not both")
		}
		ttl, e := parseTTL(req.TTL)
		if e != nil {
			return m, e
		}
		start := now
		if m.SendAt.After(now) {
			start = m.SendAt
		}
		m.ExpireAt = start.Add(ttl)
		if m.ExpireAt.After(latest(now)) {
			return m, badField("ttl", "out_of_range", "send_at plus ttl must be at most one year ahead")
		}
	}
	if !m.ExpireAt.IsZero() && !m.ExpireAt.After(now) {
		return m, badField("expire_at", "in_past", "expire_at is already past")
	}
	if !m.ExpireAt.IsZero() && !m.SendAt.IsZero() && !m.ExpireAt.After(m.SendAt) {
		return m, badField("expire_at", "before_send_at", "expire_at must be after send_at")
	}
	if m.Kind == "" {
		// Subscribe templates are another set (not in get_all_private_template).
		if e := s.checkTemplate(ctx, sess, req.App, &msg); e != nil {
			return m, e
		}
	}
	m.Body, _ = json.Marshal(body) // strings and maps of strings cannot fail
	return m, nil
}

// subscribeBody turns a validated request into a bizsend body. Subscribe
// messages carry values only: colours and url are template-message fields.
func subscribeBody(req *messageRequest, msg *wechat.TemplateMessage) (*wechat.SubscribeMessage, *apiError) {
	switch {
	case req.URL != "":
		return nil, badField("url", "not_for_kind", "subscribe messages open a page (page or miniprogram), not a url")
	case req.Color != "" || req.TopColor != "":
		return nil, badField("color", "not_for_kind", "subscribe messages have no colours")
	}
	sub := &wechat.SubscribeMessage{ToUser: msg.ToUser, TemplateID: msg.TemplateID, Page: req.Page,
		MiniProgram: msg.MiniProgram, Data: make(map[string]wechat.SubscribeValue, len(msg.Data))}
	for k, v := range msg.Data {
		if v.Color != "" {
			return nil, badField("data."+k+".color", "not_for_kind", "subscribe messages have no colours")
		}
		sub.Data[k] = wechat.SubscribeValue{Value: v.Value}
	}
	return sub, nil
}

// checkTemplate refuses a message WeChat would answer with 40037 or 47003. When
// the template list cannot be had it lets the message through (fail open,
// counted): WeChat's own answer then settles it.
func (s *Server) checkTemplate(ctx context.Context, sess *templates.Session, app string, msg *wechat.TemplateMessage) *apiError {
	if a, _ := s.app(app); sess == nil || !a.ValidateTemplates {
		return nil
	}
	data := make(map[string]string, len(msg.Data))
	for k, v := range msg.Data {
		data[k] = v.Value
	}
	p, err := sess.Check(ctx, app, msg.TemplateID, data)
	switch {
	case err != nil:
		s.metrics.TemplateChecks.WithLabelValues(app, "skipped").Inc()
		s.log.Warn("template list unavailable; accepting without validation", "app", app, "err", err)
		return nil
	case p != nil:
		s.metrics.TemplateChecks.WithLabelValues(app, "rejected").Inc()
		return badField(p.Field, p.Code, p.Message)
	}
	s.metrics.TemplateChecks.WithLabelValues(app, "ok").Inc()
	return nil
}

func (s *Server) appMaxBacklog(app string) int {
	a, _ := s.app(app)
	return a.MaxBacklog
}

// session returns a template-check session for one request, or nil.
func (s *Server) session() *templates.Session {
	if s.templates == nil {
		return nil
	}
	return s.templates.Session()
}

// latest is the last send_at or expire_at (or send_at plus ttl) accepted: one
// year ahead. A push is for an event of the coming days, so a time years ahead
// is a mistake. It also keeps every stored time writable: one past 9999-12-31
// UTC (9999-12-31T23:00:00-05:00) cannot be encoded as RFC 3339, and reading the
// message back would fail.
func latest(now time.Time) time.Time { return now.AddDate(1, 0, 0) }

// minTime bounds times from below for the same reason (0000-01-01T00:00:00+01:00
// is in year -1 UTC); a send_at in the past means "now".
var minTime = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)

func parseTime(field, v string, now time.Time) (time.Time, *apiError) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, badField(field, "invalid_time", field+" must be an RFC 3339 time, e.g. 2026-01-02T15:04:05+08:00")
	}
	if t.After(latest(now)) || t.Before(minTime) {
		return time.Time{}, badField(field, "out_of_range", field+" must be at most one year ahead (and after 1970)")
	}
	return t, nil
}

// checkOpenID refuses what cannot be an openid: WeChat's are 28 characters of
// [A-Za-z0-9_-]. Anything else (a NUL, a newline, a space) would be sent, and
// the callbacks naming it would then fail as malformed XML. Checked byte by
// byte: this is every request's path.
func checkOpenID(field, v string) *apiError {
	switch {
	case strings.TrimSpace(v) == "":
		return badField(field, "required", field+" (the recipient's openid) is required")
	case len(v) > maxOpenID:
		return badField(field, "too_long", fmt.Sprintf("%s is longer than %d bytes; it must be an openid", field, maxOpenID))
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return badField(field, "invalid_openid", field+" must be an openid: letters, digits, _ and - only")
		}
	}
	return nil
}

// maxOpenID is the longest openid accepted.
const maxOpenID = 64

// maxTTL bounds ttl: a message is pointless long after its event.
const maxTTL = 30 * 24 * time.Hour

// parseTTL reads ttl as a Go duration string ("10m") or a number of seconds.
func parseTTL(raw json.RawMessage) (time.Duration, *apiError) {
	var d time.Duration
	var secs float64
	var str string
	switch {
	case json.Unmarshal(raw, &secs) == nil:
		if secs > maxTTL.Seconds() {
			return 0, badField("ttl", "invalid_ttl", fmt.Sprintf("ttl must be at most %s", maxTTL))
		}
		d = time.Duration(secs * float64(time.Second))
	case json.Unmarshal(raw, &str) == nil:
		var err error
		if d, err = time.ParseDuration(str); err != nil {
			return 0, badField("ttl", "invalid_ttl", `ttl must be a duration such as "10m" or a number of seconds`)
		}
	default:
		return 0, badField("ttl", "invalid_ttl", `ttl must be a duration such as "10m" or a number of seconds`)
	}
	if d <= 0 {
		return 0, badField("ttl", "invalid_ttl", "ttl must be positive")
	}
	if d > maxTTL {
		return 0, badField("ttl", "invalid_ttl", fmt.Sprintf("ttl must be at most %s", maxTTL))
	}
	return d, nil
}

type acceptedResponse struct {
	ID    string         `json:"id"`
	State delivery.State `json:"state"`
}

func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request) {
	body, e := readBody(w, r, maxMessageBytes)
	if e != nil {
		writeError(w, e)
		return
	}
	m, e := s.parseMessage(r.Context(), body, 0, s.now(), s.session())
	if e != nil {
		writeError(w, e)
		return
	}
	state, err := s.submit.Submit(r.Context(), m)
	if err != nil {
		writeError(w, s.submitError(m.App, err))
		return
	}
	s.metrics.Enqueued.WithLabelValues(m.App).Inc()
	var msg wechat.TemplateMessage
	_ = json.Unmarshal(m.Body, &msg)
	s.log.Info("message accepted", "msg_id", m.ID, "app", m.App, "touser", logging.MaskOpenID(msg.ToUser), "queue", m.Queue)
	s.respond(w, http.StatusAccepted, acceptedResponse{ID: m.ID, State: state})
}

// submitError maps a Submit error to its response.
func (s *Server) submitError(app string, err error) *apiError {
	if errors.Is(err, delivery.ErrBacklogFull) {
		return &apiError{Status: http.StatusTooManyRequests, Code: "backlog_full", Field: "app",
			Message: fmt.Sprintf("app %q has its maximum of unfinished messages; retry later", app)}
	}
	s.log.Error("could not accept message", "app", app, "err", err)
	return errStorage
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	m, err := s.messages.Get(r.Context(), id)
	switch {
	case errors.Is(err, delivery.ErrNotFound):
		writeError(w, &apiError{Status: http.StatusNotFound, Code: "not_found", Field: "id",
			Message: fmt.Sprintf("no message %q (never accepted, or past its retention)", id)})
	case err != nil:
		s.log.Error("could not read message", "msg_id", id, "err", err)
		writeError(w, errStorage)
	default:
		s.respond(w, http.StatusOK, m)
	}
}

// readBody reads at most limit bytes; a larger body is a 413.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *apiError) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return nil, &apiError{Status: http.StatusRequestEntityTooLarge, Code: "too_large",
			Message: fmt.Sprintf("body is larger than %d bytes", limit)}
	case err != nil:
		return nil, badField("", "bad_body", "could not read the request body")
	}
	return b, nil
}
