package api_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/wechat"
)

var msgIDElem = regexp.MustCompile(`<MsgID>\d+</MsgID>`)

// callbackXML returns a seed callback sample with its MsgID rewritten to msgID.
// "callback-success.xml" is the seed's success sample with its deliberate
// malformation (the "]]&g;" typo copied from a widely shared article) repaired.
func callbackXML(t testing.TB, name string, msgID int64) []byte {
	t.Helper()
	var b []byte
	if name == "callback-success.xml" {
		b = seed(t, "callback-success-malformed.xml")
		fixed := bytes.Replace(b, []byte("]]&g;"), []byte("]]>"), 1)
		if bytes.Equal(fixed, b) {
			t.Fatal("the malformed seed no longer has the ]]&g; typo")
		}
		b = fixed
	} else {
		b = seed(t, name)
	}
	if n := len(msgIDElem.FindAll(b, -1)); n != 1 {
		t.Fatalf("%s has %d <MsgID> elements, want 1", name, n)
	}
	return msgIDElem.ReplaceAll(b, fmt.Appendf(nil, "<MsgID>%d</MsgID>", msgID))
}

// sentMessage stores a message and moves it to sent with msgID.
func sentMessage(t *testing.T, b *bundle, id, app string, msgID int64) {
	t.Helper()
	if _, err := b.store.Create(t.Context(), delivery.NewMessage{ID: id, App: app, Queue: "normal",
		Body: []byte(`{"touser":"oia2TjuEGTNoeX76QEjQNrcURxG8","template_id":"t","data":{}}`)}); err != nil {
		t.Fatalf("Create(%s): %v", id, err)
	}
	markSent(t, b, id, app, msgID)
}

func (b *bundle) record(t *testing.T, id string) *delivery.Message {
	t.Helper()
	m, err := b.store.Get(t.Context(), id)
	if err != nil {
		t.Fatalf("store.Get(%s): %v", id, err)
	}
	return m
}

func (b *bundle) callbacks(app, event, outcome string) float64 {
	return testutil.ToFloat64(b.metrics.Callbacks.WithLabelValues(app, event, outcome))
}

func (b *bundle) finished(app string, s delivery.State) float64 {
	return testutil.ToFloat64(b.metrics.Finished.WithLabelValues(app, string(s)))
}

// postCallback posts body to app's callback URL with query q.
func (b *bundle) postCallback(t *testing.T, app string, q url.Values, body []byte) reply {
	t.Helper()
	return b.do(t, http.MethodPost, "/wechat/callback/"+app+"?"+q.Encode(), body, "Content-Type", "text/xml")
}

func TestCallbackVerify(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const echostr = "5837397749169958574"
	with := func(token string, mod func(url.Values)) string {
		q := signedQuery(token)
		q.Set("echostr", echostr)
		if mod != nil {
			mod(q)
		}
		return q.Encode()
	}
	tests := []struct {
		name   string
		app    string
		query  string
		status int
		body   string // exact body for a 200
		code   string // error code otherwise
	}{
		{name: "default app", app: "default", query: with(defaultToken, nil), status: 200, body: echostr},
		{name: "shop app", app: "shop", query: with(shopToken, nil), status: 200, body: echostr},
		{name: "echostr echoed verbatim", app: "default", query: with(defaultToken, func(q url.Values) {
			q.Set("echostr", "a b&c=d<e>/+%ü")
		}), status: 200, body: "a b&c=d<e>/+%ü"},
		{name: "other timestamp and nonce", app: "default", query: with(defaultToken, func(q url.Values) {
			ts := strconv.FormatInt(time.Now().Add(-time.Minute).Unix(), 10)
			q.Set("timestamp", ts)
			q.Set("nonce", "abc")
			q.Set("signature", sign(defaultToken, ts, "abc"))
		}), status: 200, body: echostr},
		{name: "wrong signature", app: "default", query: with(defaultToken, func(q url.Values) {
			q.Set("signature", sign("not-the-token", q.Get("timestamp"), q.Get("nonce")))
		}), status: 403, code: "bad_signature"},
		{name: "signature in upper case", app: "default", query: with(defaultToken, func(q url.Values) {
			q.Set("signature", strings.ToUpper(q.Get("signature")))
		}), status: 403, code: "bad_signature"},
		{name: "tampered timestamp", app: "default", query: with(defaultToken, func(q url.Values) { q.Set("timestamp", "1395658921") }),
			status: 403, code: "bad_signature"},
		{name: "missing signature", app: "default", query: with(defaultToken, func(q url.Values) { q.Del("signature") }),
			status: 401, code: "missing_signature"},
		{name: "missing timestamp", app: "default", query: with(defaultToken, func(q url.Values) { q.Del("timestamp") }),
			status: 401, code: "missing_signature"},
		{name: "missing nonce", app: "default", query: with(defaultToken, func(q url.Values) { q.Del("nonce") }),
			status: 401, code: "missing_signature"},
		{name: "unknown app", app: "nosuchapp", query: with(defaultToken, nil), status: 404, code: "unknown_app"},
		{name: "other app's token", app: "shop", query: with(defaultToken, nil), status: 403, code: "bad_signature"},
		{name: "other app's token, reversed", app: "default", query: with(shopToken, nil), status: 403, code: "bad_signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := b.do(t, http.MethodGet, "/wechat/callback/"+tt.app+"?"+tt.query, nil)
			if r.status != tt.status {
				t.Fatalf("GET = %d %s, want %d", r.status, r.body, tt.status)
			}
			if tt.status == http.StatusOK {
				if string(r.body) != tt.body {
					t.Errorf("body = %q, want exactly echostr %q", r.body, tt.body)
				}
				return
			}
			if code, _ := mustError(t, r); code != tt.code {
				t.Errorf("code = %q, want %q", code, tt.code)
			}
			if bytes.Contains(r.body, []byte(echostr)) {
				t.Errorf("a refused verification echoed echostr: %s", r.body)
			}
		})
	}
}

