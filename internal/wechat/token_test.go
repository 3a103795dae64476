package wechat_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/wechat"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

const (
	tokenTestApp    = "default"
	tokenTestAppID  = "wxtokentestapp"
	tokenTestSecret = "SECRET-CANARY-token-9b4e"
	// The Redis layout is shared by every process of a deployment (and by
	// versions during a rolling upgrade), so the tests pin it.
	tokenTestKey     = "wxpush:token:{" + tokenTestApp + "}"
	tokenTestLockKey = "wxpush:token:{" + tokenTestApp + "}:lock"
)

var tokenTestCred = wechat.Credentials{App: tokenTestApp, AppID: tokenTestAppID, Secret: tokenTestSecret}

// tokenTestBundle is a simulator behind a request counter, and a private Redis.
type tokenTestBundle struct {
	sim    *wechatsim.Server
	url    string
	client *wechat.Client
	redis  *redistest.Server
	rdb    *redis.Client

	mu       sync.Mutex
	requests map[string]int // by path, every request including failed ones
}

func tokenTestSetup(t *testing.T) *tokenTestBundle {
	t.Helper()
	sim, err := wechatsim.New(wechatsim.Config{
		Apps: []wechatsim.App{{AppID: tokenTestAppID, Secret: tokenTestSecret, Token: "callbacktoken"}},
	})
	if err != nil {
		t.Fatalf("wechatsim.New: %v", err)
	}
	t.Cleanup(sim.Close)
	b := &tokenTestBundle{sim: sim, requests: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.requests[r.URL.Path]++
		b.mu.Unlock()
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	b.url = srv.URL
	b.client = wechat.NewClient(srv.URL)
	b.redis = redistest.Start(t)
	b.rdb = b.redis.Client(t)
	return b
}

// requestCount returns how many requests reached path, failed ones included.
func (b *tokenTestBundle) requestCount(path string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.requests[path]
}

func (b *tokenTestBundle) fetches() int {
	return b.sim.Stats().TokenFetches[tokenTestAppID]
}

// store returns a TokenStore as another process would have it: its own Redis
// connection pool and its own WeChat client.
func (b *tokenTestBundle) store(t *testing.T, cfg wechat.TokenStoreConfig) *wechat.TokenStore {
	t.Helper()
	return wechat.NewTokenStore(b.redis.Client(t), wechat.NewClient(b.url), cfg)
}

// redisToken reads the shared token as stored in Redis ("" when none).
func (b *tokenTestBundle) redisToken(t *testing.T) (string, time.Time) {
	t.Helper()
	vals, err := b.rdb.HMGet(context.Background(), tokenTestKey, "token", "expires_ms").Result()
	if err != nil {
		t.Fatalf("HMGET %s: %v", tokenTestKey, err)
	}
	tok, _ := vals[0].(string)
	ms, _ := vals[1].(string)
	n, _ := strconv.ParseInt(ms, 10, 64)
	return tok, time.UnixMilli(n)
}

func tokenTestCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestTokenStoreServesFromCache(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		stable   bool
		wantPath string
		notPath  string
	}{
		{name: "cgi-bin/token", stable: false, wantPath: "/cgi-bin/token", notPath: "/cgi-bin/stable_token"},
		{name: "stable_token", stable: true, wantPath: "/cgi-bin/stable_token", notPath: "/cgi-bin/token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := tokenTestSetup(t)
			ctx := tokenTestCtx(t)
			cred := tokenTestCred
			cred.Stable = tt.stable
			// LocalTTL tiny so that most calls go through Redis too.
			s := wechat.NewTokenStore(b.rdb, b.client, wechat.TokenStoreConfig{LocalTTL: time.Nanosecond})

			first, err := s.Token(ctx, cred)
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			for i := range 20 {
				got, err := s.Token(ctx, cred)
				if err != nil {
					t.Fatalf("Token #%d: %v", i, err)
				}
				if got != first {
					t.Fatalf("Token #%d = a different token", i)
				}
			}
			if n := b.fetches(); n != 1 {
				t.Errorf("simulator token fetches = %d, want 1", n)
			}
			if n := b.requestCount(tt.wantPath); n != 1 {
				t.Errorf("%s requests = %d, want 1", tt.wantPath, n)
			}
			if n := b.requestCount(tt.notPath); n != 0 {
				t.Errorf("%s requests = %d, want 0", tt.notPath, n)
			}
			if stored, _ := b.redisToken(t); stored != first {
				t.Errorf("Redis holds a different token than Token returned")
			}
			// And the token works.
			if _, err := b.client.SendTemplate(ctx, first, clientTestMessage()); err != nil {
				t.Errorf("send with the cached token: %v", err)
			}
		})
	}
}

