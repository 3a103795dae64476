package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/inbox"
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
		string(delivery.CallbackCorrected), outcomeIgnored, outcomeUnrecognised, outcomeRelayed}
)

// Reasons a callback is refused, for the rejected-callbacks metric.
const (
	rejectUnknownApp   = "unknown_app"
	rejectNoSig        = "missing_signature"
	rejectBadSig       = "bad_signature"
	rejectEnvelope     = "bad_envelope"
	rejectNoAESKey     = "no_aes_key"
	rejectMalformed    = "malformed_xml"
	rejectTooLarge     = "too_large"
	rejectReadError    = "read_error"       // the body timed out or was cut off while being read
	rejectStale        = "stale_timestamp"  // timestamp outside the window
	rejectReplayed     = "replayed"         // a used timestamp and nonce with another body
	rejectPlainRefused = "plain_refused"    // a plain callback for an app with an AES key
	rejectTooMany      = "too_many_entries" // more results in one event than WeChat sends
)

// CallbackRejectReasons are the label values to initialise.
var CallbackRejectReasons = []string{rejectNoSig, rejectBadSig, rejectEnvelope, rejectNoAESKey, rejectMalformed, rejectTooLarge,
	rejectReadError, rejectStale, rejectReplayed, rejectPlainRefused, rejectTooMany}

// Nonces remembers the timestamp and nonce of accepted callbacks against
// replays; *wechat.NonceStore provides it.
type Nonces interface {
	Remember(ctx context.Context, app, timestamp, nonce string, body []byte, ttl time.Duration) (wechat.NonceUse, error)
}

var _ Nonces = (*wechat.NonceStore)(nil)

// MaxEventResults bounds the results one subscribe_msg_sent_event may carry.
// WeChat reports a send or a few in one event; a body of a thousand <List>
// entries is not WeChat's, and each entry would cost a script run and a held key.
const MaxEventResults = 20

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

// plainRefused refuses a plain callback for an app with an AES key, unless the
// app accepts WeChat's compatible mode: its plain signature covers neither the
// body nor anything secret to the request, so a captured URL could carry any
// body. It writes the refusal and returns true when it refuses.
func (s *Server) plainRefused(w http.ResponseWriter, r *http.Request, app App) bool {
	if encrypted(r) || app.Keys == nil || app.CallbackCompat {
		return false
	}
	s.log.Warn("plain callback for an app with an AES key refused", "app", app.Name, "remote", r.RemoteAddr)
	s.reject(w, app.Name, rejectPlainRefused, &apiError{Status: http.StatusForbidden, Code: "plain_refused", Field: "encrypt_type",
		Message: "this app has an aes_key: callbacks must be encrypted (encrypt_type=aes with msg_signature); set callback_compat to also accept plain ones"})
	return true
}

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

// fresh refuses a signed request whose timestamp is outside the window: a
// signature never expires by itself. Call it after the signature is checked,
// so that only WeChat's own timestamps are judged. It writes the refusal and
// returns false when it refuses.
func (s *Server) fresh(w http.ResponseWriter, r *http.Request, app App) bool {
	err := wechat.CheckTimestamp(r.URL.Query().Get("timestamp"), s.now(), s.callbackWindow)
	if err == nil {
		return true
	}
	s.log.Warn("callback with a stale timestamp", "app", app.Name, "remote", r.RemoteAddr, "err", err)
	s.reject(w, app.Name, rejectStale, &apiError{Status: http.StatusForbidden, Code: "stale_timestamp", Field: "timestamp",
		Message: fmt.Sprintf("timestamp must be within %s of this server's clock", s.callbackWindow)})
	return false
}

