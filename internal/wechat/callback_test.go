package wechat_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/wxpush/wxpush/internal/wechat"
)

func TestSignature(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		parts []string
		want  string
	}{
		{
			// printf '%s' 1234567891395658920wxpushtoken | sha1sum
			name:  "plain callback: token, timestamp, nonce",
			parts: []string{"wxpushtoken", "1395658920", "123456789"},
			want:  "57ca59e67fa235412a09ed6cd9e7f260a1b9e74e",
		},
		{
			// Same vector, arguments in another order: WeChat sorts them.
			// printf '%s' 1234567891395658920wxpushtoken | sha1sum
			name:  "argument order does not matter",
			parts: []string{"123456789", "wxpushtoken", "1395658920"},
			want:  "57ca59e67fa235412a09ed6cd9e7f260a1b9e74e",
		},
		{
			// printf '%s' '1234567891395658920abcXYZ+/=wxpushtoken' | sha1sum
			name:  "encrypted callback: msg_signature covers Encrypt",
			parts: []string{"wxpushtoken", "1395658920", "123456789", "abcXYZ+/="},
			want:  "0d7fa6fd53d7238ee362ea2d97f02e01bad838bd",
		},
		{
			// Byte order, not case-folded: "B" (0x42) sorts before "a".
			// printf '%s' Bac | sha1sum
			name:  "sort is by bytes",
			parts: []string{"c", "a", "B"},
			want:  "c30b61e6672a2d973a25d86689d2d1de8a300cca",
		},
		{
			// A prefix sorts first: "a" < "ab" < "b".
			// printf '%s' aabb | sha1sum
			name:  "prefix sorts first",
			parts: []string{"ab", "b", "a"},
			want:  "28cc5fd736aee0939ede3330c2867b31e82d9656",
		},
		{
			// printf '%s' '' | sha1sum
			name:  "no parts",
			parts: nil,
			want:  "da39a3ee5e6b4b0d3255bfef95601890afd80709",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			orig := slices.Clone(tt.parts)
			if got := wechat.Signature(tt.parts...); got != tt.want {
				t.Errorf("Signature(%q) = %s, want %s", tt.parts, got, tt.want)
			}
			if !slices.Equal(tt.parts, orig) {
				t.Errorf("Signature reordered its argument: %q, was %q", tt.parts, orig)
			}
		})
	}
}

func TestVerifySignature(t *testing.T) {
	t.Parallel()
	plain := []string{"wxpushtoken", "1395658920", "123456789"}
	// printf '%s' 1234567891395658920wxpushtoken | sha1sum
	const sig = "57ca59e67fa235412a09ed6cd9e7f260a1b9e74e"
	tests := []struct {
		name  string
		sig   string
		parts []string
		want  bool
	}{
		{name: "match", sig: sig, parts: plain, want: true},
		{name: "other token", sig: sig, parts: []string{"othertoken", "1395658920", "123456789"}, want: false},
		{name: "other nonce", sig: sig, parts: []string{"wxpushtoken", "1395658920", "123456780"}, want: false},
		{name: "one hex digit off", sig: sig[:39] + "f", parts: plain, want: false},
		{name: "uppercase hex", sig: "57CA59E67FA235412A09ED6CD9E7F260A1B9E74E", parts: plain, want: false},
		{name: "truncated", sig: sig[:20], parts: plain, want: false},
		{name: "empty", sig: "", parts: plain, want: false},
		{name: "extra byte", sig: sig + "0", parts: plain, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := wechat.VerifySignature(tt.sig, tt.parts...); got != tt.want {
				t.Errorf("VerifySignature(%q, %q) = %v, want %v", tt.sig, tt.parts, got, tt.want)
			}
		})
	}
}

// callbackSample reads a callback sample copied unchanged from the seed.
func callbackSample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fixedSuccessSample is the article's success sample with its broken CDATA
// terminator ("]]&g;") repaired, as the seed README describes.
func fixedSuccessSample(t testing.TB) []byte {
	t.Helper()
	return bytes.ReplaceAll(callbackSample(t, "callback-success-malformed.xml"), []byte("]]&g;"), []byte("]]>"))
}

