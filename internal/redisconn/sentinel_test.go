package redisconn

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/testport"
)

func TestOpenForms(t *testing.T) {
	tests := []struct {
		name, url, wantErr string
	}{
		{"plain", "redis://127.0.0.1:6379/0", ""},
		{"tls with acl user", "rediss://user:pw@127.0.0.1:6380/1", ""},
		{"sentinel", "redis-sentinel://a:26379,b:26379/mymaster/2", ""},
		{"sentinel with auth", "redis-sentinel://u:secretpw@a:26379/mymaster?sentinel_password=x", ""},
		{"sentinel without master", "redis-sentinel://a:26379", "name the master"},
		{"sentinel without port", "redis-sentinel://a/mymaster", "host:port"},
		{"sentinel bad db", "redis-sentinel://a:1/m/x", "database must be a number"},
		{"cluster", "redis-cluster://a:7000,b:7001", ""},
		{"cluster over tls with auth", "rediss-cluster://u:secretpw@a:7000", ""},
		{"cluster without port", "redis-cluster://a", "host:port"},
		{"cluster with a database", "redis-cluster://a:7000/2", "only database 0"},
		{"unknown scheme", "http://user:secretpw@x", "must start with"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Open(tt.url)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Open(%s) = %v", tt.url, err)
				}
				c.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Open(%s) error = %v, want %q", tt.url, err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "secretpw") {
				t.Errorf("error reveals the password: %v", err)
			}
		})
	}
	copt, err := parseCluster("rediss-cluster://u:pw@a:1,b:2")
	if err != nil || len(copt.Addrs) != 2 || copt.Username != "u" || copt.Password != "pw" || copt.TLSConfig == nil {
		t.Errorf("parseCluster = %+v, %v", copt, err)
	}
	opt, err := parseSentinel("redis-sentinel://u:pw@a:1,b:2/mymaster/3?sentinel_password=sp")
	if err != nil || opt.MasterName != "mymaster" || opt.DB != 3 || len(opt.SentinelAddrs) != 2 ||
		opt.Username != "u" || opt.Password != "pw" || opt.SentinelPassword != "sp" {
		t.Errorf("parseSentinel = %+v, %v", opt, err)
	}
}

// TestSentinel: a redis-sentinel:// URL finds the primary through Sentinel.
func TestSentinel(t *testing.T) {
	t.Parallel()
	primary := redistest.Start(t)
	sentinel := redistest.StartSentinel(t, "mymaster", primary, 1)
	c, err := Open("redis-sentinel://" + sentinel + "/mymaster/0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := Ping(ctx, c); err != nil {
		t.Fatalf("ping through sentinel: %v", err)
	}
	if err := c.Set(ctx, "via-sentinel", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, _ := primary.Client(t).Get(ctx, "via-sentinel").Result(); v != "1" {
		t.Errorf("the write did not reach the primary (got %q)", v)
	}
	if _, err := Open("redis-sentinel://" + sentinel + "/nosuchmaster/0"); err != nil {
		t.Fatal(err) // Open does not dial …
	}
	bad, _ := Open("redis-sentinel://" + sentinel + "/nosuchmaster/0")
	defer bad.Close()
	if err := Ping(ctx, bad); err == nil {
		t.Error("ping of an unknown master succeeded") // … but the first use says which
	}
}

// TestCluster: a redis-cluster:// URL names seed nodes; the client finds every
// master, and the startup check reads each master's settings. A cluster that
// cannot be reached fails the first use, saying so.
func TestCluster(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartCluster(t, 3)
	c, err := Open("redis-cluster://" + cluster.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := Ping(ctx, c); err != nil {
		t.Fatalf("ping: %v", err)
	}
	// Keys in every slot range are reachable from one seed.
	for i := 0; i < 30; i++ {
		if err := c.Set(ctx, fmt.Sprintf("k%d", i), i, 0).Err(); err != nil {
			t.Fatalf("SET through the cluster client: %v", err)
		}
	}
	// One master evicting keys is enough to refuse the cluster.
	if _, err := Check(ctx, c); err != nil {
		t.Fatalf("Check of a safe cluster = %v", err)
	}
	last := cluster.Nodes()[2].Client(t)
	if err := last.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	var unsafe *UnsafeConfigError
	if _, err := Check(ctx, c); !errors.As(err, &unsafe) || !strings.Contains(err.Error(), last.Options().Addr) {
		t.Errorf("Check with one evicting master = %v, want an UnsafeConfigError naming %s", err, last.Options().Addr)
	}

	down, err := Open("redis-cluster://" + closedAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	if err := Ping(ctx, down); err == nil {
		t.Error("ping of an unreachable cluster succeeded")
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	return testport.Addr(t)
}
