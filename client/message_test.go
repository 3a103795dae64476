package client_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/wxpush/wxpush/client"
)

func TestMessageJSON(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 2, 15, 4, 5, 0, time.FixedZone("CST", 8*3600))
	tests := []struct {
		name string
		m    client.Message
		json string
	}{
		{"minimal", msg("u1"), `{"touser":"u1","template_id":"T1","data":{"thing1":{"value":"order shipped"}}}`},
		{"everything", client.Message{App: "shop", ToUser: "u2", TemplateID: "T1", URL: "https://e.com/x",
			MiniProgram: &client.MiniProgram{AppID: "wxm", PagePath: "p/i"},
			Data:        map[string]client.Value{"b": {Value: "2", Color: "#fff"}, "a": {Value: "1"}},
			SendAt:      at, ExpireAt: at.Add(time.Hour), Priority: "high", TopColor: "#FF0000"},
			`{"app":"shop","touser":"u2","template_id":"T1","url":"https://e.com/x","miniprogram":{"appid":"wxm","pagepath":"p/i"},` +
				`"data":{"a":{"value":"1"},"b":{"value":"2","color":"#fff"}},"send_at":"2026-01-02T15:04:05+08:00","expire_at":"2026-01-02T16:04:05+08:00","priority":"high","topcolor":"#FF0000"}`},
		{"subscribe with ttl", client.Message{ToUser: "u3", TemplateID: "S1", Kind: "subscribe", Page: "pages/index",
			Data: map[string]client.Value{"thing1": {Value: "v"}}, TTL: 90 * time.Second},
			`{"touser":"u3","template_id":"S1","data":{"thing1":{"value":"v"}},"ttl":"1m30s","kind":"subscribe","page":"pages/index"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.m)
			if err != nil || string(b) != tt.json {
				t.Fatalf("Marshal = %s, %v\nwant       %s", b, err, tt.json)
			}
			var back client.Message
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if !back.SendAt.Equal(tt.m.SendAt) || !back.ExpireAt.Equal(tt.m.ExpireAt) {
				t.Errorf("times: %v %v, want %v %v", back.SendAt, back.ExpireAt, tt.m.SendAt, tt.m.ExpireAt)
			}
			back.SendAt, back.ExpireAt = tt.m.SendAt, tt.m.ExpireAt
			if !reflect.DeepEqual(back, tt.m) {
				t.Errorf("round trip = %+v, want %+v", back, tt.m)
			}
		})
	}
}

func TestMessageUnmarshalStrict(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, json  string
		field, code string // "" = no error
	}{
		{"ttl in seconds", `{"touser":"u","template_id":"T1","data":{"k":{"value":"v"}},"ttl":600}`, "", ""},
		{"null miniprogram", `{"touser":"u","template_id":"T1","miniprogram":null,"data":{"k":{"value":"v"}}}`, "", ""},
		{"name in capitals", `{"TOUSER":"u","template_id":"T1","data":{"k":{"value":"v"}}}`, "TOUSER", "unknown_field"},
		{"misspelt data item", `{"touser":"u","template_id":"T1","data":{"k":{"valu":"v"}}}`, "data.k.valu", "unknown_field"},
		{"data item without value", `{"touser":"u","template_id":"T1","data":{"k":{"color":"#000"}}}`, "data.k.value", "required"},
		{"data item not an object", `{"touser":"u","template_id":"T1","data":{"k":"v"}}`, "data.k", "invalid_type"},
		{"number for a string", `{"touser":42,"template_id":"T1"}`, "touser", "invalid_type"},
		{"bad send_at", `{"touser":"u","template_id":"T1","send_at":"tomorrow"}`, "send_at", "invalid_time"},
		{"bad ttl", `{"touser":"u","template_id":"T1","ttl":"soon"}`, "ttl", "invalid_ttl"},
		{"unknown miniprogram field", `{"touser":"u","miniprogram":{"appid":"a","path":"p"}}`, "miniprogram.path", "unknown_field"},
		{"an array", `[1]`, "", "invalid_type"},
		{"null", `null`, "", "invalid_type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m client.Message
			err := json.Unmarshal([]byte(tt.json), &m)
			if tt.code == "" {
				if err != nil {
					t.Errorf("Unmarshal = %v", err)
				}
				return
			}
			var e *client.Error
			if !errors.As(err, &e) || e.Field != tt.field || e.Code != tt.code || e.HTTPStatus != 0 {
				t.Errorf("Unmarshal error = %v (%+v), want %s on %q", err, e, tt.code, tt.field)
			}
		})
	}
}

func TestTemplateKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, content, want string
	}{
		{"none", "hello", "[]"},
		{"in order, once each", "{{first.DATA}} {{ keyword1.DATA }}\n{{first.DATA}}{{remark.DATA}}", "[first keyword1 remark]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (client.Template{Content: tt.content}).Keys(); fmt.Sprint(got) != tt.want {
				t.Errorf("Keys = %v, want %s", got, tt.want)
			}
		})
	}
}
