package redislock

import (
	"context"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/redistest"
)

func TestLock(t *testing.T) {
	t.Parallel()
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	a, err := TryAcquire(ctx, rdb, "k", time.Minute)
	if err != nil || a == nil {
		t.Fatalf("first TryAcquire = %v, %v", a, err)
	}
	if b, err := TryAcquire(ctx, rdb, "k", time.Minute); err != nil || b != nil {
		t.Fatalf("second TryAcquire = %v, %v; want held", b, err)
	}
	// A holder whose lease ran out cannot release the next holder's lock.
	rdb.Del(ctx, "k")
	c, _ := TryAcquire(ctx, rdb, "k", time.Minute)
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, "k").Result(); n != 1 {
		t.Error("a stale holder released the current holder's lock")
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Release(canceled); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, "k").Result(); n != 0 {
		t.Error("Release with a canceled context left the lock")
	}
}
