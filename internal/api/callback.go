package api

import (
	"errors"
	"fmt"
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
	CallbackEvents = []string{wechat.EventTemplateSendJobFinish, wechat.EventSubscribeMsgSent,
		wechat.EventSubscribeMsgPopup, wechat.EventSubscribeMsgChange, eventOther}
	CallbackOutcomes = []string{string(delivery.CallbackApplied), string(delivery.CallbackHeld),
		string(delivery.CallbackDuplicate), string(delivery.CallbackLate), string(delivery.CallbackUnknown),
		outcomeIgnored, outcomeUnrecognised}
)

var deliveryStates = map[wechat.DeliveryStatus]delivery.State{
	wechat.DeliverySuccess:      delivery.StateDelivered,
	wechat.DeliveryUserBlock:    delivery.StateUserBlocked,
	wechat.DeliverySystemFailed: delivery.StateWeChatFailed,
}

// Reasons a callback is refused, for the rejected-callbacks metric.
const (
	rejectUnknownApp = "unknown_app"
	rejectNoSig      = "missing_signature"
	rejectBadSig     = "bad_signature"
	rejectEnvelope   = "bad_envelope"
	rejectNoAESKey   = "no_aes_key"
	rejectMalformed  = "malformed_xml"
	rejectTooLarge   = "too_large"
)

// CallbackRejectReasons are the label values to initialise.
var CallbackRejectReasons = []string{rejectNoSig, rejectBadSig, rejectEnvelope, rejectNoAESKey, rejectMalformed, rejectTooLarge}

// reject writes the refusal and counts it. The app label is bounded: a path
// naming no configured app counts as "unknown".
func (s *Server) reject(w http.ResponseWriter, app, reason string, e *apiError) {
	if !s.hasApp(app) {
		app = "unknown"
	}
	s.metrics.CallbacksRejected.WithLabelValues(app, reason).Inc()
	writeError(w, e)
}

// callbackApp finds the app of a callback path.
func (s *Server) callbackApp(w http.ResponseWriter, r *http.Request) (App, bool) {
	app, ok := s.app(r.PathValue("app"))
	if !ok {
		s.reject(w, "", rejectUnknownApp, &apiError{Status: http.StatusNotFound, Code: "unknown_app", Field: "app", Message: "no such app"})
	}
	return app, ok
}

// encrypted reports whether the request is in WeChat's safe or compatible mode.
func encrypted(r *http.Request) bool { return r.URL.Query().Get("encrypt_type") == "aes" }

// verifyPlain checks the query signature against the app's current and previous
// token (rotation); it writes the refusal and returns false when it fails.
func (s *Server) verifyPlain(w http.ResponseWriter, r *http.Request, app App) bool {
	q := r.URL.Query()
	sig, ts, nonce := q.Get("signature"), q.Get("timestamp"), q.Get("nonce")
	if sig == "" || ts == "" || nonce == "" {
		s.reject(w, app.Name, rejectNoSig, &apiError{Status: http.StatusUnauthorized, Code: "missing_signature",
			Message: "signature, timestamp and nonce are required"})
		return false
	}
	if app.Keys != nil && app.Keys.VerifyPlain(sig, ts, nonce) {
		return true
	}
	for _, tok := range []string{app.Token.Reveal(), app.PreviousToken.Reveal()} {
		if tok != "" && wechat.VerifySignature(sig, tok, ts, nonce) {
			return true
		}
	}
	s.log.Warn("callback with a bad signature", "app", app.Name, "remote", r.RemoteAddr)
	s.reject(w, app.Name, rejectBadSig, &apiError{Status: http.StatusForbidden, Code: "bad_signature", Message: "signature does not match"})
	return false
}

