package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Message is one message to enqueue: WeChat's send body plus wxpush's fields.
// Its JSON (MarshalJSON, UnmarshalJSON) is the API's request body, so one line
// of a `wxpush send --file` file decodes into it.
type Message struct {
	// App names the configured WeChat account; "" = the server's default app.
	App string
	// ToUser is the recipient's openid.
	ToUser     string
	TemplateID string
	// URL is the page a template message opens on tap (absolute http(s)).
	URL string
	// MiniProgram opens a mini program instead of URL.
	MiniProgram *MiniProgram
	// Data holds a Value for every {{key.DATA}} placeholder of the template.
	Data map[string]Value
	// SendAt delays the send until then; zero = now.
	SendAt time.Time
	// ExpireAt: a message not sent by then is settled expired, never sent
	// late; zero = no expiry. Give ExpireAt or TTL, not both.
	ExpireAt time.Time
	// TTL is the expiry relative to SendAt (or to acceptance); zero = none.
	TTL time.Duration
	// Priority is "high", "normal" (the default for "") or "low".
	Priority string
	// Kind is "template" (the default for "") or "subscribe" (订阅通知).
	Kind string
	// Page is the mini-program page a subscribe message opens.
	Page string
	// Color and TopColor are WeChat's legacy colours of a template message;
	// WeChat no longer shows them, the API still accepts them.
	Color, TopColor string
}

// Value is one data item of a message. Subscribe messages take no Color.
type Value struct {
	Value string `json:"value"`
	Color string `json:"color,omitempty"`
}

// MiniProgram is the mini program a message opens on tap.
type MiniProgram struct {
	AppID    string `json:"appid"`
	PagePath string `json:"pagepath,omitempty"`
}

// wireMessage is Message as the API spells it.
type wireMessage struct {
	App         string           `json:"app,omitempty"`
	ToUser      string           `json:"touser"`
	TemplateID  string           `json:"template_id"`
	URL         string           `json:"url,omitempty"`
	MiniProgram *MiniProgram     `json:"miniprogram,omitempty"`
	Data        map[string]Value `json:"data"`
	SendAt      string           `json:"send_at,omitempty"`
	ExpireAt    string           `json:"expire_at,omitempty"`
	TTL         string           `json:"ttl,omitempty"`
	Priority    string           `json:"priority,omitempty"`
	Kind        string           `json:"kind,omitempty"`
	Page        string           `json:"page,omitempty"`
	Color       string           `json:"color,omitempty"`
	TopColor    string           `json:"topcolor,omitempty"`
}

// MarshalJSON encodes m as the API's request body; zero fields are left out.
func (m Message) MarshalJSON() ([]byte, error) {
	w := wireMessage{App: m.App, ToUser: m.ToUser, TemplateID: m.TemplateID, URL: m.URL,
		MiniProgram: m.MiniProgram, Data: m.Data, Priority: m.Priority, Kind: m.Kind, Page: m.Page,
		Color: m.Color, TopColor: m.TopColor}
	if !m.SendAt.IsZero() {
		w.SendAt = m.SendAt.Format(time.RFC3339Nano)
	}
	if !m.ExpireAt.IsZero() {
		w.ExpireAt = m.ExpireAt.Format(time.RFC3339Nano)
	}
	if m.TTL != 0 {
		w.TTL = m.TTL.String()
	}
	return json.Marshal(w)
}

// wireMessageIn is the request body as read: nested values stay raw so that
// errors can name them.
type wireMessageIn struct {
	App         string                     `json:"app"`
	ToUser      string                     `json:"touser"`
	TemplateID  string                     `json:"template_id"`
	URL         string                     `json:"url"`
	MiniProgram json.RawMessage            `json:"miniprogram"`
	Data        map[string]json.RawMessage `json:"data"`
	SendAt      string                     `json:"send_at"`
	ExpireAt    string                     `json:"expire_at"`
	TTL         json.RawMessage            `json:"ttl"`
	Priority    string                     `json:"priority"`
	Kind        string                     `json:"kind"`
	Page        string                     `json:"page"`
	Color       string                     `json:"color"`
	TopColor    string                     `json:"topcolor"`
}