// TestTokenStoresShareOneToken: three processes starting at once on one Redis
// fetch one token between them.
func TestTokenStoresShareOneToken(t *testing.T) {
	t.Parallel()
	b := tokenTestSetup(t)
	ctx := tokenTestCtx(t)
	const processes, callsEach = 3, 10

	start := make(chan struct{})
	var wg sync.WaitGroup
	got := make([][]string, processes)
	errs := make(chan error, processes*callsEach)
	for p := range processes {
		s := b.store(t, wechat.TokenStoreConfig{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for range callsEach {
				tok, err := s.Token(ctx, tokenTestCred)
				if err != nil {
					errs <- err
					return
				}
				got[p] = append(got[p], tok)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Token: %v", err)
	}
	if n := b.fetches(); n != 1 {
		t.Errorf("simulator token fetches = %d, want 1", n)
	}
	want, _ := b.redisToken(t)
	for p, toks := range got {
		for i, tok := range toks {
			if tok != want {
				t.Errorf("process %d call %d got a token other than the shared one", p, i)
			}
		}
	}
}

// TestTokenStorm is invariant 5: once the shared token dies, 50 senders in three
// processes that each hit 40001 cause exactly one refresh, and all end up on the
// same new token.
func TestTokenStorm(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// send uses the token as a sender would, and reports whether WeChat
		// rejected it as a token error. old is the token that died.
		send func(ctx context.Context, b *tokenTestBundle, old, tok string) (bool, error)
	}{
		{
			name: "real sends through the simulator",
			send: func(ctx context.Context, b *tokenTestBundle, _, tok string) (bool, error) {
				_, err := b.client.SendTemplate(ctx, tok, clientTestMessage())
				if err == nil {
					return false, nil
				}
				if wechat.ClassOfError(err) == wechat.ClassToken {
					return true, nil
				}
				return false, err
			},
		},
		{
			// No HTTP round trip between Token and Invalidate: the store's
			// own races get a narrower, busier window.
			name: "senders that fail exactly when holding the dead token",
			send: func(_ context.Context, _ *tokenTestBundle, old, tok string) (bool, error) {
				return tok == old, nil
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := tokenTestSetup(t)
			ctx := tokenTestCtx(t)
			const processes, senders = 3, 50

			stores := make([]*wechat.TokenStore, processes)
			var old string
			for i := range stores {
				stores[i] = b.store(t, wechat.TokenStoreConfig{})
				tok, err := stores[i].Token(ctx, tokenTestCred)
				if err != nil {
					t.Fatalf("warm store %d: %v", i, err)
				}
				if old == "" {
					old = tok
				} else if tok != old {
					t.Fatalf("store %d warmed with a different token", i)
				}
			}
			if n := b.fetches(); n != 1 {
				t.Fatalf("token fetches after warm-up = %d, want 1", n)
			}
			// The cached token dies everywhere at once: every sender holding
			// it gets 40001.
			b.sim.Revoke(tokenTestAppID)

			start := make(chan struct{})
			var wg sync.WaitGroup
			var rejected atomic.Int32
			final := make([]string, senders)
			errs := make([]error, senders)
			for g := range senders {
				s := stores[g%processes]
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					tok, err := s.Token(ctx, tokenTestCred)
					if err != nil {
						errs[g] = err
						return
					}
					bad, err := tt.send(ctx, b, old, tok)
					if err != nil {
						errs[g] = err
						return
					}
					if bad {
						rejected.Add(1)
						// What a sender does on 40001: drop the failed token
						// (only if still current), get a fresh one, retry once.
						if err := s.Invalidate(ctx, tokenTestApp, tok); err != nil {
							errs[g] = err
							return
						}
						if tok, err = s.Token(ctx, tokenTestCred); err != nil {
							errs[g] = err
							return
						}
						if bad, err := tt.send(ctx, b, old, tok); err != nil || bad {
							errs[g] = fmt.Errorf("the retry was rejected too (retried with the dead token: %v; err: %v)", tok == old, err)
							return
						}
					}
					final[g] = tok
				}()
			}
			close(start)
			wg.Wait()

			for g, err := range errs {
				if err != nil {
					t.Errorf("sender %d: %v", g, err)
				}
			}
			if rejected.Load() == 0 {
				t.Fatalf("no sender was rejected: the storm did not happen")
			}
			if n := b.fetches(); n != 2 {
				t.Errorf("token fetches = %d, want 2 (one refresh for the whole storm)", n)
			}
			current, _ := b.redisToken(t)
			if current == "" || current == old {
				t.Fatalf("Redis does not hold a new token")
			}
			for g, tok := range final {
				if errs[g] == nil && tok != current {
					t.Errorf("sender %d ended with a token other than the new shared one", g)
				}
			}
		})
	}
}

// TestTokenStoreInvalidate: Invalidate drops the token only if it is still the
// current one (compare-and-invalidate), so late 40001s after a refresh do not
// trigger another.
func TestTokenStoreInvalidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// run invalidates something and returns the token the caller gets next.
		run         func(t *testing.T, ctx context.Context, b *tokenTestBundle, a, other *wechat.TokenStore, cur string) string
		wantFetches int
		wantSame    bool // the token after is the one before
	}{
		{
			name: "a token that was never current leaves the current one alone",
			run: func(t *testing.T, ctx context.Context, b *tokenTestBundle, a, _ *wechat.TokenStore, _ string) string {
				return tokenTestInvalidateThenToken(t, ctx, a, "some-old-token")
			},
			wantFetches: 1,
			wantSame:    true,
		},
		{
			name: "another process invalidating a stale token leaves the current one alone",
			run: func(t *testing.T, ctx context.Context, b *tokenTestBundle, _, other *wechat.TokenStore, _ string) string {
				return tokenTestInvalidateThenToken(t, ctx, other, "some-old-token")
			},
			wantFetches: 1,
			wantSame:    true,
		},
		{
			name: "the current token is dropped and refreshed",
			run: func(t *testing.T, ctx context.Context, b *tokenTestBundle, a, _ *wechat.TokenStore, cur string) string {
				return tokenTestInvalidateThenToken(t, ctx, a, cur)
			},
			wantFetches: 2,
			wantSame:    false,
		},
		{
			name: "a late 40001 after another process refreshed keeps the new token",
			run: func(t *testing.T, ctx context.Context, b *tokenTestBundle, a, other *wechat.TokenStore, cur string) string {
				// The other process saw 40001 first and refreshed.
				fresh := tokenTestInvalidateThenToken(t, ctx, other, cur)
				// a still caches cur locally; its sender now reports the
				// same failure.
				got := tokenTestInvalidateThenToken(t, ctx, a, cur)
				if got != fresh {
					t.Errorf("late invalidator got a different token than the refresher")
				}
				return got
			},
			wantFetches: 2,
			wantSame:    false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := tokenTestSetup(t)
			ctx := tokenTestCtx(t)
			a := b.store(t, wechat.TokenStoreConfig{})
			other := b.store(t, wechat.TokenStoreConfig{})
			cur, err := a.Token(ctx, tokenTestCred)
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if _, err := other.Token(ctx, tokenTestCred); err != nil {
				t.Fatalf("other Token: %v", err)
			}

			got := tt.run(t, ctx, b, a, other, cur)
			if (got == cur) != tt.wantSame {
				t.Errorf("token after == token before: %v, want %v", got == cur, tt.wantSame)
			}
			if n := b.fetches(); n != tt.wantFetches {
				t.Errorf("token fetches = %d, want %d", n, tt.wantFetches)
			}
			if stored, _ := b.redisToken(t); stored != got {
				t.Errorf("Redis holds a different token than the caller got")
			}
		})
	}
}

