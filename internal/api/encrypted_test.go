package api_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/wechat"
)

const (
	encAppID     = "wxb11529c136998cb6"
	encKey       = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG" // the official sample's EncodingAESKey
	encPrevKey   = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"
	encPrevToken = "previousToken42"
)

// withKeys gives app "default" encrypted callbacks with a current and a previous generation.
func withKeys(t *testing.T) func(*api.Deps) {
	return func(d *api.Deps) {
		keys, err := wechat.NewKeyring(encAppID,
			wechat.CallbackKeys{Token: defaultToken, AESKey: encKey},
			&wechat.CallbackKeys{Token: encPrevToken, AESKey: encPrevKey})
		if err != nil {
			t.Fatal(err)
		}
		d.Apps[0].AppID = encAppID
		d.Apps[0].Keys = keys
	}
}

// encryptedPost builds a safe-mode POST: the event sealed with key for appID,
// signed (msg_signature) with token.
func encryptedPost(t *testing.T, token, key, appID, eventXML string) (string, []byte) {
	t.Helper()
	c, err := wechat.NewCipher(key, appID)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := c.Seal([]byte(eventXML))
	if err != nil {
		t.Fatal(err)
	}
	return encryptedQuery(token, enc), []byte("<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><Encrypt><![CDATA[" + enc + "]]></Encrypt></xml>")
}

// encryptedQuery signs enc as WeChat does now: the current time and a fresh
// nonce (a fixed old timestamp is refused as stale since issue 17).
func encryptedQuery(token, enc string) string {
	ts, nonce := strconv.FormatInt(time.Now().Unix(), 10), strconv.FormatUint(rand.Uint64(), 10)
	q := url.Values{"encrypt_type": {"aes"}, "timestamp": {ts}, "nonce": {nonce},
		"msg_signature": {wechat.Signature(token, ts, nonce, enc)},
		"signature":     {wechat.Signature(token, ts, nonce)}, "openid": {"oia2TjuEGTNoeX76QEjQNrcURxG8"}}
	return q.Encode()
}

func resultXML(msgID int64, status string) string {
	return fmt.Sprintf(`<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName><CreateTime>1395658920</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>%d</MsgID><Status><![CDATA[%s]]></Status></xml>`, msgID, status)
}

func TestEncryptedCallback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		token, key string
		appID      string
		tamper     func(query string, body []byte) (string, []byte)
		status     int
		reason     string // rejected-callbacks reason, when refused
		want       delivery.State
	}{
		{name: "current keys", token: defaultToken, key: encKey, appID: encAppID, status: 200, want: delivery.StateDelivered},
		{name: "previous keys during rotation", token: encPrevToken, key: encPrevKey, appID: encAppID, status: 200, want: delivery.StateDelivered},
		{name: "unknown token", token: "someoneElse1", key: encKey, appID: encAppID, status: 403, reason: "bad_signature", want: delivery.StateSent},
		{name: "right token, unknown key", token: defaultToken, key: encPrevKey[1:] + "Q", appID: encAppID, status: 400, reason: "bad_envelope", want: delivery.StateSent},
		{name: "wrong appid inside the envelope", token: defaultToken, key: encKey, appID: "wx0000000000000000", status: 400, reason: "bad_envelope", want: delivery.StateSent},
		{name: "envelope not base64", token: defaultToken, key: encKey, appID: encAppID, status: 400, reason: "bad_envelope", want: delivery.StateSent,
			tamper: func(string, []byte) (string, []byte) {
				enc := "not*base64!"
				return encryptedQuery(defaultToken, enc), []byte("<xml><Encrypt><![CDATA[" + enc + "]]></Encrypt></xml>")
			}},
		{name: "no Encrypt element", token: defaultToken, key: encKey, appID: encAppID, status: 400, reason: "malformed_xml", want: delivery.StateSent,
			tamper: func(q string, _ []byte) (string, []byte) { return q, []byte("<xml><ToUserName>x</ToUserName></xml>") }},
		{name: "msg_signature missing", token: defaultToken, key: encKey, appID: encAppID, status: 401, reason: "missing_signature", want: delivery.StateSent,
			tamper: func(q string, body []byte) (string, []byte) {
				v, _ := url.ParseQuery(q)
				v.Del("msg_signature")
				return v.Encode(), body
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, withKeys(t))
			sentMessage(t, b, "Ym1", "default", 4242)
			q, body := encryptedPost(t, tt.token, tt.key, tt.appID, resultXML(4242, "success"))
			if tt.tamper != nil {
				q, body = tt.tamper(q, body)
			}
			r := b.do(t, http.MethodPost, "/wechat/callback/default?"+q, body)
			if r.status != tt.status {
				t.Fatalf("status %d (%s), want %d", r.status, r.body, tt.status)
			}
			if tt.status == 200 && string(r.body) != "success" {
				t.Errorf("body %q, want success", r.body)
			}
			if got := b.record(t, "Ym1").State; got != tt.want {
				t.Errorf("state %s, want %s", got, tt.want)
			}
			if tt.reason != "" {
				if got := testutil.ToFloat64(b.metrics.CallbacksRejected.WithLabelValues("default", tt.reason)); got != 1 {
					t.Errorf("rejected{%s} = %v, want 1", tt.reason, got)
				}
			}
			if strings.Contains(string(r.body), encKey) || strings.Contains(b.logs.String(), encKey) {
				t.Error("the AES key leaked into a response or a log")
			}
		})
	}
}

func TestEncryptedCallbackWithoutKeys(t *testing.T) {
	t.Parallel()
	b := setup(t) // no AES key configured
	sentMessage(t, b, "Ym1", "default", 7)
	q, body := encryptedPost(t, defaultToken, encKey, encAppID, resultXML(7, "success"))
	if r := b.do(t, http.MethodPost, "/wechat/callback/default?"+q, body); r.status != 400 {
		t.Fatalf("status %d, want 400", r.status)
	}
	if got := b.record(t, "Ym1").State; got != delivery.StateSent {
		t.Errorf("state %s, want sent", got)
	}
	if got := testutil.ToFloat64(b.metrics.CallbacksRejected.WithLabelValues("default", "no_aes_key")); got != 1 {
		t.Errorf("rejected{no_aes_key} = %v", got)
	}
}

// TestEncryptedURLVerification: in safe mode echostr is an envelope and the reply
// is its plaintext; the plain check still works with the previous token.
func TestEncryptedURLVerification(t *testing.T) {
	t.Parallel()
	b := setup(t, withKeys(t))
	c, _ := wechat.NewCipher(encKey, encAppID)
	echo, _ := c.Seal([]byte("1616140317555161061"))
	q := encryptedQuery(defaultToken, echo) + "&echostr=" + url.QueryEscape(echo)
	if r := b.do(t, http.MethodGet, "/wechat/callback/default?"+q, nil); r.status != 200 || string(r.body) != "1616140317555161061" {
		t.Errorf("encrypted echo = %d %q", r.status, r.body)
	}
	ts, nonce := strconv.FormatInt(time.Now().Unix(), 10), "n1"
	plain := url.Values{"signature": {wechat.Signature(encPrevToken, ts, nonce)}, "timestamp": {ts}, "nonce": {nonce}, "echostr": {"e42"}}
	if r := b.do(t, http.MethodGet, "/wechat/callback/default?"+plain.Encode(), nil); r.status != 200 || string(r.body) != "e42" {
		t.Errorf("plain echo with the previous token = %d %q", r.status, r.body)
	}
}
