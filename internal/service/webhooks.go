package service

import (
	"fmt"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/events"
	"github.com/wxpush/wxpush/internal/webhook"
)

// startWebhooks starts the status webhook deliveries: an asynq server of its
// own on the webhooks queue, so a slow receiver never holds a worker that
// sends messages. The caller shuts it down.
func (p *parts) startWebhooks() (*asynq.Server, error) {
	d := webhook.NewDeliverer(webhook.DelivererConfig{
		Redis:        p.rdb,
		Secret:       p.webhookSecret,
		Window:       p.cfg.WebhookWindow,
		PerEndpoint:  p.cfg.WebhookPerEndpoint,
		AllowPrivate: p.cfg.WebhookAllowPrivate,
		Runner:       asynq.NewInspectorFromRedisClient(p.rdb),
		Metrics:      webhook.NewMetrics(p.reg, p.cfg.AppNames()),
		Log:          p.log.With("component", "webhook"),
	})
	srv := asynq.NewServerFromRedisClient(p.rdb, asynq.Config{
		Concurrency:              p.cfg.WebhookConcurrency,
		Queues:                   map[string]int{webhook.Queue: 1},
		RetryDelayFunc:           webhook.RetryDelay(p.cfg.WebhookRetryBase, p.cfg.WebhookRetryCap),
		IsFailure:                webhook.IsFailure,
		TaskCheckInterval:        max(p.cfg.TaskCheckInterval, forwardInterval/4),
		DelayedTaskCheckInterval: forwardInterval,
		ShutdownTimeout:          p.cfg.ShutdownTimeout,
		Logger:                   asynqLogger{p.log.With("component", "asynq-webhooks")},
		LogLevel:                 asynq.WarnLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(webhook.TypeDeliver, d)
	if err := srv.Start(mux); err != nil {
		return nil, fmt.Errorf("worker: start webhook deliveries: %w", err)
	}
	return srv, nil
}

// webhookSecret is app's webhook signing key, from the current configuration.
func (p *parts) webhookSecret(app string) ([]byte, bool) {
	a, ok := p.current().App(app)
	if !ok || a.WebhookSecret.IsZero() {
		return nil, false
	}
	return []byte(a.WebhookSecret.Reveal()), true
}

// webhooks is what the forwarder needs to enqueue status webhooks.
func (p *parts) webhooks() *events.Webhooks {
	return &events.Webhooks{
		Queue:  asynq.NewClientFromRedisClient(p.rdb),
		Window: p.cfg.WebhookWindow,
		Wants: func(app, state string) bool {
			a, ok := p.current().App(app)
			return ok && a.WantsWebhook(state)
		},
	}
}
