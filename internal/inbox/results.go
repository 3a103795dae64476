package inbox

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/metrics"
	"github.com/wxpush/wxpush/internal/wechat"
)

// States maps WeChat's delivery statuses to the final states they mean.
var States = map[wechat.DeliveryStatus]delivery.State{
	wechat.DeliverySuccess:      delivery.StateDelivered,
	wechat.DeliveryUserBlock:    delivery.StateUserBlocked,
	wechat.DeliverySystemFailed: delivery.StateWeChatFailed,
}

// Consumed reports whether wxpush consumes ev (a delivery result or a
// subscription popup/change) rather than relaying it to an upstream.
func Consumed(ev *wechat.Event) bool {
	if ev.MsgType != "" && ev.MsgType != "event" {
		return false
	}
	switch ev.Event {
	case wechat.EventTemplateSendJobFinish, wechat.EventSubscribeMsgSent,
		wechat.EventSubscribeMsgPopup, wechat.EventSubscribeMsgChange:
		return true
	}
	return false
}

// Results lists the delivery results ev reports for app; received is when it
// arrived. A TEMPLATESENDJOBFINISH with a Status wxpush cannot read reports
// none, and ok is false.
func Results(app string, ev *wechat.Event, received time.Time) (in []delivery.CallbackInput, ok bool) {
	at := eventTime(ev, received)
	switch ev.Event {
	case wechat.EventTemplateSendJobFinish:
		to, known := States[wechat.ParseDeliveryStatus(ev.Status)]
		if !known {
			return nil, false
		}
		return []delivery.CallbackInput{{App: app, MsgID: ev.MsgID, To: to, Raw: ev.Status, OpenID: ev.FromUserName, CreateTime: at}}, true
	case wechat.EventSubscribeMsgSent:
		in = make([]delivery.CallbackInput, len(ev.SubscribeSent))
		for i, res := range ev.SubscribeSent {
			in[i] = delivery.CallbackInput{App: app, MsgID: res.MsgID, To: States[res.SubscribeDelivery()],
				Raw: fmt.Sprintf("%d %s", res.ErrorCode, res.ErrorStatus), OpenID: ev.FromUserName, CreateTime: at}
		}
	}
	return in, true
}

// eventTime is the event's CreateTime, or received when it has none or one
// more than a day from it: a plain body is not signed, and an absurd time
// would overflow the store's milliseconds.
func eventTime(ev *wechat.Event, received time.Time) time.Time {
	if d := ev.CreateTime - received.Unix(); ev.CreateTime <= 0 || d > 86400 || d < -86400 {
		return received
	}
	return time.Unix(ev.CreateTime, 0)
}

// Record counts and logs one applied result: the callback outcome, and for a
// result that settled its message the final state and the time from the
// send's acceptance. Both the inbox's appliers and the direct path use it.
func Record(m *metrics.Metrics, log *slog.Logger, now time.Time, event string, in delivery.CallbackInput, res delivery.CallbackResult) {
	m.Callbacks.WithLabelValues(in.App, event, string(res.Outcome)).Inc()
	if res.Outcome == delivery.CallbackApplied {
		m.Finished.WithLabelValues(in.App, string(in.To)).Inc()
		if !res.SentAt.IsZero() {
			m.FinalLatency.WithLabelValues(in.App).Observe(now.Sub(res.SentAt).Seconds())
		}
	}
	log.Info("delivery result", "app", in.App, "event", event, "msg_id", res.ID, "wechat_msgid", in.MsgID, "status", in.Raw, "outcome", res.Outcome)
}