// TestCallbackResult: a signed TEMPLATESENDJOBFINISH settles the sent message,
// and a repeat of it changes nothing (invariant 3).
func TestCallbackResult(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		sample string
		state  delivery.State
		status string // WeChat's raw Status, kept on the record
	}{
		{name: "success", sample: "callback-success.xml", state: delivery.StateDelivered, status: "success"},
		{name: "user block", sample: "callback-user-block.xml", state: delivery.StateUserBlocked, status: "failed:user block"},
		{name: "system failed", sample: "callback-system-failed.xml", state: delivery.StateWeChatFailed, status: "failed: system failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			const msgID = 2002288332
			sentMessage(t, b, "Ym1", "default", msgID)
			body := callbackXML(t, tt.sample, msgID)
			q := signedQuery(defaultToken)

			r := b.postCallback(t, "default", q, body)
			if r.status != http.StatusOK || string(r.body) != "success" {
				t.Fatalf("callback = %d %q, want 200 \"success\"", r.status, r.body)
			}
			m := b.record(t, "Ym1")
			if m.State != tt.state || m.Status != tt.status || m.FinishedAt == nil {
				t.Fatalf("record = state %s status %q finished %v, want %s %q", m.State, m.Status, m.FinishedAt, tt.state, tt.status)
			}
			hist := len(m.History)
			if n := b.callbacks("default", wechat.EventTemplateSendJobFinish, "applied"); n != 1 {
				t.Errorf("callbacks{outcome=applied} = %v, want 1", n)
			}
			if n := b.finished("default", tt.state); n != 1 {
				t.Errorf("finished{state=%s} = %v, want 1", tt.state, n)
			}

			// WeChat retries: the same event again, twice.
			for i := range 2 {
				r := b.postCallback(t, "default", q, body)
				if r.status != http.StatusOK || string(r.body) != "success" {
					t.Fatalf("repeat %d = %d %q, want 200 \"success\"", i, r.status, r.body)
				}
			}
			m = b.record(t, "Ym1")
			if m.State != tt.state || len(m.History) != hist {
				t.Errorf("repeat changed the record: state %s, %d history lines (was %d)", m.State, len(m.History), hist)
			}
			if n := b.callbacks("default", wechat.EventTemplateSendJobFinish, "duplicate"); n != 2 {
				t.Errorf("callbacks{outcome=duplicate} = %v, want 2", n)
			}
			if n := b.finished("default", tt.state); n != 1 {
				t.Errorf("finished{state=%s} = %v after repeats, want still 1", tt.state, n)
			}
		})
	}
}