func TestParseEventSamples(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		body       []byte
		wantMsgID  string
		wantStatus string
		wantClass  wechat.DeliveryStatus
		wantTime   int64
	}{
		{
			name:       "user block",
			body:       callbackSample(t, "callback-user-block.xml"),
			wantMsgID:  "200163840",
			wantStatus: "failed:user block",
			wantClass:  wechat.DeliveryUserBlock,
			wantTime:   1395658984,
		},
		{
			name:       "system failed",
			body:       callbackSample(t, "callback-system-failed.xml"),
			wantMsgID:  "200163840",
			wantStatus: "failed: system failed",
			wantClass:  wechat.DeliverySystemFailed,
			wantTime:   1395658984,
		},
		{
			name:       "success, CDATA repaired",
			body:       fixedSuccessSample(t),
			wantMsgID:  "200163836",
			wantStatus: "success",
			wantClass:  wechat.DeliverySuccess,
			wantTime:   1395658920,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := wechat.ParseEvent(tt.body)
			if err != nil {
				t.Fatalf("ParseEvent: %v", err)
			}
			want := wechat.Event{
				ToUserName:   "gh_7f083739789a",
				FromUserName: "oia2TjuEGTNoeX76QEjQNrcURxG8",
				CreateTime:   tt.wantTime,
				MsgType:      "event",
				Event:        wechat.EventTemplateSendJobFinish,
				MsgID:        tt.wantMsgID,
				Status:       tt.wantStatus,
			}
			if !reflect.DeepEqual(*ev, want) {
				t.Errorf("ParseEvent =\n%+v\nwant\n%+v", *ev, want)
			}
			if got := wechat.ParseDeliveryStatus(ev.Status); got != tt.wantClass {
				t.Errorf("ParseDeliveryStatus(%q) = %v, want %v", ev.Status, got, tt.wantClass)
			}
		})
	}
}

// The article's success sample as printed: "]]&g;" does not end the CDATA, so
// the section swallows the following tags and the document is not well-formed.
func TestParseEventRejectsArticleSample(t *testing.T) {
	t.Parallel()
	ev, err := wechat.ParseEvent(callbackSample(t, "callback-success-malformed.xml"))
	if !errors.Is(err, wechat.ErrMalformedEvent) {
		t.Fatalf("ParseEvent = %+v, %v; want ErrMalformedEvent", ev, err)
	}
}

// callbackBody builds a TEMPLATESENDJOBFINISH body around the given MsgID and Status elements.
func callbackBody(msgID, status string) string {
	return "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>" +
		"<FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>" +
		"<CreateTime>1395658920</CreateTime><MsgType><![CDATA[event]]></MsgType>" +
		"<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>" + msgID + status + "</xml>"
}

const (
	callbackMsgID  = "<MsgID>200163836</MsgID>"
	callbackStatus = "<Status><![CDATA[success]]></Status>"
)

func TestParseEventErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		body    string
		wantErr string // part of the error text: the case fails for the reason it names
	}{
		{name: "empty body", body: "", wantErr: "no root element"},
		{name: "whitespace only", body: " \n\t", wantErr: "no root element"},
		{name: "not XML", body: "success", wantErr: "text before the root"},
		{name: "wrong root", body: "<event><MsgType>event</MsgType></event>", wantErr: "root element <event>"},
		{name: "namespaced root", body: `<w:xml xmlns:w="urn:x"><MsgType>event</MsgType></w:xml>`, wantErr: "namespace"},
		{name: "root in a default namespace", body: `<xml xmlns="urn:x"><MsgType>event</MsgType></xml>`, wantErr: "namespace"},
		{name: "unclosed root", body: "<xml><MsgType>event</MsgType>", wantErr: "unexpected EOF"},
		{name: "mismatched tags", body: "<xml><MsgType>event</Event></xml>", wantErr: "closed by </Event>"},
		{name: "trailing garbage", body: callbackBody(callbackMsgID, callbackStatus) + "garbage", wantErr: "content after </xml>"},
		{name: "trailing element", body: callbackBody(callbackMsgID, callbackStatus) + "<xml></xml>", wantErr: "content after </xml>"},
		{name: "trailing broken markup", body: callbackBody(callbackMsgID, callbackStatus) + "<", wantErr: "after </xml>"},
		{name: "text before root", body: "hello" + callbackBody(callbackMsgID, callbackStatus), wantErr: "text before the root"},
		{name: "unknown entity", body: "<xml><MsgType>a&g;</MsgType></xml>", wantErr: "entity &g;"},
		{name: "DOCTYPE with entity", body: `<!DOCTYPE xml [<!ENTITY e "event">]><xml><MsgType>&e;</MsgType></xml>`, wantErr: "DOCTYPE"},
		{name: "non-UTF-8 encoding", body: `<?xml version="1.0" encoding="GBK"?>` + callbackBody(callbackMsgID, callbackStatus), wantErr: "GBK"},
		{name: "invalid UTF-8", body: "<xml><FromUserName>\xff\xfe</FromUserName></xml>", wantErr: "invalid UTF-8"},
		{name: "non-numeric CreateTime", body: "<xml><CreateTime>yesterday</CreateTime></xml>", wantErr: "yesterday"},
		{name: "missing MsgID", body: callbackBody("", callbackStatus), wantErr: "without MsgID"},
		{name: "empty MsgID", body: callbackBody("<MsgID></MsgID>", callbackStatus), wantErr: "without MsgID"},
		// Ordinary messages spell it MsgId; it is not the template event's MsgID.
		{name: "only MsgId", body: callbackBody("<MsgId>200163836</MsgId>", callbackStatus), wantErr: "without MsgID"},
		{name: "MsgID in exponent form", body: callbackBody("<MsgID>1.5e9</MsgID>", callbackStatus), wantErr: "not a decimal"},
		{name: "MsgID with fraction", body: callbackBody("<MsgID>200163836.0</MsgID>", callbackStatus), wantErr: "not a decimal"},
		{name: "negative MsgID", body: callbackBody("<MsgID>-200163836</MsgID>", callbackStatus), wantErr: "not a decimal"},
		{name: "MsgID with plus sign", body: callbackBody("<MsgID>+200163836</MsgID>", callbackStatus), wantErr: "not a decimal"},
		{name: "hex MsgID", body: callbackBody("<MsgID>0x10</MsgID>", callbackStatus), wantErr: "not a decimal"},
		{name: "MsgID with underscore", body: callbackBody("<MsgID>200_163_836</MsgID>", callbackStatus), wantErr: "not a decimal"},
		{name: "MsgID above 2^64-1", body: callbackBody("<MsgID>18446744073709551616</MsgID>", callbackStatus), wantErr: "not a decimal"},
		{name: "missing Status", body: callbackBody(callbackMsgID, ""), wantErr: "without Status"},
		{name: "blank Status", body: callbackBody(callbackMsgID, "<Status> </Status>"), wantErr: "without Status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := wechat.ParseEvent([]byte(tt.body))
			if !errors.Is(err, wechat.ErrMalformedEvent) {
				t.Fatalf("ParseEvent(%q) = %+v, %v; want ErrMalformedEvent", tt.body, ev, err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseEvent(%q) error %q, want it to mention %q", tt.body, err, tt.wantErr)
			}
			if ev != nil {
				t.Errorf("ParseEvent returned an event with its error: %+v", ev)
			}
		})
	}
}

func TestParseEventAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want wechat.Event
	}{
		{
			// 2^53+1: a float64 would round it to 9007199254740992.
			name: "MsgID above 2^53 kept exactly",
			body: callbackBody("<MsgID>9007199254740993</MsgID>", callbackStatus),
			want: callbackEvent("9007199254740993", "success"),
		},
		{
			name: "MsgID at 2^64-1",
			body: callbackBody("<MsgID>18446744073709551615</MsgID>", callbackStatus),
			want: callbackEvent("18446744073709551615", "success"),
		},
		{
			name: "MsgID padded and in CDATA",
			body: callbackBody("<MsgID><![CDATA[ 200163836\n]]></MsgID>", callbackStatus),
			want: callbackEvent("200163836", "success"),
		},
		{
			name: "MsgID with leading zeros is canonical",
			body: callbackBody("<MsgID>000200163836</MsgID>", callbackStatus),
			want: callbackEvent("200163836", "success"),
		},
		{
			name: "Status kept raw",
			body: callbackBody(callbackMsgID, "<Status><![CDATA[ Failed : User Block ]]></Status>"),
			want: callbackEvent("200163836", " Failed : User Block "),
		},
		{
			name: "XML declaration, comments and whitespace around the root",
			body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- c -->\n" + callbackBody(callbackMsgID, callbackStatus) + "\n<!-- c -->\n",
			want: callbackEvent("200163836", "success"),
		},
		{
			name: "standard entities and character references",
			body: callbackBody(callbackMsgID, "<Status>failed:&#x20;user&amp;block</Status>"),
			want: callbackEvent("200163836", "failed: user&block"),
		},
		{
			name: "unknown elements are ignored",
			body: callbackBody(callbackMsgID+"<Extra><Nested>1</Nested></Extra>", callbackStatus),
			want: callbackEvent("200163836", "success"),
		},
		{
			// Other events and messages need no MsgID; a text message's MsgId is not read.
			name: "text message",
			body: "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName>" +
				"<CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType>" +
				"<Content><![CDATA[hi]]></Content><MsgId>1234567890123456</MsgId></xml>",
			want: wechat.Event{ToUserName: "gh_7f083739789a", FromUserName: "o1", CreateTime: 1348831860, MsgType: "text"},
		},
		{
			name: "subscribe event",
			body: "<xml><FromUserName>o1</FromUserName><MsgType>event</MsgType><Event>subscribe</Event></xml>",
			want: wechat.Event{FromUserName: "o1", MsgType: "event", Event: "subscribe"},
		},
		{
			name: "safe-mode envelope",
			body: "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><Encrypt><![CDATA[bG9yZW0=]]></Encrypt></xml>",
			want: wechat.Event{ToUserName: "gh_7f083739789a", Encrypt: "bG9yZW0="},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := wechat.ParseEvent([]byte(tt.body))
			if err != nil {
				t.Fatalf("ParseEvent(%q): %v", tt.body, err)
			}
			if !reflect.DeepEqual(*ev, tt.want) {
				t.Errorf("ParseEvent =\n%+v\nwant\n%+v", *ev, tt.want)
			}
		})
	}
}

