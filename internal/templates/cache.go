// Package templates keeps each app's list of WeChat private templates in Redis and
// checks messages against it before they are queued, so that a bad template id,
// missing or unknown data keys and over-long values are rejected with the field
// named instead of coming back from WeChat as 40037 or 47003. It fails open: when
// a list cannot be had, Check says ErrUnavailable and the caller sends anyway,
// leaving WeChat to settle the message. A Cache is safe for concurrent use, and
// every process sharing its Redis shares one list per app, refreshed by one
// process at a time under a Redis lock.
package templates

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/redislock"
	"github.com/wxpush/wxpush/internal/wechat"
)

// Fetcher lists an app's templates from WeChat, typically by getting the app's
// token from a wechat.TokenStore and calling (*wechat.Client).PrivateTemplates.
type Fetcher func(ctx context.Context, app string) ([]wechat.Template, error)

// Config tunes a Cache. Zero values take the defaults shown.
type Config struct {
	// TTL: how long a fetched list is used before it is fetched again
	// (default 10 min). A template added in the admin console within the TTL is
	// still found sooner: see MinRefresh.
	TTL time.Duration
	// MinRefresh: the shortest gap between fetches forced by evidence that the
	// list changed (default 1 min). A template id missing from a list older than
	// this refetches the list before the id is called unknown, and Invalidate
	// leaves a younger list alone, so neither a client sending made-up ids nor a
	// burst of 40037 can make wxpush fetch more than about once a MinRefresh.
	MinRefresh time.Duration
	// RetryAfter: after a failed fetch no process fetches the app's list again
	// for this long, and lists that need a fetch are unavailable (default 30 s).
	// Without it, every message would wait on a fetch while WeChat is failing.
	RetryAfter time.Duration
	// LockLease: how long the refresher's lock lives if its holder dies (default
	// 30 s); the fetch is cut off before the lease ends.
	LockLease time.Duration
	// Wait: how long a caller with no list at all waits for another process's
	// fetch (default 5 s). A caller holding an expired list uses it meanwhile.
	Wait time.Duration
	// OnFetch is called after every fetch from WeChat (metrics); nil = nothing.
	OnFetch func(app string, err error)
	// Local: how long a process reuses a list it read from Redis before it
	// reads it again (zero = it reads Redis on every use). A single message's
	// check then costs no round trip; a list refreshed by another process is
	// seen this much later, as it is anyway within TTL. Measured on the real
	// clock.
	Local time.Duration
	// Now is the clock for list ages and failure back-off (default time.Now).
	// Lock leases and Wait are measured on the real clock.
	Now func() time.Time
}

// Cache is a per-app template list shared through Redis.
type Cache struct {
	rdb   redis.UniversalClient
	fetch Fetcher
	cfg   Config
	local sync.Map // app → *memo, when cfg.Local > 0
}

// memo is a list this process read from Redis, and when (real clock).
type memo struct {
	e    *entry
	read time.Time
}

// ErrUnavailable says an app's template list could not be had (WeChat, the token
// or Redis failed). Every error of List and Check wraps it, with the cause.
var ErrUnavailable = errors.New("templates: template list unavailable")

