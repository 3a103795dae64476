package wechatsim

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/wechat"
)

const (
	subscribeTemplateID = "sub_tmpl"
	subscribeContent    = "商品：{{thing1.DATA}}\n时间：{{time2.DATA}}"
	subscribeEventName  = "subscribe_msg_sent_event"
	// testAESKey is a 43-character EncodingAESKey.
	testAESKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
)

// subscribeEvent is a subscribe_msg_sent_event as a receiver parses it.
type subscribeEvent struct {
	ToUserName   string               `xml:"ToUserName"`
	FromUserName string               `xml:"FromUserName"`
	CreateTime   int64                `xml:"CreateTime"`
	MsgType      string               `xml:"MsgType"`
	Event        string               `xml:"Event"`
	List         []subscribeEventItem `xml:"SubscribeMsgSentEvent>List"`
}

type subscribeEventItem struct {
	TemplateID  string `xml:"TemplateId"`
	MsgID       string `xml:"MsgID"`
	ErrorCode   string `xml:"ErrorCode"`
	ErrorStatus string `xml:"ErrorStatus"`
}

func (b *bundle) bizsend(t *testing.T, tok, body string) apiResult {
	t.Helper()
	return b.call(t, http.MethodPost, "/cgi-bin/message/subscribe/bizsend?access_token="+url.QueryEscape(tok), body)
}

func bizsendBodyFor(openID string) string {
	return fmt.Sprintf(`{"touser":%q,"template_id":%q,"page":"pages/index?id=1","data":{"thing1":{"value":"hi"},"time2":{"value":"2025-03-04 05:06"}}}`, openID, subscribeTemplateID)
}

// parseSubscribeEvent decodes one pushed plain-mode event with encoding/xml.
func parseSubscribeEvent(t *testing.T, body string) subscribeEvent {
	t.Helper()
	var ev subscribeEvent
	if err := xml.Unmarshal([]byte(body), &ev); err != nil {
		t.Fatalf("event %q: %v", body, err)
	}
	return ev
}

// testMsgSignature is the safe-mode msg_signature, computed without the
// simulator's helper.
func testMsgSignature(token, timestamp, nonce, encrypt string) string {
	parts := []string{token, timestamp, nonce, encrypt}
	slices.Sort(parts)
	return checkSignatureHex(strings.Join(parts, ""))
}

func TestSubscribeErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{
		TokenTTL:  time.Minute,
		Templates: []Template{{AppID: testAppID, TemplateID: subscribeTemplateID, Title: "发货通知", Content: subscribeContent}},
	})
	expired := b.token(t)
	b.clock.Advance(time.Minute)
	tok := b.token(t)
	open := setup(t, Config{}) // no templates: any template_id and keys go
	openTok := open.token(t)

	full := `"thing1":{"value":"a"},"time2":{"value":"b"}`
	tests := []struct {
		name        string
		noTemplates bool
		token       string // "" = a valid one
		noToken     bool
		body        string
		code        int64
		errmsg      string // a substring, when it matters
	}{
		{name: "missing token", noToken: true, body: "{}", code: 41001},
		{name: "unknown token", token: "nope", body: "{}", code: 40001},
		{name: "expired token", token: expired, body: bizsendBodyFor("o1"), code: 42001},
		{name: "body not json", body: "touser=o1", code: 47001},
		{name: "empty touser", body: `{"template_id":"sub_tmpl","data":{` + full + `}}`, code: 40003},
		{name: "empty template_id", body: `{"touser":"o1","data":{` + full + `}}`, code: 40037},
		{name: "unknown template_id", body: `{"touser":"o1","template_id":"other","data":{` + full + `}}`, code: 40037},
		{name: "missing data", body: `{"touser":"o1","template_id":"sub_tmpl"}`, code: 47003, errmsg: "data is empty"},
		{name: "null data", body: `{"touser":"o1","template_id":"sub_tmpl","data":null}`, code: 47003},
		{name: "empty data", body: `{"touser":"o1","template_id":"sub_tmpl","data":{}}`, code: 47003},
		{name: "color in a data item", body: `{"touser":"o1","template_id":"sub_tmpl","data":{"thing1":{"value":"a","color":"#173177"},"time2":{"value":"b"}}}`, code: 47001, errmsg: "data format error"},
		{name: "empty color in a data item", body: `{"touser":"o1","template_id":"sub_tmpl","data":{"thing1":{"value":"a"},"time2":{"value":"b","color":""}}}`, code: 47001},
		{name: "data value not an object", body: `{"touser":"o1","template_id":"sub_tmpl","data":{"thing1":"a","time2":{"value":"b"}}}`, code: 47001},
		{name: "data value missing", body: `{"touser":"o1","template_id":"sub_tmpl","data":{"thing1":{},"time2":{"value":"b"}}}`, code: 47003, errmsg: "data.thing1.value invalid"},
		{name: "data key missing", body: `{"touser":"o1","template_id":"sub_tmpl","data":{"thing1":{"value":"a"}}}`, code: 47003, errmsg: "data.time2.value invalid"},
		{name: "data key extra", body: `{"touser":"o1","template_id":"sub_tmpl","data":{` + full + `,"thing3":{"value":"x"}}}`, code: 47003, errmsg: "data.thing3.value invalid"},
		{name: "thing value too long", body: `{"touser":"o1","template_id":"sub_tmpl","data":{"thing1":{"value":"` + strings.Repeat("长", 21) + `"},"time2":{"value":"b"}}}`, code: 47003, errmsg: "data.thing1.value invalid"},
		{name: "valid with page and miniprogram", body: `{"touser":"o1","template_id":"sub_tmpl","page":"pages/index","miniprogram":{"appid":"wxmini","pagepath":"index?a=b"},"data":{` + full + `}}`, code: 0},
		{name: "no templates: any template and keys", noTemplates: true, body: `{"touser":"o1","template_id":"whatever","data":{"x":{"value":"` + strings.Repeat("x", 50) + `"}}}`, code: 0},
		{name: "no templates: color still refused", noTemplates: true, body: `{"touser":"o1","template_id":"whatever","data":{"x":{"value":"a","color":"#000"}}}`, code: 47001},
		{name: "no templates: empty touser", noTemplates: true, body: `{"template_id":"whatever","data":{"x":{"value":"a"}}}`, code: 40003},
	}
	requests := map[*bundle]int{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim, valid := b, tok
			if tt.noTemplates {
				sim, valid = open, openTok
			}
			requests[sim]++
			path := "/cgi-bin/message/subscribe/bizsend"
			if !tt.noToken {
				path += "?access_token=" + url.QueryEscape(cmpOr(tt.token, valid))
			}
			res := sim.call(t, http.MethodPost, path, tt.body)
			wantAPIError(t, res, tt.code)
			if !strings.Contains(res.str("errmsg"), tt.errmsg) {
				t.Errorf("errmsg = %q, want it to contain %q", res.str("errmsg"), tt.errmsg)
			}
			if tt.code != 0 && res.fields["msgid"] != nil {
				t.Errorf("error reply %s carries a msgid", res.raw)
			}
		})
	}
	for _, sim := range []*bundle{b, open} {
		st := sim.sim.Stats()
		if st.SubscribeRequests != requests[sim] || st.SubscribeAccepted != 1 || sim.sim.SubscribeSends("o1") != 1 {
			t.Errorf("Stats = %+v, SubscribeSends(o1) = %d; want %d requests, 1 accepted", st, sim.sim.SubscribeSends("o1"), requests[sim])
		}
		if st.SendRequests != 0 || st.Accepted != 0 || sim.sim.Pair("o1", "") != (PairStats{}) {
			t.Errorf("subscribe sends leaked into template stats: %+v, Pair = %+v", st, sim.sim.Pair("o1", ""))
		}
	}
}