// handleVerify answers WeChat's URL verification: echo echostr when signed. In
// safe mode with msg_signature, echostr is itself an envelope and the reply is
// its plaintext. WeChat sends a current timestamp, so the window applies; the
// nonce is not remembered, as an echo changes nothing. An app with
// relay_verify relays the verified request and answers the upstream's reply.
func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	arrived := s.now()
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
	if !s.fresh(w, r, app) {
		return
	}
	if s.relays(app) && app.RelayVerify {
		s.relayVerify(w, r, app, echo, arrived)
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

// readCallback reads the body within maxCallbackBytes. Only a body over the
// limit counts as too_large; one that timed out or was cut off is a read_error.
func (s *Server) readCallback(w http.ResponseWriter, r *http.Request, app App) ([]byte, bool) {
	body, e := readBody(w, r, maxCallbackBytes)
	switch {
	case e == nil:
		return body, true
	case e.Status == http.StatusRequestEntityTooLarge:
		s.reject(w, app.Name, rejectTooLarge, e)
	default:
		s.log.Warn("callback body could not be read", "app", app.Name, "remote", r.RemoteAddr)
		s.reject(w, app.Name, rejectReadError, e)
	}
	return nil, false
}

// openCallback authenticates a POST and returns the body as received (what
// the nonce memory hashes) and the event XML inside it: for a plain callback
// both are the body, for an encrypted one the XML is the envelope's plaintext.
// It writes the refusal and returns false on failure.
func (s *Server) openCallback(w http.ResponseWriter, r *http.Request, app App) (raw, event []byte, ok bool) {
	if s.plainRefused(w, r, app) {
		return nil, nil, false
	}
	if !encrypted(r) {
		if !s.verifyPlain(w, r, app) {
			return nil, nil, false
		}
		raw, ok = s.readCallback(w, r, app)
		return raw, raw, ok
	}
	if raw, ok = s.readCallback(w, r, app); !ok {
		return nil, nil, false
	}
	outer, err := wechat.ParseEvent(raw)
	if err != nil || outer.Encrypt == "" {
		s.reject(w, app.Name, rejectMalformed, &apiError{Status: http.StatusBadRequest, Code: "malformed_xml",
			Message: "encrypted mode: the body is not XML with an Encrypt element"})
		return nil, nil, false
	}
	event, ok = s.openEnvelope(w, r, app, outer.Encrypt, false)
	return raw, event, ok
}

// handleCallback receives WeChat's event push, plain or encrypted: it checks
// the signature, the timestamp window and the event. A delivery result is
// appended to the inbox with its nonce in one round trip (or, without an
// inbox, its nonce remembered and its results applied) and answered
// "success"; anything else wxpush does not consume is relayed to the app's
// upstream (see relay.go) or answered "success". A Redis failure answers 503
// so that WeChat tries again.
func (s *Server) handleCallback(w http.ResponseWriter, r *http.Request) {
	arrived := s.now()
	app, ok := s.callbackApp(w, r)
	if !ok {
		return
	}
	raw, body, ok := s.openCallback(w, r, app)
	if !ok || !s.fresh(w, r, app) {
		return
	}
	ev, err := wechat.ParseEvent(body)
	if err != nil {
		s.log.Warn("malformed callback", "app", app.Name, "err", err)
		s.reject(w, app.Name, rejectMalformed, &apiError{Status: http.StatusBadRequest, Code: "malformed_xml", Message: "the body is not a WeChat event XML document"})
		return
	}
	if !inbox.Consumed(ev) && s.relays(app) {
		if s.firstUse(w, r, app, raw, true) {
			s.relayCallback(w, r, app, ev, raw, arrived)
		}
		return
	}
	results, known, ok := s.eventResults(w, app, ev, arrived)
	if !ok {
		return
	}
	// A result wxpush cannot read goes to the inbox too, where the appliers
	// park it: kept to be replayed once wxpush reads its status.
	if s.inbox != nil && (len(results) > 0 || !known) {
		ok = s.appendResults(w, r, app, ev, body, raw, arrived)
	} else {
		ok = s.firstUse(w, r, app, raw, false) && (len(results) == 0 || s.applyResults(w, r, app.Name, ev.Event, results))
	}
	if !ok {
		return
	}
	if app.RelayAll && s.relays(app) {
		s.relay.Copy(relayRequest(r, app, raw))
	}
	writeSuccess(w)
}

// eventResults lists the delivery results an event reports, counting the
// events that settle nothing; known is false for a result whose status
// wxpush cannot read. It refuses an event with more results than
// MaxEventResults, before anything is stored.
func (s *Server) eventResults(w http.ResponseWriter, app App, ev *wechat.Event, arrived time.Time) (in []delivery.CallbackInput, known, ok bool) {
	if n := len(ev.SubscribeSent); ev.Event == wechat.EventSubscribeMsgSent && n > MaxEventResults {
		s.log.Warn("subscribe result event with too many entries", "app", app.Name, "entries", n)
		s.reject(w, app.Name, rejectTooMany, &apiError{Status: http.StatusBadRequest, Code: "too_many_entries", Field: "SubscribeMsgSentEvent.List",
			Message: fmt.Sprintf("%d results in one event; at most %d are accepted", n, MaxEventResults)})
		return nil, false, false
	}
	in, known = inbox.Results(app.Name, ev, arrived)
	switch {
	case !known:
		s.log.Warn("unrecognised template result status; left unchanged", "app", app.Name, "wechat_msgid", ev.MsgID, "status", ev.Status)
		s.metrics.Callbacks.WithLabelValues(app.Name, ev.Event, outcomeUnrecognised).Inc()
	case len(in) == 0:
		// A user accepted or rejected a subscription, or an event for the
		// upstream of an app without one: nothing to settle.
		s.metrics.Callbacks.WithLabelValues(app.Name, eventLabel(ev), outcomeIgnored).Inc()
	}
	return in, known, true
}

// appendResults appends a delivery-result event to the inbox with its nonce
// in one round trip: WeChat's retry of it is answered without a second
// append, and a replay with another body is refused. A Redis failure
// answers 503.
func (s *Server) appendResults(w http.ResponseWriter, r *http.Request, app App, ev *wechat.Event, event, raw []byte, arrived time.Time) bool {
	q := r.URL.Query()
	use, err := s.inbox.Append(r.Context(), inbox.Entry{App: app.Name, Event: ev.Event, XML: event, Received: arrived},
		q.Get("timestamp"), q.Get("nonce"), raw, 2*s.callbackWindow)
	switch {
	case err != nil:
		s.log.Error("could not append the callback to the inbox", "app", app.Name, "err", err)
		writeError(w, errStorage)
		return false
	case use == inbox.Replayed:
		return s.refuseReplay(w, r, app)
	case use == inbox.Retried:
		s.log.Debug("WeChat retried a callback already in the inbox", "app", app.Name)
	}
	return true
}

// firstUse remembers the callback's timestamp and nonce with a hash of its
// body for as long as the timestamp stays within the window (up to twice the
// window, for one from the future), and refuses a used pair with another body.
// The same body again is WeChat's own retry (it resends a callback it got no
// answer to within 5 s, query and body unchanged): it goes on and is applied
// again, which callbacks are built to tolerate, so a result whose first try
// failed in Redis is still stored. A Redis failure answers 503, unless
// relaying: a user's message then goes to the upstream unchecked for
// replays (as it did before wxpush stood in front), rather than be lost.
func (s *Server) firstUse(w http.ResponseWriter, r *http.Request, app App, raw []byte, relaying bool) bool {
	if s.nonces == nil {
		return true
	}
	ctx := r.Context()
	if relaying {
		// The relay's budget must not go on a Redis that does not answer.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.relayTimeout/4)
		defer cancel()
	}
	q := r.URL.Query()
	use, err := s.nonces.Remember(ctx, app.Name, q.Get("timestamp"), q.Get("nonce"), raw, 2*s.callbackWindow)
	switch {
	case err != nil && relaying:
		s.log.Warn("could not remember the callback nonce; relaying it without the replay check", "app", app.Name, "err", err)
	case err != nil:
		s.log.Error("could not remember the callback nonce", "app", app.Name, "err", err)
		writeError(w, errStorage)
		return false
	case use == wechat.NonceReplayed:
		return s.refuseReplay(w, r, app)
	case use == wechat.NonceRetry:
		s.log.Debug("WeChat retried a callback", "app", app.Name)
	}
	return true
}

// refuseReplay refuses a callback whose timestamp and nonce were used with
// another body; it returns false.
func (s *Server) refuseReplay(w http.ResponseWriter, r *http.Request, app App) bool {
	s.log.Warn("callback replayed: a used timestamp and nonce with another body", "app", app.Name, "remote", r.RemoteAddr)
	s.reject(w, app.Name, rejectReplayed, &apiError{Status: http.StatusForbidden, Code: "replayed", Field: "nonce",
		Message: "this timestamp and nonce were already used with another body"})
	return false
}

// applyResults settles the messages WeChat reports on in one round trip; it
// writes a 503 and returns false when Redis fails, so that WeChat tries again
// (the store makes the retry idempotent, also for the results that did apply).
func (s *Server) applyResults(w http.ResponseWriter, r *http.Request, app, event string, in []delivery.CallbackInput) bool {
	rs, errs, err := s.messages.ApplyCallbacks(r.Context(), in)
	if err == nil {
		err = errors.Join(errs...)
	}
	for i, res := range rs {
		if errs[i] == nil {
			inbox.Record(s.metrics, s.log, s.now(), event, in[i], res)
		}
	}
	if err != nil {
		s.log.Error("could not apply callback", "app", app, "event", event, "results", len(in), "err", err)
		writeError(w, errStorage)
		return false
	}
	return true
}

func writeSuccess(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("success"))
}
