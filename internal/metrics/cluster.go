package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxpush/wxpush/internal/delivery"
)

// ClusterState is what the cluster collector reads from Redis at scrape time;
// *delivery.Store provides it.
type ClusterState interface {
	ParkedApps(ctx context.Context) (map[string]time.Time, error)
	Backlogs(ctx context.Context) (map[string]delivery.AppBacklog, error)
}

// unfinished are the states a message waits in; final states are counters.
var unfinished = []delivery.State{delivery.StateQueued, delivery.StateScheduled, delivery.StateRetrying, delivery.StateSent}

// clusterCollector exports cluster-wide gauges read from Redis at scrape time,
// so every process reports the same value however many run or restart: use
// max(), not sum(), across processes.
type clusterCollector struct {
	src     ClusterState
	apps    func() []string // the configured apps (they change with a reload)
	timeout time.Duration

	parked  *prometheus.Desc
	backlog *prometheus.Desc
	byState *prometheus.Desc
	up      *prometheus.Desc
}

// NewClusterCollector returns the collector of cluster-wide gauges for the apps
// that apps returns at each scrape.
func NewClusterCollector(src ClusterState, apps func() []string) prometheus.Collector {
	return &clusterCollector{
		src: src, apps: apps, timeout: 2 * time.Second,
		parked: prometheus.NewDesc("wxpush_app_parked",
			"1 while the app is parked (daily quota spent) and its messages wait; cluster-wide.", []string{"app"}, nil),
		backlog: prometheus.NewDesc("wxpush_app_backlog_messages",
			"Messages of the app not yet in a final state; cluster-wide.", []string{"app"}, nil),
		byState: prometheus.NewDesc("wxpush_app_messages",
			"Messages of the app not yet final, by state (queued, scheduled, retrying, sent); cluster-wide.", []string{"app", "state"}, nil),
		up: prometheus.NewDesc("wxpush_cluster_state_up",
			"1 if the cluster-wide gauges could be read from Redis at this scrape.", nil, nil),
	}
}

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.parked
	ch <- c.backlog
	ch <- c.byState
	ch <- c.up
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	parked, err1 := c.src.ParkedApps(ctx)
	backlogs, err2 := c.src.Backlogs(ctx)
	if err1 != nil || err2 != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	apps := c.apps()
	if len(apps) > MaxZeroedApps {
		// Many apps: export only those with something to show.
		apps = nil
		for app := range backlogs {
			apps = append(apps, app)
		}
		for app := range parked {
			if _, dup := backlogs[app]; !dup {
				apps = append(apps, app)
			}
		}
	}
	for _, app := range apps {
		p := 0.0
		if _, ok := parked[app]; ok {
			p = 1
		}
		ch <- prometheus.MustNewConstMetric(c.parked, prometheus.GaugeValue, p, app)
		b := backlogs[app]
		ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, float64(b.Total), app)
		for _, st := range unfinished {
			ch <- prometheus.MustNewConstMetric(c.byState, prometheus.GaugeValue, float64(b.ByState[st]), app, string(st))
		}
	}
}
