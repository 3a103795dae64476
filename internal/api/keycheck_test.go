package api

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCheckKeys(t *testing.T) {
	t.Parallel()
	many := func(n int, dup bool) string {
		var b strings.Builder
		b.WriteString(`{"data":{`)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(`"k` + strings.Repeat("x", i) + `":1`)
		}
		if dup {
			b.WriteString(`,"kxxx":1`)
		}
		b.WriteString(`}}`)
		return b.String()
	}
	tests := []struct {
		name  string
		body  string
		depth int
		code  string // "" = accepted
		field string
	}{
		{name: "plain", body: `{"touser":"o","data":{"a":{"value":"v"},"b":{"value":"黄先生"}}}`, depth: -1},
		{name: "same key in sibling objects", body: `{"data":{"a":{"value":"v"},"b":{"value":"w"}}}`, depth: -1},
		{name: "top-level duplicate", body: `{"touser":"a","touser":"b"}`, depth: -1, code: "duplicate_key", field: "touser"},
		{name: "escaped duplicate", body: `{"touser":"a","\u0074ouser":"b"}`, depth: -1, code: "duplicate_key", field: "touser"},
		{name: "nested duplicate", body: `{"data":{"k":{"value":"a","value":"b"}}}`, depth: -1, code: "duplicate_key", field: "data.k.value"},
		{name: "duplicate data key", body: `{"data":{"k":{"value":"a"}, "k" :{"value":"b"}}}`, depth: -1, code: "duplicate_key", field: "data.k"},
		{name: "duplicate in an array", body: `{"messages":[{"a":1},{"b":1,"b":2}]}`, depth: -1, code: "duplicate_key", field: "messages[1].b"},
		{name: "depth 1 skips the items", body: `{"messages":[{"b":1,"b":2}]}`, depth: 1},
		{name: "depth 1 sees its own keys", body: `{"messages":[],"messages":[]}`, depth: 1, code: "duplicate_key", field: "messages"},
		{name: "depth 1 skips bad UTF-8 in items", body: "{\"messages\":[{\"touser\":\"\xff\"}]}", depth: 1},
		{name: "bad UTF-8 in a value", body: "{\"data\":{\"k\":{\"value\":\"a\xffb\"}}}", depth: -1, code: "invalid_utf8", field: "data.k.value"},
		{name: "bad UTF-8 in a key", body: "{\"data\":{\"k\xc3\":{\"value\":\"a\"}}}", depth: -1, code: "invalid_utf8", field: "data.k\uFFFD"},
		{name: "truncated UTF-8", body: "{\"touser\":\"\xe9\xbb\"}", depth: -1, code: "invalid_utf8", field: "touser"},
		{name: "escaped quote in a key", body: `{"a\"b":1,"a\"b":2}`, depth: -1, code: "duplicate_key", field: `a"b`},
		{name: "16 keys", body: many(16, false), depth: -1},
		{name: "300 keys", body: many(300, false), depth: -1},
		{name: "300 keys, one twice", body: many(300, true), depth: -1, code: "duplicate_key", field: "data.kxxx"},
		{name: "duplicate just past the scan", body: `{"a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1,"i":1,"j":1,"k":1,"l":1,"m":1,"n":1,"o":1,"p":1,"a":1}`,
			depth: -1, code: "duplicate_key", field: "a"},
		{name: "invalid JSON is the decoder's", body: `{"a":1 "a"`, depth: -1, code: "duplicate_key", field: "a"},
		{name: "garbage does not hang", body: `{"a":}]:,{[`, depth: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := checkKeys([]byte(tt.body), "", tt.depth)
			switch {
			case tt.code == "" && e != nil:
				t.Fatalf("checkKeys = %s %q (%s), want nil", e.Code, e.Field, e.Message)
			case tt.code != "" && e == nil:
				t.Fatalf("checkKeys = nil, want %s %q", tt.code, tt.field)
			case e != nil && (e.Code != tt.code || e.Field != tt.field || e.Status != 400):
				t.Fatalf("checkKeys = %d %s %q, want 400 %s %q", e.Status, e.Code, e.Field, tt.code, tt.field)
			}
		})
	}
}

