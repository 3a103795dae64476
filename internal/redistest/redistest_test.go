package redistest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/wxpush/wxpush/internal/redistest"
)

// TestMain also proves the helper's cleanup leaves no goroutine behind (the
// process-reaping goroutine ends only when redis-server has been reaped).
func TestMain(m *testing.M) {
	// go-redis retries a failed dial from a background goroutine that sleeps a
	// second between tries and exits once its pool is closed; tests that kill
	// Redis can end while it sleeps.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

func TestStart(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t)
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") {
		t.Errorf("Addr() = %q, want 127.0.0.1:PORT", s.Addr())
	}
	if want := "redis://" + s.Addr() + "/0"; s.URL() != want {
		t.Errorf("URL() = %q, want %q", s.URL(), want)
	}
	opt, err := redis.ParseURL(s.URL())
	if err != nil {
		t.Fatalf("ParseURL(%q): %v", s.URL(), err)
	}
	if opt.Addr != s.Addr() || opt.DB != 0 {
		t.Errorf("ParseURL(URL()) = addr %q db %d, want %q db 0", opt.Addr, opt.DB, s.Addr())
	}

	ctx := context.Background()
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET k = %q, %v; want \"v\"", got, err)
	}
	// The defaults must not persist anything: tests that want durability say so.
	for param, want := range map[string]string{"appendonly": "no", "save": "", "bind": "127.0.0.1"} {
		if got := configGet(t, c, param); got != want {
			t.Errorf("CONFIG GET %s = %q, want %q", param, got, want)
		}
	}
}

func TestRestartKeepsAppendOnlyData(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		down func(*redistest.Server, testing.TB)
	}{
		{name: "after Stop", down: (*redistest.Server).Stop},
		// appendfsync always: an acknowledged write survives even a crash.
		{name: "after Kill", down: (*redistest.Server).Kill},
		{name: "while running", down: func(*redistest.Server, testing.TB) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := redistest.Start(t, redistest.WithAppendOnly())
			addr := s.Addr()
			c := s.Client(t)
			if err := c.Set(ctx, "k", "kept", 0).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}
			tt.down(s, t)
			s.Restart(t)
			if s.Addr() != addr {
				t.Errorf("Addr() after Restart = %q, want %q", s.Addr(), addr)
			}
			if got, err := c.Get(ctx, "k").Result(); err != nil || got != "kept" {
				t.Fatalf("GET k after restart = %q, %v; want \"kept\"", got, err)
			}
		})
	}
}

func TestKillThenRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.Start(t)
	c := s.Client(t)
	if err := c.Set(ctx, "k", "lost", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	s.Kill(t)
	// A raw dial, not c.Ping: go-redis would spend seconds retrying.
	if conn, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		conn.Close()
		t.Fatal("the port still accepts connections after Kill")
	}
	s.Kill(t) // killing a dead server is a no-op
	s.Restart(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	// Without persistence the restarted server starts empty.
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k after Kill+Restart without persistence: err = %v, want redis.Nil", err)
	}
}

func TestInstancesAreIndependent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := redistest.Start(t), redistest.Start(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("two servers share %s", a.Addr())
	}
	ca, cb := a.Client(t), b.Client(t)
	if err := ca.Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatalf("SET on a: %v", err)
	}
	if err := cb.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k on b: err = %v, want redis.Nil", err)
	}
	b.Kill(t)
	if err := ca.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING a after killing b: %v", err)
	}
}

func TestWithArgs(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, redistest.WithArgs("--maxmemory-policy", "allkeys-lru"))
	if got := configGet(t, s.Client(t), "maxmemory-policy"); got != "allkeys-lru" {
		t.Fatalf("CONFIG GET maxmemory-policy = %q, want allkeys-lru", got)
	}
}

func TestMissingRedisServer(t *testing.T) {
	tests := []struct {
		name     string
		require  string
		wantSkip bool
	}{
		{name: "skips by default", require: "", wantSkip: true},
		{name: "fails when required", require: "1", wantSkip: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PATH", t.TempDir())
			t.Setenv(redistest.RequireEnv, tt.require)
			tb := &stopTB{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				redistest.Start(tb)
			}()
			<-done
			if tb.skipped != tt.wantSkip || tb.failed == tt.wantSkip {
				t.Fatalf("skipped=%v failed=%v, want skipped=%v", tb.skipped, tb.failed, tt.wantSkip)
			}
			if !strings.Contains(tb.msg, "redis-server not found") || !strings.Contains(tb.msg, "apt-get install redis-server") {
				t.Errorf("message %q does not say what is missing and how to install it", tb.msg)
			}
		})
	}
}

// stopTB records Skipf/Fatalf instead of ending the real test.
type stopTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *stopTB) Helper() {}

func (f *stopTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *stopTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func configGet(t *testing.T, c *redis.Client, param string) string {
	t.Helper()
	m, err := c.ConfigGet(context.Background(), param).Result()
	if err != nil {
		t.Fatalf("CONFIG GET %s: %v", param, err)
	}
	return m[param]
}
