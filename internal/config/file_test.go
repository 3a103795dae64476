package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/secret"
)

// writeConfig writes a WXPUSH_CONFIG file into a temporary directory and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wxpush.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// loadFile loads text as WXPUSH_CONFIG with the environment vars.
func loadFile(t *testing.T, text string, vars map[string]string) (Config, string, error) {
	t.Helper()
	path := writeConfig(t, text)
	m := map[string]string{"WXPUSH_CONFIG": path}
	for k, v := range vars {
		m[k] = v
	}
	c, err := Load(env(m))
	return c, path, err
}

// public drops what Load records about where fields came from.
func public(apps []App) []App {
	out := make([]App, len(apps))
	for i, a := range apps {
		a.origin = origin{}
		out[i] = a
	}
	return out
}

const aesKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

func TestLoadExampleFile(t *testing.T) {
	t.Parallel()
	vars := map[string]string{
		"WXPUSH_CONFIG":         filepath.Join("testdata", "example.yaml"),
		"SHOP_APP_SECRET":       "shop-secret-from-env",
		"SHOP_PREVIOUS_AES_KEY": strings.Repeat("P", 43),
		"NEWS_TOKEN":            "newsToken1",
		"NEWS_AES_KEY":          strings.Repeat("N", 43),
		"NEWS_PREVIOUS_TOKEN":   "newsToken0",
	}
	c, err := Load(env(vars))
	if err != nil {
		t.Fatal(err)
	}
	want := []App{{
		Name: "shop", AppID: "wx1234567890abcdef", Secret: "shop-secret-from-env",
		Token: "shopToken2024", AESKey: aesKey, PreviousToken: "shopToken2023", PreviousAESKey: secret.Value(strings.Repeat("P", 43)),
		StableToken: true, RateLimit: RateLimit{PerSecond: 20, Burst: 40}, RecipientLimit: RecipientLimit{Max: 3, Window: time.Minute},
		MaxBacklog: 100000, ValidateTemplates: false,
		StatusURL: "https://shop.example.com/wxpush/status", WebhookSecret: "shop-webhook-signing-key-2026",
		WebhookStates: []string{"delivered", "user_blocked", "wechat_failed", "dead"},
		UpstreamURL:   "http://10.0.0.12:8000/wechat", RelayAll: true, RelayVerify: true,
	}, {
		Name: "news", AppID: "wxfedcba0987654321", Secret: "news-app-secret",
		Token: "newsToken1", AESKey: secret.Value(strings.Repeat("N", 43)), PreviousToken: "newsToken0",
		RateLimit: RateLimit{PerSecond: 2.5, Burst: 3}, ValidateTemplates: true, CallbackCompat: true,
	}}
	if got := public(c.Apps); !reflect.DeepEqual(got, want) {
		t.Errorf("apps =\n%#v\nwant\n%#v", revealed(got), revealed(want))
	}

	// The example must show every App field and every tuning key, so it documents them all.
	for _, f := range reflect.VisibleFields(reflect.TypeFor[App]()) {
		if !f.IsExported() {
			continue
		}
		set := false
		for _, a := range c.Apps {
			set = set || !reflect.ValueOf(a).FieldByIndex(f.Index).IsZero()
		}
		if !set {
			t.Errorf("testdata/example.yaml sets App.%s in no app", f.Name)
		}
	}
	wantTuning := Config{
		RedisURL: "redis://127.0.0.1:6379/2", WeChatAPIBase: "http://127.0.0.1:8081",
		HTTPAddr: "0.0.0.0:8080", AdminAddr: "0.0.0.0:9090", Concurrency: 50, MaxAttempts: 12,
		RetryBase: 2 * time.Second, RetryCap: 15 * time.Minute, SendTimeout: 5 * time.Second,
		Retention: 72 * time.Hour, ConfirmTimeout: 45 * time.Minute, CallbackHold: 2 * time.Hour, CallbackWindow: 10 * time.Minute, OrphanAfter: 20 * time.Minute,
		TaskCheckInterval: 250 * time.Millisecond, ShutdownTimeout: 30 * time.Second, IdempotencyWindow: 12 * time.Hour, UIWritable: true, Pprof: true, APIRate: 200, APIBurst: 400, Events: false, EventsMaxLen: 500000,
		WebhookWindow: 12 * time.Hour, WebhookRetryBase: 2 * time.Second, WebhookRetryCap: 30 * time.Minute,
		WebhookConcurrency: 40, WebhookPerEndpoint: 8, WebhookAllowPrivate: true,
		RelayTimeout: 3 * time.Second, CallbackInbox: false, InboxApply: false,
		LogLevel: "debug", LogFormat: "text",
	}
	defaults := Defaults()
	for _, k := range knobs {
		got, want, def := k.field(&c), k.field(&wantTuning), k.field(&defaults)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("tuning.%s = %v, want %v", k.key, reflect.ValueOf(got).Elem(), reflect.ValueOf(want).Elem())
		}
		if reflect.DeepEqual(want, def) {
			t.Errorf("tuning.%s: the example should set a value other than the default", k.key)
		}
	}

	for _, format := range []string{"%v", "%+v", "%#v"} {
		s := fmt.Sprintf(format, c)
		for _, v := range []string{"shop-secret-from-env", "news-app-secret", "shopToken", "newsToken", aesKey, "PPPP", "NNNN"} {
			if strings.Contains(s, v) {
				t.Errorf("Config printed with %s reveals %q", format, v)
			}
		}
	}
}

