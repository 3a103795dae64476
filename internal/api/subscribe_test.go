package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/wechat"
)

// TestSubscribeMessage: "kind":"subscribe" stores a bizsend body (values only,
// page) and marks the record's kind.
func TestSubscribeMessage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.do(t, http.MethodPost, "/v1/messages", []byte(`{"kind":"subscribe","touser":"o7esq5OI1Uej6Xixw1lA2H7XDVbc",
		"template_id":"VRR0UEO9VJOLs0MHlU0OilqX6MVFDwH3","page":"pages/order?id=7",
		"miniprogram":{"appid":"wxmini","pagepath":"index"},"data":{"thing1":{"value":"已发货"}}}`))
	if r.status != http.StatusAccepted {
		t.Fatalf("POST = %d %s", r.status, r.body)
	}
	var acc struct{ ID string }
	json.Unmarshal(r.body, &acc)
	m := b.record(t, acc.ID)
	if m.Kind != "subscribe" {
		t.Errorf("kind = %q, want subscribe", m.Kind)
	}
	var sub wechat.SubscribeMessage
	dec := json.NewDecoder(strings.NewReader(string(m.Body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sub); err != nil {
		t.Fatalf("stored body %s is not a bizsend body: %v", m.Body, err)
	}
	if sub.Page != "pages/order?id=7" || sub.Data["thing1"].Value != "已发货" || sub.MiniProgram == nil || sub.MiniProgram.AppID != "wxmini" {
		t.Errorf("stored body = %s", m.Body)
	}
	if strings.Contains(string(m.Body), "client_msg_id") || strings.Contains(string(m.Body), "color") {
		t.Errorf("stored body carries template-only fields: %s", m.Body)
	}
}

func TestSubscribeMessageBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, body, field, code string }{
		{"url is for templates", `{"kind":"subscribe","touser":"o","template_id":"t","url":"https://x.example","data":{"a":{"value":"v"}}}`, "url", "not_for_kind"},
		{"no colours", `{"kind":"subscribe","touser":"o","template_id":"t","data":{"a":{"value":"v","color":"#fff"}}}`, "data.a.color", "not_for_kind"},
		{"page is for subscribe", `{"touser":"o","template_id":"t","page":"p","data":{"a":{"value":"v"}}}`, "page", "not_for_kind"},
		{"unknown kind", `{"kind":"sms","touser":"o","template_id":"t","data":{"a":{"value":"v"}}}`, "kind", "invalid_kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			r := b.do(t, http.MethodPost, "/v1/messages", []byte(tt.body))
			if r.status != http.StatusBadRequest {
				t.Fatalf("status %d %s, want 400", r.status, r.body)
			}
			if code, field := mustError(t, r); code != tt.code || field != tt.field {
				t.Errorf("error %s on %q, want %s on %q", code, field, tt.code, tt.field)
			}
			b.assertNothingStored(t)
		})
	}
}

// TestSubscribeResultCallback: one subscribe_msg_sent_event may settle several
// messages; ErrorCode 0 is delivered, 43101 user_blocked.
func TestSubscribeResultCallback(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sentMessage(t, b, "Ys1", "default", 1700827132819554304)
	sentMessage(t, b, "Ys2", "default", 9007199254740993)
	body := fmt.Sprintf(`<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o7esq5OI1Uej6Xixw1lA2H7XDVbc]]></FromUserName><CreateTime>1620963428</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_sent_event]]></Event><SubscribeMsgSentEvent>%s%s</SubscribeMsgSentEvent></xml>`,
		`<List><TemplateId><![CDATA[t]]></TemplateId><MsgID><![CDATA[1700827132819554304]]></MsgID><ErrorCode><![CDATA[0]]></ErrorCode><ErrorStatus><![CDATA[success]]></ErrorStatus></List>`,
		`<List><TemplateId><![CDATA[t]]></TemplateId><MsgID><![CDATA[9007199254740993]]></MsgID><ErrorCode><![CDATA[43101]]></ErrorCode><ErrorStatus><![CDATA[failed:user refuse]]></ErrorStatus></List>`)
	r := b.do(t, http.MethodPost, "/wechat/callback/default?"+signedQuery(defaultToken).Encode(), []byte(body))
	if r.status != http.StatusOK || string(r.body) != "success" {
		t.Fatalf("callback = %d %s", r.status, r.body)
	}
	if got := b.record(t, "Ys1"); got.State != delivery.StateDelivered {
		t.Errorf("s1 = %s, want delivered", got.State)
	}
	if got := b.record(t, "Ys2"); got.State != delivery.StateUserBlocked || got.Status != "43101 failed:user refuse" {
		t.Errorf("s2 = %s (%q), want user_blocked with the raw result", got.State, got.Status)
	}
	if got := testutil.ToFloat64(b.metrics.Callbacks.WithLabelValues("default", wechat.EventSubscribeMsgSent, "applied")); got != 2 {
		t.Errorf("callbacks{subscribe_msg_sent_event,applied} = %v, want 2", got)
	}
	popup := `<xml><ToUserName>gh_1</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>subscribe_msg_popup_event</Event></xml>`
	if r := b.do(t, http.MethodPost, "/wechat/callback/default?"+signedQuery(defaultToken).Encode(), []byte(popup)); r.status != 200 {
		t.Errorf("popup event = %d", r.status)
	}
	if got := testutil.ToFloat64(b.metrics.Callbacks.WithLabelValues("default", wechat.EventSubscribeMsgPopup, "ignored")); got != 1 {
		t.Errorf("popup events counted %v, want 1", got)
	}
}
