// Package redislock is the lease lock wxpush's stores share: SET NX with a lease
// and a random owner, released only by its owner, so a holder that died frees it
// when the lease ends and a slow holder cannot release someone else's lock. It
// does not fence: work done under the lock must be safe to repeat if a lease
// runs out mid-way. Safe for concurrent use.
package redislock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Lock is a held lock.
type Lock struct {
	rdb   redis.UniversalClient
	key   string
	owner string
}

// TryAcquire takes the lock at key for lease. It returns nil (and no error) when
// another process holds it.
func TryAcquire(ctx context.Context, rdb redis.UniversalClient, key string, lease time.Duration) (*Lock, error) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	l := &Lock{rdb: rdb, key: key, owner: hex.EncodeToString(b)}
	ok, err := rdb.SetNX(ctx, key, l.owner, lease).Result()
	if err != nil {
		return nil, fmt.Errorf("redislock: %s: %w", key, err)
	}
	if !ok {
		return nil, nil
	}
	return l, nil
}

var releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0`)

// Release frees the lock if this holder still owns it. It runs even when ctx is
// canceled: a lock left behind would stall the others until its lease ends.
func (l *Lock) Release(ctx context.Context) error {
	if err := releaseScript.Run(context.WithoutCancel(ctx), l.rdb, []string{l.key}, l.owner).Err(); err != nil {
		return fmt.Errorf("redislock: release %s: %w", l.key, err)
	}
	return nil
}
