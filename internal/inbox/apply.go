package inbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/metrics"
	"github.com/wxpush/wxpush/internal/wechat"
)

// Settler applies delivery results; *delivery.Store provides it.
type Settler interface {
	ApplyCallbacks(ctx context.Context, in []delivery.CallbackInput) ([]delivery.CallbackResult, []error, error)
}

// Defaults of an Applier.
const (
	DefaultBatch         = 256
	DefaultClaimAfter    = 30 * time.Second
	DefaultMaxDeliveries = 5
)

// Reasons an event is parked, the values of the reason label.
const (
	ReasonMalformed = "malformed" // the entry or its XML cannot be read
	ReasonGaveUp    = "gave_up"   // applying it failed MaxDeliveries times
)

// ParkReasons are the reason label values, to initialise.
var ParkReasons = []string{ReasonMalformed, ReasonGaveUp}

// Applier settles the inbox's events. Run one per worker; they share the
// stream through Group, each under its own consumer name.
type Applier struct {
	rdb      redis.UniversalClient
	settle   Settler
	consumer string
	metrics  *Metrics
	counts   *metrics.Metrics
	log      *slog.Logger
	now      func() time.Time

	// Batch is the most events read and applied in one round trip.
	Batch int
	// ClaimAfter: events another applier read and left unacknowledged this
	// long are taken over (it died mid-batch).
	ClaimAfter time.Duration
	// MaxDeliveries: an event whose apply failed this many times is parked.
	MaxDeliveries int
	// Block is how long a read waits for new events.
	Block time.Duration

	failures map[string]int // this applier's failed applies by entry id
	// ownPending: this applier left events it read unacknowledged (a failed
	// apply or acknowledgement); its next pass reads them again first.
	ownPending bool
}

// NewApplier returns an applier named consumer (unique per process) that
// settles through s and counts results into counts (the process's metrics).
func NewApplier(rdb redis.UniversalClient, s Settler, consumer string, m *Metrics, counts *metrics.Metrics, log *slog.Logger) *Applier {
	return &Applier{rdb: rdb, settle: s, consumer: consumer, metrics: m, counts: counts, log: log, now: time.Now,
		Batch: DefaultBatch, ClaimAfter: DefaultClaimAfter, MaxDeliveries: DefaultMaxDeliveries, Block: time.Second,
		failures: map[string]int{}}
}

// Backoff of Run after a failed pass: it doubles from retryMin to retryMax
// while passes keep failing.
const (
	retryMin = 200 * time.Millisecond
	retryMax = 5 * time.Second
)

// Run applies until ctx is done. Redis errors are logged and retried, with
// a backoff while they last. On the way out an applier that holds no
// unacknowledged events leaves the group, so that stopped workers do not
// pile up in it as consumers.
func (a *Applier) Run(ctx context.Context) {
	defer a.leave()
	var lastClaim time.Time
	wait := retryMin
	for ctx.Err() == nil {
		claim := a.now().Sub(lastClaim) >= a.ClaimAfter/2
		if claim {
			lastClaim = a.now()
		}
		n, err := a.Once(ctx, claim)
		switch {
		case err != nil && ctx.Err() == nil:
			a.log.Warn("inbox: applying failed; retrying", "err", err, "in", wait)
			pause(ctx, wait)
			wait = min(2*wait, retryMax)
		case err == nil:
			wait = retryMin
			if n == 0 && a.Block <= 0 {
				pause(ctx, 50*time.Millisecond)
			}
		}
	}
}

// leave deletes this applier's consumer from the group if it has nothing
// pending: deleting one with pending events would strand them (read, never
// acknowledged, and in no consumer's list to be claimed from).
func (a *Applier) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	pend, err := a.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: Stream, Group: Group,
		Start: "-", End: "+", Count: 1, Consumer: a.consumer}).Result()
	if err != nil || len(pend) > 0 {
		return
	}
	_ = a.rdb.XGroupDelConsumer(ctx, Stream, Group, a.consumer).Err()
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Once applies one batch: first the events this applier read and has not
// acknowledged (after a failed apply, and with claim in any case: a read
// whose reply was lost leaves its events in this applier's own pending
// list, where only this applier looks), then with claim those another
// applier left unacknowledged for ClaimAfter, then new ones (waiting up to
// Block for them). It returns how many events it settled or parked.
func (a *Applier) Once(ctx context.Context, claim bool) (int, error) {
	msgs, err := a.read(ctx, claim)
	if err != nil {
		return 0, err
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	return a.apply(ctx, msgs)
}

func (a *Applier) read(ctx context.Context, claim bool) ([]redis.XMessage, error) {
	var msgs []redis.XMessage
	if a.ownPending || claim {
		own, err := a.readGroup(ctx, "0", -1)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, own...)
	}
	if claim {
		claimed, err := a.claim(ctx)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, claimed...)
	}
	if len(msgs) > 0 {
		return msgs, nil
	}
	return a.readGroup(ctx, ">", a.Block)
}

