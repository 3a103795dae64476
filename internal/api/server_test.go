package api_test

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/idempotency"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/metrics"
	"github.com/wxpush/wxpush/internal/redisconn"
	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/secret"
	"github.com/wxpush/wxpush/internal/tasks"
	"github.com/wxpush/wxpush/internal/wechat"
)

// TestMain also proves that the bundle's cleanup (httptest server, Redis client,
// redis-server) leaves no goroutine behind.
func TestMain(m *testing.M) {
	// go-redis retries a failed dial from a background goroutine that sleeps a
	// second between tries and exits once its pool is closed; tests that kill
	// Redis can end while it sleeps.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

// Callback tokens of the two apps every bundle configures.
const (
	defaultToken = "default-callback-token-Zq8"
	shopToken    = "shop-callback-token-Pw3"
)

// bundle is the real stack behind one httptest server: a private redis-server,
// the delivery store, the asynq-backed submitter, and metrics on a fresh registry.
type bundle struct {
	redis   *redistest.Server
	rdb     *redis.Client
	store   *delivery.Store
	insp    *asynq.Inspector
	reg     *prometheus.Registry
	metrics *metrics.Metrics
	handler http.Handler
	url     string
	client  *http.Client
	logs    *syncBuffer
}

// setup builds the stack the way internal/service wires it in production; opts
// adjust the Deps (API keys, for example) before the server is built.
func setup(t *testing.T, opts ...func(*api.Deps)) *bundle {
	t.Helper()
	return setupRedis(t, func(_ *redis.Client, d *api.Deps) {
		for _, o := range opts {
			o(d)
		}
	})
}

// setupRedis is setup with an option that also gets the bundle's Redis.
func setupRedis(t *testing.T, opt func(*redis.Client, *api.Deps)) *bundle {
	t.Helper()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	store := delivery.NewStore(rdb, delivery.Config{})
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	logs := &syncBuffer{}
	d := api.Deps{
		Submit: tasks.NewSubmitter(store, asynq.NewClientFromRedisClient(rdb),
			asynq.NewInspectorFromRedisClient(rdb), 10),
		Messages: store,
		Idem:     idempotency.New(rdb, 0),
		Apps: []api.App{
			{Name: "default", Token: secret.Value(defaultToken)},
			{Name: "shop", Token: secret.Value(shopToken)},
		},
		DefaultApp: "default",
		Metrics:    m,
		Gatherer:   reg,
		Logger:     logging.New(logs, "debug", "json"),
		Ready:      func(ctx context.Context) error { return redisconn.Ping(ctx, rdb) },
		Nonces:     wechat.NewNonceStore(rdb),
	}
	opt(rdb, &d)
	h := api.New(d).Handler()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	client := ts.Client()
	client.Timeout = 30 * time.Second
	return &bundle{redis: srv, rdb: rdb, store: store, insp: asynq.NewInspectorFromRedisClient(rdb),
		reg: reg, metrics: m, handler: h, url: ts.URL, client: client, logs: logs}
}

// newMetrics registers the metrics with the label values production initialises.
func newMetrics(reg prometheus.Registerer) *metrics.Metrics {
	results := []string{metrics.ResultOK}
	for _, c := range wechat.Classes() {
		results = append(results, c.String())
	}
	var states []string
	for _, s := range delivery.FinalStates() {
		states = append(states, string(s))
	}
	return metrics.New(reg, metrics.Labels{
		Apps: []string{"default", "shop"}, States: states, Results: results,
		Events: api.CallbackEvents, Outcome: api.CallbackOutcomes, Rejects: api.CallbackRejectReasons,
		APIs: []string{"token", "stable_token", "template/send"},
	})
}

// reply is a response read in full.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request to the bundle's server; header is key, value pairs.
func (b *bundle) do(t *testing.T, method, path string, body []byte, header ...string) reply {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, b.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: rb}
}