func TestSubscribeMsgID(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	tok := b.token(t)
	first := b.bizsend(t, tok, bizsendBodyFor("o1"))
	if first.raw != `{"errcode":0,"errmsg":"ok","msgid":9007199254740993}` {
		t.Errorf("reply = %s, want errcode 0, ok and the msgid as a bare integer", first.raw)
	}
	template := b.send(t, tok, sendBodyFor("o1", ""))
	second := b.bizsend(t, tok, bizsendBodyFor("o1"))
	ids := make([]*big.Int, 0, 3)
	for _, res := range []apiResult{first, template, second} {
		n, ok := new(big.Int).SetString(res.str("msgid"), 10)
		if !ok {
			t.Fatalf("msgid %q in %s is not an integer", res.str("msgid"), res.raw)
		}
		ids = append(ids, n)
	}
	if ids[0].Cmp(big.NewInt(1<<53)) <= 0 {
		t.Errorf("msgid %v does not exceed 2^53", ids[0])
	}
	// One counter serves both kinds, so a msgid names one message.
	for i := 1; i < len(ids); i++ {
		if diff := new(big.Int).Sub(ids[i], ids[i-1]); diff.Int64() != 1 {
			t.Errorf("msgids %v and %v differ by %v, want 1", ids[i-1], ids[i], diff)
		}
	}
}

