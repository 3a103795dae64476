// Package relay forwards the WeChat callbacks wxpush does not consume to the
// company's existing handler (an app's upstream_url), exactly as WeChat sent
// them: the original query string and body bytes, so that an unchanged SDK
// handler verifies and decrypts them. It never follows redirects, bounds the
// upstream's reply and time, and never decides what WeChat is answered on
// failure: it returns an error and the caller answers "success". A Relay is
// safe for concurrent use.
package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of a relayed request, the values of the result label.
const (
	ResultOK        = "ok"
	ResultTimeout   = "timeout"
	ResultError     = "error"      // connection refused, reset, bad URL
	ResultStatus4xx = "status_4xx" // the upstream refused it
	ResultStatus5xx = "status_5xx"
	ResultTooLarge  = "too_large" // the reply exceeds MaxReply
	ResultRedirect  = "redirect"  // a 3xx: never followed
	ResultDropped   = "dropped"   // a background copy refused: too many in flight
)

// Results lists the result label values, to initialise.
var Results = []string{ResultOK, ResultTimeout, ResultError, ResultStatus4xx, ResultStatus5xx,
	ResultTooLarge, ResultRedirect, ResultDropped}

// Defaults.
const (
	DefaultTimeout   = 4500 * time.Millisecond // WeChat waits 5 s
	DefaultMaxReply  = 1 << 20                 // a passive reply is a few KiB
	DefaultMaxCopies = 256
)

// Config tunes a Relay; every zero value means the default.
type Config struct {
	Timeout   time.Duration // one upstream request, reply read included; 0 = DefaultTimeout
	MaxReply  int64         // largest reply body accepted; 0 = DefaultMaxReply
	MaxCopies int           // background copies in flight (relay_all); 0 = DefaultMaxCopies
	Transport http.RoundTripper
	Logger    *slog.Logger
}

// Reply is the upstream's answer, to be written to WeChat unchanged.
type Reply struct {
	ContentType string // empty when the upstream sent none
	Body        []byte
}

// Error is a failed relay; Result is its result label.
type Error struct {
	Result string
	Err    error
}

