// Package metrics defines every Prometheus metric a wxpush process exports, on a
// registry passed in from main (never the global one). Labels are bounded: app,
// state, result class, API name, callback event and outcome — never an openid, a
// message id or a raw errmsg. Known label values are initialised to zero so that
// rate() and absent() work from the first scrape. Safe for concurrent use.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Attempt results besides the wechat error classes.
const (
	ResultOK = "ok"
)

// Metrics are wxpush's per-process instruments.
type Metrics struct {
	Enqueued  *prometheus.CounterVec // app
	Finished  *prometheus.CounterVec // app, state
	Attempts  *prometheus.CounterVec // app, result
	Callbacks *prometheus.CounterVec // app, event, outcome
	// CallbacksRejected counts refused callbacks by reason (bad signature,
	// bad envelope, malformed XML, …); app "unknown" for a path naming no app.
	CallbacksRejected *prometheus.CounterVec
	APIDuration       *prometheus.HistogramVec // api, result
	TokenFetches      *prometheus.CounterVec   // app, result
	RetriesWaited     *prometheus.CounterVec   // app, class: retries scheduled
	// RateLimitWaits counts attempts that had to wait for a rate-limit permit,
	// RateLimitWaited the seconds waited in place (scope: app or recipient).
	RateLimitWaits  *prometheus.CounterVec
	RateLimitWaited *prometheus.CounterVec
	// ConfigErrors counts configuration errors from WeChat that stopped an app.
	ConfigErrors *prometheus.CounterVec
	// TemplateChecks counts template validations at enqueue: ok, rejected, or
	// skipped (the list was unavailable; the message was accepted unchecked).
	TemplateChecks *prometheus.CounterVec
	// SentLatency is enqueue → accepted by WeChat; FinalLatency is accepted →
	// the result callback.
	SentLatency  *prometheus.HistogramVec
	FinalLatency *prometheus.HistogramVec
	// RedisRoundTrips counts requests sent to Redis by command (see RedisHook).
	RedisRoundTrips *prometheus.CounterVec
	// OrphansCanceled counts records the worker's sweep ended canceled because
	// their request was never acknowledged (tasks.SweepOrphans). They were
	// never counted as enqueued, so they are not counted as finished either.
	OrphansCanceled *prometheus.CounterVec // app
	// HeldEvicted counts result callbacks for unknown msgids that were held
	// and then evicted, unapplied, because the app held its maximum
	// (delivery.Config.MaxHeld): a sign of forged or misrouted callbacks.
	HeldEvicted *prometheus.CounterVec // app
}

// Labels lists the known label values to initialise.
type Labels struct {
	Apps    []string
	States  []string // final states
	Results []string // attempt results
	Events  []string // callback events
	Outcome []string // callback outcomes
	Rejects []string // callback rejection reasons
	APIs    []string
}