func tokenTestInvalidateThenToken(t *testing.T, ctx context.Context, s *wechat.TokenStore, failed string) string {
	t.Helper()
	if err := s.Invalidate(ctx, tokenTestApp, failed); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	tok, err := s.Token(ctx, tokenTestCred)
	if err != nil {
		t.Fatalf("Token after Invalidate: %v", err)
	}
	return tok
}

// tokenTestPause pauses the first command named one of names, once armed:
// before it is sent (before) or after its reply arrived.
type tokenTestPause struct {
	names   []string
	before  bool
	armed   atomic.Bool
	reached chan struct{} // closed when the paused command is held
	resume  chan struct{} // close to let it go on
}

func (h *tokenTestPause) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *tokenTestPause) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *tokenTestPause) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		hold := slices.Contains(h.names, cmd.Name()) && h.armed.CompareAndSwap(true, false)
		if hold && h.before {
			close(h.reached)
			<-h.resume
		}
		err := next(ctx, cmd)
		if hold && !h.before {
			close(h.reached)
			<-h.resume
		}
		return err
	}
}

// TestTokenStoreInvalidateRacesRead: a Token call of the same process that
// overlaps an Invalidate may return the failed token (it read it first), but
// must not put it back in the process's cache. Otherwise the invalidator's
// next Token returns the very token that just failed, and its one retry fails
// again.
//
// TestTokenStoreInvalidateRacesRead is a regression test: a Redis read in
// flight across an Invalidate once re-cached the dead token for LocalTTL.
func TestTokenStoreInvalidateRacesRead(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// pause says where to hold the paused party.
		pause *tokenTestPause
		// pauseInvalidate: the paused party is Invalidate (the other party,
		// Token, runs to completion meanwhile); otherwise it is Token.
		pauseInvalidate bool
	}{
		{
			name:  "read in flight when Invalidate runs",
			pause: &tokenTestPause{names: []string{"hmget"}, before: false},
		},
		{
			name:            "read just before Invalidate's Redis delete",
			pause:           &tokenTestPause{names: []string{"evalsha", "eval"}, before: true},
			pauseInvalidate: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := tokenTestSetup(t)
			ctx := tokenTestCtx(t)

			// Another process fetches the shared token, which then dies.
			old, err := b.store(t, wechat.TokenStoreConfig{}).Token(ctx, tokenTestCred)
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			b.sim.Revoke(tokenTestAppID)

			hook := tt.pause
			hook.reached, hook.resume = make(chan struct{}), make(chan struct{})
			rdb := b.redis.Client(t)
			rdb.AddHook(hook)
			s := wechat.NewTokenStore(rdb, wechat.NewClient(b.url), wechat.TokenStoreConfig{})

			// Sender 1 asks for a token while sender 2, in the same
			// process, invalidates old after a 40001.
			getToken := func() error {
				_, err := s.Token(ctx, tokenTestCred)
				return err
			}
			invalidate := func() error { return s.Invalidate(ctx, tokenTestApp, old) }
			paused, other := getToken, invalidate
			if tt.pauseInvalidate {
				paused, other = invalidate, getToken
			}
			hook.armed.Store(true)
			done := make(chan error, 1)
			go func() { done <- paused() }()
			select {
			case <-hook.reached:
			case <-ctx.Done():
				t.Fatal("the paused call never reached its pause point")
			}
			otherErr := other()
			close(hook.resume)
			if err := <-done; err != nil {
				t.Fatalf("paused call: %v", err)
			}
			if otherErr != nil {
				t.Fatalf("concurrent call: %v", otherErr)
			}

			// Sender 2 now asks for a fresh token to retry with.
			tok, err := s.Token(ctx, tokenTestCred)
			if err != nil {
				t.Fatalf("Token after Invalidate: %v", err)
			}
			if tok == old {
				t.Errorf("Token after Invalidate returned the token that was just invalidated")
			}
			if _, err := b.client.SendTemplate(ctx, tok, clientTestMessage()); err != nil {
				t.Errorf("retry with the token from Token after Invalidate: %v", err)
			}
		})
	}
}

