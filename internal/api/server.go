package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/idempotency"
	"github.com/wxpush/wxpush/internal/metrics"
	"github.com/wxpush/wxpush/internal/relay"
	"github.com/wxpush/wxpush/internal/secret"
	"github.com/wxpush/wxpush/internal/templates"
	"github.com/wxpush/wxpush/internal/wechat"
)

// Submitter puts messages on the queue; *tasks.Submitter provides it.
type Submitter interface {
	Submit(ctx context.Context, m delivery.NewMessage) (delivery.State, error)
	SubmitBatch(ctx context.Context, ms []delivery.NewMessage) ([]delivery.Created, error)
	Requeue(ctx context.Context, id string) error
	WakeApp(ctx context.Context, app string) (int, error)
}

// Messages reads and settles message records; *delivery.Store provides it.
type Messages interface {
	Get(ctx context.Context, id string) (*delivery.Message, error)
	ApplyCallbacks(ctx context.Context, in []delivery.CallbackInput) ([]delivery.CallbackResult, []error, error)
	Cancel(ctx context.Context, id string) (delivery.Transition, error)
	ListDead(ctx context.Context, app string, offset, limit int) (delivery.DeadPage, error)
	Resume(ctx context.Context, app string) (bool, error)
}

// Idempotency stores the responses of requests sent with an Idempotency-Key;
// *idempotency.Store provides it.
type Idempotency interface {
	Begin(ctx context.Context, scope, key, hash string) (*idempotency.Response, *idempotency.Claim, error)
	Complete(ctx context.Context, c *idempotency.Claim, r idempotency.Response) error
	Abort(ctx context.Context, c *idempotency.Claim) error
}

// App is what the API needs to know of an app.
type App struct {
	Name  string
	AppID string // checked inside encrypted envelopes
	// Token signs callbacks; PreviousToken is still accepted during a rotation.
	Token, PreviousToken secret.Value
	// Keys open encrypted callbacks (safe and compatible mode) with the current
	// or previous token and EncodingAESKey; nil = plain callbacks only.
	Keys *wechat.Keyring
	// CallbackCompat also accepts plain callbacks for an app with Keys
	// (WeChat's compatible mode); false = with Keys, only encrypted ones.
	CallbackCompat bool
	// MaxBacklog: refuse new messages (429) while the app has this many
	// unfinished ones; 0 = no limit.
	MaxBacklog int
	// ValidateTemplates checks a message's data against the app's template
	// before accepting it (when Deps.Templates is set).
	ValidateTemplates bool
	// StatusURL is the default status_url of the app's messages ("" = none).
	StatusURL string
	// WebhookSecret: the app has a webhook secret; without one a message with
	// a status_url is refused.
	WebhookSecret bool
	// UpstreamURL receives every callback wxpush does not consume ("" = such
	// callbacks are answered "success"); RelayAll also copies the consumed
	// ones there; RelayVerify relays URL verification too.
	UpstreamURL           string
	RelayAll, RelayVerify bool
}

// Templates checks messages against the apps' templates and lists them;
// *templates.Cache provides it.
type Templates interface {
	Session() *templates.Session
	List(ctx context.Context, app string) ([]wechat.Template, error)
}

// Deps are the Server's collaborators. Ready reports whether the process can serve
// (Redis reachable); nil means always ready.
type Deps struct {
	Submit    Submitter
	Messages  Messages
	Idem      Idempotency  // nil: Idempotency-Key is refused
	Templates Templates    // nil: no template validation or listing
	UI        http.Handler // served under /ui/ behind the API's auth; nil = none
	// Limit, when set, is taken once per /v1 request per caller (API key, or
	// client address without keys); a refusal is a 429 with Retry-After.
	Limit      func(ctx context.Context, caller string) (retryAfter time.Duration, err error)
	Apps       []App
	DefaultApp string
	APIKeys    []secret.Value
	Metrics    *metrics.Metrics
	Gatherer   prometheus.Gatherer
	Logger     *slog.Logger
	Ready      func(ctx context.Context) error
	Now        func() time.Time
	// Nonces remembers callback nonces against replays (nil = not
	// remembered: tests only); CallbackWindow is how far a callback's
	// timestamp may be from Now (0 = wechat.DefaultCallbackWindow).
	Nonces         Nonces
	CallbackWindow time.Duration
	// Inbox, when set, takes delivery results: each is answered after one
	// append, and the workers apply it (nil = applied before answering).
	Inbox Inbox
	// Relay forwards callbacks to apps' upstream_url (nil = no relay);
	// RelayTimeout bounds one, from the callback's arrival (0 = relay.DefaultTimeout).
	Relay        Relay
	RelayTimeout time.Duration
	// Parked lists and replays the inbox's parked events (nil = 404 not_configured).
	Parked ParkedEvents

	// Webhook surface: GET /v1/events reads Events (nil = 404 not_configured), at most
	// MaxEventStreams at once (0 = DefaultMaxEventStreams), a keepalive every
	// EventsKeepalive (0 = DefaultEventsKeepalive); EventsMetrics may be nil.
	// Webhooks lists and replays dead webhooks (nil = 404 not_configured).
	Events          EventStream
	MaxEventStreams int
	EventsKeepalive time.Duration
	EventsMetrics   *EventsMetrics
	Webhooks        DeadWebhooks
	// WebhookAllowPrivate accepts status_url targets on private addresses.
	WebhookAllowPrivate bool
}