// TestCallbackRefused: a callback that fails any check gets a 4xx and changes
// nothing (invariant 8): the record stays sent, nothing is held, nothing counted.
func TestCallbackRefused(t *testing.T) {
	t.Parallel()
	const msgID = 200163836
	valid := callbackXML(t, "callback-success.xml", msgID)
	// A valid event padded past 64 KiB with a comment, which ParseEvent skips:
	// without the size limit it would be applied.
	huge := append([]byte("<!--"+strings.Repeat("x", 64<<10)+"-->\n"), valid...)
	signed := signedQuery(defaultToken)
	tests := []struct {
		name   string
		app    string
		query  url.Values
		body   []byte
		status int
		code   string
	}{
		{name: "bad signature", app: "default", query: signedQuery("wrong-token"), body: valid, status: 403, code: "bad_signature"},
		{name: "other app's token", app: "default", query: signedQuery(shopToken), body: valid, status: 403, code: "bad_signature"},
		{name: "missing signature", app: "default", query: url.Values{"timestamp": signed["timestamp"], "nonce": signed["nonce"]},
			body: valid, status: 401, code: "missing_signature"},
		{name: "no query at all", app: "default", query: url.Values{}, body: valid, status: 401, code: "missing_signature"},
		{name: "unknown app", app: "nosuchapp", query: signed, body: valid, status: 404, code: "unknown_app"},
		{name: "malformed seed sample", app: "default", query: signed,
			body:   msgIDElem.ReplaceAll(seed(t, "callback-success-malformed.xml"), fmt.Appendf(nil, "<MsgID>%d</MsgID>", msgID)),
			status: 400, code: "malformed_xml"},
		{name: "not XML", app: "default", query: signed, body: []byte(`{"MsgID":200163836,"Status":"success"}`), status: 400, code: "malformed_xml"},
		{name: "empty body", app: "default", query: signed, body: []byte{}, status: 400, code: "malformed_xml"},
		{name: "DOCTYPE", app: "default", query: signed,
			body: append([]byte(`<!DOCTYPE xml [<!ENTITY s "success">]>`), valid...), status: 400, code: "malformed_xml"},
		{name: "MsgID not a number", app: "default", query: signed,
			body: msgIDElem.ReplaceAll(valid, []byte("<MsgID>2e8</MsgID>")), status: 400, code: "malformed_xml"},
		{name: "body over 64 KiB", app: "default", query: signed, body: huge, status: 413, code: "too_large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			sentMessage(t, b, "Ym1", "default", msgID)
			before := b.record(t, "Ym1")
			r := b.postCallback(t, tt.app, tt.query, tt.body)
			if r.status != tt.status {
				t.Fatalf("callback = %d %s, want %d", r.status, r.body, tt.status)
			}
			if code, _ := mustError(t, r); code != tt.code {
				t.Errorf("code = %q, want %q", code, tt.code)
			}
			after := b.record(t, "Ym1")
			if after.State != delivery.StateSent || len(after.History) != len(before.History) || after.Status != "" {
				t.Errorf("refused callback changed the record: state %s status %q history %d (was %d)",
					after.State, after.Status, len(after.History), len(before.History))
			}
			if ks := b.keys(t, "wxpush:{?}:held:*"); len(ks) != 0 {
				t.Errorf("refused callback was held: %v", ks)
			}
			for _, o := range []string{"applied", "held", "duplicate", "ignored", "unrecognised"} {
				for _, ev := range []string{wechat.EventTemplateSendJobFinish, "other"} {
					if n := b.callbacks("default", ev, o); n != 0 {
						t.Errorf("callbacks{event=%s,outcome=%s} = %v after a refused callback", ev, o, n)
					}
				}
			}
		})
	}
}

// TestCallbackOther covers callbacks that are acknowledged without settling a
// known message.
func TestCallbackOther(t *testing.T) {
	t.Parallel()
	const msgID = 200163840
	tests := []struct {
		name    string
		app     string
		token   string
		body    func(t *testing.T) []byte
		event   string
		outcome string
		held    string // the held key expected, if any
	}{
		{name: "unknown msgid is held", app: "default", token: defaultToken,
			body:  func(t *testing.T) []byte { return callbackXML(t, "callback-user-block.xml", 999000111) },
			event: wechat.EventTemplateSendJobFinish, outcome: "held", held: "wxpush:{Y}:held:default:999000111"},
		{name: "msgids are per app", app: "shop", token: shopToken,
			body:  func(t *testing.T) []byte { return callbackXML(t, "callback-user-block.xml", msgID) },
			event: wechat.EventTemplateSendJobFinish, outcome: "held", held: fmt.Sprintf("wxpush:{9}:held:shop:%d", msgID)},
		{name: "subscribe event", app: "default", token: defaultToken,
			body: func(*testing.T) []byte {
				return []byte(`<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>
<FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName><CreateTime>1395658920</CreateTime>
<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event></xml>`)
			},
			event: "other", outcome: "ignored"},
		{name: "text message", app: "default", token: defaultToken,
			body: func(*testing.T) []byte {
				return []byte(`<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName>
<CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content><MsgId>200163840</MsgId></xml>`)
			},
			event: "other", outcome: "ignored"},
		{name: "unrecognised status", app: "default", token: defaultToken,
			body: func(t *testing.T) []byte {
				return bytes.Replace(callbackXML(t, "callback-user-block.xml", msgID),
					[]byte("failed:user block"), []byte("pending"), 1)
			},
			event: wechat.EventTemplateSendJobFinish, outcome: "unrecognised"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			sentMessage(t, b, "Ym1", "default", msgID)
			r := b.postCallback(t, tt.app, signedQuery(tt.token), tt.body(t))
			if r.status != http.StatusOK || string(r.body) != "success" {
				t.Fatalf("callback = %d %q, want 200 \"success\"", r.status, r.body)
			}
			if n := b.callbacks(tt.app, tt.event, tt.outcome); n != 1 {
				t.Errorf("callbacks{app=%s,event=%s,outcome=%s} = %v, want 1", tt.app, tt.event, tt.outcome, n)
			}
			if m := b.record(t, "Ym1"); m.State != delivery.StateSent {
				t.Errorf("message m1 of app default became %s, want still sent", m.State)
			}
			held := b.keys(t, "wxpush:{?}:held:*")
			switch {
			case tt.held == "" && len(held) != 0:
				t.Errorf("held keys %v, want none", held)
			case tt.held != "" && (len(held) != 1 || held[0] != tt.held):
				t.Errorf("held keys %v, want [%s]", held, tt.held)
			}
		})
	}
}

