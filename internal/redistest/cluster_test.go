package redistest_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/redistest"
)

func TestStartCluster(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := redistest.StartCluster(t, 3)

	addrs := c.Addrs()
	if len(addrs) != 3 || len(c.Nodes()) != 3 {
		t.Fatalf("Addrs() = %v, %d nodes; want 3", addrs, len(c.Nodes()))
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if !strings.HasPrefix(a, "127.0.0.1:") || seen[a] {
			t.Fatalf("Addrs() = %v, want distinct 127.0.0.1:PORT", addrs)
		}
		seen[a] = true
	}

	// Every node is a cluster-enabled master that sees a whole, healthy cluster,
	// with Start's non-persistent defaults.
	for _, n := range c.Nodes() {
		rc := n.Client(t)
		info, err := rc.ClusterInfo(ctx).Result()
		if err != nil {
			t.Fatalf("%s: CLUSTER INFO: %v", n.Addr(), err)
		}
		for _, want := range []string{"cluster_state:ok", "cluster_slots_assigned:16384", "cluster_known_nodes:3", "cluster_size:3"} {
			if !strings.Contains(info, want+"\r\n") {
				t.Errorf("%s: CLUSTER INFO lacks %q:\n%s", n.Addr(), want, info)
			}
		}
		for param, want := range map[string]string{"cluster-enabled": "yes", "appendonly": "no", "save": ""} {
			if got := configGet(t, rc, param); got != want {
				t.Errorf("%s: CONFIG GET %s = %q, want %q", n.Addr(), param, got, want)
			}
		}
	}

	// Keys in different slots spread over all three masters; each key lives
	// on the node that owns its slot.
	cc := c.Client(t)
	owner := slotOwners(t, cc)
	perNode := map[string]int{}
	const keys = 60
	for i := range keys {
		key := fmt.Sprintf("k%d", i)
		if err := cc.Set(ctx, key, i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		slot, err := cc.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
		}
		addr := owner[slot]
		rc := redis.NewClient(&redis.Options{Addr: addr})
		n, err := rc.Exists(ctx, key).Result()
		_ = rc.Close()
		if err != nil || n != 1 {
			t.Fatalf("EXISTS %s on its slot owner %s = %d, %v; want 1", key, addr, n, err)
		}
		perNode[addr]++
	}
	total := 0
	for _, n := range c.Nodes() {
		size, err := n.Client(t).DBSize(ctx).Result()
		if err != nil {
			t.Fatalf("%s: DBSIZE: %v", n.Addr(), err)
		}
		if size == 0 || int(size) != perNode[n.Addr()] {
			t.Errorf("%s: DBSIZE = %d, want %d (> 0)", n.Addr(), size, perNode[n.Addr()])
		}
		total += int(size)
	}
	if total != keys {
		t.Errorf("keys over all nodes = %d, want %d", total, keys)
	}

	// A hash tag keeps keys in one slot; a multi-key command across slots is
	// refused, as on any Redis Cluster.
	if err := cc.MSet(ctx, "{tag}a", 1, "{tag}b", 2).Err(); err != nil {
		t.Errorf("MSET of one hash tag: %v", err)
	}
	if err := cc.MSet(ctx, "k0", 1, "k1", 2).Err(); err == nil || !strings.HasPrefix(err.Error(), "CROSSSLOT") {
		t.Errorf("MSET across slots: err = %v, want CROSSSLOT", err)
	}
}

// slotOwners maps every slot to its master's address, from CLUSTER SHARDS.
func slotOwners(t *testing.T, cc *redis.ClusterClient) map[int64]string {
	t.Helper()
	shards, err := cc.ClusterShards(context.Background()).Result()
	if err != nil {
		t.Fatalf("CLUSTER SHARDS: %v", err)
	}
	owner := map[int64]string{}
	masters := map[string]bool{}
	for _, sh := range shards {
		if len(sh.Nodes) != 1 || sh.Nodes[0].Role != "master" {
			t.Fatalf("shard %+v: want one master, no replica", sh)
		}
		addr := net.JoinHostPort(sh.Nodes[0].IP, strconv.FormatInt(sh.Nodes[0].Port, 10))
		for _, r := range sh.Slots {
			for s := r.Start; s <= r.End; s++ {
				owner[s] = addr
			}
		}
		masters[addr] = true
	}
	if len(owner) != 16384 || len(masters) != 3 {
		t.Fatalf("CLUSTER SHARDS covers %d slots over %d masters, want 16384 over 3", len(owner), len(masters))
	}
	return owner
}

func TestStartClusterMissingRedisCLI(t *testing.T) {
	server, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not on PATH")
	}
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
			// A PATH with redis-server but no redis-cli.
			dir := t.TempDir()
			if err := os.Symlink(server, filepath.Join(dir, "redis-server")); err != nil {
				t.Fatal(err)
			}
			t.Setenv("PATH", dir)
			t.Setenv(redistest.RequireEnv, tt.require)
			tb := &stopTB{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				redistest.StartCluster(tb, 3)
			}()
			<-done
			if tb.skipped != tt.wantSkip || tb.failed == tt.wantSkip {
				t.Fatalf("skipped=%v failed=%v, want skipped=%v", tb.skipped, tb.failed, tt.wantSkip)
			}
			if !strings.Contains(tb.msg, "redis-cli not found") || !strings.Contains(tb.msg, "apt-get install redis-tools") {
				t.Errorf("message %q does not say what is missing and how to install it", tb.msg)
			}
		})
	}
}