// New registers wxpush's metrics (and the Go, process and build-info collectors)
// on reg.
func New(reg prometheus.Registerer, l Labels) *Metrics {
	m := &Metrics{
		Enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxpush_messages_enqueued_total",
			Help: "Messages accepted by the API and queued for delivery.",
		}, []string{"app"}),
		Finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxpush_messages_finished_total",
			Help: "Messages that reached a final state, by state; each message is counted once, by the process that settled it.",
		}, []string{"app", "state"}),
		Attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxpush_send_attempts_total",
			Help: "Template send attempts, by result: ok or the WeChat error class.",
		}, []string{"app", "result"}),
		Callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxpush_callbacks_total",
			Help: "WeChat callback events received, by event and what they did.",
		}, []string{"app", "event", "outcome"}),
		CallbacksRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxpush_callbacks_rejected_total",
			Help: "Callbacks refused with a 4xx, by reason; they changed no state.",
		}, []string{"app", "reason"}),
		APIDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wxpush_wechat_api_duration_seconds",
			Help:    "Duration of WeChat API calls, by API and result.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"api", "result"}),
		TokenFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxpush_token_fetches_total",
			Help: "Access token fetches from WeChat, by result (ok or error class).",
		}, []string{"app", "result"}),
		RetriesWaited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxpush_retries_scheduled_total",
			Help: "Attempts that ended in a scheduled retry, by error class.",
		}, []string{"app", "class"}),
		RateLimitWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxpush_rate_limit_waits_total",
			Help: "Send attempts that waited for a rate-limit permit (in place or rescheduled), by scope.",
		}, []string{"app", "scope"}),
		RateLimitWaited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxpush_rate_limit_wait_seconds_total",
			Help: "Seconds workers waited in place for rate-limit permits, by scope.",
		}, []string{"app", "scope"}),
	}
	m.ConfigErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wxpush_app_config_errors_total",
		Help: "WeChat configuration errors (wrong secret, IP not whitelisted, API not authorised) that stopped the app's sending.",
	}, []string{"app"})
	m.TemplateChecks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wxpush_template_checks_total",
		Help: "Template validations of enqueued messages: ok, rejected, or skipped because the template list was unavailable.",
	}, []string{"app", "result"})
	m.SentLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "wxpush_enqueue_to_sent_seconds",
		Help:    "Time from enqueue to WeChat accepting the message (including scheduled delays, retries and rate-limit waits).",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800},
	}, []string{"app"})
	m.FinalLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "wxpush_sent_to_final_seconds",
		Help:    "Time from WeChat accepting a message to its result callback.",
		Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800},
	}, []string{"app"})
	m.RedisRoundTrips = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wxpush_redis_round_trips_total",
		Help: "Requests this process sent to Redis, by command; a pipeline counts once, as command pipeline.",
	}, []string{"command"})
	for _, cmd := range []string{"evalsha", "get", "pipeline"} {
		m.RedisRoundTrips.WithLabelValues(cmd)
	}
	m.OrphansCanceled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wxpush_orphans_canceled_total",
		Help: "Stored messages ended canceled because their request was never acknowledged and no task was enqueued.",
	}, []string{"app"})
	m.HeldEvicted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wxpush_callbacks_held_evicted_total",
		Help: "Held results of callbacks for unknown msgids evicted unapplied because the app held its maximum.",
	}, []string{"app"})
	reg.MustRegister(m.HeldEvicted, m.OrphansCanceled, m.RedisRoundTrips, m.SentLatency, m.FinalLatency, m.TemplateChecks, m.ConfigErrors, m.CallbacksRejected, m.RateLimitWaits, m.RateLimitWaited, m.Enqueued, m.Finished, m.Attempts, m.Callbacks, m.APIDuration,
		m.TokenFetches, m.RetriesWaited,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector())

	for _, app := range zeroedApps(l.Apps) {
		m.Enqueued.WithLabelValues(app)
		m.OrphansCanceled.WithLabelValues(app)
		m.HeldEvicted.WithLabelValues(app)
		m.ConfigErrors.WithLabelValues(app)
		m.SentLatency.WithLabelValues(app)
		m.FinalLatency.WithLabelValues(app)
		for _, r := range []string{"ok", "rejected", "skipped"} {
			m.TemplateChecks.WithLabelValues(app, r)
		}
		for _, scope := range []string{"app", "recipient"} {
			m.RateLimitWaits.WithLabelValues(app, scope)
			m.RateLimitWaited.WithLabelValues(app, scope)
		}
		for _, s := range l.States {
			m.Finished.WithLabelValues(app, s)
		}
		for _, r := range l.Results {
			m.Attempts.WithLabelValues(app, r)
			m.TokenFetches.WithLabelValues(app, r)
			if r != ResultOK {
				m.RetriesWaited.WithLabelValues(app, r)
			}
		}
		for _, r := range l.Rejects {
			m.CallbacksRejected.WithLabelValues(app, r)
		}
		for _, e := range l.Events {
			for _, o := range l.Outcome {
				m.Callbacks.WithLabelValues(app, e, o)
			}
		}
	}
	for _, api := range l.APIs {
		for _, r := range l.Results {
			m.APIDuration.WithLabelValues(api, r)
		}
	}
	return m
}

// MaxZeroedApps bounds label initialisation: with more apps than this, per-app
// series appear when first used instead of at zero from the start, so that a
// deployment of 10,000 apps does not export a million idle series per process.
const MaxZeroedApps = 100

func zeroedApps(apps []string) []string {
	if len(apps) > MaxZeroedApps {
		return nil
	}
	return apps
}

// ObserveAPI records one WeChat API call; result is "ok" or an error class.
func (m *Metrics) ObserveAPI(api, result string, d time.Duration) {
	m.APIDuration.WithLabelValues(api, result).Observe(d.Seconds())
}