// serve calls the handler directly, as a client at remote would reach it.
func (b *bundle) serve(t *testing.T, remote, method, path string, body []byte, header ...string) reply {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), method, path, bytes.NewReader(body))
	req.RemoteAddr = remote
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	b.handler.ServeHTTP(rec, req)
	return reply{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

// errorReply is the API's error body.
type errorReply struct {
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
	} `json:"error"`
}

// mustError checks that r carries the documented JSON error body and returns
// its code and field.
func mustError(t *testing.T, r reply) (code, field string) {
	t.Helper()
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("error Content-Type = %q, want application/json", ct)
	}
	var e errorReply
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || e.Error == nil {
		t.Fatalf("status %d: body %q is not {\"error\":{\"code\",\"message\",\"field\"}}: %v", r.status, r.body, err)
	}
	if e.Error.Code == "" || strings.TrimSpace(e.Error.Message) == "" {
		t.Errorf("error body %s: code and message must be non-empty", r.body)
	}
	return e.Error.Code, e.Error.Field
}

// keys lists the Redis keys matching pattern.
func (b *bundle) keys(t *testing.T, pattern string) []string {
	t.Helper()
	ks, err := b.rdb.Keys(t.Context(), pattern).Result()
	if err != nil {
		t.Fatalf("KEYS %s: %v", pattern, err)
	}
	return ks
}

// enqueued is the wxpush_messages_enqueued_total value of app.
func (b *bundle) enqueued(app string) float64 {
	return testutil.ToFloat64(b.metrics.Enqueued.WithLabelValues(app))
}

// assertNothingStored checks that no record, no asynq task and no count was left.
func (b *bundle) assertNothingStored(t *testing.T) {
	t.Helper()
	if ks := b.keys(t, "wxpush:*"); len(ks) != 0 {
		t.Errorf("refused request left wxpush keys in Redis: %v", ks)
	}
	if ks := b.keys(t, "asynq:*"); len(ks) != 0 {
		t.Errorf("refused request left asynq keys in Redis: %v", ks)
	}
	for _, app := range []string{"default", "shop"} {
		if n := b.enqueued(app); n != 0 {
			t.Errorf("wxpush_messages_enqueued_total{app=%q} = %v after a refused request, want 0", app, n)
		}
	}
}

// sign is WeChat's callback signature, computed independently of package wechat:
// hex(sha1(concat(sort([token, timestamp, nonce])))).
func sign(token, ts, nonce string) string {
	parts := []string{token, ts, nonce}
	sort.Strings(parts)
	sum := sha1.Sum([]byte(strings.Join(parts, "")))
	return hex.EncodeToString(sum[:])
}

// signedQuery is a callback query string signed with token, as WeChat sends
// it: the current time and a nonce of its own, so that the timestamp window
// and the nonce memory let it through once (and its retries with the same body).
func signedQuery(token string) url.Values {
	ts, nonce := strconv.FormatInt(time.Now().Unix(), 10), strconv.FormatUint(rand.Uint64(), 10)
	return url.Values{"signature": {sign(token, ts, nonce)}, "timestamp": {ts}, "nonce": {nonce},
		"openid": {"oia2TjuEGTNoeX76QEjQNrcURxG8"}}
}

