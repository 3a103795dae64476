package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/config"
	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/events"
	"github.com/wxpush/wxpush/internal/idempotency"
	"github.com/wxpush/wxpush/internal/inbox"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/metrics"
	"github.com/wxpush/wxpush/internal/ratelimit"
	"github.com/wxpush/wxpush/internal/redisconn"
	"github.com/wxpush/wxpush/internal/relay"
	"github.com/wxpush/wxpush/internal/tasks"
	"github.com/wxpush/wxpush/internal/templates"
	"github.com/wxpush/wxpush/internal/webhook"
	"github.com/wxpush/wxpush/internal/wechat"
)

// parts are what every wxpush process shares: one Redis client, one registry.
type parts struct {
	cfg     config.Config
	log     *slog.Logger
	rdb     redis.UniversalClient
	reg     *prometheus.Registry
	metrics *metrics.Metrics
	store   *delivery.Store
	client  *wechat.Client
	tokens  *wechat.TokenStore
	tpl     *templates.Cache
	events  *events.Metrics
	inbox   *inbox.Metrics
	closers []func() error // see close
	// apps is the configuration apps are read from: cfg at start, replaced by
	// a reload (SIGHUP). Everything else in cfg is fixed for the process.
	apps atomic.Pointer[config.Config]
}

// current is the configuration of the apps, as last loaded.
func (p *parts) current() *config.Config { return p.apps.Load() }

func newParts(cfg config.Config, log *slog.Logger, rdb redis.UniversalClient) *parts {
	reg := prometheus.NewRegistry()
	results := []string{metrics.ResultOK}
	for _, c := range wechat.Classes() {
		results = append(results, c.String())
	}
	states := make([]string, 0, 8)
	for _, s := range delivery.FinalStates() {
		states = append(states, string(s))
	}
	m := metrics.New(reg, metrics.Labels{
		Apps: cfg.AppNames(), States: states, Results: results,
		Events: api.CallbackEvents, Outcome: api.CallbackOutcomes, Rejects: api.CallbackRejectReasons,
		APIs: []string{"token", "stable_token", "template/send", "subscribe/bizsend", "template/list"},
	})
	store := delivery.NewStore(rdb, delivery.Config{
		Retention: cfg.Retention, ConfirmTimeout: cfg.ConfirmTimeout, CallbackHold: cfg.CallbackHold,
		Events:        cfg.Events,
		OnHeldEvicted: func(app string, n int) { m.HeldEvicted.WithLabelValues(app).Add(float64(n)) },
	})
	rdb.AddHook(m.RedisHook())
	p := &parts{cfg: cfg, log: log, rdb: rdb, reg: reg, metrics: m, store: store, events: events.NewMetrics(reg, rdb),
		inbox: inbox.NewMetrics(reg, rdb, cfg.AppNames())}
	p.apps.Store(&cfg)
	reg.MustRegister(metrics.NewClusterCollector(store, func() []string { return p.current().AppNames() }),
		metrics.NewQueueCollector(asynq.NewInspectorFromRedisClient(rdb), []string{tasks.QueueHigh, tasks.QueueNormal, tasks.QueueLow, webhook.Queue}))
	p.client = p.wechatClient()
	p.tokens = wechat.NewTokenStore(rdb, p.client, wechat.TokenStoreConfig{
		OnFetch: func(app string, err error) { m.TokenFetches.WithLabelValues(app, resultOf(err)).Inc() },
	})
	p.tpl = templates.New(rdb, p.fetchTemplates, templates.Config{Local: time.Second})
	return p
}

// fetchTemplates lists an app's templates with its shared token; a token error
// refreshes the token once, as a send does.
func (p *parts) fetchTemplates(ctx context.Context, app string) ([]wechat.Template, error) {
	cred, ok := p.credentials(app)
	if !ok {
		return nil, fmt.Errorf("app %q is not configured", app)
	}
	for try := 0; ; try++ {
		tok, err := p.tokens.Token(ctx, cred)
		if err != nil {
			return nil, err
		}
		list, err := p.client.PrivateTemplates(ctx, tok)
		if err == nil || wechat.ClassOfError(err) != wechat.ClassToken || try > 0 {
			return list, err
		}
		if err := p.tokens.Invalidate(ctx, app, tok); err != nil {
			return nil, err
		}
	}
}

func loadConfig(getenv func(string) string, stderr io.Writer) (config.Config, *slog.Logger, error) {
	cfg, err := config.Load(getenv)
	if err != nil {
		return cfg, nil, fmt.Errorf("configuration: %w", err)
	}
	releaseParseMemory(len(cfg.Apps))
	return cfg, logging.New(stderr, cfg.LogLevel, cfg.LogFormat), nil
}