// tokenTestClock is an injectable clock that moves only when told.
type tokenTestClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *tokenTestClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *tokenTestClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func TestTokenStoreRefreshesBeforeExpiry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		refreshBefore time.Duration // 0 = the default
		effective     time.Duration
	}{
		{name: "default 5 minutes", refreshBefore: 0, effective: 5 * time.Minute},
		{name: "custom 20 minutes", refreshBefore: 20 * time.Minute, effective: 20 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := tokenTestSetup(t)
			ctx := tokenTestCtx(t)
			// The Client stamps ExpiresAt with the real clock, so the fake
			// one starts at real time.
			clock := &tokenTestClock{now: time.Now()}
			var fetchErrs []error
			var mu sync.Mutex
			s := b.store(t, wechat.TokenStoreConfig{
				RefreshBefore: tt.refreshBefore,
				Now:           clock.Now,
				OnFetch: func(app string, err error) {
					mu.Lock()
					defer mu.Unlock()
					fetchErrs = append(fetchErrs, err)
				},
			})

			first, err := s.Token(ctx, tokenTestCred)
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			_, expires := b.redisToken(t)
			if until := time.Until(expires); until < 7100*time.Second || until > 7200*time.Second {
				t.Fatalf("stored expiry is %v away, want about 7200s", until)
			}
			refreshAt := expires.Add(-tt.effective)

			steps := []struct {
				name        string
				at          time.Time
				wantFetches int
				wantFirst   bool
			}{
				{name: "right after the fetch", at: clock.Now(), wantFetches: 1, wantFirst: true},
				{name: "past the local TTL", at: clock.Now().Add(time.Minute), wantFetches: 1, wantFirst: true},
				{name: "one second before the refresh point", at: refreshAt.Add(-time.Second), wantFetches: 1, wantFirst: true},
				{name: "one second after the refresh point", at: refreshAt.Add(time.Second), wantFetches: 2, wantFirst: false},
			}
			for _, st := range steps {
				clock.Set(st.at)
				got, err := s.Token(ctx, tokenTestCred)
				if err != nil {
					t.Fatalf("%s: Token: %v", st.name, err)
				}
				if (got == first) != st.wantFirst {
					t.Errorf("%s: still the first token = %v, want %v", st.name, got == first, st.wantFirst)
				}
				if n := b.fetches(); n != st.wantFetches {
					t.Errorf("%s: token fetches = %d, want %d", st.name, n, st.wantFetches)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(fetchErrs) != 2 || fetchErrs[0] != nil || fetchErrs[1] != nil {
				t.Errorf("OnFetch saw %v, want two successful fetches", fetchErrs)
			}
		})
	}
}

