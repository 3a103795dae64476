// Package redisconn turns REDIS_URL into the one go-redis client a process shares
// between wxpush's stores and asynq. It supports redis:// and rediss:// (TLS, with
// ACL user and password in the URL), redis-sentinel:// (a primary found and
// followed through Sentinel) and redis-cluster:// / rediss-cluster:// (Redis
// Cluster, from seed nodes); anything else is refused with a reason rather than
// silently falling back to a local Redis. Check reads the Redis settings
// that can lose accepted messages (eviction, persistence) and judges them, so
// that a process refuses an unsafe Redis at startup instead of losing messages
// later. Nothing this package returns or logs quotes REDIS_URL, which may hold a
// password.
package redisconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	neturl "net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Timeouts shared by every form: a request that fails fast answers 503, and
// retries are the caller's business. Every form also honours a context's
// deadline on the socket (ContextTimeoutEnabled): a caller with a budget of
// its own, such as the callback receiver's, is answered within it even when
// Redis accepts connections and never replies.
const (
	dialTimeout  = 2 * time.Second
	readTimeout  = 3 * time.Second
	writeTimeout = 3 * time.Second
	maxRetries   = 1
)

// Open parses url and returns a client; it does not dial. Forms:
//
//	redis://[user:pass@]host:port/db
//	rediss://[user:pass@]host:port/db                  (TLS)
//	redis-sentinel://[user:pass@]host:port[,host:port…]/master[/db]
//	redis-cluster://[user:pass@]host:port[,host:port…]   (seed nodes of a Redis Cluster)
//	rediss-cluster://[user:pass@]host:port[,host:port…]  (the same over TLS)
//
// In the Sentinel form user:pass authenticate to the Redis primary and replicas;
// sentinels configured with a password take it from the query ?sentinel_password=.
func Open(url string) (redis.UniversalClient, error) {
	switch {
	case strings.HasPrefix(url, "redis://"), strings.HasPrefix(url, "rediss://"):
		opt, err := redis.ParseURL(url)
		if err != nil {
			// go-redis errors may quote the URL, which can hold a password.
			return nil, errors.New("redisconn: REDIS_URL is not a valid redis URL (redis://[user:pass@]host:port/db)")
		}
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.MaxRetries = dialTimeout, readTimeout, writeTimeout, maxRetries
		opt.ContextTimeoutEnabled = true
		return redis.NewClient(opt), nil
	case strings.HasPrefix(url, "redis-sentinel://"):
		opt, err := parseSentinel(url)
		if err != nil {
			return nil, err
		}
		return redis.NewFailoverClient(opt), nil
	case strings.HasPrefix(url, "redis-cluster://"), strings.HasPrefix(url, "rediss-cluster://"):
		opt, err := parseCluster(url)
		if err != nil {
			return nil, err
		}
		return redis.NewClusterClient(opt), nil
	}
	return nil, errors.New("redisconn: REDIS_URL must start with redis://, rediss://, redis-sentinel://, redis-cluster:// or rediss-cluster://")
}

// parseCluster reads redis-cluster://[user:pass@]h1:p1[,h2:p2…] (rediss-cluster:
// TLS). The nodes are seeds: the client learns the others from the cluster.
func parseCluster(raw string) (*redis.ClusterOptions, error) {
	bad := func(why string) error {
		return fmt.Errorf("redisconn: REDIS_URL: %s (want redis-cluster://[user:pass@]host:port[,host:port…])", why)
	}
	u, err := neturl.Parse(raw)
	if err != nil {
		return nil, bad("not a URL")
	}
	if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
		return nil, bad("Redis Cluster has only database 0")
	}
	opt := &redis.ClusterOptions{
		DialTimeout: dialTimeout, ReadTimeout: readTimeout, WriteTimeout: writeTimeout, MaxRetries: maxRetries,
		ContextTimeoutEnabled: true,
	}
	for _, addr := range strings.Split(u.Host, ",") {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, bad("each node needs host:port")
		}
		opt.Addrs = append(opt.Addrs, addr)
	}
	if u.Scheme == "rediss-cluster" {
		opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if u.User != nil {
		opt.Username = u.User.Username()
		opt.Password, _ = u.User.Password()
	}
	return opt, nil
}

// parseSentinel reads redis-sentinel://[user:pass@]h1:p1,h2:p2/master[/db].
func parseSentinel(raw string) (*redis.FailoverOptions, error) {
	bad := func(why string) error {
		return fmt.Errorf("redisconn: REDIS_URL: %s (want redis-sentinel://[user:pass@]host:port[,host:port…]/master[/db])", why)
	}
	u, err := neturl.Parse(raw)
	if err != nil {
		return nil, bad("not a URL")
	}
	opt := &redis.FailoverOptions{
		DialTimeout: dialTimeout, ReadTimeout: readTimeout, WriteTimeout: writeTimeout, MaxRetries: maxRetries,
		ContextTimeoutEnabled: true,
		SentinelPassword:      u.Query().Get("sentinel_password"),
	}
	for _, addr := range strings.Split(u.Host, ",") {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, bad("each sentinel needs host:port")
		}
		opt.SentinelAddrs = append(opt.SentinelAddrs, addr)
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if parts[0] == "" || len(parts) > 2 {
		return nil, bad("name the master after the sentinels")
	}
	opt.MasterName = parts[0]
	if len(parts) == 2 {
		if opt.DB, err = strconv.Atoi(parts[1]); err != nil || opt.DB < 0 {
			return nil, bad("the database must be a number")
		}
	}
	if u.User != nil {
		opt.Username = u.User.Username()
		opt.Password, _ = u.User.Password()
	}
	return opt, nil
}

// Ping checks that Redis answers.
func Ping(ctx context.Context, c redis.UniversalClient) error {
	if err := c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisconn: ping: %w", err)
	}
	return nil
}
