package service_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/service"
	"github.com/wxpush/wxpush/internal/servicetest"
)

// writeApps writes a WXPUSH_CONFIG file with n apps.
func writeApps(t testing.TB, n int) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("apps:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  - {name: app%05d, appid: wx%016d, secret: secret%05d, token: token%05d, validate_templates: false}\n", i, i, i, i)
	}
	path := filepath.Join(t.TempDir(), "wxpush.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestManyAppsStayFlat: an enqueuer and a worker with 10,000 apps run the same
// goroutines and hold the same Redis connections as with 10: per-app state
// lives in Redis, and nothing runs per app. (Startup time and memory are
// figures of make bench.) Not parallel, so other tests' goroutines do not count.
func TestManyAppsStayFlat(t *testing.T) {
	redis := redistest.Start(t)
	rdb := redis.Client(t)
	// settled polls count until it gives the same value twice in a row, 100 ms
	// apart (goroutines and connections of a stopped run finish going away).
	settled := func(count func() int) int {
		last := count()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			n := count()
			if n == last {
				return n
			}
			last = n
		}
		t.Fatal("the count never settled")
		return 0
	}
	clients := func() int {
		list, err := rdb.ClientList(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(list, "\n")
	}
	footprint := func(apps int) (goroutines, conns int) {
		t.Run(fmt.Sprintf("%d apps", apps), func(t *testing.T) {
			before := settled(runtime.NumGoroutine)
			beforeConns := settled(clients)
			apiAddr := servicetest.FreeAddr(t)
			env := map[string]string{"REDIS_URL": redis.URL(), "WECHAT_API_BASE": "http://127.0.0.1:1",
				"WXPUSH_CONFIG": writeApps(t, apps), "WXPUSH_HTTP_ADDR": apiAddr, "WXPUSH_ADMIN_ADDR": servicetest.FreeAddr(t),
				"WXPUSH_LOG_LEVEL": "error"}
			servicetest.Run(t, "enqueuer", service.RunEnqueuer, env)
			servicetest.Run(t, "worker", service.RunWorker, env)
			servicetest.WaitHTTP(t, "http://"+apiAddr+"/healthz")
			servicetest.WaitHTTP(t, "http://"+env["WXPUSH_ADMIN_ADDR"]+"/healthz")
			goroutines = settled(runtime.NumGoroutine) - before
			conns = settled(clients) - beforeConns
		})
		return goroutines, conns
	}
	g10, c10 := footprint(10)
	g10k, c10k := footprint(10000)
	t.Logf("10 apps: %d goroutines, %d Redis connections; 10,000 apps: %d goroutines, %d connections", g10, c10, g10k, c10k)
	if g10k > g10+5 {
		t.Errorf("10,000 apps run %d goroutines, 10 apps %d: something runs per app", g10k, g10)
	}
	if c10k > c10+3 {
		t.Errorf("10,000 apps hold %d Redis connections, 10 apps %d: something connects per app", c10k, c10)
	}
}
