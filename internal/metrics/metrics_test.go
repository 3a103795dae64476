package metrics

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxpush/wxpush/internal/delivery"
)

func TestMetricsLintAndInit(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, Labels{
		Apps: []string{"default", "shop"}, States: []string{"delivered", "rejected"},
		Results: []string{ResultOK, "transient"}, Events: []string{"TEMPLATESENDJOBFINISH"},
		Outcome: []string{"applied"}, APIs: []string{"template/send"},
	})
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	// Known label values exist at zero before anything happens.
	want := `
# HELP wxpush_messages_finished_total Messages that reached a final state, by state; each message is counted once, by the process that settled it.
# TYPE wxpush_messages_finished_total counter
wxpush_messages_finished_total{app="default",state="delivered"} 0
wxpush_messages_finished_total{app="default",state="rejected"} 0
wxpush_messages_finished_total{app="shop",state="delivered"} 0
wxpush_messages_finished_total{app="shop",state="rejected"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "wxpush_messages_finished_total"); err != nil {
		t.Error(err)
	}
	for _, name := range []string{"wxpush_messages_enqueued_total", "wxpush_send_attempts_total"} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != 2*map[string]int{"wxpush_messages_enqueued_total": 1, "wxpush_send_attempts_total": 2}[name] {
			t.Errorf("%s has %d initialised series (%v)", name, n, err)
		}
	}
	m.Enqueued.WithLabelValues("shop").Inc()
	if got := testutil.ToFloat64(m.Enqueued.WithLabelValues("shop")); got != 1 {
		t.Errorf("enqueued{shop} = %v", got)
	}
}

type fakeCluster struct {
	parked  map[string]time.Time
	backlog map[string]delivery.AppBacklog
	err     error
}

func (f fakeCluster) ParkedApps(context.Context) (map[string]time.Time, error) {
	return f.parked, f.err
}
func (f fakeCluster) Backlogs(context.Context) (map[string]delivery.AppBacklog, error) {
	return f.backlog, f.err
}

func TestClusterCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewClusterCollector(fakeCluster{
		parked:  map[string]time.Time{"shop": time.Now().Add(time.Hour)},
		backlog: map[string]delivery.AppBacklog{"default": {Total: 7, ByState: map[delivery.State]int64{"queued": 5, "sent": 2}}},
	}, func() []string { return []string{"default", "shop"} }))
	want := `
# HELP wxpush_app_backlog_messages Messages of the app not yet in a final state; cluster-wide.
# TYPE wxpush_app_backlog_messages gauge
wxpush_app_backlog_messages{app="default"} 7
wxpush_app_backlog_messages{app="shop"} 0
# HELP wxpush_app_parked 1 while the app is parked (daily quota spent) and its messages wait; cluster-wide.
# TYPE wxpush_app_parked gauge
wxpush_app_parked{app="default"} 0
wxpush_app_parked{app="shop"} 1
# HELP wxpush_cluster_state_up 1 if the cluster-wide gauges could be read from Redis at this scrape.
# TYPE wxpush_cluster_state_up gauge
wxpush_cluster_state_up 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "wxpush_app_backlog_messages", "wxpush_app_parked", "wxpush_cluster_state_up"); err != nil {
		t.Error(err)
	}
	byState := `
# HELP wxpush_app_messages Messages of the app not yet final, by state (queued, scheduled, retrying, sent); cluster-wide.
# TYPE wxpush_app_messages gauge
wxpush_app_messages{app="default",state="queued"} 5
wxpush_app_messages{app="default",state="retrying"} 0
wxpush_app_messages{app="default",state="scheduled"} 0
wxpush_app_messages{app="default",state="sent"} 2
wxpush_app_messages{app="shop",state="queued"} 0
wxpush_app_messages{app="shop",state="retrying"} 0
wxpush_app_messages{app="shop",state="scheduled"} 0
wxpush_app_messages{app="shop",state="sent"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(byState), "wxpush_app_messages"); err != nil {
		t.Error(err)
	}
	if problems, _ := testutil.GatherAndLint(reg); len(problems) != 0 {
		t.Errorf("promlint: %v", problems)
	}
	down := prometheus.NewRegistry()
	down.MustRegister(NewClusterCollector(fakeCluster{err: errors.New("redis down")}, func() []string { return []string{"default"} }))
	if n, _ := testutil.GatherAndCount(down, "wxpush_app_parked"); n != 0 {
		t.Errorf("gauges exported from a failed read: %d series", n)
	}
	if v, _ := testutil.GatherAndCount(down, "wxpush_cluster_state_up"); v != 1 {
		t.Errorf("up gauge missing when Redis is down")
	}
}

type fakeInspector map[string]*asynq.QueueInfo

func (f fakeInspector) GetQueueInfo(q string) (*asynq.QueueInfo, error) {
	if info, ok := f[q]; ok {
		return info, nil
	}
	return nil, errors.New("queue not found")
}

func TestQueueCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewQueueCollector(fakeInspector{
		"high": {Pending: 3, Active: 1, Latency: 1500 * time.Millisecond},
	}, []string{"high", "low"}))
	want := `
# HELP wxpush_queue_latency_seconds Age of the oldest pending task of an asynq queue; cluster-wide.
# TYPE wxpush_queue_latency_seconds gauge
wxpush_queue_latency_seconds{queue="high"} 1.5
wxpush_queue_latency_seconds{queue="low"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "wxpush_queue_latency_seconds"); err != nil {
		t.Error(err)
	}
	if n, _ := testutil.GatherAndCount(reg, "wxpush_queue_tasks"); n != 10 {
		t.Errorf("queue task series = %d, want 5 states × 2 queues", n)
	}
	if problems, _ := testutil.GatherAndLint(reg); len(problems) != 0 {
		t.Errorf("promlint: %v", problems)
	}
}

// TestManyAppsStayLean: with 10,000 apps, label initialisation is skipped and
// the cluster gauges cover only apps with messages or a park.
func TestManyAppsStayLean(t *testing.T) {
	apps := make([]string, 10000)
	for i := range apps {
		apps[i] = fmt.Sprintf("app%d", i)
	}
	reg := prometheus.NewRegistry()
	New(reg, Labels{Apps: apps, States: []string{"delivered"}, Results: []string{ResultOK}})
	reg.MustRegister(NewClusterCollector(fakeCluster{
		parked:  map[string]time.Time{"app7": time.Now().Add(time.Hour)},
		backlog: map[string]delivery.AppBacklog{"app3": {Total: 1, ByState: map[delivery.State]int64{"queued": 1}}},
	}, func() []string { return apps }))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := 0
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "wxpush_") {
			series += len(mf.GetMetric())
		}
	}
	// app3 and app7: parked + backlog + 4 states each, plus the up gauge, plus
	// the three Redis round-trip series known in advance (no app label).
	if series != 2*6+1+3 {
		t.Errorf("10,000 apps export %d wxpush series, want 16", series)
	}
}
