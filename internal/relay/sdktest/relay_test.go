package sdktest

import (
	"bytes"
	"context"
	"encoding/xml"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/silenceper/wechat/v2/cache"
	"github.com/silenceper/wechat/v2/officialaccount"
	offconfig "github.com/silenceper/wechat/v2/officialaccount/config"
	"github.com/silenceper/wechat/v2/officialaccount/message"

	"github.com/wxpush/wxpush/internal/servicetest"
)

// safeKey is the EncodingAESKey of the safe-mode run, shared by WeChat (the
// simulator), wxpush and the SDK, as the admin console shows it to all three.
const safeKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

// written is one reply exactly as the SDK wrote it.
type written struct {
	status      int
	contentType string
	body        []byte
}

// upstream is the company's existing callback handler: silenceper/wechat's
// Official Account server, wrapped only to record what it saw and wrote.
type upstream struct {
	ts *httptest.Server
	oa *officialaccount.OfficialAccount

	mu sync.Mutex
	// handled are the messages the SDK's message handler ran for: it runs
	// only after the SDK verified the signature (and in safe mode the
	// msg_signature and the envelope).
	handled  []message.MixMessage
	replies  []written
	requests int
	accepted int // requests Serve and Send returned nil for
	refusals []string
}

func newUpstream(t *testing.T, aesKey string) *upstream {
	t.Helper()
	u := &upstream{oa: officialaccount.NewOfficialAccount(&offconfig.Config{
		AppID: servicetest.AppID, AppSecret: servicetest.Secret, Token: servicetest.Token,
		EncodingAESKey: aesKey, Cache: cache.NewMemory(),
	})}
	u.ts = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.ts.Close)
	return u
}

// serve is the handler as the SDK's README writes it, between a recorder of
// the reply and a count of what the SDK accepted.
func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{ResponseWriter: w}
	srv := u.oa.GetServer(r, rec)
	srv.SetMessageHandler(u.reply)
	err := srv.Serve()
	if err == nil {
		err = srv.Send()
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.requests++
	if err != nil {
		// The SDK writes nothing on a refusal; its callers answer an error.
		u.refusals = append(u.refusals, err.Error())
		http.Error(w, "sdk: "+err.Error(), http.StatusBadRequest)
		return
	}
	u.accepted++
	u.replies = append(u.replies, written{status: rec.status, contentType: rec.Header().Get("Content-Type"), body: rec.body.Bytes()})
}

// reply is the SDK message handler: a passive text reply to a text message
// and to a menu click, nothing to anything else.
func (u *upstream) reply(m *message.MixMessage) *message.Reply {
	u.mu.Lock()
	u.handled = append(u.handled, *m)
	u.mu.Unlock()
	switch {
	case m.MsgType == message.MsgTypeText:
		return &message.Reply{MsgType: message.MsgTypeText, MsgData: message.NewText("echo: " + m.Content)}
	case m.MsgType == message.MsgTypeEvent && m.Event == message.EventClick:
		return &message.Reply{MsgType: message.MsgTypeText, MsgData: message.NewText("menu " + m.EventKey)}
	}
	return nil
}

func (u *upstream) snapshot() (handled []message.MixMessage, replies []written, requests, accepted int, refusals []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append(handled, u.handled...), append(replies, u.replies...), u.requests, u.accepted, append(refusals, u.refusals...)
}

// recorder passes the SDK's writes through and keeps a copy of them.
type recorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}

// textReply is a passive text reply as WeChat reads it.
type textReply struct {
	XMLName      xml.Name `xml:"xml"`
	ToUserName   string   `xml:"ToUserName"`
	FromUserName string   `xml:"FromUserName"`
	MsgType      string   `xml:"MsgType"`
	Content      string   `xml:"Content"`
}

// originalID is the account's gh_… id, the ToUserName of what WeChat pushes
// (the simulator's default for an app without one).
const originalID = "gh_" + servicetest.AppID

func textMessage(openID, content string, msgID int64) []byte {
	return []byte("<xml><ToUserName><![CDATA[" + originalID + "]]></ToUserName>" +
		"<FromUserName><![CDATA[" + openID + "]]></FromUserName>" +
		"<CreateTime>" + strconv.FormatInt(time.Now().Unix(), 10) + "</CreateTime>" +
		"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[" + content + "]]></Content>" +
		"<MsgId>" + strconv.FormatInt(msgID, 10) + "</MsgId></xml>")
}