// templateEvent is what callbackBody(...) parses to.
func callbackEvent(msgID, status string) wechat.Event {
	return wechat.Event{
		ToUserName:   "gh_7f083739789a",
		FromUserName: "oia2TjuEGTNoeX76QEjQNrcURxG8",
		CreateTime:   1395658920,
		MsgType:      "event",
		Event:        wechat.EventTemplateSendJobFinish,
		MsgID:        msgID,
		Status:       status,
	}
}

func TestParseDeliveryStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		raw  string
		want wechat.DeliveryStatus
	}{
		{name: "success", raw: "success", want: wechat.DeliverySuccess},
		{name: "success, other case and padding", raw: " Success\n", want: wechat.DeliverySuccess},
		{name: "user block as documented", raw: "failed:user block", want: wechat.DeliveryUserBlock},
		{name: "user block with a space", raw: "failed: user block", want: wechat.DeliveryUserBlock},
		{name: "user block without spaces", raw: "failed:userblock", want: wechat.DeliveryUserBlock},
		{name: "user block, upper case", raw: "FAILED:USER BLOCK", want: wechat.DeliveryUserBlock},
		{name: "user block, spaced colon", raw: "failed : user  block ", want: wechat.DeliveryUserBlock},
		{name: "user block with underscore", raw: "failed:user_block", want: wechat.DeliveryUserBlock},
		{name: "system failed as documented", raw: "failed: system failed", want: wechat.DeliverySystemFailed},
		{name: "system failed without space", raw: "failed:system failed", want: wechat.DeliverySystemFailed},
		{name: "bare failed", raw: "failed", want: wechat.DeliverySystemFailed},
		{name: "other failure reason", raw: "failed: user blocked by admin", want: wechat.DeliverySystemFailed},
		{name: "empty", raw: "", want: wechat.DeliveryUnknown},
		{name: "unknown word", raw: "pending", want: wechat.DeliveryUnknown},
		{name: "success prefix only", raw: "successful", want: wechat.DeliveryUnknown},
		{name: "failed not at the start", raw: "send failed", want: wechat.DeliveryUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := wechat.ParseDeliveryStatus(tt.raw); got != tt.want {
				t.Errorf("ParseDeliveryStatus(%q) = %v, want %v", tt.raw, got, tt.want)
			}
		})
	}
}

func TestDeliveryStatusString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		d    wechat.DeliveryStatus
		want string
	}{
		{name: "unknown", d: wechat.DeliveryUnknown, want: "unknown"},
		{name: "success", d: wechat.DeliverySuccess, want: "success"},
		{name: "user block", d: wechat.DeliveryUserBlock, want: "user_block"},
		{name: "system failed", d: wechat.DeliverySystemFailed, want: "system_failed"},
		{name: "out of range stays a bounded label", d: wechat.DeliveryStatus(42), want: "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.d.String(); got != tt.want {
				t.Errorf("DeliveryStatus(%d).String() = %q, want %q", int(tt.d), got, tt.want)
			}
		})
	}
}

func FuzzParseEvent(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.*"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed files in testdata: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(fixedSuccessSample(f))
	f.Add([]byte(callbackBody("<MsgID>9007199254740993</MsgID>", callbackStatus)))
	f.Add([]byte("<xml><Encrypt><![CDATA[bG9yZW0=]]></Encrypt></xml>"))

	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := wechat.ParseEvent(body)
		if err != nil {
			if !errors.Is(err, wechat.ErrMalformedEvent) {
				t.Fatalf("error does not wrap ErrMalformedEvent: %v", err)
			}
			if ev != nil {
				t.Fatalf("event returned with an error: %+v", ev)
			}
			return
		}
		if ev == nil {
			t.Fatal("nil event without an error")
		}
		_ = wechat.ParseDeliveryStatus(ev.Status).String()
		if ev.Event != wechat.EventTemplateSendJobFinish {
			return
		}
		id, err := strconv.ParseUint(ev.MsgID, 10, 64)
		if err != nil || strconv.FormatUint(id, 10) != ev.MsgID {
			t.Fatalf("TEMPLATESENDJOBFINISH with MsgID %q, want a canonical decimal", ev.MsgID)
		}
		if ev.Status == "" {
			t.Fatal("TEMPLATESENDJOBFINISH without Status")
		}
	})
}
