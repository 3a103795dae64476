package metrics

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/redistest"
)

// TestRedisHook: each command is one round trip; a pipeline of several is one.
func TestRedisHook(t *testing.T) {
	t.Parallel()
	m := New(prometheus.NewRegistry(), Labels{})
	// RESP2 without client identity: a new connection sends no handshake
	// pipeline, so the counts are the test's own.
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr(), Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { rdb.Close() })
	rdb.AddHook(m.RedisHook())
	ctx := context.Background()
	// The connection's handshake is a pipeline of its own: count from after it.
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	count := func(cmd string) float64 { return testutil.ToFloat64(m.RedisRoundTrips.WithLabelValues(cmd)) }
	before := map[string]float64{}
	for _, cmd := range []string{"set", "get", "pipeline", "incr"} {
		before[cmd] = count(cmd)
	}
	rdb.Set(ctx, "k", "v", 0)
	rdb.Get(ctx, "k")
	rdb.Get(ctx, "k")
	rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for range 10 {
			p.Incr(ctx, "n")
		}
		return nil
	})
	for cmd, want := range map[string]float64{"set": 1, "get": 2, "pipeline": 1, "incr": 0} {
		if got := count(cmd) - before[cmd]; got != want {
			t.Errorf("round trips{command=%q} = %v, want %v", cmd, got, want)
		}
	}
}