// New returns a Cache backed by rdb that gets lists from fetch.
func New(rdb redis.UniversalClient, fetch Fetcher, cfg Config) *Cache {
	if cfg.TTL <= 0 {
		cfg.TTL = 10 * time.Minute
	}
	if cfg.MinRefresh <= 0 {
		cfg.MinRefresh = time.Minute
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = 30 * time.Second
	}
	if cfg.LockLease <= 0 {
		cfg.LockLease = 30 * time.Second
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 5 * time.Second
	}
	if cfg.OnFetch == nil {
		cfg.OnFetch = func(string, error) {}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Cache{rdb: rdb, fetch: fetch, cfg: cfg}
}

// The {app} hash tag keeps an app's keys in one Redis Cluster slot.
func listKey(app string) string   { return "wxpush:tpl:{" + app + "}" }
func lockKey(app string) string   { return "wxpush:tpl:{" + app + "}:lock" }
func failedKey(app string) string { return "wxpush:tpl:{" + app + "}:failed" }

// entry is the stored list. Its Redis expiry only collects lists of apps that
// are gone; freshness is judged by FetchedAt, so an expired list can still
// serve while another process refreshes it.
type entry struct {
	FetchedAt time.Time         `json:"fetched_at"`
	Templates []wechat.Template `json:"templates"`
}

// failure is the stored result of a failed fetch, which holds off refetching.
type failure struct {
	FailedAt time.Time `json:"failed_at"`
	Error    string    `json:"error"`
}

// List returns the app's templates, fetching them when Redis holds none or only
// a list older than TTL. Its errors wrap ErrUnavailable.
func (c *Cache) List(ctx context.Context, app string) ([]wechat.Template, error) {
	e, err := c.load(ctx, app, c.cfg.TTL, true)
	if err != nil {
		return nil, err
	}
	return e.Templates, nil
}

// Invalidate drops the app's list so the next use fetches it; call it on errcode
// 40037 (the template set changed). A list fetched less than MinRefresh ago is
// kept: it already reflects the change that a burst of 40037 reports many times.
// A refresh in flight may still store a list fetched just before the change;
// the next 40037 drops that one, so the cache settles by itself.
func (c *Cache) Invalidate(ctx context.Context, app string) error {
	e, _, err := c.read(ctx, app)
	if err != nil {
		return fmt.Errorf("templates: invalidate %s: %w", app, err)
	}
	if e != nil && c.age(e) < c.cfg.MinRefresh {
		return nil
	}
	c.local.Delete(app)
	if err := c.rdb.Del(ctx, listKey(app)).Err(); err != nil {
		return fmt.Errorf("templates: invalidate %s: %w", app, err)
	}
	return nil
}

func (c *Cache) age(e *entry) time.Duration { return c.cfg.Now().Sub(e.FetchedAt) }

// load returns a list younger than maxAge, fetching one if needed. While another
// process fetches, an older list is returned when allowStale is set; otherwise
// (or with no list at all) load waits up to Wait for the new one.
func (c *Cache) load(ctx context.Context, app string, maxAge time.Duration, allowStale bool) (*entry, error) {
	if m, ok := c.local.Load(app); ok {
		if m := m.(*memo); time.Since(m.read) < c.cfg.Local && c.age(m.e) < maxAge {
			return m.e, nil
		}
	}
	deadline := time.Now().Add(c.cfg.Wait)
	for {
		e, f, err := c.read(ctx, app)
		if err != nil {
			return nil, unavailable(app, err)
		}
		if e != nil && c.age(e) < maxAge {
			c.remember(app, e)
			return e, nil
		}
		if f != nil {
			return nil, unavailable(app, fmt.Errorf("fetch failed %s ago: %s", c.cfg.Now().Sub(f.FailedAt).Round(time.Millisecond), f.Error))
		}
		got, won, err := c.tryRefresh(ctx, app, maxAge)
		if err != nil {
			return nil, unavailable(app, err)
		}
		if won {
			c.remember(app, got)
			return got, nil
		}
		if e != nil && allowStale {
			return e, nil
		}
		// The wait is measured on the real clock: the injected one may stand still.
		if time.Now().After(deadline) {
			return nil, unavailable(app, errors.New("fetch in progress elsewhere did not finish in time"))
		}
		select {
		case <-ctx.Done():
			return nil, unavailable(app, ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// remember keeps e as the app's list in this process, for Config.Local.
func (c *Cache) remember(app string, e *entry) {
	if c.cfg.Local > 0 {
		c.local.Store(app, &memo{e: e, read: time.Now()})
	}
}

func unavailable(app string, err error) error {
	return fmt.Errorf("%w: app %s: %w", ErrUnavailable, app, err)
}

// read returns the stored list and a failure still holding off fetches; either
// is nil when absent. A value that does not decode counts as absent and is
// overwritten by the next fetch.
func (c *Cache) read(ctx context.Context, app string) (*entry, *failure, error) {
	vals, err := c.rdb.MGet(ctx, listKey(app), failedKey(app)).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("read redis: %w", err)
	}
	var e *entry
	if s, ok := vals[0].(string); ok {
		var v entry
		if json.Unmarshal([]byte(s), &v) == nil {
			e = &v
		}
	}
	var f *failure
	if s, ok := vals[1].(string); ok {
		var v failure
		if json.Unmarshal([]byte(s), &v) == nil && c.cfg.Now().Sub(v.FailedAt) < c.cfg.RetryAfter {
			f = &v
		}
	}
	return e, f, nil
}

// tryRefresh fetches and stores the app's list if it wins the app's lock; won is
// false when another process holds the lock.
func (c *Cache) tryRefresh(ctx context.Context, app string, maxAge time.Duration) (e *entry, won bool, err error) {
	lock, err := redislock.TryAcquire(ctx, c.rdb, lockKey(app), c.cfg.LockLease)
	if err != nil {
		return nil, false, fmt.Errorf("lock: %w", err)
	}
	if lock == nil {
		return nil, false, nil
	}
	defer lock.Release(ctx)

	// Another process may have stored a list, or failed, between our read and our lock.
	e, f, err := c.read(ctx, app)
	if err != nil {
		return nil, true, err
	}
	if e != nil && c.age(e) < maxAge {
		return e, true, nil
	}
	if f != nil {
		return nil, true, fmt.Errorf("fetch failed: %s", f.Error)
	}

	fetchCtx, cancel := context.WithTimeout(ctx, c.cfg.LockLease*4/5)
	defer cancel()
	list, err := c.fetch(fetchCtx, app)
	c.cfg.OnFetch(app, err)
	now := c.cfg.Now()
	if err != nil {
		// A caller that gave up says nothing about WeChat: do not hold off the others.
		if ctx.Err() == nil {
			c.storeFailure(ctx, app, failure{FailedAt: now, Error: err.Error()})
		}
		return nil, true, fmt.Errorf("fetch: %w", err)
	}
	e = &entry{FetchedAt: now, Templates: list}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, true, fmt.Errorf("encode list: %w", err)
	}
	// Dropping the failure marker lets a Cache whose clock runs behind (a
	// skewed host) see the list rather than an old failure. If storing fails
	// the list is still good for this caller; only sharing it failed.
	_, _ = c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, listKey(app), b, max(24*time.Hour, 2*c.cfg.TTL))
		p.Del(ctx, failedKey(app))
		return nil
	})
	return e, true, nil
}

// storeFailure records a failed fetch; if Redis fails too, the only cost is
// that another caller fetches again sooner.
func (c *Cache) storeFailure(ctx context.Context, app string, f failure) {
	b, err := json.Marshal(f)
	if err != nil {
		return
	}
	c.rdb.Set(ctx, failedKey(app), b, c.cfg.RetryAfter)
}