// benchMessage is a normal template message of about 1 KB.
const benchMessage = `{"touser":"oia2TjuEGTNoeX76QEjQNrcURxG8","template_id":"ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY",` +
	`"url":"http://weixin.qq.com/download","topcolor":"#FF0000","app":"shop","priority":"high","ttl":"1h",` +
	`"miniprogram":{"appid":"wx0123456789abcdef","pagepath":"pages/order/index?id=42"},"data":{` +
	`"User":{"value":"黄先生","color":"#173177"},"Date":{"value":"06月07日 19时24分","color":"#173177"},` +
	`"CardNumber":{"value":"0426","color":"#173177"},"Type":{"value":"消费","color":"#173177"},` +
	`"Money":{"value":"人民币260.00元","color":"#173177"},"DeadTime":{"value":"06月07日19时24分","color":"#173177"},` +
	`"Left":{"value":"6504.09","color":"#173177"},"Order":{"value":"2026010215040542","color":"#173177"},` +
	`"Shop":{"value":"Example Store (Shanghai Pudong, No. 42)","color":"#173177"},` +
	`"Remark":{"value":"如有疑问，请拨打客服热线 400-000-0000，我们将竭诚为您服务。","color":"#173177"}}}`

// BenchmarkCheckKeys is the cost of the duplicate-key and UTF-8 check on a
// normal message; BenchmarkDecodeStrict, for scale, is its top-level decode.
func BenchmarkCheckKeys(b *testing.B) {
	body := []byte(benchMessage)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if e := checkKeys(body, "", -1); e != nil {
			b.Fatal(e)
		}
	}
}

func BenchmarkDecodeStrict(b *testing.B) {
	body := []byte(benchMessage)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var req messageRequest
		if e := decodeStrict(body, &req, ""); e != nil {
			b.Fatal(e)
		}
	}
}

// FuzzCheckKeys: checkKeys never panics or hangs, and on valid JSON it finds a
// duplicate key exactly when encoding/json's tokenizer sees one, and invalid
// UTF-8 exactly when the body has some.
func FuzzCheckKeys(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1,"a":2}`, `{"a":{"b":[{"c":1,"c":2}]}}`, `{"\u0061":1,"a":2}`,
		"{\"a\":\"\xff\"}", `[{"a":1},{"a":1}]`, `{"a":"\"","b":"\\"}`, `{"a":}`, benchMessage} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e := checkKeys(b, "", -1)
		if !json.Valid(b) {
			return
		}
		wantDup := hasDuplicate(json.NewDecoder(bytes.NewReader(b)))
		switch {
		case !utf8.Valid(b):
			if e == nil || e.Code != "invalid_utf8" && !wantDup {
				t.Fatalf("checkKeys(%q) = %v, want invalid_utf8", b, e)
			}
		case wantDup != (e != nil):
			t.Fatalf("checkKeys(%q) = %v, duplicate by the tokenizer: %v", b, e, wantDup)
		}
	})
}

// hasDuplicate is checkKeys' duplicate test done slowly with json.Decoder.Token,
// on one valid JSON value.
func hasDuplicate(dec *json.Decoder) bool {
	switch tok, _ := dec.Token(); tok {
	case json.Delim('{'):
		keys := map[string]bool{}
		for dec.More() {
			k, _ := dec.Token()
			key, _ := k.(string)
			if keys[key] || hasDuplicate(dec) {
				return true
			}
			keys[key] = true
		}
		_, _ = dec.Token()
	case json.Delim('['):
		for dec.More() {
			if hasDuplicate(dec) {
				return true
			}
		}
		_, _ = dec.Token()
	}
	return false
}
