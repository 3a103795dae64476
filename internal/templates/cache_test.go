package templates_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/templates"
	"github.com/wxpush/wxpush/internal/wechat"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

func TestMain(m *testing.M) {
	// go-redis retries a failed dial from a background goroutine that sleeps a
	// second between tries and exits once its pool is closed; tests that kill
	// Redis can end while it sleeps.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

const (
	testApp    = "default"
	testAppID  = "wxtemplatesapp"
	testSecret = "SECRET-CANARY-templates-3f7a"
	// The Redis layout is shared by every process of a deployment, so tests pin it.
	testListKey = "wxpush:tpl:{" + testApp + "}"
	testLockKey = "wxpush:tpl:{" + testApp + "}:lock"

	seedID     = "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY"
	categoryID = "category-tpl-1"
	listPath   = "/cgi-bin/template/get_all_private_template"
)

var testTemplates = []wechat.Template{
	{
		ID:      seedID,
		Title:   "信用卡消费提醒",
		Content: "{{User.DATA}}，您好：\n您尾号{{CardNumber.DATA}}的卡于{{Date.DATA}}{{Type.DATA}}{{Money.DATA}}。\n截至{{DeadTime.DATA}}，可用余额{{Left.DATA}}。",
	},
	{
		ID:      categoryID,
		Title:   "预约成功通知",
		Content: "预约项目：{{thing1.DATA}}\n预约时间：{{time2.DATA}}\n联系人：{{name3.DATA}}",
	},
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// bundle is a simulator serving testTemplates behind a request counter, a
// private Redis, and a Fetcher made of a real TokenStore and Client.
type bundle struct {
	url   string
	rdb   *redis.Client
	redis *redistest.Server
	clock *clock
	fetch templates.Fetcher
	// failList makes the template list endpoint answer HTTP 500.
	failList atomic.Bool
	lists    atomic.Int64 // requests that reached the template list endpoint
}

func setup(t *testing.T) *bundle {
	t.Helper()
	cfg := wechatsim.Config{Apps: []wechatsim.App{{AppID: testAppID, Secret: testSecret, Token: "callbacktoken"}}}
	for _, tpl := range testTemplates {
		cfg.Templates = append(cfg.Templates, wechatsim.Template{AppID: testAppID, TemplateID: tpl.ID, Title: tpl.Title, Content: tpl.Content})
	}
	sim, err := wechatsim.New(cfg)
	if err != nil {
		t.Fatalf("wechatsim.New: %v", err)
	}
	t.Cleanup(sim.Close)
	b := &bundle{clock: &clock{t: time.Date(2024, 6, 7, 19, 24, 0, 0, time.UTC)}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == listPath {
			b.lists.Add(1)
			if b.failList.Load() {
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
		}
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	b.url = srv.URL
	b.redis = redistest.Start(t)
	b.rdb = b.redis.Client(t)
	b.fetch = newFetcher(t, b.rdb, srv.URL, wechat.Credentials{App: testApp, AppID: testAppID, Secret: testSecret})
	return b
}

// newFetcher is how wxpush wires a Fetcher: the app's token from a TokenStore,
// then the list from the Client.
func newFetcher(t *testing.T, rdb redis.UniversalClient, baseURL string, cred wechat.Credentials) templates.Fetcher {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	client := wechat.NewClient(baseURL, wechat.WithHTTPClient(&http.Client{Transport: tr, Timeout: 5 * time.Second}))
	store := wechat.NewTokenStore(rdb, client, wechat.TokenStoreConfig{})
	return func(ctx context.Context, app string) ([]wechat.Template, error) {
		tok, err := store.Token(ctx, cred)
		if err != nil {
			return nil, err
		}
		return client.PrivateTemplates(ctx, tok)
	}
}

func (b *bundle) cache(cfg templates.Config) *templates.Cache {
	if cfg.Now == nil {
		cfg.Now = b.clock.Now
	}
	return templates.New(b.rdb, b.fetch, cfg)
}

func (b *bundle) wantLists(t *testing.T, want int64) {
	t.Helper()
	if got := b.lists.Load(); got != want {
		t.Errorf("template list fetched %d times, want %d", got, want)
	}
}

func mustList(t *testing.T, c *templates.Cache) []wechat.Template {
	t.Helper()
	got, err := c.List(context.Background(), testApp)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if !reflect.DeepEqual(got, testTemplates) {
		t.Fatalf("List = %+v, want %+v", got, testTemplates)
	}
	return got
}

func TestListFetchesOncePerTTL(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.cache(templates.Config{TTL: 10 * time.Minute})

	for range 20 {
		mustList(t, c)
	}
	b.wantLists(t, 1)

	b.clock.Advance(10*time.Minute - time.Second)
	mustList(t, c)
	b.wantLists(t, 1)

	b.clock.Advance(time.Second)
	mustList(t, c)
	mustList(t, c)
	b.wantLists(t, 2)

	// The stored form: JSON with the fetch time, for other processes and redis-cli.
	raw, err := b.rdb.Get(context.Background(), testListKey).Bytes()
	if err != nil {
		t.Fatalf("GET %s: %v", testListKey, err)
	}
	var stored struct {
		FetchedAt time.Time         `json:"fetched_at"`
		Templates []wechat.Template `json:"templates"`
	}
	if err := json.Unmarshal(raw, &stored); err != nil {
		t.Fatalf("stored list is not JSON: %v", err)
	}
	if !stored.FetchedAt.Equal(b.clock.Now()) || len(stored.Templates) != len(testTemplates) {
		t.Errorf("stored = fetched_at %v with %d templates, want %v with %d", stored.FetchedAt, len(stored.Templates), b.clock.Now(), len(testTemplates))
	}
}

func TestInvalidate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	c := b.cache(templates.Config{MinRefresh: time.Minute})

	mustList(t, c)
	b.wantLists(t, 1)

	// A list fetched moments ago already reflects the change a 40037 reports.
	if err := c.Invalidate(ctx, testApp); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	mustList(t, c)
	b.wantLists(t, 1)

	b.clock.Advance(time.Minute)
	if err := c.Invalidate(ctx, testApp); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	if n, _ := b.rdb.Exists(ctx, testListKey).Result(); n != 0 {
		t.Errorf("%s still exists after Invalidate", testListKey)
	}
	mustList(t, c)
	b.wantLists(t, 2)

	// Invalidating an app with no list is not an error.
	if err := c.Invalidate(ctx, "other"); err != nil {
		t.Errorf("Invalidate(other): %v", err)
	}
}

func TestCachesShareOneRedis(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first, second := b.cache(templates.Config{}), b.cache(templates.Config{})

	mustList(t, first)
	mustList(t, second)
	b.wantLists(t, 1)
}

func TestConcurrentMissesFetchOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Three "processes", each with its own Redis connection pool.
	var caches []*templates.Cache
	for range 3 {
		rdb := b.redis.Client(t)
		caches = append(caches, templates.New(rdb, b.fetch, templates.Config{Now: b.clock.Now}))
	}

	var wg sync.WaitGroup
	errs := make(chan error, 60)
	for i := range 60 {
		wg.Go(func() {
			got, err := caches[i%3].List(context.Background(), testApp)
			if err == nil && len(got) != len(testTemplates) {
				err = errors.New("wrong list")
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("List: %v", err)
	}
	b.wantLists(t, 1)
}

func TestStaleListServesWhileAnotherProcessRefreshes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	c := b.cache(templates.Config{TTL: time.Minute, Wait: 100 * time.Millisecond})
	mustList(t, c)

	// Another process holds the refresh lock.
	if err := b.rdb.Set(ctx, testLockKey, "someone-else", time.Minute).Err(); err != nil {
		t.Fatalf("SET lock: %v", err)
	}
	b.clock.Advance(time.Minute)
	mustList(t, c)
	b.wantLists(t, 1)

	// With no list at all there is nothing to serve: wait, then give up.
	if err := b.rdb.Del(ctx, testListKey).Err(); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, err := c.List(ctx, testApp); !errors.Is(err, templates.ErrUnavailable) {
		t.Errorf("List with the lock held elsewhere = %v, want ErrUnavailable", err)
	}
	b.wantLists(t, 1)
}

func TestFailedFetchHoldsOffRefetching(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	var fetchErrs atomic.Int64
	onFetch := func(app string, err error) {
		if err != nil {
			fetchErrs.Add(1)
		}
	}
	c := b.cache(templates.Config{RetryAfter: 30 * time.Second, OnFetch: onFetch})
	other := b.cache(templates.Config{RetryAfter: 30 * time.Second})

	b.failList.Store(true)
	for _, cache := range []*templates.Cache{c, c, other} {
		if _, err := cache.List(ctx, testApp); !errors.Is(err, templates.ErrUnavailable) {
			t.Fatalf("List while WeChat fails = %v, want ErrUnavailable", err)
		}
	}
	b.wantLists(t, 1)
	if fetchErrs.Load() != 1 {
		t.Errorf("OnFetch saw %d failures, want 1", fetchErrs.Load())
	}

	b.failList.Store(false)
	b.clock.Advance(29 * time.Second)
	if _, err := c.List(ctx, testApp); !errors.Is(err, templates.ErrUnavailable) {
		t.Errorf("List within RetryAfter = %v, want ErrUnavailable", err)
	}
	b.wantLists(t, 1)

	b.clock.Advance(time.Second)
	mustList(t, c)
	mustList(t, other)
	b.wantLists(t, 2)
}

func TestCheck(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.cache(templates.Config{})
	seedData := map[string]string{
		"User": "黄先生", "Date": "06月07日 19时24分", "CardNumber": "0426", "Type": "消费",
		"Money": "人民币260.00元", "DeadTime": "06月07日19时24分", "Left": "6504.09",
	}
	with := func(base map[string]string, key, value string) map[string]string {
		m := make(map[string]string, len(base)+1)
		for k, v := range base {
			m[k] = v
		}
		if value == "\x00" {
			delete(m, key)
		} else {
			m[key] = value
		}
		return m
	}
	without := func(base map[string]string, keys ...string) map[string]string {
		for _, k := range keys {
			base = with(base, k, "\x00")
		}
		return base
	}
	category := map[string]string{"thing1": "年度体检", "time2": "2024-06-07 19:24", "name3": "黄先生"}

	tests := []struct {
		name       string
		templateID string
		data       map[string]string
		want       *templates.Problem // nil = the message is fine
		wantInMsg  []string
	}{
		{name: "seed message", templateID: seedID, data: seedData},
		{name: "category message", templateID: categoryID, data: category},
		{name: "value at its limit", templateID: categoryID, data: with(category, "thing1", strings.Repeat("中", 20))},
		{
			name: "unknown template", templateID: "no-such-template", data: seedData,
			want: &templates.Problem{Field: "template_id", Code: templates.CodeUnknownTemplate}, wantInMsg: []string{"no-such-template"},
		},
		{
			name: "empty template id", templateID: "", data: seedData,
			want: &templates.Problem{Field: "template_id", Code: templates.CodeUnknownTemplate},
		},
		{
			name: "missing keys", templateID: seedID, data: without(seedData, "Left", "Date"),
			want: &templates.Problem{Field: "data", Code: templates.CodeMissingKeys}, wantInMsg: []string{"Date, Left"},
		},
		{
			name: "empty data", templateID: categoryID, data: nil,
			want: &templates.Problem{Field: "data", Code: templates.CodeMissingKeys}, wantInMsg: []string{"name3, thing1, time2"},
		},
		{
			name: "unknown key", templateID: seedID, data: with(seedData, "remark", "谢谢"),
			want: &templates.Problem{Field: "data.remark", Code: templates.CodeUnknownKey}, wantInMsg: []string{`"remark"`, "CardNumber"},
		},
		{
			name: "missing keys are reported before unknown ones", templateID: categoryID, data: with(without(category, "time2"), "time3", "x"),
			want: &templates.Problem{Field: "data", Code: templates.CodeMissingKeys}, wantInMsg: []string{"time2"},
		},
		{
			name: "value too long", templateID: categoryID, data: with(category, "thing1", strings.Repeat("中", 21)),
			want: &templates.Problem{Field: "data.thing1.value", Code: templates.CodeValueTooLong}, wantInMsg: []string{"at most 20 characters (got 21)"},
		},
		{
			name: "Chinese name too long", templateID: categoryID, data: with(category, "name3", strings.Repeat("张", 11)),
			want: &templates.Problem{Field: "data.name3.value", Code: templates.CodeValueTooLong}, wantInMsg: []string{"at most 10"},
		},
		{name: "free keys have no limit", templateID: seedID, data: with(seedData, "User", strings.Repeat("黄", 50))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Check(context.Background(), testApp, tt.templateID, tt.data)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if tt.want == nil {
				if got != nil {
					t.Fatalf("Check = %+v, want no problem", got)
				}
				return
			}
			if got == nil {
				t.Fatalf("Check = nil, want %s problem on %s", tt.want.Code, tt.want.Field)
			}
			if got.Field != tt.want.Field || got.Code != tt.want.Code {
				t.Errorf("Check = {%s %s}, want {%s %s}", got.Field, got.Code, tt.want.Field, tt.want.Code)
			}
			for _, s := range tt.wantInMsg {
				if !strings.Contains(got.Message, s) {
					t.Errorf("message %q does not contain %q", got.Message, s)
				}
			}
		})
	}
	// Neither the good messages nor the unknown template id fetched again:
	// the list is younger than MinRefresh.
	b.wantLists(t, 1)
}

// A template added in the admin console is found without waiting for the TTL,
// but made-up ids cannot make wxpush fetch more than once a MinRefresh.
func TestCheckRefetchesForUnknownTemplate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	var mu sync.Mutex
	list := []wechat.Template{testTemplates[1]}
	var fetches atomic.Int64
	fetch := func(ctx context.Context, app string) ([]wechat.Template, error) {
		fetches.Add(1)
		mu.Lock()
		defer mu.Unlock()
		return append([]wechat.Template(nil), list...), nil
	}
	c := templates.New(b.rdb, fetch, templates.Config{MinRefresh: time.Minute, Now: b.clock.Now})
	data := map[string]string{
		"User": "a", "Date": "b", "CardNumber": "c", "Type": "d", "Money": "e", "DeadTime": "f", "Left": "g",
	}
	check := func(wantProblem bool, wantFetches int64) {
		t.Helper()
		p, err := c.Check(ctx, testApp, seedID, data)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		if (p != nil) != wantProblem {
			t.Errorf("Check = %+v, want problem %v", p, wantProblem)
		}
		if p != nil && p.Code != templates.CodeUnknownTemplate {
			t.Errorf("Check code = %s, want %s", p.Code, templates.CodeUnknownTemplate)
		}
		if got := fetches.Load(); got != wantFetches {
			t.Errorf("fetches = %d, want %d", got, wantFetches)
		}
	}

	check(true, 1)
	mu.Lock()
	list = append(list, testTemplates[0])
	mu.Unlock()
	check(true, 1) // the list is younger than MinRefresh
	b.clock.Advance(time.Minute)
	check(false, 2)
	for range 5 {
		if p, err := c.Check(ctx, testApp, "made-up", data); err != nil || p == nil || p.Field != "template_id" {
			t.Fatalf("Check(made-up) = %+v, %v; want a template_id problem", p, err)
		}
	}
	check(false, 2)
}

func TestCheckFailsOpen(t *testing.T) {
	t.Parallel()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	tests := []struct {
		name  string
		fetch func(t *testing.T, b *bundle) templates.Fetcher
		// breakRedis kills redis-server before Check.
		breakRedis bool
	}{
		{
			name: "simulator unreachable",
			fetch: func(t *testing.T, b *bundle) templates.Fetcher {
				return newFetcher(t, b.rdb, closed.URL, wechat.Credentials{App: testApp, AppID: testAppID, Secret: testSecret})
			},
		},
		{
			name: "wrong credentials",
			fetch: func(t *testing.T, b *bundle) templates.Fetcher {
				return newFetcher(t, b.rdb, b.url, wechat.Credentials{App: testApp, AppID: testAppID, Secret: "SECRET-CANARY-wrong-0d4c"})
			},
		},
		{
			name:       "redis down",
			fetch:      func(t *testing.T, b *bundle) templates.Fetcher { return b.fetch },
			breakRedis: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			c := templates.New(b.rdb, tt.fetch(t, b), templates.Config{Now: b.clock.Now})
			if tt.breakRedis {
				b.redis.Kill(t)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p, err := c.Check(ctx, testApp, seedID, map[string]string{"User": "x"})
			if p != nil {
				t.Errorf("Check problem = %+v, want none", p)
			}
			if !errors.Is(err, templates.ErrUnavailable) {
				t.Fatalf("Check error = %v, want ErrUnavailable", err)
			}
			t.Logf("Check error: %v", err)
			for _, secret := range []string{testSecret, "SECRET-CANARY-wrong-0d4c"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error leaks the secret: %v", err)
				}
			}
		})
	}
}

// TestSessionReadsOnce: a session checks many messages with one Redis read of
// the list per app, and gives the same answers as Cache.Check.
func TestSessionReadsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.cache(templates.Config{})
	ctx := context.Background()
	mustList(t, c)
	var reads atomic.Int64
	b.rdb.AddHook(countGets{&reads})
	sess := c.Session()
	good := map[string]string{"thing1": "年度体检", "time2": "2024-06-07 19:24", "name3": "黄先生"}
	for i := 0; i < 50; i++ {
		p, err := sess.Check(ctx, testApp, categoryID, good)
		if err != nil || p != nil {
			t.Fatalf("Session.Check(good) = %+v, %v", p, err)
		}
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("50 checks read Redis %d times, want 1", n)
	}
	bad := map[string]string{"thing1": "x", "time2": "y", "name3": "z", "nope": "x"}
	want, _ := c.Check(ctx, testApp, categoryID, bad)
	got, _ := sess.Check(ctx, testApp, categoryID, bad)
	if want == nil || got == nil || *got != *want {
		t.Errorf("Session.Check = %+v, Cache.Check = %+v; want the same problem", got, want)
	}
	b.wantLists(t, 1)
}

