package api

import (
	"context"
	"net/http"
	"time"

	"github.com/wxpush/wxpush/internal/inbox"
	"github.com/wxpush/wxpush/internal/relay"
	"github.com/wxpush/wxpush/internal/wechat"
)

// Relay forwards callbacks to an app's upstream; *relay.Relay provides it.
type Relay interface {
	Forward(ctx context.Context, req relay.Request) (relay.Reply, error)
	Copy(req relay.Request)
}

// Inbox takes delivery results to apply later; *inbox.Inbox provides it.
type Inbox interface {
	Append(ctx context.Context, e inbox.Entry, timestamp, nonce string, body []byte, nonceTTL time.Duration) (inbox.Use, error)
}

var (
	_ Relay = (*relay.Relay)(nil)
	_ Inbox = (*inbox.Inbox)(nil)
)

// outcomeRelayed counts a callback handed to the app's upstream.
const outcomeRelayed = "relayed"

// relayRequest is the callback as WeChat sent it: query and body unchanged.
func relayRequest(r *http.Request, app App, raw []byte) relay.Request {
	return relay.Request{App: app.Name, Upstream: app.UpstreamURL, Method: r.Method, RawQuery: r.URL.RawQuery,
		ContentType: r.Header.Get("Content-Type"), Body: raw}
}

// relays reports whether the app's unconsumed callbacks go upstream.
func (s *Server) relays(app App) bool { return s.relay != nil && app.UpstreamURL != "" }

// relayCallback answers a callback wxpush does not consume with the upstream's
// reply, byte for byte, or with "success" when the upstream fails or is too
// slow: the budget runs from the callback's arrival, so WeChat hears back
// within its 5 s whatever the upstream does (the relay counts the failure).
func (s *Server) relayCallback(w http.ResponseWriter, r *http.Request, app App, ev *wechat.Event, raw []byte, arrived time.Time) {
	ctx, cancel := context.WithDeadline(r.Context(), arrived.Add(s.relayTimeout))
	defer cancel()
	s.metrics.Callbacks.WithLabelValues(app.Name, eventLabel(ev), outcomeRelayed).Inc()
	rep, err := s.relay.Forward(ctx, relayRequest(r, app, raw))
	if err != nil {
		writeSuccess(w)
		return
	}
	writeReply(w, rep)
}

// writeReply writes the upstream's reply: its body and Content-Type only.
func writeReply(w http.ResponseWriter, rep relay.Reply) {
	if rep.ContentType != "" {
		w.Header().Set("Content-Type", rep.ContentType)
	} else {
		// Go would sniff one; WeChat gets exactly what the upstream sent.
		w.Header()["Content-Type"] = nil
	}
	_, _ = w.Write(rep.Body)
}

// relayVerify answers a verified URL verification with the upstream's reply,
// or with the local echo when the upstream fails.
func (s *Server) relayVerify(w http.ResponseWriter, r *http.Request, app App, echo []byte, arrived time.Time) {
	ctx, cancel := context.WithDeadline(r.Context(), arrived.Add(s.relayTimeout))
	defer cancel()
	rep, err := s.relay.Forward(ctx, relayRequest(r, app, nil))
	if err != nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write(echo)
		return
	}
	writeReply(w, rep)
}

// eventLabel is the bounded event label of ev.
func eventLabel(ev *wechat.Event) string {
	if inbox.Consumed(ev) {
		return ev.Event
	}
	return eventOther
}
