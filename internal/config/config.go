// Package config loads wxpush's configuration: defaults, then environment
// variables (the names of design.md's interface contract), then Validate, whose
// errors name the variable and the bad value. It only reads; it never dials Redis
// or WeChat. Secrets are held as secret.Value so a printed Config leaks nothing.
package config

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/wxpush/wxpush/internal/secret"
)

// DefaultApp is the name of the app defined by the WECHAT_* variables.
const DefaultApp = "default"

// App is one WeChat Official Account wxpush sends for.
type App struct {
	Name   string // wxpush's name: in the API, callback path /wechat/callback/{Name}, metric labels
	AppID  string
	Secret secret.Value
	Token  secret.Value // callback token: signs WeChat's callbacks
	AESKey secret.Value // EncodingAESKey (encrypted callbacks)
	// StableToken uses /cgi-bin/stable_token instead of /cgi-bin/token.
	StableToken bool
}

// Config is everything a wxpush process needs.
type Config struct {
	// RedisURL is redis://[user:pass@]host:port/db or rediss://…; empty = standalone mode.
	RedisURL      string
	WeChatAPIBase string // empty = the real WeChat host
	HTTPAddr      string // enqueuer: API, callback, metrics
	AdminAddr     string // worker: metrics, health
	APIKeys       []secret.Value
	Apps          []App

	Concurrency       int           // worker goroutines sending at once
	MaxAttempts       int           // send attempts before a message is dead
	RetryBase         time.Duration // first retry delay (exponential, jittered)
	RetryCap          time.Duration // largest retry delay
	SendTimeout       time.Duration // one WeChat API call
	Retention         time.Duration // how long final records are kept
	ConfirmTimeout    time.Duration // how long a sent message waits for its callback
	CallbackHold      time.Duration // how long a callback for an unknown msgid is kept
	TaskCheckInterval time.Duration // worker's poll interval when the queues are empty
	ShutdownTimeout   time.Duration // how long SIGTERM waits for in-flight sends
	LogLevel          string        // debug, info, warn, error
	LogFormat         string        // json, text
}

// Defaults returns the configuration with every default set and no apps.
func Defaults() Config {
	return Config{
		HTTPAddr:          "127.0.0.1:8080",
		AdminAddr:         "127.0.0.1:9090",
		Concurrency:       20,
		MaxAttempts:       10,
		RetryBase:         time.Second,
		RetryCap:          10 * time.Minute,
		SendTimeout:       10 * time.Second,
		Retention:         7 * 24 * time.Hour,
		ConfirmTimeout:    30 * time.Minute,
		CallbackHold:      time.Hour,
		TaskCheckInterval: 100 * time.Millisecond,
		ShutdownTimeout:   10 * time.Second,
		LogLevel:          "info",
		LogFormat:         "json",
	}
}

// Load returns Defaults overridden by the environment, validated.
func Load(getenv func(string) string) (Config, error) {
	c := Defaults()
	var errs []error
	str := func(name string, dst *string) {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			*dst = v
		}
	}
	integer := func(name string, dst *int) {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not an integer", name, v))
				return
			}
			*dst = n
		}
	}
	duration := func(name string, dst *time.Duration) {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a duration (e.g. 30s, 10m, 168h)", name, v))
				return
			}
			*dst = d
		}
	}
	str("REDIS_URL", &c.RedisURL)
	str("WECHAT_API_BASE", &c.WeChatAPIBase)
	str("WXPUSH_HTTP_ADDR", &c.HTTPAddr)
	str("WXPUSH_ADMIN_ADDR", &c.AdminAddr)
	for _, k := range strings.Split(getenv("WXPUSH_API_KEYS"), ",") {
		if k = strings.TrimSpace(k); k != "" {
			c.APIKeys = append(c.APIKeys, secret.Value(k))
		}
	}
	integer("WXPUSH_CONCURRENCY", &c.Concurrency)
	integer("WXPUSH_MAX_ATTEMPTS", &c.MaxAttempts)
	duration("WXPUSH_RETRY_BASE", &c.RetryBase)
	duration("WXPUSH_RETRY_CAP", &c.RetryCap)
	duration("WXPUSH_SEND_TIMEOUT", &c.SendTimeout)
	duration("WXPUSH_RETENTION", &c.Retention)
	duration("WXPUSH_CONFIRM_TIMEOUT", &c.ConfirmTimeout)
	duration("WXPUSH_CALLBACK_HOLD", &c.CallbackHold)
	duration("WXPUSH_TASK_CHECK_INTERVAL", &c.TaskCheckInterval)
	duration("WXPUSH_SHUTDOWN_TIMEOUT", &c.ShutdownTimeout)
	str("WXPUSH_LOG_LEVEL", &c.LogLevel)
	str("WXPUSH_LOG_FORMAT", &c.LogFormat)

	if id := strings.TrimSpace(getenv("WECHAT_APP_ID")); id != "" {
		c.Apps = append(c.Apps, App{
			Name:        DefaultApp,
			AppID:       id,
			Secret:      secret.Value(strings.TrimSpace(getenv("WECHAT_APP_SECRET"))),
			Token:       secret.Value(strings.TrimSpace(getenv("WECHAT_TOKEN"))),
			AESKey:      secret.Value(strings.TrimSpace(getenv("WECHAT_AES_KEY"))),
			StableToken: getenv("WECHAT_STABLE_TOKEN") == "true" || getenv("WECHAT_STABLE_TOKEN") == "1",
		})
	} else {
		for _, name := range []string{"WECHAT_APP_SECRET", "WECHAT_TOKEN", "WECHAT_AES_KEY"} {
			if getenv(name) != "" {
				errs = append(errs, fmt.Errorf("%s: set, but WECHAT_APP_ID is empty", name))
			}
		}
	}
	if len(errs) > 0 {
		return c, errors.Join(errs...)
	}
	return c, c.Validate()
}

