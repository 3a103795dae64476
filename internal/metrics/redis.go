package metrics

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// RedisHook counts the requests a process sends Redis: one per command, one
// per pipeline (command "pipeline", however many commands it carries). Add it
// to the client shared by wxpush's stores and asynq (AddHook), and
// wxpush_redis_round_trips_total shows what each part of the pipeline costs
// Redis. Command names are Redis's own, a bounded set. On Redis Cluster a
// pipeline goes out as one request per master it touches, and redirections
// (MOVED, ASK) are resent uncounted: there the figure is a lower bound.
func (m *Metrics) RedisHook() redis.Hook { return redisHook{m.RedisRoundTrips} }

type redisHook struct{ vec *prometheus.CounterVec }

func (redisHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h redisHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.vec.WithLabelValues(cmd.Name()).Inc() // go-redis lowercases Name
		return next(ctx, cmd)
	}
}

func (h redisHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.vec.WithLabelValues("pipeline").Inc()
		return next(ctx, cmds)
	}
}