// seed reads a file of the WeChat seed samples.
func seed(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("../wechat/testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// syncBuffer collects log output written from handler goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func TestHealthAndReady(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tests := []struct {
		name   string
		path   string
		status int
		body   string
	}{
		{name: "healthz", path: "/healthz", status: http.StatusOK, body: `{"status":"ok"}`},
		{name: "readyz with Redis up", path: "/readyz", status: http.StatusOK, body: `{"status":"ready"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.do(t, http.MethodGet, tt.path, nil)
			if r.status != tt.status || strings.TrimSpace(string(r.body)) != tt.body {
				t.Errorf("GET %s = %d %s, want %d %s", tt.path, r.status, r.body, tt.status, tt.body)
			}
		})
	}
	r := b.do(t, http.MethodGet, "/no/such/route", nil)
	if code, _ := mustError(t, r); r.status != http.StatusNotFound || code != "not_found" {
		t.Errorf("unknown route = %d %s, want 404 not_found", r.status, r.body)
	}
}

// TestRedisUnreachable: with Redis gone the API answers 503 with Retry-After and a
// JSON error, never a 500, and liveness stays up so the process is not restarted.
func TestRedisUnreachable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.do(t, http.MethodPost, "/v1/messages", seed(t, "template-send-request.json"))
	if r.status != http.StatusAccepted {
		t.Fatalf("POST before the kill = %d %s", r.status, r.body)
	}
	var acc struct{ ID string }
	if err := json.Unmarshal(r.body, &acc); err != nil || acc.ID == "" {
		t.Fatalf("accepted body %s: %v", r.body, err)
	}
	b.redis.Kill(t)
	waitFor(t, "/readyz to notice Redis is gone", func() bool {
		return b.do(t, http.MethodGet, "/readyz", nil).status == http.StatusServiceUnavailable
	})

	tests := []struct {
		name   string
		method string
		path   string
		body   []byte
		status int
		code   string // "" for a non-error reply
	}{
		{name: "POST message", method: http.MethodPost, path: "/v1/messages",
			body: seed(t, "template-send-request.json"), status: http.StatusServiceUnavailable, code: "storage_unavailable"},
		{name: "GET message", method: http.MethodGet, path: "/v1/messages/" + acc.ID,
			status: http.StatusServiceUnavailable, code: "storage_unavailable"},
		{name: "GET unknown message", method: http.MethodGet, path: "/v1/messages/01NOSUCHMESSAGE",
			status: http.StatusServiceUnavailable, code: "storage_unavailable"},
		{name: "readyz", method: http.MethodGet, path: "/readyz", status: http.StatusServiceUnavailable, code: "not_ready"},
		{name: "healthz", method: http.MethodGet, path: "/healthz", status: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.do(t, tt.method, tt.path, tt.body)
			if r.status != tt.status {
				t.Fatalf("%s %s = %d %s, want %d", tt.method, tt.path, r.status, r.body, tt.status)
			}
			if tt.code == "" {
				return
			}
			if code, _ := mustError(t, r); code != tt.code {
				t.Errorf("error code = %q, want %q", code, tt.code)
			}
			if r.header.Get("Retry-After") == "" {
				t.Errorf("503 without Retry-After")
			}
		})
	}
	if n := b.enqueued("default"); n != 1 {
		t.Errorf("enqueued{default} = %v, want 1: a refused POST must not be counted", n)
	}
}

// TestAuthAPIKeys: with keys configured the producer API and /metrics (it
// names the apps and their volumes: issue 17, item 9) need a bearer key; the
// callback (WeChat cannot send one) and the probes do not.
func TestAuthAPIKeys(t *testing.T) {
	t.Parallel()
	const key1, key2 = "k1-0123456789abcdef-secret", "k2-fedcba9876543210-secret"
	b := setup(t, func(d *api.Deps) { d.APIKeys = []secret.Value{key1, key2} })
	body := seed(t, "template-send-request.json")
	q := signedQuery(defaultToken)
	q.Set("echostr", "echo-123")

	tests := []struct {
		name   string
		method string
		path   string
		body   []byte
		auth   string // Authorization header; "" sends none
		status int
	}{
		{name: "no key", method: http.MethodPost, path: "/v1/messages", body: body, status: http.StatusUnauthorized},
		{name: "wrong key", method: http.MethodPost, path: "/v1/messages", body: body, auth: "Bearer nope", status: http.StatusUnauthorized},
		{name: "empty bearer", method: http.MethodPost, path: "/v1/messages", body: body, auth: "Bearer ", status: http.StatusUnauthorized},
		{name: "key prefix", method: http.MethodPost, path: "/v1/messages", body: body, auth: "Bearer " + key1[:10], status: http.StatusUnauthorized},
		{name: "key with suffix", method: http.MethodPost, path: "/v1/messages", body: body, auth: "Bearer " + key1 + "x", status: http.StatusUnauthorized},
		{name: "key without scheme", method: http.MethodPost, path: "/v1/messages", body: body, auth: key1, status: http.StatusUnauthorized},
		{name: "key as basic", method: http.MethodPost, path: "/v1/messages", body: body, auth: "Basic " + key1, status: http.StatusUnauthorized},
		{name: "GET without key", method: http.MethodGet, path: "/v1/messages/01ANY", status: http.StatusUnauthorized},
		{name: "first key", method: http.MethodPost, path: "/v1/messages", body: body, auth: "Bearer " + key1, status: http.StatusAccepted},
		{name: "second key", method: http.MethodPost, path: "/v1/messages", body: body, auth: "Bearer " + key2, status: http.StatusAccepted},
		{name: "callback verify needs no key", method: http.MethodGet, path: "/wechat/callback/default?" + q.Encode(), status: http.StatusOK},
		{name: "metrics without a key", method: http.MethodGet, path: "/metrics", status: http.StatusUnauthorized},
		{name: "metrics with a wrong key", method: http.MethodGet, path: "/metrics", auth: "Bearer nope", status: http.StatusUnauthorized},
		{name: "metrics with a key", method: http.MethodGet, path: "/metrics", auth: "Bearer " + key2, status: http.StatusOK},
		{name: "healthz needs no key", method: http.MethodGet, path: "/healthz", status: http.StatusOK},
		{name: "readyz needs no key", method: http.MethodGet, path: "/readyz", status: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.auth != "" {
				hdr = []string{"Authorization", tt.auth}
			}
			r := b.do(t, tt.method, tt.path, tt.body, hdr...)
			if r.status != tt.status {
				t.Fatalf("%s %s = %d %s, want %d", tt.method, tt.path, r.status, r.body, tt.status)
			}
			if tt.status == http.StatusUnauthorized {
				if code, _ := mustError(t, r); code != "unauthorized" {
					t.Errorf("code = %q, want unauthorized", code)
				}
				if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("401 without a Bearer WWW-Authenticate challenge")
				}
			}
			for _, k := range []string{key1, key2} {
				if bytes.Contains(r.body, []byte(k)) {
					t.Errorf("response body reveals an API key: %s", r.body)
				}
			}
		})
	}
	if n := b.enqueued("default"); n != 2 {
		t.Errorf("enqueued{default} = %v, want 2 (only the two authorised POSTs)", n)
	}
	for _, k := range []string{key1, key2, defaultToken, shopToken} {
		if strings.Contains(b.logs.String(), k) {
			t.Errorf("logs reveal a secret (%.4s…)", k)
		}
	}
}

// TestAuthLoopbackOnly: with no API keys only loopback clients reach the producer
// API; WeChat (a remote client) still reaches the callback, and probes and
// /metrics stay reachable.
func TestAuthLoopbackOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := seed(t, "template-send-request.json")
	q := signedQuery(defaultToken)
	q.Set("echostr", "echo-456")
	tests := []struct {
		name   string
		remote string
		method string
		path   string
		body   []byte
		status int
	}{
		{name: "remote POST", remote: "203.0.113.9:1234", method: http.MethodPost, path: "/v1/messages", body: body, status: http.StatusForbidden},
		{name: "remote GET", remote: "203.0.113.9:1234", method: http.MethodGet, path: "/v1/messages/01ANY", status: http.StatusForbidden},
		{name: "private network POST", remote: "10.0.0.7:4000", method: http.MethodPost, path: "/v1/messages", body: body, status: http.StatusForbidden},
		{name: "remote IPv6 POST", remote: "[2001:db8::1]:443", method: http.MethodPost, path: "/v1/messages", body: body, status: http.StatusForbidden},
		{name: "no port fails closed", remote: "127.0.0.1", method: http.MethodPost, path: "/v1/messages", body: body, status: http.StatusForbidden},
		{name: "remote callback verify", remote: "203.0.113.9:1234", method: http.MethodGet, path: "/wechat/callback/default?" + q.Encode(), status: http.StatusOK},
		{name: "remote healthz", remote: "203.0.113.9:1234", method: http.MethodGet, path: "/healthz", status: http.StatusOK},
		{name: "remote metrics", remote: "203.0.113.9:1234", method: http.MethodGet, path: "/metrics", status: http.StatusOK},
		{name: "loopback metrics", remote: "127.0.0.1:40001", method: http.MethodGet, path: "/metrics", status: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.serve(t, tt.remote, tt.method, tt.path, tt.body)
			if r.status != tt.status {
				t.Fatalf("%s %s from %s = %d %s, want %d", tt.method, tt.path, tt.remote, r.status, r.body, tt.status)
			}
			if tt.status == http.StatusForbidden {
				if code, _ := mustError(t, r); code != "forbidden" {
					t.Errorf("code = %q, want forbidden", code)
				}
			}
		})
	}
	b.assertNothingStored(t)

	// Loopback clients are served, over IPv4 and IPv6.
	for _, remote := range []string{"127.0.0.1:5", "[::1]:5"} {
		t.Run("loopback "+remote, func(t *testing.T) {
			r := b.serve(t, remote, http.MethodPost, "/v1/messages", body)
			if r.status != http.StatusAccepted {
				t.Fatalf("POST from %s = %d %s, want 202", remote, r.status, r.body)
			}
		})
	}
	if n := b.enqueued("default"); n != 2 {
		t.Errorf("enqueued{default} = %v, want 2", n)
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	const key = "metrics-test-api-key-0123456789"
	b := setup(t, func(d *api.Deps) { d.APIKeys = []secret.Value{key} })
	if problems, err := testutil.GatherAndLint(b.reg); err != nil || len(problems) != 0 {
		t.Fatalf("promlint on a fresh registry: %v %+v", err, problems)
	}

	// Some activity: one accepted message that is sent and delivered.
	const openid = "oia2TjuEGTNoeX76QEjQNrcURxG8"
	r := b.do(t, http.MethodPost, "/v1/messages", seedWith(t, func(m map[string]any) { m["touser"] = openid }),
		"Authorization", "Bearer "+key)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST = %d %s", r.status, r.body)
	}
	var acc struct{ ID string }
	_ = json.Unmarshal(r.body, &acc)
	markSent(t, b, acc.ID, "default", 200163836)
	cb := b.do(t, http.MethodPost, "/wechat/callback/default?"+signedQuery(defaultToken).Encode(),
		callbackXML(t, "callback-user-block.xml", 200163836))
	if cb.status != http.StatusOK {
		t.Fatalf("callback = %d %s", cb.status, cb.body)
	}

	if problems, err := testutil.GatherAndLint(b.reg); err != nil || len(problems) != 0 {
		t.Fatalf("promlint after activity: %v %+v", err, problems)
	}

	m := b.do(t, http.MethodGet, "/metrics", nil, "Authorization", "Bearer "+key)
	if m.status != http.StatusOK {
		t.Fatalf("GET /metrics = %d", m.status)
	}
	text := string(m.body)
	for _, want := range []string{
		"# TYPE wxpush_messages_enqueued_total counter",
		"# TYPE wxpush_messages_finished_total counter",
		"# TYPE wxpush_send_attempts_total counter",
		`wxpush_messages_enqueued_total{app="default"} 1`,
		`wxpush_messages_enqueued_total{app="shop"} 0`,
		`wxpush_messages_finished_total{app="default",state="user_blocked"} 1`,
		`wxpush_messages_finished_total{app="default",state="delivered"} 0`,
		`wxpush_send_attempts_total{app="default",result="ok"} 0`,
		`wxpush_callbacks_total{app="default",event="TEMPLATESENDJOBFINISH",outcome="applied"} 1`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Invariant 7 and bounded labels: no secret, openid or message id in a metric.
	for _, leak := range []string{key, defaultToken, shopToken, openid, acc.ID, "200163836"} {
		if strings.Contains(text, leak) {
			t.Errorf("/metrics contains %q", leak)
		}
	}
}
