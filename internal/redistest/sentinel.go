package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// StartSentinel runs redis-server in Sentinel mode watching primary as master
// (with quorum), and returns its address once it knows the master. It stops with
// the test.
func StartSentinel(tb testing.TB, master string, primary *Server, quorum int) string {
	tb.Helper()
	bin := requireBinary(tb)
	port, err := freePort()
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %d %d\n"+
		"sentinel down-after-milliseconds %s 1000\nsentinel failover-timeout %s 10000\n",
		port, dir, master, primary.port, quorum, master, master)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, conf, "--sentinel")
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start sentinel: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	tb.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	sc := redis.NewSentinelClient(&redis.Options{Addr: addr})
	defer sc.Close()
	deadline := time.Now().Add(readyTimeout)
	for {
		if a, err := sc.GetMasterAddrByName(context.Background(), master).Result(); err == nil && len(a) == 2 {
			return addr
		}
		select {
		case <-done:
			tb.Fatalf("sentinel exited:\n%s", log.String())
		case <-time.After(pollInterval):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("sentinel on %s did not learn master %s within %v:\n%s", addr, master, readyTimeout, log.String())
		}
	}
}
