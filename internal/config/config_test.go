package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadDefaults(t *testing.T) {
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
	c, err := Load(env(map[string]string{
		"WECHAT_APP_ID": "wx123", "WECHAT_APP_SECRET": "the-secret", "WECHAT_TOKEN": "tok123",
		"WECHAT_AES_KEY": strings.Repeat("a", 43), "WXPUSH_API_KEYS": "k1, k2,", "WXPUSH_RETENTION": "24h",
	}))
	if err != nil {
		t.Fatal(err)
	}
	a, ok := c.App(DefaultApp)
	if !ok || a.AppID != "wx123" || a.Secret.Reveal() != "the-secret" || a.Token.Reveal() != "tok123" {
		t.Errorf("app = %+v", a)
	}
	if len(c.APIKeys) != 2 || c.Retention != 24*time.Hour {
		t.Errorf("keys %d retention %v", len(c.APIKeys), c.Retention)
	}
	if s := fmt.Sprintf("%+v", c); strings.Contains(s, "the-secret") || strings.Contains(s, "k1") {
		t.Errorf("a printed Config reveals a secret: %s", s)
	}
}

func TestLoadErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"bad duration", map[string]string{"WXPUSH_RETENTION": "forever"}, `WXPUSH_RETENTION: "forever" is not a duration`},
		{"bad integer", map[string]string{"WXPUSH_CONCURRENCY": "many"}, `WXPUSH_CONCURRENCY: "many" is not an integer`},
		{"zero attempts", map[string]string{"WXPUSH_MAX_ATTEMPTS": "0"}, "WXPUSH_MAX_ATTEMPTS: 0 must be at least 1"},
		{"redis scheme", map[string]string{"REDIS_URL": "http://x"}, "REDIS_URL: scheme must be redis:// or rediss://"},
		{"secret without app", map[string]string{"WECHAT_APP_SECRET": "s"}, "WECHAT_APP_SECRET: set, but WECHAT_APP_ID is empty"},
		{"missing secret", map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_TOKEN": "tok123"}, "WECHAT_APP_SECRET: required"},
		{"bad token", map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "a b"}, "WECHAT_TOKEN: required, 3–32 letters or digits"},
		{"short aes key", map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok", "WECHAT_AES_KEY": "abc"}, "WECHAT_AES_KEY: must be 43 characters"},
		{"log level", map[string]string{"WXPUSH_LOG_LEVEL": "loud"}, `WXPUSH_LOG_LEVEL: "loud" must be`},
		{"cap below base", map[string]string{"WXPUSH_RETRY_BASE": "1m", "WXPUSH_RETRY_CAP": "1s"}, "WXPUSH_RETRY_CAP: 1s is less than WXPUSH_RETRY_BASE 1m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(env(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load error = %v, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "abc") && tt.name == "short aes key" {
				t.Errorf("error reveals the AES key: %v", err)
			}
		})
	}
}

func TestValidateAppFields(t *testing.T) {
	c := Defaults()
	c.Apps = []App{{Name: "ok", AppID: "wx1", Secret: "s", Token: "tok"}, {Name: "Bad Name", AppID: "", Secret: "s", Token: "tok"}}
	err := c.Validate()
	for _, want := range []string{`apps[1].name: "Bad Name"`, "apps[1].appid: required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want %q", err, want)
		}
	}
}
