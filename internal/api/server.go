package api

import (
	"context"
	"crypto/subtle"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/metrics"
	"github.com/wxpush/wxpush/internal/secret"
)

// Submitter accepts a message for delivery; *tasks.Submitter provides it.
type Submitter interface {
	Submit(ctx context.Context, m delivery.NewMessage) (delivery.State, error)
}

// Messages reads message records and applies callbacks; *delivery.Store provides it.
type Messages interface {
	Get(ctx context.Context, id string) (*delivery.Message, error)
	ApplyCallback(ctx context.Context, app, msgID string, to delivery.State, raw string) (delivery.CallbackResult, error)
}

// CallbackApp is what the callback receiver needs to know of an app.
type CallbackApp struct {
	Name  string
	Token secret.Value
}

// Deps are the Server's collaborators. Ready reports whether the process can serve
// (Redis reachable); nil means always ready.
type Deps struct {
	Submit     Submitter
	Messages   Messages
	Apps       []CallbackApp
	DefaultApp string
	APIKeys    []secret.Value
	Metrics    *metrics.Metrics
	Gatherer   prometheus.Gatherer
	Logger     *slog.Logger
	Ready      func(ctx context.Context) error
	Now        func() time.Time
}

// Server serves the enqueuer's HTTP API.
type Server struct {
	submit     Submitter
	messages   Messages
	apps       map[string]CallbackApp
	defaultApp string
	apiKeys    []secret.Value
	metrics    *metrics.Metrics
	gatherer   prometheus.Gatherer
	log        *slog.Logger
	ready      func(ctx context.Context) error
	now        func() time.Time
}

// New returns a Server.
func New(d Deps) *Server {
	s := &Server{submit: d.Submit, messages: d.Messages, apps: map[string]CallbackApp{},
		defaultApp: d.DefaultApp, apiKeys: d.APIKeys, metrics: d.Metrics, gatherer: d.Gatherer,
		log: d.Logger, ready: d.Ready, now: d.Now}
	for _, a := range d.Apps {
		s.apps[a.Name] = a
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

func (s *Server) hasApp(name string) bool { _, ok := s.apps[name]; return ok }

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /v1/messages", s.auth(http.HandlerFunc(s.handleCreate)))
	mux.Handle("GET /v1/messages/{id}", s.auth(http.HandlerFunc(s.handleGet)))
	mux.HandleFunc("GET /wechat/callback/{app}", s.handleVerify)
	mux.HandleFunc("POST /wechat/callback/{app}", s.handleCallback)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{}))
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
			next.ServeHTTP(w, r)
			return
		}
		given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !s.validKey(given) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="wxpush"`)
			writeError(w, &apiError{Status: http.StatusUnauthorized, Code: "unauthorized",
				Message: "a valid API key is required: Authorization: Bearer <key>"})
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

func isLoopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