// readGroup reads from the group; from "0" it is this consumer's own pending
// events. A stream or group that does not exist (new, or lost with Redis) is
// made, reading from the start, so that nothing appended before is skipped.
func (a *Applier) readGroup(ctx context.Context, from string, block time.Duration) ([]redis.XMessage, error) {
	for try := 0; ; try++ {
		res, err := a.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: Group, Consumer: a.consumer,
			Streams: []string{Stream, from}, Count: int64(a.Batch), Block: block}).Result()
		switch {
		case errors.Is(err, redis.Nil):
			return nil, nil
		case err != nil && try == 0 && isNoGroup(err):
			if err := a.rdb.XGroupCreateMkStream(ctx, Stream, Group, "0").Err(); err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
				return nil, fmt.Errorf("inbox: create group: %w", err)
			}
			continue
		case err != nil:
			return nil, fmt.Errorf("inbox: read: %w", err)
		}
		var msgs []redis.XMessage
		for _, st := range res {
			msgs = append(msgs, st.Messages...)
		}
		if from == "0" {
			// Own pending entries already acknowledged elsewhere come back
			// without values; forget their failures.
			kept := msgs[:0]
			for _, m := range msgs {
				if m.Values != nil {
					kept = append(kept, m)
				} else {
					delete(a.failures, m.ID)
				}
			}
			msgs = kept
			if len(msgs) == 0 {
				a.ownPending = false
				clear(a.failures)
			}
		}
		return msgs, nil
	}
}

func isNoGroup(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOGROUP") }

// claim takes over the events other appliers left unacknowledged for
// ClaimAfter. One delivered MaxDeliveries times already (each claim counts
// one) is parked instead: applying it kills or fails its applier.
func (a *Applier) claim(ctx context.Context) ([]redis.XMessage, error) {
	pend, err := a.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: Stream, Group: Group,
		Idle: a.ClaimAfter, Start: "-", End: "+", Count: int64(a.Batch)}).Result()
	if err != nil {
		if isNoGroup(err) || errors.Is(err, redis.Nil) {
			return nil, nil
		}
		return nil, fmt.Errorf("inbox: pending: %w", err)
	}
	var take, giveUp []string
	for _, p := range pend {
		if p.Consumer == a.consumer {
			continue // its own: read from "0"
		}
		if p.RetryCount >= int64(a.MaxDeliveries) {
			giveUp = append(giveUp, p.ID)
		} else {
			take = append(take, p.ID)
		}
	}
	var msgs []redis.XMessage
	for _, ids := range [][]string{take, giveUp} {
		if len(ids) == 0 {
			continue
		}
		got, err := a.rdb.XClaim(ctx, &redis.XClaimArgs{Stream: Stream, Group: Group, Consumer: a.consumer,
			MinIdle: a.ClaimAfter, Messages: ids}).Result()
		if err != nil {
			return nil, fmt.Errorf("inbox: claim: %w", err)
		}
		if len(got) > 0 {
			a.log.Warn("inbox: took over events another applier left unapplied", "events", len(got))
		}
		for _, m := range got {
			if slices.Contains(giveUp, m.ID) {
				a.failures[m.ID] = a.MaxDeliveries
			}
		}
		msgs = append(msgs, got...)
	}
	return msgs, nil
}

// event is one read entry and the results it reports.
type event struct {
	msg      redis.XMessage
	app      string
	name     string
	received time.Time
	in       []delivery.CallbackInput
	park     string // reason to park it instead
	detail   string
}