// Server serves the enqueuer's HTTP API.
type Server struct {
	// webhookAllowPrivate: status_url may target private addresses.
	webhookAllowPrivate bool
	submit              Submitter
	messages            Messages
	idem                Idempotency
	templates           Templates
	ui                  http.Handler
	limit               func(ctx context.Context, caller string) (time.Duration, error)
	apps                atomic.Pointer[map[string]App]
	defaultApp          string
	apiKeys             []secret.Value
	metrics             *metrics.Metrics
	gatherer            prometheus.Gatherer
	log                 *slog.Logger
	ready               func(ctx context.Context) error
	now                 func() time.Time

	nonces         Nonces
	callbackWindow time.Duration
	inbox          Inbox
	relay          Relay
	relayTimeout   time.Duration
	parked         ParkedEvents

	events          EventStream
	eventSlots      eventSlots
	eventsKeepalive time.Duration
	streams         context.Context // done once CloseStreams is called
	closeStreams    context.CancelFunc
	eventsMetrics   *EventsMetrics
	webhooks        DeadWebhooks
}

// New returns a Server.
func New(d Deps) *Server {
	s := &Server{submit: d.Submit, messages: d.Messages, idem: d.Idem, templates: d.Templates, ui: d.UI, limit: d.Limit,
		defaultApp: d.DefaultApp, apiKeys: d.APIKeys, metrics: d.Metrics, gatherer: d.Gatherer,
		log: d.Logger, ready: d.Ready, now: d.Now, nonces: d.Nonces, callbackWindow: d.CallbackWindow,
		inbox: d.Inbox, relay: d.Relay, relayTimeout: d.RelayTimeout, parked: d.Parked}
	if s.relayTimeout <= 0 {
		s.relayTimeout = relay.DefaultTimeout
	}
	if s.callbackWindow <= 0 {
		s.callbackWindow = wechat.DefaultCallbackWindow
	}
	s.SetApps(d.Apps)
	s.events, s.eventsKeepalive, s.eventsMetrics, s.webhooks = d.Events, d.EventsKeepalive, d.EventsMetrics, d.Webhooks
	s.webhookAllowPrivate = d.WebhookAllowPrivate
	s.streams, s.closeStreams = context.WithCancel(context.Background())
	if d.MaxEventStreams <= 0 {
		d.MaxEventStreams = DefaultMaxEventStreams
	}
	s.eventSlots = make(eventSlots, d.MaxEventStreams)
	if s.eventsKeepalive <= 0 {
		s.eventsKeepalive = DefaultEventsKeepalive
	}
	if s.defaultApp == "" {
		s.defaultApp = "default"
	}
	if s.ready == nil {
		s.ready = func(context.Context) error { return nil }
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// SetApps replaces the configured apps (a configuration reload); requests in
// flight finish with the set they started with.
func (s *Server) SetApps(apps []App) {
	m := make(map[string]App, len(apps))
	for _, a := range apps {
		m[a.Name] = a
	}
	s.apps.Store(&m)
}

// app returns the configured app called name.
func (s *Server) app(name string) (App, bool) {
	a, ok := (*s.apps.Load())[name]
	return a, ok
}

func (s *Server) hasApp(name string) bool { _, ok := s.app(name); return ok }

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /v1/messages", s.auth(s.idempotent(maxMessageBytes, s.handleCreate)))
	mux.Handle("POST /v1/messages/batch", s.auth(s.idempotent(maxBatchBytes, s.handleBatch)))
	mux.Handle("GET /v1/messages", s.auth(http.HandlerFunc(s.handleList)))
	mux.Handle("GET /v1/messages/{id}", s.auth(http.HandlerFunc(s.handleGet)))
	mux.Handle("DELETE /v1/messages/{id}", s.auth(http.HandlerFunc(s.handleCancel)))
	mux.Handle("POST /v1/messages/{id}/retry", s.auth(http.HandlerFunc(s.handleRetry)))
	mux.Handle("POST /v1/apps/{app}/resume", s.auth(http.HandlerFunc(s.handleResume)))
	mux.Handle("GET /v1/apps/{app}/templates", s.auth(http.HandlerFunc(s.handleTemplates)))
	mux.Handle("GET /v1/events", s.auth(http.HandlerFunc(s.handleEvents)))
	mux.Handle("GET /v1/webhooks/dead", s.auth(http.HandlerFunc(s.handleDeadWebhooks)))
	mux.Handle("POST /v1/webhooks/dead/{event_id}/replay", s.auth(http.HandlerFunc(s.handleReplayWebhook)))
	mux.Handle("GET /v1/inbox/parked", s.auth(http.HandlerFunc(s.handleParked)))
	mux.Handle("POST /v1/inbox/parked/{id}/replay", s.auth(http.HandlerFunc(s.handleReplayParked)))
	mux.HandleFunc("GET /wechat/callback/{app}", s.handleVerify)
	mux.HandleFunc("POST /wechat/callback/{app}", s.handleCallback)
	mux.Handle("GET /metrics", s.metricsAuth(promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{})))
	if s.ui != nil {
		// The subtree pattern also redirects /ui to /ui/.
		mux.Handle("/ui/", s.auth(s.ui))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.handleReady)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &apiError{Status: http.StatusNotFound, Code: "not_found", Message: "no route " + r.Method + " " + r.URL.Path})
	})
	return mux
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		writeError(w, &apiError{Status: http.StatusServiceUnavailable, Code: "not_ready", Message: "Redis is unreachable"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// auth requires a bearer API key when keys are configured; without keys only
// loopback clients are served, so an unconfigured enqueuer is never open to a network.
func (s *Server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(s.apiKeys) == 0 {
			if !isLoopback(r.RemoteAddr) {
				writeError(w, &apiError{Status: http.StatusForbidden, Code: "forbidden",
					Message: "no API keys are configured (WXPUSH_API_KEYS), so only loopback clients are served"})
				return
			}
			s.limited(next).ServeHTTP(w, r)
			return
		}
		given, ok := s.bearer(w, r)
		if !ok {
			return
		}
		s.limited(next).ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, callerID(given))))
	})
}

