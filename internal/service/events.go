package service

import (
	"fmt"
	"os"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/events"
	"github.com/wxpush/wxpush/internal/webhook"
)

// eventStreamClient is the Redis client GET /v1/events reads with: a client
// of its own, since every open stream holds a connection in XREAD BLOCK and
// would otherwise take the shared pool from the API's other requests. Its pool
// has room for every stream the API allows. It is closed with the parts.
func (p *parts) eventStreamClient() redis.UniversalClient {
	size := api.DefaultMaxEventStreams + 8
	var c redis.UniversalClient
	switch r := p.rdb.(type) {
	case *redis.Client:
		o := *r.Options()
		o.PoolSize = size
		c = redis.NewClient(&o)
	case *redis.ClusterClient:
		o := *r.Options()
		o.PoolSize = size
		c = redis.NewClusterClient(&o)
	default:
		return p.rdb
	}
	p.closers = append(p.closers, c.Close)
	return c
}

// forwarder moves state changes from the outboxes to the event stream; the
// workers share the work through one consumer group, each under its own name.
func (p *parts) forwarder() *events.Forwarder {
	f := events.NewForwarder(p.rdb, consumerName(), p.cfg.EventsMaxLen, p.events, p.log.With("component", "events"))
	f.Webhooks = p.webhooks()
	return f
}

// consumerName names this process in a Redis consumer group: unique, and
// telling which host and process read an entry.
func consumerName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), randomHex(4))
}

// deadWebhooks lists and replays the webhooks that gave up.
func (p *parts) deadWebhooks() *webhook.DeadLetters {
	return webhook.NewDeadLetters(asynq.NewInspectorFromRedisClient(p.rdb), p.rdb)
}

// close releases what the parts opened besides the shared Redis client.
func (p *parts) close() {
	for _, c := range p.closers {
		_ = c()
	}
}
