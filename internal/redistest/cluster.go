package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterTimeout bounds how long StartCluster may take, from redis-cli --cluster
// create until every node reports cluster_state:ok.
const clusterTimeout = 20 * time.Second

// Cluster is a Redis Cluster of private redis-server masters (no replicas) owned
// by one test. Its nodes are killed and reaped in tb.Cleanup.
type Cluster struct {
	nodes []*Server
}

// StartCluster starts masters (at least 3, as redis-cli --cluster create
// requires) cluster-enabled redis-server processes on free 127.0.0.1 ports,
// joins them with redis-cli --cluster create (no replicas, the slots split
// evenly), and returns once every node reports cluster_state:ok. It skips the
// test when redis-server or redis-cli is missing, or fails it under RequireEnv.
func StartCluster(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	if masters < 3 {
		tb.Fatalf("redistest: StartCluster(%d): a cluster needs at least 3 masters", masters)
	}
	bin := requireBinary(tb)
	cli := requireCLI(tb)
	c := &Cluster{}
	for range masters {
		c.nodes = append(c.nodes, startClusterNode(tb, bin))
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	cmd := exec.CommandContext(ctx, cli, args...)
	cmd.WaitDelay = time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("redistest: redis-cli %s: %v\n%s%s", strings.Join(args, " "), err, out, c.logs())
	}
	if err := c.waitOK(ctx); err != nil {
		tb.Fatalf("redistest: cluster %v: %v%s", c.Addrs(), err, c.logs())
	}
	return c
}

// startClusterNode is Start for a cluster node: besides the client port it
// picks the cluster bus port (by default the client port plus 10000, which is
// out of range for ports above 55535, so it is set explicitly) and names the
// node's cluster config file after its port. Start's defaults (no RDB, no AOF,
// 127.0.0.1, a private data directory) apply.
func startClusterNode(tb testing.TB, bin string) *Server {
	tb.Helper()
	s := &Server{bin: bin, dir: tb.TempDir()}
	s.launch(tb, "cluster node", func(port int) bool {
		bus, err := freePort()
		if err != nil {
			tb.Fatalf("redistest: pick a port: %v", err)
		}
		s.opts.args = []string{
			"--cluster-enabled", "yes",
			"--cluster-port", strconv.Itoa(bus),
			"--cluster-config-file", filepath.Join(s.dir, fmt.Sprintf("nodes-%d.conf", port)),
		}
		return bus != port
	})
	return s
}

// requireCLI finds redis-cli, or skips (fails, under RequireEnv) the test.
func requireCLI(tb testing.TB) string {
	tb.Helper()
	return requireProgram(tb, "redis-cli", "redis-tools")
}

// Addrs returns the nodes' addresses, "127.0.0.1:PORT", in start order.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// Nodes returns the nodes, in the order of Addrs, for tests that kill or
// inspect one of them.
func (c *Cluster) Nodes() []*Server {
	return append([]*Server(nil), c.nodes...)
}

// Client returns a new go-redis cluster client seeded with every node's
// address, closed in tb.Cleanup.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// waitOK polls CLUSTER INFO on every node until each reports cluster_state:ok
// and knows every other node, or ctx ends.
func (c *Cluster) waitOK(ctx context.Context) error {
	want := fmt.Sprintf("cluster_known_nodes:%d", len(c.nodes))
	for _, n := range c.nodes {
		rc := redis.NewClient(&redis.Options{Addr: n.Addr(), MaxRetries: -1})
		var info string
		var err error
		for {
			info, err = rc.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok\r\n") && strings.Contains(info, want+"\r\n") {
				break
			}
			select {
			case <-ctx.Done():
				_ = rc.Close()
				return fmt.Errorf("node %s not ok within %v (CLUSTER INFO: %q, err %v)", n.Addr(), clusterTimeout, info, err)
			case <-time.After(pollInterval):
			}
		}
		_ = rc.Close()
	}
	return nil
}

// logs returns the nodes' redis-server logs, for a failure message.
func (c *Cluster) logs() string {
	var b strings.Builder
	for _, n := range c.nodes {
		if n.proc != nil {
			fmt.Fprintf(&b, "\n--- redis-server %s log:\n%s", n.Addr(), n.proc.log.String())
		}
	}
	return b.String()
}
