package redisconn_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/redisconn"
)

// A Redis that accepts connections and never replies (a stalled host, a
// full accept queue behind a proxy) must not hold a caller past its
// context's deadline: the callback receiver gives Redis a quarter of
// WeChat's budget and must still relay in time. Without
// ContextTimeoutEnabled go-redis waits out its 3 s read timeout instead.
func TestContextDeadlineBoundsAStalledRedis(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() }) // held open, never answered
		}
	}()
	rdb, err := redisconn.Open("redis://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = rdb.Get(ctx, "k").Err()
	took := time.Since(start)
	if err == nil {
		t.Fatal("GET answered by a server that never replies")
	}
	var ne net.Error
	if !errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &ne) && ne.Timeout()) {
		t.Errorf("GET failed with %v, want a timeout", err)
	}
	// The read timeout is 3 s and one retry is allowed: a call that ignores
	// the deadline takes at least 3 s. The margin is for a loaded machine.
	if took >= 2500*time.Millisecond {
		t.Errorf("GET with a 300 ms deadline returned after %v: the deadline was not honoured", took)
	}
}