// apply settles the events' results in one round trip, then acknowledges
// and deletes the settled and parked events in another (atomically: a
// parked event is copied to ParkedStream in the same transaction).
func (a *Applier) apply(ctx context.Context, msgs []redis.XMessage) (int, error) {
	evs := make([]event, len(msgs))
	var in []delivery.CallbackInput
	for i, m := range msgs {
		evs[i] = a.decode(m)
		if evs[i].park == "" && a.failures[m.ID] >= a.MaxDeliveries {
			evs[i].park, evs[i].detail = ReasonGaveUp, fmt.Sprintf("apply failed %d times", a.failures[m.ID])
		}
		if evs[i].park == "" {
			in = append(in, evs[i].in...)
		}
	}
	var rs []delivery.CallbackResult
	var errs []error
	if len(in) > 0 {
		var err error
		rs, errs, err = a.settle.ApplyCallbacks(ctx, in)
		if err != nil {
			// The round trip failed (Redis unreachable): no event's fault,
			// so none counts it towards parking. An event that kills its
			// applier is counted by the group's deliveries instead (claim).
			a.metrics.Failed.Add(float64(len(msgs)))
			a.ownPending = true
			return 0, err
		}
	}
	now := a.now()
	var done []event
	var unavailable error // a result failed because Redis was unavailable
	k := 0
	for _, e := range evs {
		if e.park != "" {
			done = append(done, e)
			continue
		}
		// Each result that applied is counted now; a failed one makes the
		// whole event go again, which the store's script makes harmless for
		// the ones that did apply (they count as duplicates then).
		var failed error
		for _, c := range e.in {
			if errs[k] == nil {
				Record(a.counts, a.log, now, e.name, c, rs[k])
			} else if failed == nil {
				failed = errs[k]
			}
			k++
		}
		if failed != nil {
			a.ownPending = true
			a.metrics.Failed.Inc()
			if transient(failed) {
				// A failover, a resharding or a loading replica: retried
				// after Run's backoff, never parked for it.
				unavailable = failed
				continue
			}
			a.failures[e.msg.ID]++
			a.log.Warn("inbox: an event failed to apply; it is retried", "app", e.app, "entry", e.msg.ID, "err", failed)
			continue
		}
		done = append(done, e)
	}
	if err := a.finish(ctx, done); err != nil {
		a.ownPending = true
		return 0, err
	}
	for _, e := range done {
		delete(a.failures, e.msg.ID)
		if e.park != "" {
			a.metrics.Parked.WithLabelValues(e.park).Inc()
			a.log.Error("inbox: event parked", "app", e.app, "entry", e.msg.ID, "reason", e.park, "detail", e.detail)
			continue
		}
		a.metrics.Applied.WithLabelValues(e.app).Inc()
		if !e.received.IsZero() {
			a.metrics.Lag.Observe(now.Sub(e.received).Seconds())
		}
	}
	if unavailable != nil {
		return len(done), fmt.Errorf("inbox: results not applied, Redis unavailable: %w", unavailable)
	}
	return len(done), nil
}

// transientReplies are the error replies of a Redis that cannot serve a
// command now but will: a Cluster failover or resharding, a replica loading
// or promoted, a busy script, a full memory.
var transientReplies = []string{"TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK", "LOADING", "BUSY", "MASTERDOWN",
	"READONLY", "NOREPLICAS", "OOM"}

// transient reports whether err is Redis being unavailable (its connection
// or one of transientReplies) rather than something in the event itself.
func transient(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, redis.ErrClosed) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	root := err
	for u := errors.Unwrap(root); u != nil; u = errors.Unwrap(root) {
		root = u
	}
	msg := root.Error()
	for _, p := range transientReplies {
		if strings.HasPrefix(msg, p+" ") || msg == p {
			return true
		}
	}
	return false
}

// decode reads an entry's event and results.
func (a *Applier) decode(m redis.XMessage) event {
	e := event{msg: m, app: str(m, fieldApp), name: str(m, fieldEvent), received: entryTime(m)}
	xml := str(m, fieldXML)
	if e.app == "" || xml == "" {
		e.park, e.detail = ReasonMalformed, "entry without app or xml"
		return e
	}
	ev, err := wechat.ParseEvent([]byte(xml))
	if err != nil {
		e.park, e.detail = ReasonMalformed, err.Error()
		return e
	}
	if e.name == "" {
		e.name = ev.Event
	}
	in, ok := Results(e.app, ev, e.received)
	if !ok {
		e.park, e.detail = ReasonMalformed, fmt.Sprintf("unrecognised status %q", ev.Status)
		return e
	}
	e.in = in
	return e
}

// finish acknowledges and deletes done events, copying parked ones to
// ParkedStream first, in one transaction.
func (a *Applier) finish(ctx context.Context, done []event) error {
	if len(done) == 0 {
		return nil
	}
	ids := make([]string, len(done))
	_, err := a.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for i, e := range done {
			ids[i] = e.msg.ID
			if e.park != "" {
				p.XAdd(ctx, &redis.XAddArgs{Stream: ParkedStream, Values: []any{
					fieldApp, e.app, fieldEvent, e.name, fieldXML, str(e.msg, fieldXML),
					fieldReceived, e.received.UnixMilli(), fieldReason, e.park + ": " + e.detail, "entry", e.msg.ID}})
			}
		}
		p.XAck(ctx, Stream, Group, ids...)
		p.XDel(ctx, Stream, ids...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("inbox: acknowledge: %w", err)
	}
	return nil
}