// TestTokenStoreConfigError: a misconfigured app gets a config-class error from
// one token request, never a loop on the token endpoint's small daily quota.
func TestTokenStoreConfigError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		cred     wechat.Credentials
		wantCode int
		path     string
	}{
		{
			name:     "wrong secret",
			cred:     wechat.Credentials{App: tokenTestApp, AppID: tokenTestAppID, Secret: "SECRET-CANARY-wrong-1c7d"},
			wantCode: 40125,
			path:     "/cgi-bin/token",
		},
		{
			name:     "wrong secret, stable token",
			cred:     wechat.Credentials{App: tokenTestApp, AppID: tokenTestAppID, Secret: "SECRET-CANARY-wrong-1c7d", Stable: true},
			wantCode: 40125,
			path:     "/cgi-bin/stable_token",
		},
		{
			name:     "unknown appid",
			cred:     wechat.Credentials{App: tokenTestApp, AppID: "wxnosuchapp", Secret: tokenTestSecret},
			wantCode: 40013,
			path:     "/cgi-bin/token",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := tokenTestSetup(t)
			ctx := tokenTestCtx(t)
			type fetch struct {
				app string
				err error
			}
			var mu sync.Mutex
			var seen []fetch
			s := b.store(t, wechat.TokenStoreConfig{OnFetch: func(app string, err error) {
				mu.Lock()
				defer mu.Unlock()
				seen = append(seen, fetch{app, err})
			}})

			tok, err := s.Token(ctx, tt.cred)
			if err == nil {
				t.Fatalf("Token = %q, want an error", tok)
			}
			var apiErr *wechat.APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v (%T), want *APIError", err, err)
			}
			if apiErr.Code != tt.wantCode {
				t.Errorf("Code = %d, want %d", apiErr.Code, tt.wantCode)
			}
			if got := apiErr.Class(); got != wechat.ClassConfig {
				t.Errorf("Class() = %v, want config", got)
			}
			if got := wechat.ClassOfError(err); got != wechat.ClassConfig {
				t.Errorf("ClassOfError = %v, want config", got)
			}
			if n := b.requestCount(tt.path); n != 1 {
				t.Errorf("%s requests = %d, want exactly 1", tt.path, n)
			}
			mu.Lock()
			if len(seen) != 1 || seen[0].app != tokenTestApp || !errors.As(seen[0].err, new(*wechat.APIError)) {
				t.Errorf("OnFetch saw %v, want one call for %q with the *APIError", seen, tokenTestApp)
			}
			mu.Unlock()
			clientTestNoLeak(t, err, tt.cred.Secret, tokenTestSecret)

			// The failed refresher released its lock: the app is not blocked
			// for a lease, and nothing was stored.
			if n, err := b.rdb.Exists(ctx, tokenTestLockKey, tokenTestKey).Result(); err != nil || n != 0 {
				t.Errorf("lock or token key left in Redis after a failed fetch (exists = %d, %v)", n, err)
			}
		})
	}
}

