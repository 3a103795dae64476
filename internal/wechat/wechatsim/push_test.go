package wechatsim

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/wxpush/wxpush/internal/wechat"
)

// account is an Official Account's server as an SDK would write it, built on
// internal/wechat's own checks rather than the simulator's, so the two check
// each other. It answers each message with reply(plaintext): plain as it is,
// sealed with Keyring.EncryptedReply in safe mode unless raw is set.
type account struct {
	ts    *httptest.Server
	keys  *wechat.Keyring
	reply func(msg []byte) []byte
	// raw writes the reply unsealed even in safe mode.
	raw    bool
	status int // zero = 200

	mu       sync.Mutex
	queries  []url.Values
	messages [][]byte // the plaintext messages that verified
}

func newAccount(t *testing.T, aesKey string, reply func(msg []byte) []byte) *account {
	t.Helper()
	keys, err := wechat.NewKeyring(testAppID, wechat.CallbackKeys{Token: testToken, AESKey: aesKey}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := &account{keys: keys, reply: reply}
	a.ts = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.ts.Close)
	return a
}

func (a *account) serve(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	a.mu.Lock()
	a.queries = append(a.queries, q)
	a.mu.Unlock()
	if !a.keys.VerifyPlain(q.Get("signature"), q.Get("timestamp"), q.Get("nonce")) {
		http.Error(w, "bad signature", http.StatusForbidden)
		return
	}
	msg, _ := io.ReadAll(r.Body)
	safe := q.Get("encrypt_type") == "aes"
	if safe {
		outer, err := wechat.ParseEvent(msg)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if msg, err = a.keys.OpenEncrypted(q.Get("msg_signature"), q.Get("timestamp"), q.Get("nonce"), outer.Encrypt); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
	}
	a.mu.Lock()
	a.messages = append(a.messages, msg)
	a.mu.Unlock()
	body := a.reply(msg)
	if safe && !a.raw && len(body) > 0 {
		var err error
		if body, err = a.keys.EncryptedReply(body, q.Get("timestamp"), q.Get("nonce")); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	w.Header().Set("Content-Type", "application/xml; charset=utf-8")
	w.WriteHeader(cmpOr(a.status, http.StatusOK))
	_, _ = w.Write(body)
}

func (a *account) got() ([]url.Values, [][]byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]url.Values(nil), a.queries...), append([][]byte(nil), a.messages...)
}

const (
	pushOpenID = "oUser_push-1"
	textMsg    = "<xml><ToUserName><![CDATA[gh_" + testAppID + "]]></ToUserName>" +
		"<FromUserName><![CDATA[" + pushOpenID + "]]></FromUserName><CreateTime>1741064767</CreateTime>" +
		"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>24000000000000001</MsgId></xml>"
	textReply = "<xml><ToUserName><![CDATA[" + pushOpenID + "]]></ToUserName><FromUserName><![CDATA[gh_" + testAppID +
		"]]></FromUserName><CreateTime>1741064768</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[echo: hello]]></Content></xml>"
)

func TestPushMessage(t *testing.T) {
	t.Parallel()
	textReplier := func([]byte) []byte { return []byte(textReply) }
	tests := []struct {
		name    string
		aesKey  string
		reply   func([]byte) []byte
		raw     bool // the account writes its reply unsealed
		status  int
		wantErr error
		// wantPlain is the decrypted reply; nil = none expected.
		wantPlain []byte
	}{
		{name: "plain, passive reply", reply: textReplier},
		{name: "plain, success", reply: func([]byte) []byte { return []byte("success") }},
		{name: "plain, error status", reply: func([]byte) []byte { return []byte("nope") }, status: http.StatusForbidden},
		{name: "safe, encrypted reply", aesKey: testAESKey, reply: textReplier, wantPlain: []byte(textReply)},
		{name: "safe, empty reply", aesKey: testAESKey, reply: func([]byte) []byte { return nil }},
		{name: "safe, success", aesKey: testAESKey, reply: func([]byte) []byte { return []byte("success") }, raw: true},
		{name: "safe, forged MsgSignature", aesKey: testAESKey, raw: true, wantErr: ErrBadReply, reply: func([]byte) []byte {
			return []byte("<xml><Encrypt><![CDATA[AAAA]]></Encrypt><MsgSignature><![CDATA[0000]]></MsgSignature><TimeStamp>1</TimeStamp><Nonce><![CDATA[n]]></Nonce></xml>")
		}},
		{name: "safe, Encrypt without MsgSignature", aesKey: testAESKey, raw: true, wantErr: ErrBadReply, reply: func([]byte) []byte {
			return []byte("<xml><Encrypt><![CDATA[AAAA]]></Encrypt></xml>")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			acct := newAccount(t, tt.aesKey, tt.reply)
			acct.raw, acct.status = tt.raw, tt.status
			b := setup(t, Config{Apps: []App{{AppID: testAppID, Secret: testSecret, Token: testToken,
				AESKey: tt.aesKey, CallbackURL: acct.ts.URL + "/wechat/callback/default?keep=1"}}})

			rep, err := b.sim.PushMessage(context.Background(), testAppID, []byte(textMsg))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("PushMessage error = %v, want %v", err, tt.wantErr)
			}
			wantBody := tt.reply([]byte(textMsg))
			if tt.aesKey == "" || tt.raw || len(wantBody) == 0 {
				if !bytes.Equal(rep.Body, wantBody) {
					t.Errorf("Body = %q, want the account's %q", rep.Body, wantBody)
				}
			} else if !bytes.Contains(rep.Body, []byte("<Encrypt><![CDATA[")) {
				t.Errorf("Body = %q, want an encrypted envelope", rep.Body)
			}
			if rep.Status != cmpOr(tt.status, http.StatusOK) || rep.ContentType != "application/xml; charset=utf-8" {
				t.Errorf("Status, ContentType = %d, %q, want %d and the account's", rep.Status, rep.ContentType, cmpOr(tt.status, http.StatusOK))
			}
			if !bytes.Equal(rep.Plaintext, tt.wantPlain) {
				t.Errorf("Plaintext = %q, want %q", rep.Plaintext, tt.wantPlain)
			}

			queries, msgs := acct.got()
			if len(queries) != 1 || len(msgs) != 1 {
				t.Fatalf("account saw %d requests, %d verified, want 1 of each", len(queries), len(msgs))
			}
			q := queries[0]
			if q.Get("openid") != pushOpenID || q.Get("keep") != "1" || q.Get("timestamp") != "1741064767" {
				t.Errorf("query = %v, want openid %s, the URL's own keep=1 and the clock's timestamp", q, pushOpenID)
			}
			if safe := q.Get("encrypt_type") == "aes" && q.Get("msg_signature") != ""; safe != (tt.aesKey != "") {
				t.Errorf("query = %v: safe mode %v, want %v", q, safe, tt.aesKey != "")
			}
			// What the account opened is the message itself.
			if string(msgs[0]) != textMsg {
				t.Errorf("account received %q, want %q", msgs[0], textMsg)
			}
		})
	}
}

