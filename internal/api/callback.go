package api

import (
	"net/http"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/wechat"
)

// maxCallbackBytes bounds a callback body; WeChat's events are under 2 KiB.
const maxCallbackBytes = 64 << 10

// Callback outcomes besides delivery.CallbackOutcome, for the callbacks metric.
const (
	outcomeIgnored      = "ignored"      // an event wxpush does not act on
	outcomeUnrecognised = "unrecognised" // a TEMPLATESENDJOBFINISH Status we cannot read
	eventOther          = "other"
)

// CallbackEvents and CallbackOutcomes are the label values to initialise.
var (
	CallbackEvents   = []string{wechat.EventTemplateSendJobFinish, eventOther}
	CallbackOutcomes = []string{string(delivery.CallbackApplied), string(delivery.CallbackHeld),
		string(delivery.CallbackDuplicate), string(delivery.CallbackLate), string(delivery.CallbackUnknown),
		outcomeIgnored, outcomeUnrecognised}
)

var deliveryStates = map[wechat.DeliveryStatus]delivery.State{
	wechat.DeliverySuccess:      delivery.StateDelivered,
	wechat.DeliveryUserBlock:    delivery.StateUserBlocked,
	wechat.DeliverySystemFailed: delivery.StateWeChatFailed,
}

// verifySigned checks the app and the query signature; it writes the error reply
// and returns false when the request must be refused.
func (s *Server) verifySigned(w http.ResponseWriter, r *http.Request) (CallbackApp, bool) {
	app, ok := s.apps[r.PathValue("app")]
	if !ok {
		writeError(w, &apiError{Status: http.StatusNotFound, Code: "unknown_app", Field: "app", Message: "no such app"})
		return app, false
	}
	q := r.URL.Query()
	sig, ts, nonce := q.Get("signature"), q.Get("timestamp"), q.Get("nonce")
	if sig == "" || ts == "" || nonce == "" {
		writeError(w, &apiError{Status: http.StatusUnauthorized, Code: "missing_signature",
			Message: "signature, timestamp and nonce are required"})
		return app, false
	}
	if !wechat.VerifySignature(sig, app.Token.Reveal(), ts, nonce) {
		s.log.Warn("callback with a bad signature", "app", app.Name, "remote", r.RemoteAddr)
		writeError(w, &apiError{Status: http.StatusForbidden, Code: "bad_signature", Message: "signature does not match"})
		return app, false
	}
	return app, true
}

// handleVerify answers WeChat's URL verification: echo echostr when signed.
func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.verifySigned(w, r); !ok {
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte(r.URL.Query().Get("echostr")))
}

// handleCallback receives WeChat's event push. It does one Redis write and
// answers "success"; a Redis failure answers 503 so that WeChat tries again.
func (s *Server) handleCallback(w http.ResponseWriter, r *http.Request) {
	app, ok := s.verifySigned(w, r)
	if !ok {
		return
	}
	body, e := readBody(w, r, maxCallbackBytes)
	if e != nil {
		writeError(w, e)
		return
	}
	ev, err := wechat.ParseEvent(body)
	if err != nil {
		s.log.Warn("malformed callback", "app", app.Name, "err", err)
		writeError(w, &apiError{Status: http.StatusBadRequest, Code: "malformed_xml", Message: "the body is not a WeChat event XML document"})
		return
	}
	if ev.Event != wechat.EventTemplateSendJobFinish {
		s.metrics.Callbacks.WithLabelValues(app.Name, eventOther, outcomeIgnored).Inc()
		writeSuccess(w)
		return
	}
	to, known := deliveryStates[wechat.ParseDeliveryStatus(ev.Status)]
	if !known {
		s.log.Warn("unrecognised template result status; left unchanged", "app", app.Name, "wechat_msgid", ev.MsgID, "status", ev.Status)
		s.metrics.Callbacks.WithLabelValues(app.Name, ev.Event, outcomeUnrecognised).Inc()
		writeSuccess(w)
		return
	}
	res, err := s.messages.ApplyCallback(r.Context(), app.Name, ev.MsgID, to, ev.Status)
	if err != nil {
		s.log.Error("could not apply callback", "app", app.Name, "wechat_msgid", ev.MsgID, "err", err)
		writeError(w, errStorage)
		return
	}
	s.metrics.Callbacks.WithLabelValues(app.Name, ev.Event, string(res.Outcome)).Inc()
	if res.Outcome == delivery.CallbackApplied {
		s.metrics.Finished.WithLabelValues(app.Name, string(to)).Inc()
	}
	s.log.Info("template result", "app", app.Name, "msg_id", res.ID, "wechat_msgid", ev.MsgID, "status", ev.Status, "outcome", res.Outcome)
	writeSuccess(w)
}

func writeSuccess(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("success"))
}
