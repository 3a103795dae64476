// Package events moves message state changes from the delivery scripts'
// per-shard outboxes (delivery.OutboxKeys) to the global event stream
// (webhook.EventsStream) that GET /v1/events serves. Every worker runs a
// Forwarder; they share the outboxes through one Redis consumer group, so
// each entry is forwarded by one of them, and the entries of a worker that
// died are claimed by another after ClaimAfter. An entry forwarded twice
// (a crash between the append and the acknowledgement) keeps its event id:
// the forward script remembers, for an hour, which event each outbox entry
// became. A Forwarder is safe for one Run at a time.
package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/webhook"
)

// Group is the consumer group of the forwarders on every outbox.
const Group = "forwarders"

// ClaimAfter is how long an entry read by a forwarder may stay unacknowledged
// before another forwarder takes it over.
const ClaimAfter = 30 * time.Second

// seenTTL is how long the forward script remembers an outbox entry's event id.
const seenTTL = time.Hour

// forwardScript appends an event to the global stream unless this outbox
// entry was forwarded already, in which case it returns that event's id. The
// entry id is made here, so the event's JSON can carry it (ARGV[1] holds
// "event_id":"" for it): after the stream's last id, on the server's clock.
// KEYS: the global stream, the entry's seen key (same slot: hash tag of the
// stream's name). ARGV: event JSON, max length, seen ttl ms.
var forwardScript = redis.NewScript(`
local seen = redis.call("GET", KEYS[2])
if seen then return seen end
local t = redis.call("TIME")
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
local ok, info = pcall(redis.call, "XINFO", "STREAM", KEYS[1])
if ok then
  for i = 1, #info, 2 do
    if info[i] == "last-generated-id" then
      local lms, lseq = string.match(info[i + 1], "^(%d+)-(%d+)$")
      lms, lseq = tonumber(lms), tonumber(lseq)
      if lms >= ms then ms, seq = lms, lseq + 1 end
    end
  end
end
local id = string.format("%d-%d", ms, seq)
local body = (string.gsub(ARGV[1], '"event_id":""', '"event_id":"' .. id .. '"', 1))
redis.call("XADD", KEYS[1], "MAXLEN", "~", ARGV[2], id, "e", body)
redis.call("SET", KEYS[2], id, "PX", ARGV[3])
return id`)

// seenKey remembers which event outbox entry id of stream became.
func seenKey(stream, id string) string {
	return "{" + webhook.EventsStream + "}:seen:" + stream + ":" + id
}

// Metrics are the forwarder's.
type Metrics struct {
	Forwarded prometheus.Counter
}

// NewMetrics registers the forwarder's metrics with reg, and a collector of
// the outboxes' depth read from rdb at scrape time.
func NewMetrics(reg prometheus.Registerer, rdb redis.UniversalClient) *Metrics {
	m := &Metrics{Forwarded: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wxpush_events_forwarded_total",
		Help: "State changes this process forwarded from the outboxes to the event stream.",
	})}
	reg.MustRegister(m.Forwarded, &depthCollector{rdb: rdb, desc: prometheus.NewDesc("wxpush_events_outbox_depth",
		"State changes in the outboxes not yet forwarded to the event stream; cluster-wide.", nil, nil)})
	return m
}

// depthCollector reads the outboxes' lengths: forwarded entries are deleted,
// so what is left waits to be forwarded.
type depthCollector struct {
	rdb  redis.UniversalClient
	desc *prometheus.Desc
}

func (c *depthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *depthCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var lens []*redis.IntCmd
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range delivery.OutboxKeys() {
			lens = append(lens, p.XLen(ctx, k))
		}
		return nil
	})
	if err != nil {
		// Left out: an invalid metric would fail the whole scrape, and
		// wxpush_cluster_state_up already says Redis cannot be read.
		return
	}
	var n int64
	for _, l := range lens {
		n += l.Val()
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n))
}

// Forwarder forwards outbox entries to the event stream.
type Forwarder struct {
	rdb      redis.UniversalClient
	consumer string
	maxLen   int64
	metrics  *Metrics
	log      *slog.Logger
	// Idle is the pause after a pass that found nothing (default 50 ms).
	Idle time.Duration
	// ClaimAfter: entries another forwarder read and left unacknowledged this
	// long are taken over (default ClaimAfter).
	ClaimAfter time.Duration
	// Webhooks, when set, enqueues status webhooks (see Webhooks).
	Webhooks *Webhooks
}

