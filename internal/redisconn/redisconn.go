// Package redisconn turns REDIS_URL into the one go-redis client a process shares
// between wxpush's stores and asynq. It supports redis:// and rediss:// (TLS, with
// ACL user and password in the URL); anything else is refused with a reason rather
// than silently falling back to a local Redis. Check reads the Redis settings
// that can lose accepted messages (eviction, persistence) and judges them, so
// that a process refuses an unsafe Redis at startup instead of losing messages
// later. Nothing this package returns or logs quotes REDIS_URL, which may hold a
// password.
package redisconn

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Open parses url and returns a client; it does not dial.
func Open(url string) (redis.UniversalClient, error) {
	if !strings.HasPrefix(url, "redis://") && !strings.HasPrefix(url, "rediss://") {
		return nil, errors.New("redisconn: REDIS_URL must start with redis:// or rediss://")
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		// go-redis errors may quote the URL, which can hold a password.
		return nil, errors.New("redisconn: REDIS_URL is not a valid redis URL (redis://[user:pass@]host:port/db)")
	}
	opt.DialTimeout = 2 * time.Second
	opt.ReadTimeout = 3 * time.Second
	opt.WriteTimeout = 3 * time.Second
	// Retries are the caller's business: a request that fails fast answers 503.
	opt.MaxRetries = 1
	return redis.NewClient(opt), nil
}

// Ping checks that Redis answers.
func Ping(ctx context.Context, c redis.UniversalClient) error {
	if err := c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisconn: ping: %w", err)
	}
	return nil
}