// revealed shows apps with their secrets, for test failure messages only.
func revealed(apps []App) []map[string]any {
	out := make([]map[string]any, len(apps))
	for i, a := range apps {
		out[i] = map[string]any{"app": a, "secret": a.Secret.Reveal(), "token": a.Token.Reveal(),
			"aes_key": a.AESKey.Reveal(), "previous_token": a.PreviousToken.Reveal(), "previous_aes_key": a.PreviousAESKey.Reveal()}
	}
	return out
}

const fileTuning = `
tuning:
  concurrency: 5
  retry_base: 2s
  retry_cap: 1m
  log_level: debug
  max_attempts: 3
`

func TestEnvOverridesFileTuning(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		vars  map[string]string
		check func(Config) bool
	}{
		{name: "file values without env", check: func(c Config) bool {
			return c.Concurrency == 5 && c.RetryBase == 2*time.Second && c.RetryCap == time.Minute && c.LogLevel == "debug" && c.MaxAttempts == 3
		}},
		{name: "env wins per key", vars: map[string]string{"WXPUSH_CONCURRENCY": "7", "WXPUSH_LOG_LEVEL": "warn"}, check: func(c Config) bool {
			return c.Concurrency == 7 && c.LogLevel == "warn" && c.RetryBase == 2*time.Second
		}},
		{name: "env sets what the file left at default", vars: map[string]string{"WXPUSH_SEND_TIMEOUT": "3s", "REDIS_URL": "redis://r:6379/0"}, check: func(c Config) bool {
			return c.SendTimeout == 3*time.Second && c.RedisURL == "redis://r:6379/0" && c.Concurrency == 5
		}},
		{name: "empty env does not override", vars: map[string]string{"WXPUSH_CONCURRENCY": " "}, check: func(c Config) bool {
			return c.Concurrency == 5
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := loadFile(t, fileTuning, tt.vars)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Errorf("config = %+v", c)
			}
		})
	}
}