// tokenTestLockSeen reports when the store's SET NX on the lock key found it taken.
type tokenTestLockSeen struct {
	once sync.Once
	ch   chan struct{}
}

func (h *tokenTestLockSeen) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *tokenTestLockSeen) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *tokenTestLockSeen) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		args := cmd.Args()
		if bc, ok := cmd.(*redis.BoolCmd); ok && cmd.Name() == "set" && len(args) > 1 && args[1] == tokenTestLockKey && err == nil && !bc.Val() {
			h.once.Do(func() { close(h.ch) })
		}
		return err
	}
}

// TestTokenStoreWaitsForLockHolder: while another process holds the refresh
// lock, Token neither fetches nor fails at once: it waits for the holder's token.
func TestTokenStoreWaitsForLockHolder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// lockTTL is the lease of the lock we take as the "other process".
		lockTTL time.Duration
		wait    time.Duration
		// existing is a token already in Redis with that much life left (0 = none).
		existing time.Duration
		// publish writes a token once the store has found the lock taken.
		publish     bool
		wantToken   string // "" = whatever the simulator issues
		wantErr     error
		wantFetches int
	}{
		{
			name:        "token appears while waiting",
			lockTTL:     time.Minute,
			wait:        10 * time.Second,
			publish:     true,
			wantToken:   "token-from-the-lock-holder",
			wantFetches: 0,
		},
		{
			name:        "nothing appears within Wait",
			lockTTL:     time.Minute,
			wait:        200 * time.Millisecond,
			wantErr:     wechat.ErrTokenBusy,
			wantFetches: 0,
		},
		{
			name:        "a token in its last minutes is used rather than waited for",
			lockTTL:     time.Minute,
			wait:        10 * time.Second,
			existing:    time.Minute,
			wantToken:   "token-in-its-last-minute",
			wantFetches: 0,
		},
		{
			name:        "the holder died: its lease runs out and we fetch",
			lockTTL:     300 * time.Millisecond,
			wait:        10 * time.Second,
			wantFetches: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := tokenTestSetup(t)
			ctx := tokenTestCtx(t)

			ok, err := b.rdb.SetNX(ctx, tokenTestLockKey, "another-process", tt.lockTTL).Result()
			if err != nil || !ok {
				t.Fatalf("take the lock: %v, %v", ok, err)
			}
			if tt.existing > 0 {
				exp := time.Now().Add(tt.existing).UnixMilli()
				if err := b.rdb.HSet(ctx, tokenTestKey, "token", tt.wantToken, "expires_ms", strconv.FormatInt(exp, 10)).Err(); err != nil {
					t.Fatalf("HSET: %v", err)
				}
			}
			seen := &tokenTestLockSeen{ch: make(chan struct{})}
			rdb := b.redis.Client(t)
			rdb.AddHook(seen)
			s := wechat.NewTokenStore(rdb, wechat.NewClient(b.url), wechat.TokenStoreConfig{Wait: tt.wait})

			publishErr := make(chan error, 1)
			if tt.publish {
				go func() {
					// Write the holder's token only once the store has found
					// the lock taken, so it can only get it by waiting.
					select {
					case <-seen.ch:
					case <-ctx.Done():
						publishErr <- ctx.Err()
						return
					}
					exp := time.Now().Add(2 * time.Hour).UnixMilli()
					publishErr <- b.rdb.HSet(ctx, tokenTestKey, "token", tt.wantToken, "expires_ms", strconv.FormatInt(exp, 10)).Err()
				}()
			}

			start := time.Now()
			tok, err := s.Token(ctx, tokenTestCred)
			elapsed := time.Since(start)
			if tt.publish {
				if err := <-publishErr; err != nil {
					t.Fatalf("publish the holder's token: %v", err)
				}
			}
			select {
			case <-seen.ch:
			default:
				t.Errorf("the store never tried the lock and found it taken")
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Token = %q, %v; want %v", tok, err, tt.wantErr)
				}
				if elapsed < tt.wait {
					t.Errorf("gave up after %v, before Wait (%v)", elapsed, tt.wait)
				}
			} else {
				if err != nil {
					t.Fatalf("Token: %v", err)
				}
				if tt.wantToken != "" && tok != tt.wantToken {
					t.Errorf("Token = %q, want %q", tok, tt.wantToken)
				}
				if tt.wantToken == "" {
					if stored, _ := b.redisToken(t); tok == "" || stored != tok {
						t.Errorf("Token returned a token that is not the stored one")
					}
				}
			}
			if n := b.fetches(); n != tt.wantFetches {
				t.Errorf("token fetches = %d, want %d", n, tt.wantFetches)
			}
		})
	}
}