// NewForwarder returns a forwarder named consumer (unique per process) that
// keeps about maxLen events in the stream.
func NewForwarder(rdb redis.UniversalClient, consumer string, maxLen int, m *Metrics, log *slog.Logger) *Forwarder {
	return &Forwarder{rdb: rdb, consumer: consumer, maxLen: int64(maxLen), metrics: m, log: log, Idle: 50 * time.Millisecond, ClaimAfter: ClaimAfter}
}

// Run forwards until ctx is done. Redis errors are logged and retried.
func (f *Forwarder) Run(ctx context.Context) {
	lastClaim := time.Time{}
	for ctx.Err() == nil {
		claim := time.Since(lastClaim) >= f.ClaimAfter/2
		if claim {
			lastClaim = time.Now()
		}
		n, err := f.Once(ctx, claim)
		if err != nil && ctx.Err() == nil {
			f.log.Warn("events: forwarding failed; retrying", "err", err)
		}
		if n == 0 || err != nil {
			t := time.NewTimer(f.Idle)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
}

// Once forwards what the outboxes hold for this forwarder (new entries, and
// with claim those another forwarder left unacknowledged for f.ClaimAfter) and
// returns how many it forwarded.
func (f *Forwarder) Once(ctx context.Context, claim bool) (int, error) {
	keys := delivery.OutboxKeys()
	reads := make([]*redis.XStreamSliceCmd, len(keys))
	claims := make([]*redis.XAutoClaimCmd, len(keys))
	_, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			reads[i] = p.XReadGroup(ctx, &redis.XReadGroupArgs{Group: Group, Consumer: f.consumer,
				Streams: []string{k, ">"}, Count: 100, Block: -1})
			if claim {
				claims[i] = p.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: k, Group: Group, Consumer: f.consumer,
					MinIdle: f.ClaimAfter, Start: "0-0", Count: 100})
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) && !isNoGroup(err) {
		return 0, fmt.Errorf("events: read outboxes: %w", err)
	}
	byStream := map[string][]redis.XMessage{}
	var missing []string
	for i, k := range keys {
		if isNoGroup(reads[i].Err()) {
			missing = append(missing, k)
			continue
		}
		for _, st := range reads[i].Val() {
			byStream[k] = append(byStream[k], st.Messages...)
		}
		if claims[i] != nil {
			msgs, _, _ := claims[i].Result()
			byStream[k] = append(byStream[k], msgs...)
		}
	}
	if len(missing) > 0 {
		if err := f.createGroups(ctx, missing); err != nil {
			return 0, err
		}
	}
	return f.forward(ctx, byStream)
}

func isNoGroup(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOGROUP") }

// createGroups makes the consumer group on outboxes that have none (new, or
// lost with a Redis that kept nothing), reading from the start.
func (f *Forwarder) createGroups(ctx context.Context, keys []string) error {
	for _, k := range keys {
		err := f.rdb.XGroupCreateMkStream(ctx, k, Group, "0").Err()
		if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			return fmt.Errorf("events: create group on %s: %w", k, err)
		}
	}
	return nil
}

// entry is one outbox entry to forward; body is "" for a malformed one,
// which is acknowledged and dropped. url is its message's status_url.
type entry struct {
	stream, id, body string
	ev               webhook.Event
	url              string
}

// Enqueuer hands webhook tasks to the delivery queue; *asynq.Client is one.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, t *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// Webhooks makes the forwarder enqueue a delivery task for every event of a
// message with a status_url whose state its app wants POSTed.
type Webhooks struct {
	Queue  Enqueuer
	Wants  func(app, state string) bool
	Window time.Duration // the delivery window (the order set lives a little longer)
}

