package wechat_test

import (
	"errors"
	"testing"

	"github.com/wxpush/wxpush/internal/wechat"
)

const subscribeEvent = `<xml>
<ToUserName><![CDATA[gh_123456789abc]]></ToUserName>
<FromUserName><![CDATA[o7esq5OI1Uej6Xixw1lA2H7XDVbc]]></FromUserName>
<CreateTime>1620963428</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[subscribe_msg_sent_event]]></Event>
<SubscribeMsgSentEvent>
<List>
<TemplateId><![CDATA[VRR0UEO9VJOLs0MHlU0OilqX6MVFDwH3_3gz3Oc0NIc]]></TemplateId>
<MsgID><![CDATA[1700827132819554304]]></MsgID>
<ErrorCode><![CDATA[0]]></ErrorCode>
<ErrorStatus><![CDATA[success]]></ErrorStatus>
</List>
<List>
<TemplateId><![CDATA[VRR0UEO9VJOLs0MHlU0OilqX6MVFDwH3_3gz3Oc0NIc]]></TemplateId>
<MsgID><![CDATA[9007199254740993]]></MsgID>
<ErrorCode><![CDATA[43101]]></ErrorCode>
<ErrorStatus><![CDATA[failed:user refuse]]></ErrorStatus>
</List>
</SubscribeMsgSentEvent>
</xml>`

func TestParseSubscribeSentEvent(t *testing.T) {
	ev, err := wechat.ParseEvent([]byte(subscribeEvent))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Event != wechat.EventSubscribeMsgSent || len(ev.SubscribeSent) != 2 {
		t.Fatalf("event = %+v", ev)
	}
	first, second := ev.SubscribeSent[0], ev.SubscribeSent[1]
	if first.MsgID != "1700827132819554304" || first.ErrorCode != 0 || first.SubscribeDelivery() != wechat.DeliverySuccess {
		t.Errorf("first result = %+v", first)
	}
	if second.MsgID != "9007199254740993" || second.ErrorCode != 43101 || second.SubscribeDelivery() != wechat.DeliveryUserBlock {
		t.Errorf("second result = %+v (msgid must survive exactly)", second)
	}
	if (wechat.SubscribeResult{ErrorCode: 10004}).SubscribeDelivery() != wechat.DeliverySystemFailed {
		t.Error("another error code is not a system failure")
	}
}

func TestParseSubscribeSentEventRefused(t *testing.T) {
	tests := []struct{ name, body string }{
		{"no results", `<xml><MsgType>event</MsgType><Event>subscribe_msg_sent_event</Event></xml>`},
		{"msgid not decimal", `<xml><Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent><List><MsgID>1.5e9</MsgID><ErrorCode>0</ErrorCode></List></SubscribeMsgSentEvent></xml>`},
		{"error code not a number", `<xml><Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent><List><MsgID>5</MsgID><ErrorCode>x</ErrorCode></List></SubscribeMsgSentEvent></xml>`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := wechat.ParseEvent([]byte(tt.body)); !errors.Is(err, wechat.ErrMalformedEvent) {
				t.Errorf("ParseEvent = %v, want ErrMalformedEvent", err)
			}
		})
	}
}