// TestCallbackHeldThenSent: a callback before the msgid is stored is applied when
// it is (invariant 3, order tolerance), and is counted as finished exactly once.
func TestCallbackHeldThenSent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const msgID = 424242
	if _, err := b.store.Create(t.Context(), delivery.NewMessage{ID: "Yearly", App: "default", Queue: "normal", Body: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	r := b.postCallback(t, "default", signedQuery(defaultToken), callbackXML(t, "callback-system-failed.xml", msgID))
	if r.status != http.StatusOK || string(r.body) != "success" {
		t.Fatalf("callback = %d %q", r.status, r.body)
	}
	if n := b.callbacks("default", wechat.EventTemplateSendJobFinish, "held"); n != 1 {
		t.Fatalf("callbacks{outcome=held} = %v, want 1", n)
	}
	if _, err := b.store.Begin(t.Context(), "Yearly"); err != nil {
		t.Fatal(err)
	}
	tr, err := b.store.MarkSent(t.Context(), "Yearly", "default", msgID)
	if err != nil || tr.State != delivery.StateWeChatFailed {
		t.Fatalf("MarkSent after a held callback = %+v, %v; want wechat_failed", tr, err)
	}
	got := b.do(t, http.MethodGet, "/v1/messages/Yearly", nil)
	if got.status != http.StatusOK || !bytes.Contains(got.body, []byte(`"state":"wechat_failed"`)) {
		t.Errorf("GET = %d %s, want state wechat_failed", got.status, got.body)
	}
}

// TestCallbackRedisDown: a callback that cannot be stored answers 503 so that
// WeChat tries again, rather than "success", which would lose the result.
func TestCallbackRedisDown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sentMessage(t, b, "Ym1", "default", 200163836)
	b.redis.Kill(t)
	waitFor(t, "Redis to be unreachable", func() bool { return b.rdb.Ping(t.Context()).Err() != nil })
	r := b.postCallback(t, "default", signedQuery(defaultToken), callbackXML(t, "callback-success.xml", 200163836))
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("callback with Redis down = %d %q, want 503", r.status, r.body)
	}
	if bytes.Equal(r.body, []byte("success")) {
		t.Errorf("answered success with Redis down")
	}
	if code, _ := mustError(t, r); code != "storage_unavailable" {
		t.Errorf("code = %q, want storage_unavailable", code)
	}
	if r.header.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After")
	}
	if n := b.finished("default", delivery.StateDelivered); n != 0 {
		t.Errorf("finished{delivered} = %v, want 0", n)
	}
}

// TestCallbackCompatMode: an app with an AES key takes plain callbacks only
// when CallbackCompat says it runs in WeChat's compatible mode; encrypted ones
// are taken either way.
func TestCallbackCompatMode(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		compat bool
		status int
		want   delivery.State
	}{
		{name: "safe mode refuses plain", compat: false, status: http.StatusForbidden, want: delivery.StateSent},
		{name: "compatible mode takes plain", compat: true, status: http.StatusOK, want: delivery.StateDelivered},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, withKeys(t), func(d *api.Deps) { d.Apps[0].CallbackCompat = tt.compat })
			sentMessage(t, b, "Ym1", "default", 31700300)
			sentMessage(t, b, "Ym2", "default", 31700301)
			r := b.postCallback(t, "default", signedQuery(defaultToken), []byte(resultXML(31700300, "success")))
			if r.status != tt.status {
				t.Fatalf("plain callback = %d %s, want %d", r.status, r.body, tt.status)
			}
			if got := b.record(t, "Ym1").State; got != tt.want {
				t.Errorf("state %s, want %s", got, tt.want)
			}
			q, body := encryptedPost(t, defaultToken, encKey, encAppID, resultXML(31700301, "success"))
			if r := b.do(t, http.MethodPost, "/wechat/callback/default?"+q, body); r.status != http.StatusOK {
				t.Errorf("encrypted callback = %d %s, want 200", r.status, r.body)
			}
		})
	}
}