func TestSubscribeOutcomes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		outcome Outcome
		// delay is the CallbackDelay; callback_first must ignore it.
		delay       time.Duration
		status      int    // HTTP status of the reply
		code        int64  // errcode, when status is 200
		errmsg      string // errmsg prefix for errors
		events      int
		errorCode   string
		errorStatus string
		accepted    int
	}{
		{name: "success", outcome: OutcomeSuccess, status: 200, events: 1, errorCode: "0", errorStatus: "success", accepted: 1},
		{name: "duplicate callback", outcome: OutcomeDuplicateCallback, status: 200, events: 2, errorCode: "0", errorStatus: "success", accepted: 1},
		{name: "callback first", outcome: OutcomeCallbackFirst, delay: time.Hour, status: 200, events: 1, errorCode: "0", errorStatus: "success", accepted: 1},
		{name: "user block", outcome: OutcomeUserBlock, status: 200, events: 1, errorCode: "43101", errorStatus: "failed:user refuse", accepted: 1},
		{name: "system failed", outcome: OutcomeSystemFailed, status: 200, events: 1, errorCode: "10004", errorStatus: "failed:system failed", accepted: 1},
		{name: "no callback", outcome: OutcomeNoCallback, status: 200, accepted: 1},
		{name: "reply lost", outcome: OutcomeReplyLost, status: 500, events: 1, errorCode: "0", errorStatus: "success"},
		{name: "system busy", outcome: OutcomeSystemBusy, status: 200, code: -1, errmsg: "system error rid: "},
		{name: "not following", outcome: OutcomeNotFollowing, status: 200, code: 43004, errmsg: "require subscribe rid: "},
		{name: "user refused", outcome: OutcomeUserRefused, status: 200, code: 43101, errmsg: "user refuse to accept the msg rid: "},
		{name: "frequency limit", outcome: OutcomeFrequencyLimit, status: 200, code: 45011},
		{name: "daily quota", outcome: OutcomeDailyQuota, status: 200, code: 45009},
		{name: "token invalid", outcome: OutcomeTokenInvalid, status: 200, code: 40001},
		{name: "http 500", outcome: OutcomeHTTP500, status: 500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, testToken)
			b := setup(t, Config{
				Apps:          []App{{AppID: testAppID, Secret: testSecret, Token: testToken, CallbackURL: rc.ts.URL + "/wechat/callback"}},
				Rules:         []Rule{{OpenID: "o*", Outcome: tt.outcome}},
				CallbackDelay: tt.delay,
			})
			res := b.bizsend(t, b.token(t), bizsendBodyFor("o1"))
			if tt.outcome == OutcomeCallbackFirst && rc.count() != 1 {
				t.Errorf("at reply time the receiver has %d events, want the one callback_first pushes first", rc.count())
			}
			if res.status != tt.status {
				t.Fatalf("status = %d, want %d (body %q)", res.status, tt.status, res.raw)
			}
			if tt.status == 200 {
				wantAPIError(t, res, tt.code)
				if !strings.HasPrefix(res.str("errmsg"), tt.errmsg) {
					t.Errorf("errmsg = %q, want prefix %q", res.str("errmsg"), tt.errmsg)
				}
			} else if res.raw != "" {
				t.Errorf("HTTP %d body = %q, want empty", res.status, res.raw)
			}
			b.sim.settle()

			got := rc.got()
			if len(got) != tt.events {
				t.Fatalf("got %d events, want %d", len(got), tt.events)
			}
			for i, rec := range got {
				if !checkSignature(testToken, rec.query) {
					t.Errorf("event %d: signature %q does not verify for %v", i, rec.query.Get("signature"), rec.query)
				}
				if rec.query.Get("openid") != "o1" {
					t.Errorf("event %d: openid = %q, want o1", i, rec.query.Get("openid"))
				}
				ev := parseSubscribeEvent(t, rec.body)
				if ev.Event != subscribeEventName || ev.MsgType != "event" || ev.ToUserName != "gh_"+testAppID || ev.FromUserName != "o1" || ev.CreateTime != b.clock.Now().Unix() {
					t.Errorf("event %d header = %+v", i, ev)
				}
				if len(ev.List) != 1 {
					t.Fatalf("event %d has %d List entries, want 1: %s", i, len(ev.List), rec.body)
				}
				item := ev.List[0]
				wantMsgID := res.str("msgid")
				if tt.status != 200 {
					// The reply was lost, so only the event tells the msgid.
					wantMsgID = item.MsgID
					if n, ok := new(big.Int).SetString(item.MsgID, 10); !ok || n.Cmp(big.NewInt(1<<53)) <= 0 {
						t.Errorf("event %d MsgID = %q, want an integer above 2^53", i, item.MsgID)
					}
				}
				want := subscribeEventItem{TemplateID: subscribeTemplateID, MsgID: wantMsgID, ErrorCode: tt.errorCode, ErrorStatus: tt.errorStatus}
				if item != want {
					t.Errorf("event %d List = %+v, want %+v", i, item, want)
				}
				for _, part := range []string{
					"<Event><![CDATA[subscribe_msg_sent_event]]></Event>\n<SubscribeMsgSentEvent>\n<List>\n",
					"<MsgID><![CDATA[" + wantMsgID + "]]></MsgID>",
					"<ErrorCode><![CDATA[" + tt.errorCode + "]]></ErrorCode>",
				} {
					if !strings.Contains(rec.body, part) {
						t.Errorf("event %d body %q lacks %q", i, rec.body, part)
					}
				}
			}

			st := b.sim.Stats()
			if st.SubscribeRequests != 1 || st.SubscribeAccepted != tt.accepted || b.sim.SubscribeSends("o1") != tt.accepted {
				t.Errorf("Stats = %+v, SubscribeSends(o1) = %d; want 1 request, %d accepted", st, b.sim.SubscribeSends("o1"), tt.accepted)
			}
			if st.CallbacksPushed != tt.events {
				t.Errorf("CallbacksPushed = %d, want %d", st.CallbacksPushed, tt.events)
			}
			if st.SendRequests != 0 || st.Accepted != 0 || st.Pushed != 0 || b.sim.Pair("o1", "") != (PairStats{}) {
				t.Errorf("subscribe send leaked into template stats: %+v, Pair = %+v", st, b.sim.Pair("o1", ""))
			}
		})
	}
}