// TestTokenStoreRedisDown: with Redis gone a TokenStore reports an error; it
// neither panics nor falls back to fetching its own token (which would break
// every other process's token).
func TestTokenStoreRedisDown(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// warm has the store fetch a token before Redis dies, then invalidate it.
		warm bool
	}{
		{name: "no cached token", warm: false},
		{name: "cached token invalidated", warm: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := tokenTestSetup(t)
			ctx := tokenTestCtx(t)
			s := b.store(t, wechat.TokenStoreConfig{})
			var cached string
			if tt.warm {
				var err error
				if cached, err = s.Token(ctx, tokenTestCred); err != nil {
					t.Fatalf("Token: %v", err)
				}
			}
			fetchesBefore := b.fetches()
			b.redis.Kill(t)

			if tt.warm {
				if err := s.Invalidate(ctx, tokenTestApp, cached); err == nil {
					t.Errorf("Invalidate with Redis down succeeded, want an error")
				}
			}
			tok, err := s.Token(ctx, tokenTestCred)
			if err == nil {
				t.Fatalf("Token with Redis down = %q, nil; want an error", tok)
			}
			if tok != "" {
				t.Errorf("Token returned %q with its error", tok)
			}
			if n := b.fetches(); n != fetchesBefore {
				t.Errorf("token fetches went from %d to %d with Redis down, want no fetch", fetchesBefore, n)
			}
			clientTestNoLeak(t, err, tokenTestSecret)
		})
	}
}
