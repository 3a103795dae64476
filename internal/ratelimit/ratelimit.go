// Package ratelimit applies wxpush's cluster-wide send limits: messages per second
// per app, and optionally messages per recipient per window. The limits are GCRA
// buckets in Redis (github.com/go-redis/redis_rate), so every worker process draws
// from the same budget and the achieved rate does not grow with the worker count.
//
// Waiting is never failure: Wait either waits in place for a short delay or reports
// how long the caller should defer the message; it never drops one. Safe for
// concurrent use.
package ratelimit

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Limit is a rate: Max events per Window, with Burst events allowed at once.
type Limit struct {
	Max    int
	Window time.Duration
	Burst  int
}

// PerSecond converts a possibly fractional per-second rate: 0.5/s is one event
// every two seconds. A rate ≤ 0 is no limit.
func PerSecond(rate float64, burst int) Limit {
	if rate <= 0 {
		return Limit{}
	}
	if burst < 1 {
		burst = 1
	}
	if rate == math.Trunc(rate) {
		return Limit{Max: int(rate), Window: time.Second, Burst: burst}
	}
	// GCRA only needs the emission interval Window/Max; express it in ms.
	return Limit{Max: int(math.Round(rate * 1000)), Window: 1000 * time.Second, Burst: burst}
}

// IsZero reports whether the limit is unset (no limit).
func (l Limit) IsZero() bool { return l.Max <= 0 || l.Window <= 0 }

// Limiter checks limits against Redis.
type Limiter struct {
	rl      *redis_rate.Limiter
	maxWait time.Duration
}

// New returns a Limiter. Delays up to maxWait are waited in place (the caller's
// goroutine sleeps); longer ones are returned to the caller to reschedule.
func New(rdb redis.UniversalClient, maxWait time.Duration) *Limiter {
	return &Limiter{rl: redis_rate.NewLimiter(rdb), maxWait: maxWait}
}

// Wait takes one permit from key's bucket. It returns 0 once a permit is taken,
// waiting in place for at most maxWait in all; otherwise it returns the delay after
// which the caller should try again (no permit is taken). waited is the time spent
// sleeping in place (0 when a permit was free at once).
func (l *Limiter) Wait(ctx context.Context, key string, lim Limit) (deferFor, waited time.Duration, err error) {
	if lim.IsZero() {
		return 0, 0, nil
	}
	rl := redis_rate.Limit{Rate: lim.Max, Period: lim.Window, Burst: lim.Burst}
	for {
		res, err := l.rl.Allow(ctx, key, rl)
		if err != nil {
			return 0, waited, fmt.Errorf("ratelimit: %w", err)
		}
		if res.Allowed > 0 {
			return 0, waited, nil
		}
		if waited+res.RetryAfter > l.maxWait {
			return res.RetryAfter, waited, nil
		}
		t := time.NewTimer(res.RetryAfter)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, waited, ctx.Err()
		case <-t.C:
		}
		waited += res.RetryAfter
	}
}
