package metrics

import (
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
)

// QueueInspector reads asynq queue statistics; *asynq.Inspector provides it.
type QueueInspector interface {
	GetQueueInfo(queue string) (*asynq.QueueInfo, error)
}

// queueCollector exports asynq's queues as cluster-wide gauges, read at scrape
// time: tasks by state and the age of the oldest pending task (the latency a new
// message would wait). Like the other cluster gauges, take max across processes.
type queueCollector struct {
	insp    QueueInspector
	queues  []string
	tasks   *prometheus.Desc
	latency *prometheus.Desc
}

// NewQueueCollector returns the collector of asynq queue gauges for queues.
func NewQueueCollector(insp QueueInspector, queues []string) prometheus.Collector {
	return &queueCollector{
		insp: insp, queues: queues,
		tasks: prometheus.NewDesc("wxpush_queue_tasks",
			"Tasks in an asynq queue by state (pending, active, scheduled, retry, archived); cluster-wide.", []string{"queue", "state"}, nil),
		latency: prometheus.NewDesc("wxpush_queue_latency_seconds",
			"Age of the oldest pending task of an asynq queue; cluster-wide.", []string{"queue"}, nil),
	}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.tasks
	ch <- c.latency
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	for _, q := range c.queues {
		info, err := c.insp.GetQueueInfo(q)
		if err != nil {
			// A queue that never held a task does not exist yet: it is empty.
			info = &asynq.QueueInfo{}
		}
		for state, n := range map[string]int{"pending": info.Pending, "active": info.Active,
			"scheduled": info.Scheduled, "retry": info.Retry, "archived": info.Archived} {
			ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(n), q, state)
		}
		ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, info.Latency.Seconds(), q)
	}
}
