package inbox

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Metrics are the inbox's instruments.
type Metrics struct {
	Appended *prometheus.CounterVec // app: events this enqueuer appended
	Applied  *prometheus.CounterVec // app: events this applier settled
	Failed   prometheus.Counter     // applies that failed and will be retried
	Parked   *prometheus.CounterVec // reason
	Lag      prometheus.Histogram   // receive → applied
}

// NewMetrics registers the inbox's metrics with reg, with apps' label values
// at zero, and a collector of the inbox's depth and oldest event read from
// rdb at scrape time.
func NewMetrics(reg prometheus.Registerer, rdb redis.UniversalClient, apps []string) *Metrics {
	m := &Metrics{
		Appended: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wxpush_inbox_appended_total",
			Help: "Delivery-result callbacks this process appended to the inbox and answered."}, []string{"app"}),
		Applied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wxpush_inbox_applied_total",
			Help: "Inbox events this process applied to their messages' records."}, []string{"app"}),
		Failed: prometheus.NewCounter(prometheus.CounterOpts{Name: "wxpush_inbox_apply_failures_total",
			Help: "Inbox events whose apply failed in Redis; each is applied again."}),
		Parked: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wxpush_inbox_parked_total",
			Help: "Inbox events set aside unapplied, by reason; they are kept in the stream wxpush:{inbox}:parked."}, []string{"reason"}),
		Lag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wxpush_inbox_apply_lag_seconds",
			Help:    "Time from a callback's receipt to its results applied.",
			Buckets: []float64{.005, .01, .025, .05, .1, .15, .2, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}}),
	}
	reg.MustRegister(m.Appended, m.Applied, m.Failed, m.Parked, m.Lag, &depthCollector{rdb: rdb,
		depth: prometheus.NewDesc("wxpush_inbox_depth", "Callback events in the inbox not yet applied; cluster-wide.", nil, nil),
		age: prometheus.NewDesc("wxpush_inbox_oldest_age_seconds",
			"Age of the oldest callback event not yet applied (0 when none); cluster-wide.", nil, nil)})
	for _, a := range apps {
		m.Appended.WithLabelValues(a)
		m.Applied.WithLabelValues(a)
	}
	for _, r := range ParkReasons {
		m.Parked.WithLabelValues(r)
	}
	return m
}

// depthCollector reads the stream's length and first entry: applied events
// are deleted, so both describe what waits.
type depthCollector struct {
	rdb        redis.UniversalClient
	depth, age *prometheus.Desc
}

func (c *depthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.depth; ch <- c.age }

// Collect leaves both out when Redis cannot be read: an invalid metric would
// fail the whole scrape, and wxpush_cluster_state_up already says so.
func (c *depthCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, err := c.rdb.XLen(ctx, Stream).Result()
	if err != nil {
		return
	}
	oldest, ok, err := Oldest(ctx, c.rdb)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(n))
	age := 0.0
	if ok {
		age = max(0, time.Since(oldest).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
}