func TestTuningErrorsNameTheSource(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		vars map[string]string
		want string
	}{
		{name: "file value", want: "tuning.max_attempts: 0 must be at least 1"},
		{name: "env value over the file", vars: map[string]string{"WXPUSH_MAX_ATTEMPTS": "-2"}, want: "WXPUSH_MAX_ATTEMPTS: -2 must be at least 1"},
		{name: "mixed sources", vars: map[string]string{"WXPUSH_MAX_ATTEMPTS": "1", "WXPUSH_RETRY_CAP": "1s"}, want: "WXPUSH_RETRY_CAP: 1s is less than tuning.retry_base 2s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := loadFile(t, "tuning:\n  max_attempts: 0\n  retry_base: 2s\n", tt.vars)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

const fileDefaultApp = `
apps:
  - name: shop
    appid: wxshop
    secret: shop-secret
    token: shopTok
  - name: default
    appid: wxfile
    secret: file-secret
    token: fileTok
    rate_limit: {per_second: 5}
    max_backlog: 10
    validate_templates: false
`

func TestEnvDefaultAppWithFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		file string
		vars map[string]string
		want []App // the whole app list, in order
	}{
		{
			name: "file default app alone",
			file: fileDefaultApp,
			want: []App{
				{Name: "shop", AppID: "wxshop", Secret: "shop-secret", Token: "shopTok", ValidateTemplates: true},
				{Name: "default", AppID: "wxfile", Secret: "file-secret", Token: "fileTok", RateLimit: RateLimit{5, 5}, MaxBacklog: 10},
			},
		},
		{
			name: "env overrides some fields and keeps the rest",
			file: fileDefaultApp,
			vars: map[string]string{"WECHAT_APP_SECRET": "env-secret", "WECHAT_RATE_BURST": "9", "WECHAT_STABLE_TOKEN": "1"},
			want: []App{
				{Name: "shop", AppID: "wxshop", Secret: "shop-secret", Token: "shopTok", ValidateTemplates: true},
				{Name: "default", AppID: "wxfile", Secret: "env-secret", Token: "fileTok", StableToken: true, RateLimit: RateLimit{5, 9}, MaxBacklog: 10},
			},
		},
		{
			name: "env overrides every env field",
			file: fileDefaultApp,
			vars: map[string]string{"WECHAT_APP_ID": "wxenv", "WECHAT_APP_SECRET": "env-secret", "WECHAT_TOKEN": "envTok",
				"WECHAT_AES_KEY": aesKey, "WECHAT_STABLE_TOKEN": "true", "WECHAT_RATE_LIMIT": "1.5", "WECHAT_RATE_BURST": "4"},
			want: []App{
				{Name: "shop", AppID: "wxshop", Secret: "shop-secret", Token: "shopTok", ValidateTemplates: true},
				{Name: "default", AppID: "wxenv", Secret: "env-secret", Token: "envTok", AESKey: aesKey, StableToken: true,
					RateLimit: RateLimit{1.5, 4}, MaxBacklog: 10},
			},
		},
		{
			name: "env adds default after the file's apps",
			file: "apps:\n  - {name: shop, appid: wxshop, secret: shop-secret, token: shopTok}\n",
			vars: map[string]string{"WECHAT_APP_ID": "wxenv", "WECHAT_APP_SECRET": "env-secret", "WECHAT_TOKEN": "envTok", "WECHAT_RATE_LIMIT": "2"},
			want: []App{
				{Name: "shop", AppID: "wxshop", Secret: "shop-secret", Token: "shopTok", ValidateTemplates: true},
				{Name: "default", AppID: "wxenv", Secret: "env-secret", Token: "envTok", RateLimit: RateLimit{2, 2}, ValidateTemplates: true},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := loadFile(t, tt.file, tt.vars)
			if err != nil {
				t.Fatal(err)
			}
			if got := public(c.Apps); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("apps =\n%#v\nwant\n%#v", revealed(got), revealed(tt.want))
			}
			for _, w := range tt.want {
				if a, ok := c.App(w.Name); !ok || a.AppID != w.AppID {
					t.Errorf("App(%q) = %+v, %v", w.Name, a, ok)
				}
			}
		})
	}
}

