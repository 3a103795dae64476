package service

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/inbox"
	"github.com/wxpush/wxpush/internal/ratelimit"
	"github.com/wxpush/wxpush/internal/tasks"
	"github.com/wxpush/wxpush/internal/wechat"
)

// maxInlineWait is the longest rate-limit wait a worker spends in place; a longer
// one reschedules the task, freeing the worker.
const maxInlineWait = 2 * time.Second

// maxSends is a worker's bound on sends in flight: a task sends one message,
// a batch's chunk task up to tasks.ChunkSize side by side, and the bound keeps
// the WeChat client's connections (kept alive for reuse) to about this many.
func maxSends(concurrency int) int { return 2 * concurrency }

// forwardInterval is how often asynq moves due retries and scheduled tasks to
// their queues; the default (5 s) would make a "1 s" first retry take up to 6 s.
const forwardInterval = 200 * time.Millisecond

// runWorker runs the asynq server and the unconfirmed sweeper until ctx is done,
// then drains in-flight sends for up to cfg.ShutdownTimeout.
func (p *parts) runWorker(ctx context.Context) error {
	handler := tasks.NewHandler(tasks.HandlerDeps{
		Store: p.store, Sender: p.client, Tokens: p.tokens, Apps: p.credentials, Templates: p.tpl,
		Limiter: ratelimit.New(p.rdb, maxInlineWait), Limits: p.limits,
		Metrics: p.metrics, Logger: p.log, MaxSends: maxSends(p.cfg.Concurrency),
	})
	policy := tasks.RetryPolicy{Base: p.cfg.RetryBase, Cap: p.cfg.RetryCap}
	srv := asynq.NewServerFromRedisClient(p.rdb, asynq.Config{
		Concurrency:              p.cfg.Concurrency,
		Queues:                   tasks.QueueWeights,
		RetryDelayFunc:           policy.RetryDelayFunc,
		IsFailure:                tasks.IsFailure,
		TaskCheckInterval:        p.cfg.TaskCheckInterval,
		DelayedTaskCheckInterval: forwardInterval,
		ShutdownTimeout:          p.cfg.ShutdownTimeout,
		Logger:                   asynqLogger{p.log.With("component", "asynq")},
		LogLevel:                 asynq.WarnLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(tasks.TypeDeliver, handler)
	queue := asynq.NewClientFromRedisClient(p.rdb)
	mux.Handle(tasks.TypeFanout, tasks.NewFanoutHandler(queue, p.store, p.cfg.MaxAttempts))
	mux.Handle(tasks.TypeChunk, tasks.NewChunkHandler(handler, p.store, queue, policy, p.cfg.MaxAttempts))
	if err := srv.Start(mux); err != nil {
		return fmt.Errorf("worker: start asynq: %w", err)
	}
	hooks, err := p.startWebhooks()
	if err != nil {
		srv.Shutdown()
		return err
	}
	sweepDone := make(chan struct{})
	go func() {
		defer close(sweepDone)
		p.sweep(ctx)
	}()
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		p.forwarder().Run(ctx)
	}()
	applied := make(chan struct{})
	go func() {
		defer close(applied)
		if p.cfg.InboxApply {
			p.applier().Run(ctx)
		}
	}()
	<-ctx.Done()
	<-forwarded
	<-applied
	// Shutdown stops fetching, waits for in-flight handlers up to ShutdownTimeout,
	// and hands unfinished tasks back to the queue.
	srv.Shutdown()
	hooks.Shutdown()
	<-sweepDone
	return nil
}

// sweep settles sent messages whose callback never came, and ends records no
// task will ever run (tasks.SweepOrphans). Every worker ticks, but a
// cluster-wide lock lets one of them sweep per tick; the store's transitions
// would settle each message once even without it.
func (p *parts) sweep(ctx context.Context) {
	every := min(p.cfg.ConfirmTimeout/4, 10*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	insp := asynq.NewInspectorFromRedisClient(p.rdb)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if won, err := p.store.TrySweepLock(ctx, every); err != nil || !won {
			continue
		}
		until, err := p.confirmedUntil(ctx)
		if err != nil {
			p.log.Warn("unconfirmed sweep: could not read the callback inbox", "err", err)
			continue
		}
		for {
			settled, err := p.store.SweepUnconfirmedUntil(ctx, until, 500)
			if err != nil {
				p.log.Warn("unconfirmed sweep failed", "err", err)
				break
			}
			for _, s := range settled {
				p.metrics.Finished.WithLabelValues(s.App, string(delivery.StateUnconfirmed)).Inc()
				p.log.Info("no result callback in time", "msg_id", s.ID, "app", s.App, "state", delivery.StateUnconfirmed)
			}
			if len(settled) < 500 {
				break
			}
		}
		p.sweepOrphans(ctx, insp)
	}
}

// confirmedUntil is the time up to which every received result is applied:
// now, or the receive time of the oldest event still in the callback inbox.
// A message whose confirmation deadline is before it got no result in time;
// one after it may have its result waiting in the inbox, so it is not swept
// while the appliers catch up.
func (p *parts) confirmedUntil(ctx context.Context) (time.Time, error) {
	now := time.Now()
	oldest, ok, err := inbox.Oldest(ctx, p.rdb)
	if err != nil || !ok || oldest.After(now) {
		return now, err
	}
	return oldest, nil
}

// applier settles the callback inbox's events; the workers share the work
// through one consumer group, each under its own name.
func (p *parts) applier() *inbox.Applier {
	return inbox.NewApplier(p.rdb, p.store, consumerName(), p.inbox, p.metrics, p.log.With("component", "inbox"))
}

// sweepOrphans runs one pass of tasks.SweepOrphans.
func (p *parts) sweepOrphans(ctx context.Context, insp tasks.TaskLookup) {
	settled, err := tasks.SweepOrphans(ctx, p.store, insp, time.Now().Add(-p.cfg.OrphanAfter), 500)
	for _, s := range settled {
		p.metrics.OrphansCanceled.WithLabelValues(s.App).Inc()
		p.log.Warn("message canceled: its request was never acknowledged and no task was enqueued",
			"msg_id", s.ID, "app", s.App, "state", delivery.StateCanceled)
	}
	if err != nil {
		p.log.Warn("orphan sweep failed", "err", err)
	}
}

// limits returns an app's configured rate limits, from the current configuration.
func (p *parts) limits(app string) (ratelimit.Limit, ratelimit.Limit) {
	a, ok := p.current().App(app)
	if !ok {
		return ratelimit.Limit{}, ratelimit.Limit{}
	}
	perRecipient := ratelimit.Limit{}
	if a.RecipientLimit.Max > 0 {
		perRecipient = ratelimit.Limit{Max: a.RecipientLimit.Max, Window: a.RecipientLimit.Window, Burst: a.RecipientLimit.Max}
	}
	return ratelimit.PerSecond(a.RateLimit.PerSecond, a.RateLimit.Burst), perRecipient
}

// credentials resolves an app name to its token credentials, from the current
// configuration.
func (p *parts) credentials(app string) (wechat.Credentials, bool) {
	a, ok := p.current().App(app)
	if !ok {
		return wechat.Credentials{}, false
	}
	return wechat.Credentials{App: a.Name, AppID: a.AppID, Secret: a.Secret.Reveal(), Stable: a.StableToken}, true
}

// asynqLogger routes asynq's logs into slog.
type asynqLogger struct{ log *slog.Logger }

func (l asynqLogger) Debug(args ...any) { l.log.Debug(fmt.Sprint(args...)) }
func (l asynqLogger) Info(args ...any)  { l.log.Info(fmt.Sprint(args...)) }
func (l asynqLogger) Warn(args ...any)  { l.log.Warn(fmt.Sprint(args...)) }
func (l asynqLogger) Error(args ...any) { l.log.Error(fmt.Sprint(args...)) }
func (l asynqLogger) Fatal(args ...any) { l.log.Error(fmt.Sprint(args...)) }

var _ asynq.Logger = asynqLogger{}