// handleVerify answers WeChat's URL verification: echo echostr when signed. In
// safe mode with msg_signature, echostr is itself an envelope and the reply is
// its plaintext.
func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	app, ok := s.callbackApp(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	echo := []byte(q.Get("echostr"))
	if encrypted(r) && q.Get("msg_signature") != "" {
		plain, ok := s.openEnvelope(w, r, app, q.Get("echostr"), true)
		if !ok {
			return
		}
		echo = plain
	} else if !s.verifyPlain(w, r, app) {
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(echo)
}

// openEnvelope checks msg_signature and decrypts an envelope with the app's
// current or previous keys; it writes the refusal and returns false on failure.
func (s *Server) openEnvelope(w http.ResponseWriter, r *http.Request, app App, envelope string, echo bool) ([]byte, bool) {
	if app.Keys == nil {
		s.reject(w, app.Name, rejectNoAESKey, &apiError{Status: http.StatusBadRequest, Code: "no_aes_key",
			Message: "an encrypted callback arrived, but this app has no aes_key configured"})
		return nil, false
	}
	q := r.URL.Query()
	msgSig, ts, nonce := q.Get("msg_signature"), q.Get("timestamp"), q.Get("nonce")
	if msgSig == "" || ts == "" || nonce == "" {
		s.reject(w, app.Name, rejectNoSig, &apiError{Status: http.StatusUnauthorized, Code: "missing_signature",
			Message: "msg_signature, timestamp and nonce are required in encrypted mode"})
		return nil, false
	}
	var plain []byte
	var err error
	if echo {
		plain, err = app.Keys.EchoEncrypted(msgSig, ts, nonce, envelope)
	} else {
		plain, err = app.Keys.OpenEncrypted(msgSig, ts, nonce, envelope)
	}
	switch {
	case errors.Is(err, wechat.ErrBadSignature):
		s.log.Warn("encrypted callback with a bad msg_signature", "app", app.Name, "remote", r.RemoteAddr)
		s.reject(w, app.Name, rejectBadSig, &apiError{Status: http.StatusForbidden, Code: "bad_signature", Message: "msg_signature does not match"})
		return nil, false
	case err != nil:
		s.log.Warn("encrypted callback with a bad envelope", "app", app.Name, "err", err)
		s.reject(w, app.Name, rejectEnvelope, &apiError{Status: http.StatusBadRequest, Code: "bad_envelope", Message: "the encrypted envelope could not be opened"})
		return nil, false
	}
	return plain, true
}

// handleCallback receives WeChat's event push, plain or encrypted. It does one
// Redis write and answers "success"; a Redis failure answers 503 so that WeChat
// tries again.
func (s *Server) handleCallback(w http.ResponseWriter, r *http.Request) {
	app, ok := s.callbackApp(w, r)
	if !ok {
		return
	}
	if !encrypted(r) && !s.verifyPlain(w, r, app) {
		return
	}
	body, e := readBody(w, r, maxCallbackBytes)
	if e != nil {
		s.reject(w, app.Name, rejectTooLarge, e)
		return
	}
	if encrypted(r) {
		outer, err := wechat.ParseEvent(body)
		if err != nil || outer.Encrypt == "" {
			s.reject(w, app.Name, rejectMalformed, &apiError{Status: http.StatusBadRequest, Code: "malformed_xml",
				Message: "encrypted mode: the body is not XML with an Encrypt element"})
			return
		}
		plain, ok := s.openEnvelope(w, r, app, outer.Encrypt, false)
		if !ok {
			return
		}
		body = plain
	}
	ev, err := wechat.ParseEvent(body)
	if err != nil {
		s.log.Warn("malformed callback", "app", app.Name, "err", err)
		s.reject(w, app.Name, rejectMalformed, &apiError{Status: http.StatusBadRequest, Code: "malformed_xml", Message: "the body is not a WeChat event XML document"})
		return
	}
	switch ev.Event {
	case wechat.EventTemplateSendJobFinish:
		to, known := deliveryStates[wechat.ParseDeliveryStatus(ev.Status)]
		if !known {
			s.log.Warn("unrecognised template result status; left unchanged", "app", app.Name, "wechat_msgid", ev.MsgID, "status", ev.Status)
			s.metrics.Callbacks.WithLabelValues(app.Name, ev.Event, outcomeUnrecognised).Inc()
			break
		}
		if !s.applyResult(w, r, app.Name, ev.Event, ev.MsgID, to, ev.Status) {
			return
		}
	case wechat.EventSubscribeMsgSent:
		for _, res := range ev.SubscribeSent {
			raw := fmt.Sprintf("%d %s", res.ErrorCode, res.ErrorStatus)
			if !s.applyResult(w, r, app.Name, ev.Event, res.MsgID, deliveryStates[res.SubscribeDelivery()], raw) {
				return
			}
		}
	case wechat.EventSubscribeMsgPopup, wechat.EventSubscribeMsgChange:
		// A user accepted or rejected a subscription: nothing to settle.
		s.metrics.Callbacks.WithLabelValues(app.Name, ev.Event, outcomeIgnored).Inc()
	default:
		s.metrics.Callbacks.WithLabelValues(app.Name, eventOther, outcomeIgnored).Inc()
	}
	writeSuccess(w)
}

// applyResult settles the message WeChat reports on; it writes a 503 and
// returns false when Redis fails, so that WeChat tries again (the store makes
// the retry idempotent).
func (s *Server) applyResult(w http.ResponseWriter, r *http.Request, app, event, msgID string, to delivery.State, raw string) bool {
	res, err := s.messages.ApplyCallback(r.Context(), app, msgID, to, raw)
	if err != nil {
		s.log.Error("could not apply callback", "app", app, "wechat_msgid", msgID, "err", err)
		writeError(w, errStorage)
		return false
	}
	s.metrics.Callbacks.WithLabelValues(app, event, string(res.Outcome)).Inc()
	if res.Outcome == delivery.CallbackApplied {
		s.metrics.Finished.WithLabelValues(app, string(to)).Inc()
		if !res.SentAt.IsZero() {
			s.metrics.FinalLatency.WithLabelValues(app).Observe(s.now().Sub(res.SentAt).Seconds())
		}
	}
	s.log.Info("delivery result", "app", app, "event", event, "msg_id", res.ID, "wechat_msgid", msgID, "status", raw, "outcome", res.Outcome)
	return true
}

func writeSuccess(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("success"))
}