// apiApps is what the API needs of each configured app, callback keyrings built.
func apiApps(cfg *config.Config) ([]api.App, error) {
	apps := make([]api.App, len(cfg.Apps))
	for i, a := range cfg.Apps {
		apps[i] = api.App{Name: a.Name, AppID: a.AppID, Token: a.Token, PreviousToken: a.PreviousToken, CallbackCompat: a.CallbackCompat,
			MaxBacklog: a.MaxBacklog, ValidateTemplates: a.ValidateTemplates,
			StatusURL: a.StatusURL, WebhookSecret: !a.WebhookSecret.IsZero(),
			UpstreamURL: a.UpstreamURL, RelayAll: a.RelayAll, RelayVerify: a.RelayVerify}
		if a.AESKey.IsZero() {
			continue
		}
		// During a rotation the previous generation keeps whichever half did not change.
		cur := wechat.CallbackKeys{Token: a.Token.Reveal(), AESKey: a.AESKey.Reveal()}
		var prev *wechat.CallbackKeys
		if !a.PreviousToken.IsZero() || !a.PreviousAESKey.IsZero() {
			prev = &wechat.CallbackKeys{Token: cmp.Or(a.PreviousToken.Reveal(), a.Token.Reveal()),
				AESKey: cmp.Or(a.PreviousAESKey.Reveal(), a.AESKey.Reveal())}
		}
		keys, err := wechat.NewKeyring(a.AppID, cur, prev)
		if err != nil {
			return nil, fmt.Errorf("app %s: callback keys: %w", a.Name, err)
		}
		apps[i].Keys = keys
	}
	return apps, nil
}

// apiServer builds the enqueuer's HTTP API.
func (p *parts) apiServer() (*api.Server, error) {
	apps, err := apiApps(p.current())
	if err != nil {
		return nil, err
	}
	queue := asynq.NewClientFromRedisClient(p.rdb)
	return api.New(api.Deps{
		Submit:              tasks.NewSubmitter(p.store, queue, asynq.NewInspectorFromRedisClient(p.rdb), p.cfg.MaxAttempts).Coalesce(),
		Messages:            p.store,
		Idem:                idempotency.New(p.rdb, p.cfg.IdempotencyWindow),
		Templates:           p.tpl,
		UI:                  p.uiHandler(),
		Limit:               p.apiLimit(),
		Apps:                apps,
		DefaultApp:          config.DefaultApp,
		APIKeys:             p.cfg.APIKeys,
		Metrics:             p.metrics,
		Gatherer:            p.reg,
		Events:              p.eventStreamClient(),
		EventsMetrics:       api.NewEventsMetrics(p.reg),
		Webhooks:            p.deadWebhooks(),
		WebhookAllowPrivate: p.cfg.WebhookAllowPrivate,
		Logger:              p.log,
		Ready:               func(ctx context.Context) error { return redisconn.Ping(ctx, p.rdb) },
		Nonces:              wechat.NewNonceStore(p.rdb),
		CallbackWindow:      p.cfg.CallbackWindow,
		Inbox:               p.callbackInbox(),
		Parked:              inbox.NewParkedEvents(p.rdb),
		Relay: relay.New(relay.Config{Timeout: p.cfg.RelayTimeout, Logger: p.log.With("component", "relay")},
			relay.NewMetrics(p.reg, p.cfg.AppNames())),
		RelayTimeout: p.cfg.RelayTimeout,
	}), nil
}

// callbackInbox is where the API puts delivery results; nil when
// WXPUSH_CALLBACK_INBOX is false (they are applied before the answer).
func (p *parts) callbackInbox() api.Inbox {
	if !p.cfg.CallbackInbox {
		return nil
	}
	return inbox.New(p.rdb, p.inbox)
}

// apiLimit is the per-caller request rate of the API, shared by every
// enqueuer through Redis; nil when WXPUSH_API_RATE is 0.
func (p *parts) apiLimit() func(ctx context.Context, caller string) (time.Duration, error) {
	if p.cfg.APIRate <= 0 {
		return nil
	}
	lim := ratelimit.New(p.rdb, 0)
	rate := ratelimit.PerSecond(float64(p.cfg.APIRate), p.cfg.APIBurst)
	return func(ctx context.Context, caller string) (time.Duration, error) {
		wait, _, err := lim.Wait(ctx, "wxpush:api:"+caller, rate)
		return wait, err
	}
}

// loadScripts loads the store's scripts ahead of the first messages; a failure
// only costs those messages a NOSCRIPT round trip.
func (p *parts) loadScripts(ctx context.Context) {
	if err := p.store.LoadScripts(ctx); err != nil {
		p.log.Warn("could not preload the delivery scripts", "err", err)
	}
}

// adminHandler serves a worker's /metrics, /healthz and /readyz.
func (p *parts) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := redisconn.Ping(ctx, p.rdb); err != nil {
			http.Error(w, "redis unreachable", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	if p.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// wechatClient is the WeChat client with the API duration histogram attached.
func (p *parts) wechatClient() *wechat.Client {
	return wechat.NewClient(p.cfg.WeChatAPIBase,
		wechat.WithHTTPClient(&http.Client{
			Timeout: p.cfg.SendTimeout,
			Transport: &http.Transport{
				Proxy: http.ProxyFromEnvironment,
				// Every connection the bounded sends use stays open for reuse,
				// and a few more for token and template calls.
				MaxIdleConns:        maxSends(p.cfg.Concurrency) + 4,
				MaxIdleConnsPerHost: maxSends(p.cfg.Concurrency) + 4,
				IdleConnTimeout:     90 * time.Second,
				TLSHandshakeTimeout: 5 * time.Second,
			},
		}),
		wechat.WithObserver(func(apiName string, d time.Duration, err error) {
			p.metrics.ObserveAPI(apiName, resultOf(err), d)
		}))
}

func resultOf(err error) string {
	if err == nil {
		return metrics.ResultOK
	}
	return wechat.ClassOfError(err).String()
}

// serveHTTP serves h on ln until ctx is done, then shuts down gracefully.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
