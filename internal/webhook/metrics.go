package webhook

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// Metrics are the webhook deliverer's. The queue's depth is
// wxpush_queue_tasks{queue="webhooks"} (metrics.NewQueueCollector).
type Metrics struct {
	Attempts     *prometheus.CounterVec
	Dead         *prometheus.CounterVec
	Lag          prometheus.Histogram
	BreakerTrips prometheus.Counter
	BreakersOpen prometheus.Gauge
}

// NewMetrics registers the deliverer's metrics with reg; apps are
// pre-initialised with every result so rates start at 0.
func NewMetrics(reg prometheus.Registerer, apps []string) *Metrics {
	m := &Metrics{
		Attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxpush_webhook_attempts_total",
			Help: "Status webhook delivery attempts by app and result (delivered, gone, refused, http_error, error; breaker_open, busy, waiting, dropped and duplicate were not sent).",
		}, []string{"app", "result"}),
		Dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxpush_webhook_dead_total",
			Help: "Status webhooks that went to the dead-letter list (window ran out, refused target, no secret), by app.",
		}, []string{"app"}),
		Lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wxpush_webhook_delivery_lag_seconds",
			Help:    "Time from a state change to its webhook's 2xx answer.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 900, 3600, 21600, 86400},
		}),
		BreakerTrips: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wxpush_webhook_breaker_trips_total",
			Help: "Times a webhook receiver's circuit breaker opened in this process.",
		}),
		BreakersOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wxpush_webhook_breakers_open",
			Help: "Webhook receivers whose circuit breaker is open (or half-open) in this process.",
		}),
	}
	reg.MustRegister(m.Attempts, m.Dead, m.Lag, m.BreakerTrips, m.BreakersOpen)
	for _, app := range apps {
		m.Dead.WithLabelValues(app)
		for _, r := range []string{ResultDelivered, ResultGone, ResultRefused, ResultHTTPError, ResultError,
			ResultBreakerOpen, ResultBusy, ResultWaiting, ResultDropped, ResultDuplicate} {
			m.Attempts.WithLabelValues(app, r)
		}
	}
	return m
}

// breakerMoved keeps BreakersOpen: a breaker counts from leaving closed until
// it is closed again.
func (m *Metrics) breakerMoved(from, to gobreaker.State) {
	switch {
	case from == gobreaker.StateClosed && to != gobreaker.StateClosed:
		m.BreakersOpen.Inc()
	case from != gobreaker.StateClosed && to == gobreaker.StateClosed:
		m.BreakersOpen.Dec()
	}
}