func TestSubscribeHang(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Rules: []Rule{{OpenID: "*", Outcome: OutcomeHang}}})
	tok := b.token(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := b.callContext(ctx, http.MethodPost, "/cgi-bin/message/subscribe/bizsend?access_token="+tok, bizsendBodyFor("o1"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
	if st := b.sim.Stats(); st.SubscribeRequests != 1 || st.SubscribeAccepted != 0 || b.sim.SubscribeSends("o1") != 0 {
		t.Errorf("Stats = %+v, want one request and nothing sent", st)
	}
}

func TestSubscribeNoDeduplication(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, testToken)
	b := setup(t, Config{Apps: []App{{AppID: testAppID, Secret: testSecret, Token: testToken, CallbackURL: rc.ts.URL}}})
	tok := b.token(t)
	first := b.bizsend(t, tok, bizsendBodyFor("o1"))
	repeat := b.bizsend(t, tok, bizsendBodyFor("o1"))
	wantAPIError(t, first, 0)
	wantAPIError(t, repeat, 0)
	if first.str("msgid") == repeat.str("msgid") {
		t.Fatalf("two bizsends share msgid %s: bizsend has no de-duplication", first.str("msgid"))
	}
	b.sim.settle()
	var pushed []string
	for _, rec := range rc.got() {
		for _, item := range parseSubscribeEvent(t, rec.body).List {
			pushed = append(pushed, item.MsgID)
		}
	}
	slices.Sort(pushed)
	want := []string{first.str("msgid"), repeat.str("msgid")}
	slices.Sort(want)
	if !slices.Equal(pushed, want) {
		t.Errorf("events carry msgids %v, want one each for %v", pushed, want)
	}
	st := b.sim.Stats()
	if st.SubscribeRequests != 2 || st.SubscribeAccepted != 2 || b.sim.SubscribeSends("o1") != 2 || b.sim.SubscribeSends("o2") != 0 {
		t.Errorf("Stats = %+v, SubscribeSends(o1) = %d; want 2 requests, 2 accepted", st, b.sim.SubscribeSends("o1"))
	}
	if len(st.Duplicates) != 0 || b.sim.Pair("o1", "") != (PairStats{}) {
		t.Errorf("Duplicates = %v, Pair = %+v; want subscribe sends kept out of both", st.Duplicates, b.sim.Pair("o1", ""))
	}
}

func TestSubscribeSafeMode(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, testToken)
	b := setup(t, Config{Apps: []App{{AppID: testAppID, Secret: testSecret, Token: testToken, CallbackURL: rc.ts.URL, AESKey: testAESKey}}})
	res := b.bizsend(t, b.token(t), bizsendBodyFor("o1"))
	wantAPIError(t, res, 0)
	b.sim.settle()
	got := rc.got()
	if len(got) != 1 {
		t.Fatalf("got %d events, want 1", len(got))
	}
	rec := got[0]
	q := rec.query
	if strings.Contains(rec.body, subscribeEventName) || strings.Contains(rec.body, res.str("msgid")) {
		t.Errorf("safe-mode body %q shows the event in the clear", rec.body)
	}
	var envelope struct {
		ToUserName string `xml:"ToUserName"`
		Encrypt    string `xml:"Encrypt"`
	}
	if err := xml.Unmarshal([]byte(rec.body), &envelope); err != nil || envelope.Encrypt == "" {
		t.Fatalf("envelope %q: err %v, or no Encrypt", rec.body, err)
	}
	if q.Get("encrypt_type") != "aes" || envelope.ToUserName != "gh_"+testAppID {
		t.Errorf("encrypt_type = %q, ToUserName = %q; want aes and gh_%s", q.Get("encrypt_type"), envelope.ToUserName, testAppID)
	}
	if want := testMsgSignature(testToken, q.Get("timestamp"), q.Get("nonce"), envelope.Encrypt); q.Get("msg_signature") != want {
		t.Errorf("msg_signature = %q, want %q", q.Get("msg_signature"), want)
	}
	c, err := wechat.NewCipher(testAESKey, testAppID)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := c.Open(envelope.Encrypt)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	ev := parseSubscribeEvent(t, string(plain))
	want := subscribeEventItem{TemplateID: subscribeTemplateID, MsgID: res.str("msgid"), ErrorCode: "0", ErrorStatus: "success"}
	if ev.Event != subscribeEventName || len(ev.List) != 1 || ev.List[0] != want {
		t.Errorf("sealed event = %+v, want %s with List %+v", ev, subscribeEventName, want)
	}
}