// forward appends the entries to the event stream in one round trip, then
// acknowledges and deletes them from their outboxes in another.
func (f *Forwarder) forward(ctx context.Context, byStream map[string][]redis.XMessage) (int, error) {
	var es []entry
	for k, msgs := range byStream {
		for _, m := range msgs {
			ev, url, body, err := eventJSON(m)
			if err != nil {
				f.log.Error("events: dropping a malformed outbox entry", "stream", k, "entry", m.ID, "err", err)
			}
			es = append(es, entry{stream: k, id: m.ID, body: body, ev: ev, url: url})
		}
	}
	if len(es) == 0 {
		return 0, nil
	}
	ids, err := f.append(ctx, es)
	if err != nil {
		return 0, err
	}
	if err := f.enqueueWebhooks(ctx, es, ids); err != nil {
		return 0, err
	}
	_, err = f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		acked := map[string][]string{}
		for _, e := range es {
			acked[e.stream] = append(acked[e.stream], e.id)
		}
		for k, ids := range acked {
			p.XAck(ctx, k, Group, ids...)
			p.XDel(ctx, k, ids...)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("events: acknowledge: %w", err)
	}
	f.metrics.Forwarded.Add(float64(len(es)))
	return len(es), nil
}

// append runs the forward script for every entry in one pipeline and returns
// the event id of each ("" for a malformed entry). A Redis without the script
// (new, restarted) gets it loaded and the calls run again, which the seen keys
// make harmless.
func (f *Forwarder) append(ctx context.Context, es []entry) ([]string, error) {
	for try := 0; ; try++ {
		cmds := make([]*redis.Cmd, len(es))
		_, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, e := range es {
				if e.body != "" {
					cmds[i] = forwardScript.EvalSha(ctx, p, []string{webhook.EventsStream, seenKey(e.stream, e.id)},
						e.body, f.maxLen, seenTTL.Milliseconds())
				}
			}
			return nil
		})
		if err == nil {
			ids := make([]string, len(es))
			for i, c := range cmds {
				if c != nil {
					ids[i], _ = c.Text()
				}
			}
			return ids, nil
		}
		if try == 0 && redis.HasErrorPrefix(err, "NOSCRIPT") {
			if err := forwardScript.Load(ctx, f.rdb).Err(); err != nil {
				return nil, fmt.Errorf("events: load forward script: %w", err)
			}
			continue
		}
		return nil, fmt.Errorf("events: forward: %w", err)
	}
}

// enqueueWebhooks enqueues the delivery task of every entry that wants one,
// after recording its place in its message's order. A task that exists
// already (a repeated forward: the event id is the task id) is left alone.
func (f *Forwarder) enqueueWebhooks(ctx context.Context, es []entry, ids []string) error {
	w := f.Webhooks
	if w == nil {
		return nil
	}
	var due, skipped []webhook.Event
	var urls []string
	for i, e := range es {
		if e.url == "" || ids[i] == "" {
			continue
		}
		ev := e.ev
		ev.EventID = ids[i]
		if !w.Wants(ev.App, ev.State) {
			skipped = append(skipped, ev) // no webhook, but later ones must know it passed
			continue
		}
		due, urls = append(due, ev), append(urls, e.url)
	}
	if len(due) == 0 && len(skipped) == 0 {
		return nil
	}
	if _, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, ev := range due {
			webhook.AddPending(ctx, p, ev, w.Window)
		}
		for _, ev := range skipped {
			webhook.AddForwarded(ctx, p, ev.ID, ev.Seq, w.Window)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("events: record webhook order: %w", err)
	}
	// One round trip per task (asynq enqueues one at a time): side by side.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(enqueueParallel)
	for i, ev := range due {
		t, err := webhook.Task(ev, urls[i])
		if err != nil {
			return err
		}
		g.Go(func() error {
			if _, err := w.Queue.EnqueueContext(gctx, t); err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
				return fmt.Errorf("events: enqueue webhook: %w", err)
			}
			return nil
		})
	}
	return g.Wait()
}

// enqueueParallel bounds a forwarder's webhook enqueues in flight.
const enqueueParallel = 16

// eventJSON is the event an outbox entry records and its JSON, with an empty
// event_id for the forward script to fill in, and its message's status_url.
func eventJSON(m redis.XMessage) (webhook.Event, string, string, error) {
	oe := delivery.ParseOutboxEvent(m.Values)
	if oe.ID == "" || oe.App == "" || oe.State == "" {
		return webhook.Event{}, "", "", errors.New("entry without id, app or state")
	}
	ev := webhook.Event{ID: oe.ID, App: oe.App, State: string(oe.State), Previous: string(oe.Previous),
		Seq: oe.Seq, Attempts: oe.Attempts, WeChatMsgID: oe.MsgID, LastError: oe.LastError, At: oe.At}
	b, err := ev.MarshalJSON()
	return ev, oe.StatusURL, string(b), err
}