func (e *Error) Error() string { return "relay: " + e.Result + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Relay forwards requests to upstream handlers.
type Relay struct {
	client   *http.Client
	timeout  time.Duration
	maxReply int64
	copies   chan struct{}
	metrics  *Metrics
	log      *slog.Logger
}

// New returns a Relay counting into m (nil: not counted).
func New(cfg Config, m *Metrics) *Relay {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxReply <= 0 {
		cfg.MaxReply = DefaultMaxReply
	}
	if cfg.MaxCopies <= 0 {
		cfg.MaxCopies = DefaultMaxCopies
	}
	if cfg.Transport == nil {
		cfg.Transport = &http.Transport{Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 64,
			IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 2 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Relay{
		client: &http.Client{Transport: cfg.Transport, Timeout: cfg.Timeout,
			// A redirect would send WeChat's signed request somewhere nobody configured.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		timeout: cfg.Timeout, maxReply: cfg.MaxReply, copies: make(chan struct{}, cfg.MaxCopies),
		metrics: m, log: cfg.Logger,
	}
}

// Request is one callback as WeChat sent it.
type Request struct {
	App         string // for metrics and logs
	Upstream    string // the app's upstream_url
	Method      string // GET (URL verification) or POST
	RawQuery    string // WeChat's query string, unchanged
	ContentType string
	Body        []byte // WeChat's body, unchanged (still encrypted in safe mode)
}

// origin is scheme://host of a URL, what logs may name of it: its path and
// query may carry what WeChat sent (openid, signatures).
func origin(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(unparsable URL)"
	}
	return u.Scheme + "://" + u.Host
}

// Forward sends req upstream and returns its 2xx reply (WeChat is answered
// 200 with its body). Any other outcome is an
// *Error: the caller answers WeChat itself.
func (r *Relay) Forward(ctx context.Context, req Request) (Reply, error) {
	start := time.Now()
	rep, err := r.forward(ctx, req)
	result := ResultOK
	var re *Error
	if errors.As(err, &re) {
		result = re.Result
		r.log.Warn("relay to upstream failed; wxpush answers WeChat itself", "app", req.App,
			"upstream", origin(req.Upstream), "result", result, "err", re.Err)
	}
	r.metrics.observe(req.App, result, time.Since(start))
	return rep, err
}

func (r *Relay) forward(ctx context.Context, req Request) (Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	u := req.Upstream
	if req.RawQuery != "" {
		sep := "?"
		if bytes.ContainsRune([]byte(u), '?') {
			sep = "&"
		}
		u += sep + req.RawQuery
	}
	method := req.Method
	if method == "" {
		method = http.MethodPost
	}
	var body io.Reader
	if method == http.MethodPost {
		body = bytes.NewReader(req.Body)
	}
	hr, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return Reply{}, &Error{Result: ResultError, Err: err}
	}
	if req.ContentType != "" && method == http.MethodPost {
		hr.Header.Set("Content-Type", req.ContentType)
	}
	hr.Header.Set("User-Agent", "wxpush-relay")
	resp, err := r.client.Do(hr)
	if err != nil {
		// A *url.Error quotes the URL, and with it WeChat's query (openid,
		// signatures): keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Reply{}, &Error{Result: classify(ctx, err), Err: err}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return Reply{}, &Error{Result: ResultRedirect, Err: fmt.Errorf("upstream answered %d to %s", resp.StatusCode, origin(resp.Header.Get("Location")))}
	case resp.StatusCode >= 500:
		return Reply{}, &Error{Result: ResultStatus5xx, Err: fmt.Errorf("upstream answered %d", resp.StatusCode)}
	case resp.StatusCode < 200 || resp.StatusCode >= 300:
		return Reply{}, &Error{Result: ResultStatus4xx, Err: fmt.Errorf("upstream answered %d", resp.StatusCode)}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, r.maxReply+1))
	if err != nil {
		return Reply{}, &Error{Result: classify(ctx, err), Err: err}
	}
	if int64(len(b)) > r.maxReply {
		return Reply{}, &Error{Result: ResultTooLarge, Err: fmt.Errorf("reply over %d bytes", r.maxReply)}
	}
	return Reply{ContentType: resp.Header.Get("Content-Type"), Body: b}, nil
}

func classify(ctx context.Context, err error) string {
	var ne interface{ Timeout() bool }
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return ResultTimeout
	}
	return ResultError
}

// Copy forwards req in the background and ignores the reply (relay_all: a
// callback wxpush consumed is also shown to the upstream). It never waits:
// with MaxCopies in flight the copy is dropped and counted.
func (r *Relay) Copy(req Request) {
	select {
	case r.copies <- struct{}{}:
	default:
		r.metrics.observe(req.App, ResultDropped, 0)
		return
	}
	req.Body = bytes.Clone(req.Body)
	go func() {
		defer func() { <-r.copies }()
		_, _ = r.Forward(context.Background(), req)
	}()
}

// Metrics are the relay's instruments.
type Metrics struct {
	Requests *prometheus.CounterVec   // app, result
	Duration *prometheus.HistogramVec // app
}

// NewMetrics registers the relay metrics on reg, with apps' label values at zero.
func NewMetrics(reg prometheus.Registerer, apps []string) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wxpush_relay_requests_total",
			Help: "WeChat callbacks forwarded to an app's upstream_url, by result (anything but ok: WeChat was answered success)."},
			[]string{"app", "result"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "wxpush_relay_duration_seconds",
			Help:    "Time to forward a callback upstream and read its reply.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 3, 4, 5}}, []string{"app"}),
	}
	reg.MustRegister(m.Requests, m.Duration)
	for _, a := range apps {
		for _, res := range Results {
			m.Requests.WithLabelValues(a, res)
		}
		m.Duration.WithLabelValues(a)
	}
	return m
}

func (m *Metrics) observe(app, result string, d time.Duration) {
	if m == nil {
		return
	}
	m.Requests.WithLabelValues(app, result).Inc()
	if result != ResultDropped {
		m.Duration.WithLabelValues(app).Observe(d.Seconds())
	}
}