// TestPushMessageSealedBody: in safe mode the body carries only ToUserName
// and Encrypt, as WeChat's safe mode does (compatible mode's plaintext copy
// would defeat it).
func TestPushMessageSealedBody(t *testing.T) {
	t.Parallel()
	bodies := make(chan []byte, 1)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bodies <- b
	}))
	t.Cleanup(ts.Close)
	b := setup(t, Config{Apps: []App{{AppID: testAppID, Secret: testSecret, Token: testToken,
		AESKey: testAESKey, CallbackURL: ts.URL, OriginalID: "gh_7f083739789a"}}})
	rep, err := b.sim.PushMessage(context.Background(), testAppID, []byte(textMsg))
	if err != nil || rep.Status != http.StatusOK || rep.Plaintext != nil {
		t.Fatalf("PushMessage = %+v, %v; want an empty 200 and no plaintext", rep, err)
	}
	body := <-bodies
	var outer struct {
		XMLName  xml.Name
		Children []struct{ XMLName xml.Name } `xml:",any"`
	}
	if err := xml.Unmarshal(body, &outer); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	var names []string
	for _, c := range outer.Children {
		names = append(names, c.XMLName.Local)
	}
	if got := strings.Join(names, ","); outer.XMLName.Local != "xml" || got != "ToUserName,Encrypt" ||
		!strings.Contains(string(body), "<ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>") {
		t.Errorf("body %q has <%s> with %s, want <xml> with ToUserName (the original id),Encrypt", body, outer.XMLName.Local, got)
	}
}

func TestPushMessageRefusals(t *testing.T) {
	t.Parallel()
	acct := newAccount(t, "", func([]byte) []byte { return []byte("success") })
	tests := []struct {
		name   string
		apps   []App
		appID  string
		msg    string
		closed bool
		want   string
	}{
		{name: "unknown app", appID: "wxnobody", msg: textMsg, want: `unknown app "wxnobody"`},
		{name: "no callback URL", appID: testAppID, msg: textMsg, want: "no callback URL",
			apps: []App{{AppID: testAppID, Secret: testSecret, Token: testToken}}},
		{name: "not XML", appID: testAppID, msg: "hello", want: "not a WeChat message XML"},
		{name: "no FromUserName", appID: testAppID, msg: "<xml><MsgType>text</MsgType></xml>", want: "no FromUserName"},
		{name: "closed", appID: testAppID, msg: textMsg, closed: true, want: "simulator closed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			apps := tt.apps
			if apps == nil {
				apps = []App{{AppID: testAppID, Secret: testSecret, Token: testToken, CallbackURL: acct.ts.URL}}
			}
			b := setup(t, Config{Apps: apps})
			if tt.closed {
				b.sim.Close()
			}
			_, err := b.sim.PushMessage(context.Background(), tt.appID, []byte(tt.msg))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("PushMessage error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	if queries, _ := acct.got(); len(queries) != 0 {
		t.Errorf("account received %d requests, want none", len(queries))
	}
}

// TestPushMessageEndsOnContext: a receiver that never answers holds the push
// only until the caller gives up.
func TestPushMessageEndsOnContext(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Read to the end: only then does the server watch the connection
		// and end r's context when the client goes away.
		_, _ = io.ReadAll(r.Body)
		close(arrived)
		<-r.Context().Done()
	}))
	t.Cleanup(ts.Close)
	b := setup(t, Config{Apps: []App{{AppID: testAppID, Secret: testSecret, Token: testToken, CallbackURL: ts.URL}}})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-arrived
		cancel()
	}()
	if _, err := b.sim.PushMessage(ctx, testAppID, []byte(textMsg)); !errors.Is(err, context.Canceled) {
		t.Errorf("PushMessage error = %v, want context.Canceled", err)
	}
}