type countGets struct{ n *atomic.Int64 }

func (countGets) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h countGets) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "get" || cmd.Name() == "mget" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (countGets) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func TestLocalReusesListWithoutReading(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	c := b.cache(templates.Config{Local: time.Hour, MinRefresh: time.Minute})
	mustList(t, c)
	var reads atomic.Int64
	b.rdb.AddHook(countGets{&reads})
	good := map[string]string{"thing1": "年度体检", "time2": "2024-06-07 19:24", "name3": "黄先生"}
	for i := 0; i < 50; i++ {
		// A Session per check, as the API makes one per single message.
		if p, err := c.Session().Check(ctx, testApp, categoryID, good); err != nil || p != nil {
			t.Fatalf("Check(good) = %+v, %v", p, err)
		}
	}
	if n := reads.Load(); n != 0 {
		t.Errorf("50 single checks with Local read Redis %d times, want 0", n)
	}
	// A list older than its TTL is not reused: the memo never outlives freshness.
	b.clock.Advance(11 * time.Minute)
	mustList(t, c)
	if n := reads.Load(); n == 0 {
		t.Error("a list past its TTL was served from the memo without reading Redis")
	}
	// Invalidate drops the memo with the stored list.
	b.clock.Advance(time.Minute)
	before := b.lists.Load()
	if err := c.Invalidate(ctx, testApp); err != nil {
		t.Fatal(err)
	}
	mustList(t, c)
	if b.lists.Load() != before+1 {
		t.Errorf("after Invalidate the list was fetched %d times, want 1", b.lists.Load()-before)
	}
}