func clickEvent(openID, key string) []byte {
	return []byte("<xml><ToUserName><![CDATA[" + originalID + "]]></ToUserName>" +
		"<FromUserName><![CDATA[" + openID + "]]></FromUserName>" +
		"<CreateTime>" + strconv.FormatInt(time.Now().Unix(), 10) + "</CreateTime>" +
		"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event>" +
		"<EventKey><![CDATA[" + key + "]]></EventKey></xml>")
}

// TestRelayToSDK: a user's text message and a menu click reach an unchanged
// SDK handler through wxpush, which verified them first; the SDK verifies
// them again (it refuses a bad signature) and WeChat gets its passive reply
// byte for byte, in plain and in safe mode. Template results stay wxpush's:
// a message is delivered and the SDK never sees its TEMPLATESENDJOBFINISH.
func TestRelayToSDK(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		aesKey string
	}{
		{name: "plain"},
		{name: "safe", aesKey: safeKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, tt.aesKey)
			c := servicetest.Start(t, servicetest.Options{Workers: 1, AESKey: tt.aesKey,
				Env: map[string]string{"WECHAT_UPSTREAM_URL": up.ts.URL}})

			pushes := []struct {
				name    string
				openID  string
				msg     []byte
				want    string // the Content of the passive reply
				handled func(m message.MixMessage) bool
			}{
				{name: "text message", openID: "oTextUser_01", msg: textMessage("oTextUser_01", "hello relay", 24000000000000001),
					want:    "echo: hello relay",
					handled: func(m message.MixMessage) bool { return m.MsgType == message.MsgTypeText && m.Content == "hello relay" }},
				{name: "menu click", openID: "oClickUser_02", msg: clickEvent("oClickUser_02", "V1001_TODAY_MUSIC"),
					want: "menu V1001_TODAY_MUSIC",
					handled: func(m message.MixMessage) bool {
						return m.MsgType == message.MsgTypeEvent && m.Event == message.EventClick && m.EventKey == "V1001_TODAY_MUSIC"
					}},
			}
			for i, p := range pushes {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				rep, err := c.Sim.PushMessage(ctx, servicetest.AppID, p.msg)
				cancel()
				if err != nil {
					t.Fatalf("%s: PushMessage: %v", p.name, err)
				}
				handled, replies, requests, accepted, refusals := up.snapshot()
				if requests != i+1 || accepted != i+1 {
					t.Fatalf("%s: the SDK got %d requests and accepted %d, want %d of each (refusals %q); WeChat was answered %d %q %q",
						p.name, requests, accepted, i+1, refusals, rep.Status, rep.ContentType, rep.Body)
				}
				if m := handled[i]; !p.handled(m) || string(m.FromUserName) != p.openID {
					t.Errorf("%s: the SDK's handler ran with %+v, want it from %s", p.name, m, p.openID)
				}
				sdk := replies[i]
				if rep.Status != http.StatusOK || rep.ContentType != sdk.contentType || !bytes.Equal(rep.Body, sdk.body) {
					t.Errorf("%s: WeChat got %d %q %q,\nthe SDK wrote %d %q %q", p.name,
						rep.Status, rep.ContentType, rep.Body, sdk.status, sdk.contentType, sdk.body)
				}
				plain := rep.Body
				if tt.aesKey != "" {
					// PushMessage checked the reply's MsgSignature and opened it.
					if plain = rep.Plaintext; plain == nil {
						t.Fatalf("%s: safe mode reply %q is not an encrypted envelope", p.name, rep.Body)
					}
				}
				var got textReply
				if err := xml.Unmarshal(plain, &got); err != nil {
					t.Fatalf("%s: reply %q: %v", p.name, plain, err)
				}
				if want := (textReply{XMLName: xml.Name{Local: "xml"}, ToUserName: p.openID, FromUserName: originalID,
					MsgType: "text", Content: p.want}); got != want {
					t.Errorf("%s: the passive reply is %+v, want %+v", p.name, got, want)
				}
			}

			id := servicetest.PostMessage(t, c.API, servicetest.MessageBody("oTemplateUser_03"))
			if m := servicetest.WaitFinal(t, c.API, id, 30*time.Second); m.State != "delivered" {
				t.Errorf("template message beside the relay = %+v, want delivered", m)
			}
			handled, _, requests, _, _ := up.snapshot()
			for _, m := range handled {
				if m.Event == "TEMPLATESENDJOBFINISH" {
					t.Errorf("the SDK handled a template result %+v; wxpush consumes those", m)
				}
			}
			if requests != len(pushes) {
				t.Errorf("the SDK got %d requests, want only the %d pushed messages", requests, len(pushes))
			}
		})
	}
}