// UnmarshalJSON reads the API's request body as strictly as the server does:
// names are case-sensitive, unknown names and missing data values are refused.
// Its errors are *Error values (HTTPStatus 0) naming the field, so that a bad
// message is caught before anything is sent.
func (m *Message) UnmarshalJSON(b []byte) error {
	var w wireMessageIn
	if err := decodeStrict(b, &w, "", []string{"app", "touser", "template_id", "url", "miniprogram",
		"data", "send_at", "expire_at", "ttl", "priority", "kind", "page", "color", "topcolor"}); err != nil {
		return err
	}
	out := Message{App: w.App, ToUser: w.ToUser, TemplateID: w.TemplateID, URL: w.URL,
		Priority: w.Priority, Kind: w.Kind, Page: w.Page, Color: w.Color, TopColor: w.TopColor}
	if len(w.MiniProgram) > 0 && string(w.MiniProgram) != "null" {
		out.MiniProgram = new(MiniProgram)
		if err := decodeStrict(w.MiniProgram, out.MiniProgram, "miniprogram", []string{"appid", "pagepath"}); err != nil {
			return err
		}
	}
	if w.Data != nil {
		out.Data = make(map[string]Value, len(w.Data))
	}
	for k, raw := range w.Data {
		field := "data." + k
		var v struct {
			Value *string `json:"value"`
			Color string  `json:"color"`
		}
		if err := decodeStrict(raw, &v, field, []string{"value", "color"}); err != nil {
			return err
		}
		if v.Value == nil {
			return localError(field+".value", "required", field+` must be {"value": "…"}`)
		}
		out.Data[k] = Value{Value: *v.Value, Color: v.Color}
	}
	var err error
	if out.SendAt, err = parseTime("send_at", w.SendAt); err != nil {
		return err
	}
	if out.ExpireAt, err = parseTime("expire_at", w.ExpireAt); err != nil {
		return err
	}
	if out.TTL, err = parseTTL(w.TTL); err != nil {
		return err
	}
	*m = out
	return nil
}

func localError(field, code, msg string) *Error {
	return &Error{Code: code, Field: field, Message: msg}
}

// decodeStrict decodes the JSON object b into v after checking that every name
// is one of known, spelled exactly (encoding/json alone matches names without
// regard to case). Errors name fields under prefix.
func decodeStrict(b []byte, v any, prefix string, known []string) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil {
		return jsonError(err, prefix)
	}
	if keys == nil {
		return localError(prefix, "invalid_type", orBody(prefix)+" must be a JSON object, not null")
	}
	var unknown []string
	for k := range keys {
		if !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown) // the same error for the same input
		f := join(prefix, unknown[0])
		return localError(f, "unknown_field", fmt.Sprintf("unknown field %q (names are case-sensitive)", f))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return jsonError(err, prefix)
	}
	return nil
}

func jsonError(err error, prefix string) *Error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		f := join(prefix, typeErr.Field)
		return localError(f, "invalid_type", fmt.Sprintf("%s must be %s, not %s", orBody(f), jsonKind(typeErr.Type.Kind().String()), typeErr.Value))
	case errors.As(err, &syntaxErr):
		return localError(prefix, "invalid_json", fmt.Sprintf("invalid JSON at byte %d: %v", syntaxErr.Offset, err))
	}
	return localError(prefix, "invalid_json", "invalid JSON: "+err.Error())
}

func orBody(field string) string {
	if field == "" {
		return "the message"
	}
	return field
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

func join(prefix, f string) string {
	switch {
	case prefix == "":
		return f
	case f == "":
		return prefix
	}
	return prefix + "." + f
}

func parseTime(field, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, localError(field, "invalid_time", field+" must be an RFC 3339 time, e.g. 2026-01-02T15:04:05+08:00")
	}
	return t, nil
}

// parseTTL reads ttl as the API does: a duration string ("10m") or seconds.
func parseTTL(raw json.RawMessage) (time.Duration, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	var secs float64
	if json.Unmarshal(raw, &secs) == nil {
		return time.Duration(secs * float64(time.Second)), nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if d, err := time.ParseDuration(s); err == nil {
			return d, nil
		}
	}
	return 0, localError("ttl", "invalid_ttl", `ttl must be a duration such as "10m" or a number of seconds`)
}