func TestFileDefaultAppErrorsNameTheSource(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		vars map[string]string
		want string
	}{
		{name: "bad token from the file", want: "apps[1].token: required, 3–32 letters or digits"},
		{name: "bad token from env", vars: map[string]string{"WECHAT_TOKEN": "x"}, want: "WECHAT_TOKEN: required, 3–32 letters or digits"},
		{name: "negative burst from env", vars: map[string]string{"WECHAT_TOKEN": "tok", "WECHAT_RATE_BURST": "-1"}, want: "WECHAT_RATE_BURST: -1 must be ≥ 0"},
	}
	file := "apps:\n  - {name: shop, appid: wx1, secret: s, token: tok}\n  - {name: default, appid: wx2, secret: s, token: \"bad tok\", rate_limit: {per_second: 1}}\n"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := loadFile(t, file, tt.vars)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load error = %v, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "bad tok") {
				t.Errorf("error reveals the token: %v", err)
			}
		})
	}
}

func TestSecretEnv(t *testing.T) {
	t.Parallel()
	c, _, err := loadFile(t, `
apps:
  - name: shop
    appid: wx1
    secret_env: SHOP_SECRET
    token_env: SHOP_TOKEN
    aes_key_env: SHOP_AES
    previous_token_env: SHOP_OLD_TOKEN
    previous_aes_key_env: SHOP_OLD_AES
`, map[string]string{"SHOP_SECRET": " from-env ", "SHOP_TOKEN": "tok1", "SHOP_AES": aesKey, "SHOP_OLD_TOKEN": "tok0", "SHOP_OLD_AES": strings.Repeat("z", 43)})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := c.App("shop")
	if a.Secret.Reveal() != "from-env" || a.Token.Reveal() != "tok1" || a.AESKey.Reveal() != aesKey ||
		a.PreviousToken.Reveal() != "tok0" || a.PreviousAESKey.Reveal() != strings.Repeat("z", 43) {
		t.Errorf("app = %#v", revealed([]App{a}))
	}
}

// app is a valid file app named name, plus extra lines (indented four spaces).
func app(name string, extra ...string) string {
	s := fmt.Sprintf("  - name: %s\n    appid: wx1\n    secret: Sup3rS3cret\n    token: tok123\n", name)
	for _, e := range extra {
		s += "    " + e + "\n"
	}
	return s
}

func TestLoadFileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		file    string
		vars    map[string]string
		want    []string // each must appear; "$FILE" is replaced by the file's path
		secrets []string // none may appear
	}{
		{
			name:    "aes key length",
			file:    "apps:\n" + app("a") + app("b") + app("c", "aes_key: ShortKey1234"),
			want:    []string{"apps[2].aes_key: must be 43 characters of base64 (got 12)"},
			secrets: []string{"ShortKey1234"},
		},
		{
			name:    "aes key characters",
			file:    "apps:\n" + app("a", "aes_key: "+strings.Repeat("=", 43)),
			want:    []string{"apps[0].aes_key: must be 43 characters of base64 (got 43, some not A-Za-z0-9+/)"},
			secrets: []string{"=="},
		},
		{
			name:    "previous keys",
			file:    "apps:\n" + app("a", "previous_aes_key: OldKey", "previous_token: old-token"),
			want:    []string{"apps[0].previous_aes_key: must be 43 characters of base64 (got 6)", "apps[0].previous_token: must be 3–32 letters or digits"},
			secrets: []string{"OldKey", "old-token"},
		},
		{
			name:    "bad token",
			file:    "apps:\n  - {name: a, appid: wx1, secret: s, token: \"bad token!\"}\n",
			want:    []string{"apps[0].token: required, 3–32 letters or digits (WeChat's callback token rule; got 10, some not letters or digits)"},
			secrets: []string{"bad token!"},
		},
		{
			name: "missing fields",
			file: "apps:\n  - name: a\n",
			want: []string{"apps[0].appid: required", "apps[0].secret: required", "apps[0].token: required"},
		},
		{
			name: "app name",
			file: "apps:\n" + app("shop") + app("Shop"),
			want: []string{`apps[1].name: "Shop" must be 1–64 characters of a-z, 0-9`},
		},
		{
			name: "duplicate app names",
			file: "apps:\n" + app("shop") + app("news") + app("shop"),
			want: []string{`apps[2].name: "shop" is defined twice (first as apps[0])`},
		},
		{
			name: "negative burst",
			file: "apps:\n" + app("a", "rate_limit: {per_second: 1, burst: -1}"),
			want: []string{"apps[0].rate_limit.burst: -1 must be ≥ 0"},
		},
		{
			name: "negative rate",
			file: "apps:\n" + app("a", "rate_limit: {per_second: -0.5}"),
			want: []string{"apps[0].rate_limit.per_second: -0.5 must be a finite number ≥ 0"},
		},
		{
			name: "burst without rate",
			file: "apps:\n" + app("a", "rate_limit: {burst: 3}"),
			want: []string{"apps[0].rate_limit.burst: 3 is set but apps[0].rate_limit.per_second is 0 (no limit)"},
		},
		{
			name: "recipient limit",
			file: "apps:\n" + app("a", "recipient_limit: {max: 3}") + app("b", "recipient_limit: {max: -1, window: 1h}") + app("c", "recipient_limit: {window: 1h}"),
			want: []string{
				"apps[0].recipient_limit.window: required when apps[0].recipient_limit.max is set",
				"apps[1].recipient_limit.max: -1 must be ≥ 0",
				"apps[2].recipient_limit.max: required when apps[2].recipient_limit.window is set",
			},
		},
		{
			name: "recipient window not a duration",
			file: "apps:\n" + app("a", "recipient_limit: {max: 3, window: soon}"),
			want: []string{`WXPUSH_CONFIG $FILE:6: apps[0].recipient_limit.window: "soon" is not a duration`},
		},
		{
			name: "negative backlog",
			file: "apps:\n" + app("a", "max_backlog: -5"),
			want: []string{"apps[0].max_backlog: -5 must be ≥ 0"},
		},
		{
			name: "tuning not a duration",
			file: "tuning:\n  retry_base: 1x\n",
			want: []string{`WXPUSH_CONFIG $FILE:2: tuning.retry_base: "1x" is not a duration`},
		},
		{
			name: "tuning not an integer",
			file: "tuning:\n  concurrency: lots\n",
			want: []string{`WXPUSH_CONFIG $FILE:2: tuning.concurrency: "lots" is not an integer`},
		},
		{
			name: "tuning checked by Validate",
			file: "tuning:\n  log_format: xml\n  send_timeout: 0s\n",
			want: []string{`tuning.log_format: "xml" must be json, text or auto`, "tuning.send_timeout: 0s must be positive"},
		},
		{
			name: "orphan cut-off shorter than a request",
			file: "tuning:\n  orphan_after: 10s\n",
			want: []string{"tuning.orphan_after: 10s must be at least 30s, longer than a request may take to store and enqueue a message"},
		},
		{
			name:    "unknown app key",
			file:    "apps:\n  - name: a\n    appid: wx1\n    token: tok123\n    secrt: Hunter2Secret\n",
			want:    []string{"WXPUSH_CONFIG $FILE:5: apps[0].secrt: unknown key", "apps[0].secret: required"},
			secrets: []string{"Hunter2Secret"},
		},
		{
			name: "unknown nested key",
			file: "apps:\n" + app("a", "rate_limit: {per_second: 1, brust: 2}"),
			want: []string{"WXPUSH_CONFIG $FILE:6: apps[0].rate_limit.brust: unknown key (valid here: burst, per_second)"},
		},
		{
			name: "unknown tuning key",
			file: "tuning:\n  concurrency: 5\n  concurency: 6\n",
			want: []string{"WXPUSH_CONFIG $FILE:3: tuning.concurency: unknown key"},
		},
		{
			name: "unknown top-level key",
			file: "app:\n" + app("a"),
			want: []string{"WXPUSH_CONFIG $FILE:1: app: unknown key (valid here: apps, tuning)"},
		},
		{
			name: "wrong type keeps later apps in place",
			file: "apps:\n" + app("a", "rate_limit: {per_second: 1, burst: lots}") + app("B"),
			want: []string{`WXPUSH_CONFIG $FILE:6: apps[0].rate_limit.burst: "lots" is not an integer`, `apps[1].name: "B" must be`},
		},
		{
			name: "list item not a mapping",
			file: "apps:\n  - shop\n" + app("B"),
			want: []string{"WXPUSH_CONFIG $FILE:2: apps[0]: must be a mapping", `apps[1].name: "B" must be`},
		},
		{
			name:    "secret is a list",
			file:    "apps:\n  - {name: a, appid: wx1, token: tok123, secret: [Sup3rS3cret, b]}\n",
			want:    []string{"WXPUSH_CONFIG $FILE:2: apps[0].secret: must be a single value"},
			secrets: []string{"Sup3rS3cret"},
		},
		{
			name:    "key defined twice",
			file:    "apps:\n" + app("a", "secret: Other5ecret"),
			want:    []string{"WXPUSH_CONFIG $FILE:6: apps[0].secret: defined twice (first at line 4)"},
			secrets: []string{"Sup3rS3cret", "Other5ecret"},
		},
		{
			name: "tuning key defined twice",
			file: "tuning:\n  concurrency: 5\n  concurrency: 6\n",
			want: []string{"WXPUSH_CONFIG $FILE:3: tuning.concurrency: defined twice (first at line 2)"},
		},
		{
			name: "tuning not a mapping",
			file: "tuning: 5\n",
			want: []string{"WXPUSH_CONFIG $FILE:1: tuning: must be a mapping"},
		},
		{
			name: "tuning value not a scalar",
			file: "tuning:\n  concurrency: [1, 2]\n",
			want: []string{"WXPUSH_CONFIG $FILE:2: tuning.concurrency: must be a single value"},
		},
		{
			name: "merge keys do not confuse the error report",
			file: "limits: &limits {per_second: 5, burst: 5}\napps:\n" + app("a", "rate_limit: {<<: *limits, burst: 7}") + app("b", "rate_limit: *limits", "max_backlog: many"),
			want: []string{"WXPUSH_CONFIG $FILE:1: limits: unknown key", `WXPUSH_CONFIG $FILE:13: apps[1].max_backlog: "many" is not an integer`},
		},
		{
			name:    "secret_env empty",
			file:    "apps:\n  - {name: a, appid: wx1, token: tok123, secret_env: SHOP_SECRET}\n",
			want:    []string{"WXPUSH_CONFIG $FILE:2: apps[0].secret_env: environment variable SHOP_SECRET is empty"},
			secrets: []string{},
		},
		{
			name:    "secret and secret_env",
			file:    "apps:\n" + app("a", "secret_env: SHOP_SECRET"),
			vars:    map[string]string{"SHOP_SECRET": "EnvS3cret"},
			want:    []string{"WXPUSH_CONFIG $FILE:6: apps[0].secret_env: set together with secret; use one"},
			secrets: []string{"Sup3rS3cret", "EnvS3cret"},
		},
		{
			name: "token_env empty",
			file: "apps:\n  - {name: a, appid: wx1, secret: s, token_env: SHOP_TOKEN}\n",
			want: []string{"apps[0].token_env: environment variable SHOP_TOKEN is empty", "apps[0].token: required"},
		},
		{
			name: "env app vars without an app",
			file: "apps:\n" + app("a"),
			vars: map[string]string{"WECHAT_TOKEN": "tok"},
			want: []string{"WECHAT_TOKEN: set, but WECHAT_APP_ID is empty and WXPUSH_CONFIG has no app named default"},
		},
		{
			name: "not YAML",
			file: "apps: [\n  - {name: shop\n",
			want: []string{"WXPUSH_CONFIG $FILE: not a YAML file: yaml: line"},
		},
		{
			name: "not a configuration",
			file: "just some text\n",
			want: []string{"WXPUSH_CONFIG $FILE:1: not a wxpush configuration"},
		},
		{
			name: "two documents",
			file: "apps: []\n---\ntuning: {}\n",
			want: []string{"WXPUSH_CONFIG $FILE: holds more than one YAML document"},
		},
		{
			name:    "every error at once",
			file:    "apps:\n" + app("Bad", "aes_key: tooShortKey") + app("ok", "secrt: x") + "tuning:\n  retry_cap: 1y\n  max_attempts: 0\n",
			vars:    map[string]string{"WXPUSH_LOG_LEVEL": "loud"},
			want:    []string{`apps[0].name: "Bad"`, "apps[0].aes_key: must be 43 characters of base64 (got 11)", "apps[1].secrt: unknown key", `tuning.retry_cap: "1y" is not a duration`, "tuning.max_attempts: 0 must be at least 1", `WXPUSH_LOG_LEVEL: "loud"`},
			secrets: []string{"tooShortKey", "Sup3rS3cret"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, path, err := loadFile(t, tt.file, tt.vars)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			for _, w := range tt.want {
				if w = strings.ReplaceAll(w, "$FILE", path); !strings.Contains(err.Error(), w) {
					t.Errorf("Load error =\n%v\nwant it to contain %q", err, w)
				}
			}
			for _, s := range append(tt.secrets, "Sup3rS3cret") {
				if strings.Contains(err.Error(), s) {
					t.Errorf("Load error reveals the secret %q:\n%v", s, err)
				}
			}
		})
	}
}