var (
	appNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	// tokenRE is WeChat's rule for the callback token: 3–32 letters and digits.
	tokenRE  = regexp.MustCompile(`^[A-Za-z0-9]{3,32}$`)
	aesKeyRE = regexp.MustCompile(`^[A-Za-z0-9+/]{43}$`)
)

// Validate checks the configuration; each error names the field and the bad value
// (never a secret's value).
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.RedisURL != "" && !strings.HasPrefix(c.RedisURL, "redis://") && !strings.HasPrefix(c.RedisURL, "rediss://") {
		bad("REDIS_URL: scheme must be redis:// or rediss://")
	}
	if c.WeChatAPIBase != "" && !strings.HasPrefix(c.WeChatAPIBase, "http://") && !strings.HasPrefix(c.WeChatAPIBase, "https://") {
		bad("WECHAT_API_BASE: %q must be an http(s) URL", c.WeChatAPIBase)
	}
	positive := map[string]int{"WXPUSH_CONCURRENCY": c.Concurrency, "WXPUSH_MAX_ATTEMPTS": c.MaxAttempts}
	for name, v := range positive {
		if v < 1 {
			bad("%s: %d must be at least 1", name, v)
		}
	}
	durations := []struct {
		name string
		v    time.Duration
	}{
		{"WXPUSH_RETRY_BASE", c.RetryBase}, {"WXPUSH_RETRY_CAP", c.RetryCap}, {"WXPUSH_SEND_TIMEOUT", c.SendTimeout},
		{"WXPUSH_RETENTION", c.Retention}, {"WXPUSH_CONFIRM_TIMEOUT", c.ConfirmTimeout},
		{"WXPUSH_CALLBACK_HOLD", c.CallbackHold}, {"WXPUSH_TASK_CHECK_INTERVAL", c.TaskCheckInterval},
		{"WXPUSH_SHUTDOWN_TIMEOUT", c.ShutdownTimeout},
	}
	for _, d := range durations {
		if d.v <= 0 {
			bad("%s: %s must be positive", d.name, d.v)
		}
	}
	if c.RetryCap < c.RetryBase {
		bad("WXPUSH_RETRY_CAP: %s is less than WXPUSH_RETRY_BASE %s", c.RetryCap, c.RetryBase)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("WXPUSH_LOG_LEVEL: %q must be debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		bad("WXPUSH_LOG_FORMAT: %q must be json or text", c.LogFormat)
	}
	seen := map[string]bool{}
	for i, a := range c.Apps {
		field := fmt.Sprintf("apps[%d]", i)
		if a.Name == DefaultApp {
			field = "WECHAT_" // the env-defined app: name the variables
		}
		name := func(f, env string) string {
			if field == "WECHAT_" {
				return env
			}
			return field + "." + f
		}
		if !appNameRE.MatchString(a.Name) {
			bad("%s: %q must be 1–64 lowercase letters, digits, '-' or '_'", name("name", "app name"), a.Name)
		}
		if seen[a.Name] {
			bad("%s: %q is defined twice", name("name", "app name"), a.Name)
		}
		seen[a.Name] = true
		if a.AppID == "" {
			bad("%s: required", name("appid", "WECHAT_APP_ID"))
		}
		if a.Secret.IsZero() {
			bad("%s: required", name("secret", "WECHAT_APP_SECRET"))
		}
		if !tokenRE.MatchString(a.Token.Reveal()) {
			bad("%s: required, 3–32 letters or digits (WeChat's callback token rule)", name("token", "WECHAT_TOKEN"))
		}
		if !a.AESKey.IsZero() && !aesKeyRE.MatchString(a.AESKey.Reveal()) {
			bad("%s: must be 43 characters of base64 (WeChat's EncodingAESKey)", name("aes_key", "WECHAT_AES_KEY"))
		}
	}
	return errors.Join(errs...)
}

// App returns the app named name.
func (c Config) App(name string) (App, bool) {
	for _, a := range c.Apps {
		if a.Name == name {
			return a, true
		}
	}
	return App{}, false
}

// AppNames lists the configured apps (metric label initialisation).
func (c Config) AppNames() []string {
	names := make([]string, len(c.Apps))
	for i, a := range c.Apps {
		names[i] = a.Name
	}
	return names
}