// bearer returns the request's API key, or answers 401 and reports false when
// it carries no valid one.
func (s *Server) bearer(w http.ResponseWriter, r *http.Request) (string, bool) {
	given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || !s.validKey(given) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="wxpush"`)
		writeError(w, &apiError{Status: http.StatusUnauthorized, Code: "unauthorized",
			Message: "a valid API key is required: Authorization: Bearer <key>"})
		return "", false
	}
	return given, true
}

// metricsAuth guards /metrics, which names the apps and their volumes: with
// API keys configured a scrape needs one of them (Prometheus:
// authorization.credentials_file); without keys (a loopback-only API, as in
// standalone mode) it stays open, as the probes are. Scrapes are not rate
// limited: a busy producer must not blind its monitoring.
func (s *Server) metricsAuth(next http.Handler) http.Handler {
	if len(s.apiKeys) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := s.bearer(w, r); ok {
			next.ServeHTTP(w, r)
		}
	})
}

// limited applies the per-caller request rate. A limiter that cannot reach Redis
// lets the request through: the handler then answers for Redis itself.
func (s *Server) limited(next http.Handler) http.Handler {
	if s.limit == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wait, err := s.limit(r.Context(), caller(r))
		if err != nil {
			s.log.Warn("API rate limiter unavailable; request let through", "err", err)
		}
		if wait > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			writeJSON(w, http.StatusTooManyRequests, map[string]*apiError{"error": {Code: "rate_limited",
				Message: "too many requests for this API key; slow down and retry after Retry-After seconds"}})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// validKey compares against every key in constant time, without stopping early.
func (s *Server) validKey(given string) bool {
	ok := 0
	for _, k := range s.apiKeys {
		ok |= subtle.ConstantTimeCompare([]byte(given), []byte(k.Reveal()))
	}
	return ok == 1
}

// callerKey keys the caller's identity in a request context.
type callerKey struct{}

// callerID names an API key without revealing it: a prefix of its SHA-256.
func callerID(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:8])
}

// caller returns the identity idempotency keys and rate limits are scoped to:
// the API key's id, or "local" for loopback clients without keys.
func caller(r *http.Request) string {
	if id, ok := r.Context().Value(callerKey{}).(string); ok {
		return id
	}
	return "local"
}

func isLoopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