func TestLoadFileMissing(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(env(map[string]string{"WXPUSH_CONFIG": path}))
	if err == nil || !strings.Contains(err.Error(), "WXPUSH_CONFIG") || !strings.Contains(err.Error(), path) {
		t.Fatalf("Load error = %v, want it to name WXPUSH_CONFIG and %s", err, path)
	}
}

func TestLoadEmptyFile(t *testing.T) {
	t.Parallel()
	c, _, err := loadFile(t, "# nothing yet\n", nil)
	if err != nil || len(c.Apps) != 0 || c.Concurrency != Defaults().Concurrency {
		t.Fatalf("Load = %+v, %v; want the defaults", c, err)
	}
}

func TestLoadManyApps(t *testing.T) {
	t.Parallel()
	const n = 10_000
	var b strings.Builder
	b.WriteString("apps:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {name: app%05d, appid: wx%016x, secret_env: APP_SECRET, token: tok%d, rate_limit: {per_second: 20}}\n", i, i, i)
	}
	c, _, err := loadFile(t, b.String(), map[string]string{"APP_SECRET": "shared-secret"})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Apps) != n || len(c.AppNames()) != n {
		t.Fatalf("loaded %d apps, want %d", len(c.Apps), n)
	}
	for _, i := range []int{0, 4711, n - 1} {
		a, ok := c.App(fmt.Sprintf("app%05d", i))
		if !ok || a.AppID != fmt.Sprintf("wx%016x", i) || a.RateLimit != (RateLimit{20, 20}) || a.Secret.Reveal() != "shared-secret" {
			t.Errorf("App(app%05d) = %+v, %v", i, a, ok)
		}
	}
	if _, ok := c.App("app10000"); ok {
		t.Error("App found an app that is not configured")
	}
}

func BenchmarkLoad10000Apps(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("apps:\n")
	for i := range 10_000 {
		fmt.Fprintf(&sb, "  - {name: app%05d, appid: wx%016x, secret: s%d, token: tok%d, rate_limit: {per_second: 20}}\n", i, i, i, i)
	}
	path := filepath.Join(b.TempDir(), "wxpush.yaml")
	if err := os.WriteFile(path, []byte(sb.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	getenv := env(map[string]string{"WXPUSH_CONFIG": path})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(getenv); err != nil {
			b.Fatal(err)
		}
	}
}
