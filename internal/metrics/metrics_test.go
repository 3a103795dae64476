package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
