package wechat

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/redislock"
)

// TokenFetcher gets a fresh token from WeChat; *Client provides it.
type TokenFetcher interface {
	FetchToken(ctx context.Context, appID, secret string) (Token, error)
	FetchStableToken(ctx context.Context, appID, secret string, force bool) (Token, error)
}

// Credentials identify an app to the token endpoint.
type Credentials struct {
	App    string // wxpush's name for the app; keys the cache
	AppID  string
	Secret string
	// Stable uses /cgi-bin/stable_token, which hands every caller the same token.
	Stable bool
}

// TokenStoreConfig tunes a TokenStore. Zero values take the defaults shown.
type TokenStoreConfig struct {
	// RefreshBefore: refresh a token this long before it expires (default 5 min,
	// which is also how long WeChat keeps the previous token working).
	RefreshBefore time.Duration
	// LocalTTL: how long a process reuses a token without reading Redis (default 30 s).
	// A token another process replaced is still valid for minutes, and a 40001
	// invalidates the local copy at once.
	LocalTTL time.Duration
	// LockLease: how long the refresher's lock lives if its holder dies (default
	// 30 s). The fetch itself is cut off before the lease ends, so a slow fetch
	// cannot outlive its lock and let a second process fetch too.
	LockLease time.Duration
	// Wait: how long a caller waits for another process's refresh (default 5 s).
	Wait time.Duration
	// OnFetch is called after every fetch from WeChat (metrics); nil = nothing.
	OnFetch func(app string, err error)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// TokenStore shares one access token per app among every process using the same
// Redis. At most one process fetches an app's token at a time, under a Redis lock
// with a lease; the others wait for the value it stores.
type TokenStore struct {
	rdb     redis.UniversalClient
	fetcher TokenFetcher
	cfg     TokenStoreConfig

	mu    sync.Mutex
	local map[string]localToken
	// gen counts invalidations per app. A read of Redis that overlapped an
	// Invalidate may have fetched the dead token; remember drops it when the
	// generation moved meanwhile.
	gen map[string]uint64
}

type localToken struct {
	token   Token
	refresh time.Time // when this process must look again
}

// ErrTokenBusy says another process is refreshing the token and did not finish in time.
var ErrTokenBusy = errors.New("wechat: token refresh in progress elsewhere")

// NewTokenStore returns a TokenStore backed by rdb.
func NewTokenStore(rdb redis.UniversalClient, fetcher TokenFetcher, cfg TokenStoreConfig) *TokenStore {
	if cfg.RefreshBefore <= 0 {
		cfg.RefreshBefore = 5 * time.Minute
	}
	if cfg.LocalTTL <= 0 {
		cfg.LocalTTL = 30 * time.Second
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
	return &TokenStore{rdb: rdb, fetcher: fetcher, cfg: cfg, local: map[string]localToken{}, gen: map[string]uint64{}}
}

func tokenKey(app string) string { return "wxpush:token:{" + app + "}" }
func lockKey(app string) string  { return "wxpush:token:{" + app + "}:lock" }

// Token returns a valid access token for the app, fetching one only when no
// process has a fresh one.
func (s *TokenStore) Token(ctx context.Context, cred Credentials) (string, error) {
	now := s.cfg.Now()
	s.mu.Lock()
	lt, ok := s.local[cred.App]
	gen := s.gen[cred.App]
	s.mu.Unlock()
	if ok && now.Before(lt.refresh) {
		return lt.token.Value, nil
	}

	// The wait is measured on the real clock: the injected one may stand still.
	deadline := time.Now().Add(s.cfg.Wait)
	for {
		tok, found, err := s.read(ctx, cred.App)
		if err != nil {
			return "", err
		}
		now = s.cfg.Now()
		if found && tok.ExpiresAt.Sub(now) > s.cfg.RefreshBefore {
			s.remember(cred.App, tok, now, gen)
			return tok.Value, nil
		}
		got, err := s.tryRefresh(ctx, cred)
		if err != nil {
			return "", err
		}
		if got.Value != "" {
			s.remember(cred.App, got, s.cfg.Now(), gen)
			return got.Value, nil
		}
		// Another process holds the lock. A token in its last minutes still works,
		// so use it rather than wait.
		if found && tok.ExpiresAt.After(now) {
			return tok.Value, nil
		}
		if time.Now().After(deadline) {
			return "", ErrTokenBusy
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// Invalidate drops the app's cached token, but only if it is still the one that
// failed: after a 40001 storm the first caller clears it, and the rest find a newer
// token and leave it alone.
func (s *TokenStore) Invalidate(ctx context.Context, app, failed string) error {
	// Redis first, then the local copy: a concurrent Token that read Redis before
	// the delete sees the generation change and does not cache the dead token.
	err := invalidateScript.Run(ctx, s.rdb, []string{tokenKey(app)}, failed).Err()
	s.mu.Lock()
	if lt, ok := s.local[app]; ok && lt.token.Value == failed {
		delete(s.local, app)
	}
	s.gen[app]++
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("wechat: invalidate token: %w", err)
	}
	return nil
}

var invalidateScript = redis.NewScript(`
if redis.call("HGET", KEYS[1], "token") == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0`)

func (s *TokenStore) read(ctx context.Context, app string) (Token, bool, error) {
	vals, err := s.rdb.HMGet(ctx, tokenKey(app), "token", "expires_ms").Result()
	if err != nil {
		return Token{}, false, fmt.Errorf("wechat: read token: %w", err)
	}
	tok, _ := vals[0].(string)
	exp, _ := vals[1].(string)
	ms, perr := strconv.ParseInt(exp, 10, 64)
	if tok == "" || perr != nil {
		return Token{}, false, nil
	}
	return Token{Value: tok, ExpiresAt: time.UnixMilli(ms)}, true, nil
}

// tryRefresh fetches and stores a new token if it wins the app's lock. It returns
// a zero Token when another process holds the lock.
func (s *TokenStore) tryRefresh(ctx context.Context, cred Credentials) (Token, error) {
	lock, err := redislock.TryAcquire(ctx, s.rdb, lockKey(cred.App), s.cfg.LockLease)
	if err != nil {
		return Token{}, fmt.Errorf("wechat: token lock: %w", err)
	}
	if lock == nil {
		return Token{}, nil
	}
	defer lock.Release(ctx)

	// Someone may have stored a fresh token between our read and our lock.
	if tok, found, err := s.read(ctx, cred.App); err == nil && found && tok.ExpiresAt.Sub(s.cfg.Now()) > s.cfg.RefreshBefore {
		return tok, nil
	}
	fetchCtx, cancel := context.WithTimeout(ctx, s.cfg.LockLease*4/5)
	defer cancel()
	var tok Token
	if cred.Stable {
		tok, err = s.fetcher.FetchStableToken(fetchCtx, cred.AppID, cred.Secret, false)
	} else {
		tok, err = s.fetcher.FetchToken(fetchCtx, cred.AppID, cred.Secret)
	}
	s.cfg.OnFetch(cred.App, err)
	if err != nil {
		return Token{}, err
	}
	key := tokenKey(cred.App)
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key, "token", tok.Value, "expires_ms", strconv.FormatInt(tok.ExpiresAt.UnixMilli(), 10))
		p.PExpireAt(ctx, key, tok.ExpiresAt)
		return nil
	})
	if err != nil {
		return Token{}, fmt.Errorf("wechat: store token: %w", err)
	}
	return tok, nil
}

func (s *TokenStore) remember(app string, tok Token, now time.Time, gen uint64) {
	refresh := now.Add(s.cfg.LocalTTL)
	if r := tok.ExpiresAt.Add(-s.cfg.RefreshBefore); r.Before(refresh) {
		refresh = r
	}
	s.mu.Lock()
	if s.gen[app] == gen {
		s.local[app] = localToken{token: tok, refresh: refresh}
	}
	s.mu.Unlock()
}
