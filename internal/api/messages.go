package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/tasks"
	"github.com/wxpush/wxpush/internal/templates"
	"github.com/wxpush/wxpush/internal/wechat"
)

// maxMessageBytes bounds one message request; a template message is well under 4 KiB.
const maxMessageBytes = 64 << 10

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

// decodeStrict decodes one JSON object into v. Keys must be spelled exactly as
// v's json tags (encoding/json alone would accept "TOUSER" for "touser", and let a
// later spelling silently win); unknown keys and trailing data are refused. Error
// fields are prefixed with prefix.
func decodeStrict(b []byte, v any, prefix string) *apiError {
	var keys map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&keys); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field == "" {
			what := "the body"
			if prefix != "" {
				what = prefix
			}
			return badField(prefix, "invalid_type", fmt.Sprintf("%s must be a JSON object, not %s", what, typeErr.Value))
		}
		return jsonError(err, prefix)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badField(prefix, "invalid_json", "unexpected data after the JSON object")
	}
	if keys == nil {
		return badField(prefix, "invalid_type", "expected a JSON object, not null")
	}
	known := jsonFields(v)
	for k := range keys {
		if !known[k] {
			f := join(prefix, k)
			return badField(f, "unknown_field", fmt.Sprintf("unknown field %q (names are case-sensitive)", f))
		}
	}
	if err := json.Unmarshal(b, v); err != nil {
		return jsonError(err, prefix)
	}
	return nil
}

// jsonFields returns the json names of a struct's fields.
func jsonFields(v any) map[string]bool {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	out := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out[name] = true
		}
	}
	return out
}

func join(prefix, f string) string {
	switch {
	case prefix == "":
		return f
	case f == "":
		return prefix
	}
	return prefix + "." + f
}

func jsonError(err error, prefix string) *apiError {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return badField(join(prefix, typeErr.Field), "invalid_type", fmt.Sprintf("%s must be %s, not %s", join(prefix, typeErr.Field), jsonKind(typeErr.Type.Kind().String()), typeErr.Value))
	case errors.As(err, &syntaxErr):
		return badField(prefix, "invalid_json", fmt.Sprintf("invalid JSON at byte %d: %v", syntaxErr.Offset, err))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return badField(join(prefix, f), "unknown_field", fmt.Sprintf("unknown field %q", join(prefix, f)))
	case errors.Is(err, io.EOF):
		return badField(prefix, "invalid_json", "empty body: expected a JSON object")
	}
	return badField(prefix, "invalid_json", "invalid JSON: "+err.Error())
}

func jsonKind(k string) string {
	switch k {
	case "map", "struct", "ptr":
		return "an object"
	case "slice":
		return "an array"
	}
	return "a " + k
}

// parseMessage validates a request and returns the record to create and the body
// to send.
func (s *Server) parseMessage(ctx context.Context, b []byte, index int, now time.Time, sess *templates.Session) (delivery.NewMessage, *apiError) {
	var req messageRequest
	if e := decodeStrict(b, &req, ""); e != nil {
		return delivery.NewMessage{}, e
	}
	if req.App == "" {
		req.App = s.defaultApp
	}
	if !s.hasApp(req.App) {
		return delivery.NewMessage{}, badField("app", "unknown_app", fmt.Sprintf("app %q is not configured", req.App))
	}
	if strings.TrimSpace(req.ToUser) == "" {
		return delivery.NewMessage{}, badField("touser", "required", "touser (the recipient's openid) is required")
	}
	if len(req.ToUser) > 128 {
		return delivery.NewMessage{}, badField("touser", "too_long", "touser is longer than 128 bytes; it must be an openid")
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
		if !utf8.ValidString(*item.Value) {
			return delivery.NewMessage{}, badField(field+".value", "invalid_utf8", field+".value is not valid UTF-8")
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
	if m.SendAt, e = parseTime("send_at", req.SendAt); e != nil {
		return m, e
	}
	if m.ExpireAt, e = parseTime("expire_at", req.ExpireAt); e != nil {
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

func parseTime(field, v string) (time.Time, *apiError) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, badField(field, "invalid_time", field+" must be an RFC 3339 time, e.g. 2026-01-02T15:04:05+08:00")
	}
	return t, nil
}

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
	writeJSON(w, http.StatusAccepted, acceptedResponse{ID: m.ID, State: state})
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
		writeJSON(w, http.StatusOK, m)
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
