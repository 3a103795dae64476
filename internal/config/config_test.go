package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.RedisURL != "" || c.HTTPAddr != "127.0.0.1:8080" || c.AdminAddr != "127.0.0.1:9090" || len(c.Apps) != 0 ||
		c.MaxAttempts != 10 || c.RetryBase != time.Second || c.RetryCap != 10*time.Minute {
		t.Errorf("defaults = %+v", c)
	}
}

func TestLoadDefaultApp(t *testing.T) {
	t.Parallel()
	c, err := Load(env(map[string]string{
		"WECHAT_APP_ID": "wx123", "WECHAT_APP_SECRET": "the-secret", "WECHAT_TOKEN": "tok123",
		"WECHAT_AES_KEY": strings.Repeat("a", 43), "WXPUSH_API_KEYS": "k1, k2,", "WXPUSH_RETENTION": "24h",
		"WECHAT_STABLE_TOKEN": "true", "WECHAT_RATE_LIMIT": "7.5",
	}))
	if err != nil {
		t.Fatal(err)
	}
	a, ok := c.App(DefaultApp)
	if !ok || a.AppID != "wx123" || a.Secret.Reveal() != "the-secret" || a.Token.Reveal() != "tok123" ||
		!a.StableToken || !a.ValidateTemplates {
		t.Errorf("app = %+v", a)
	}
	if a.RateLimit != (RateLimit{PerSecond: 7.5, Burst: 8}) {
		t.Errorf("rate limit = %+v, want 7.5/s with the burst defaulted to 8", a.RateLimit)
	}
	if len(c.APIKeys) != 2 || c.Retention != 24*time.Hour {
		t.Errorf("keys %d retention %v", len(c.APIKeys), c.Retention)
	}
	for _, format := range []string{"%v", "%+v", "%#v"} {
		if s := fmt.Sprintf(format, c); strings.Contains(s, "the-secret") || strings.Contains(s, "k1") || strings.Contains(s, "tok123") {
			t.Errorf("a Config printed with %s reveals a secret: %s", format, s)
		}
	}
}

func TestLoadErrorsNameTheField(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		env    map[string]string
		want   string
		secret string // must not appear in the error
	}{
		{name: "bad duration", env: map[string]string{"WXPUSH_RETENTION": "forever"}, want: `WXPUSH_RETENTION: "forever" is not a duration`},
		{name: "bad integer", env: map[string]string{"WXPUSH_CONCURRENCY": "many"}, want: `WXPUSH_CONCURRENCY: "many" is not an integer`},
		{name: "zero attempts", env: map[string]string{"WXPUSH_MAX_ATTEMPTS": "0"}, want: "WXPUSH_MAX_ATTEMPTS: 0 must be at least 1"},
		{name: "redis scheme", env: map[string]string{"REDIS_URL": "http://user:pw@x"}, want: "REDIS_URL: scheme must be redis://, rediss://, redis-sentinel://, redis-cluster:// or rediss-cluster://", secret: "pw@x"},
		{name: "secret without app", env: map[string]string{"WECHAT_APP_SECRET": "s3cr3t"}, want: "WECHAT_APP_SECRET: set, but WECHAT_APP_ID is empty", secret: "s3cr3t"},
		{name: "missing secret", env: map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_TOKEN": "tok123"}, want: "WECHAT_APP_SECRET: required"},
		{name: "bad token", env: map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "a b"}, want: "WECHAT_TOKEN: required, 3–32 letters or digits", secret: "a b"},
		{name: "short aes key", env: map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok", "WECHAT_AES_KEY": "abc"}, want: "WECHAT_AES_KEY: must be 43 characters of base64 (got 3)", secret: "abc"},
		{name: "log level", env: map[string]string{"WXPUSH_LOG_LEVEL": "loud"}, want: `WXPUSH_LOG_LEVEL: "loud" must be`},
		{name: "cap below base", env: map[string]string{"WXPUSH_RETRY_BASE": "1m", "WXPUSH_RETRY_CAP": "1s"}, want: "WXPUSH_RETRY_CAP: 1s is less than WXPUSH_RETRY_BASE 1m0s"},
		{name: "bad rate limit", env: map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok", "WECHAT_RATE_LIMIT": "fast"}, want: `WECHAT_RATE_LIMIT: "fast" is not a number`},
		{name: "negative rate limit", env: map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok", "WECHAT_RATE_LIMIT": "-1"}, want: `WECHAT_RATE_LIMIT: -1 must be a finite number ≥ 0`},
		{name: "negative burst", env: map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok", "WECHAT_RATE_LIMIT": "5", "WECHAT_RATE_BURST": "-1"}, want: `WECHAT_RATE_BURST: -1 must be ≥ 0`},
		{name: "burst without rate", env: map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok", "WECHAT_RATE_BURST": "5"}, want: `WECHAT_RATE_BURST: 5 is set but WECHAT_RATE_LIMIT is 0`},
		{name: "stable token not a bool", env: map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok", "WECHAT_STABLE_TOKEN": "yes please"}, want: `WECHAT_STABLE_TOKEN: "yes please" is not true or false`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(env(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load error = %v, want it to contain %q", err, tt.want)
			}
			if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("error reveals a secret %q: %v", tt.secret, err)
			}
		})
	}
}

func TestLoadReportsEveryError(t *testing.T) {
	t.Parallel()
	_, err := Load(env(map[string]string{
		"WXPUSH_CONCURRENCY": "many", "WXPUSH_RETENTION": "forever", "WXPUSH_LOG_FORMAT": "xml", "WECHAT_APP_ID": "wx1",
	}))
	for _, want := range []string{"WXPUSH_CONCURRENCY", "WXPUSH_RETENTION", "WXPUSH_LOG_FORMAT", "WECHAT_APP_SECRET: required", "WECHAT_TOKEN: required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load error = %v, want it to mention %q", err, want)
		}
	}
}

func TestAppLookup(t *testing.T) {
	t.Parallel()
	c, err := Load(env(map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok"}))
	if err != nil {
		t.Fatal(err)
	}
	replaced := c // as standalone mode does: a copy whose Apps is a new slice
	replaced.Apps = []App{{Name: "other", AppID: "wx2"}}
	appended := c
	appended.Apps = append(appended.Apps[:len(appended.Apps):len(appended.Apps)], App{Name: "more", AppID: "wx3"})

	tests := []struct {
		name   string
		c      Config
		app    string
		wantID string // "" = not found
	}{
		{name: "indexed hit", c: c, app: DefaultApp, wantID: "wx1"},
		{name: "indexed miss", c: c, app: "nope"},
		{name: "replaced slice finds new app", c: replaced, app: "other", wantID: "wx2"},
		{name: "replaced slice forgets old app", c: replaced, app: DefaultApp},
		{name: "appended app", c: appended, app: "more", wantID: "wx3"},
		{name: "built without Load", c: Config{Apps: []App{{Name: "x", AppID: "wx4"}}}, app: "x", wantID: "wx4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ok := tt.c.App(tt.app)
			if ok != (tt.wantID != "") || a.AppID != tt.wantID {
				t.Errorf("App(%q) = %q, %v; want %q", tt.app, a.AppID, ok, tt.wantID)
			}
		})
	}
	if _, ok := c.App(DefaultApp); !ok {
		t.Error("changing a copy's Apps changed the original")
	}
}
