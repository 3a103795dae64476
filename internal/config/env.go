package config

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"time"

	"github.com/wxpush/wxpush/internal/secret"
)

// knob is one tuning setting: its environment variable, its key under tuning: in the
// file, and the Config field both set. One table serves env, file and error names.
type knob struct {
	env   string
	key   string
	field func(*Config) any // *string, *int, *bool or *time.Duration
}

var knobs = []knob{
	{"REDIS_URL", "redis_url", func(c *Config) any { return &c.RedisURL }},
	{"WECHAT_API_BASE", "wechat_api_base", func(c *Config) any { return &c.WeChatAPIBase }},
	{"WXPUSH_HTTP_ADDR", "http_addr", func(c *Config) any { return &c.HTTPAddr }},
	{"WXPUSH_ADMIN_ADDR", "admin_addr", func(c *Config) any { return &c.AdminAddr }},
	{"WXPUSH_CONCURRENCY", "concurrency", func(c *Config) any { return &c.Concurrency }},
	{"WXPUSH_MAX_ATTEMPTS", "max_attempts", func(c *Config) any { return &c.MaxAttempts }},
	{"WXPUSH_RETRY_BASE", "retry_base", func(c *Config) any { return &c.RetryBase }},
	{"WXPUSH_RETRY_CAP", "retry_cap", func(c *Config) any { return &c.RetryCap }},
	{"WXPUSH_SEND_TIMEOUT", "send_timeout", func(c *Config) any { return &c.SendTimeout }},
	{"WXPUSH_RETENTION", "retention", func(c *Config) any { return &c.Retention }},
	{"WXPUSH_CONFIRM_TIMEOUT", "confirm_timeout", func(c *Config) any { return &c.ConfirmTimeout }},
	{"WXPUSH_CALLBACK_HOLD", "callback_hold", func(c *Config) any { return &c.CallbackHold }},
	{"WXPUSH_CALLBACK_WINDOW", "callback_window", func(c *Config) any { return &c.CallbackWindow }},
	{"WXPUSH_ORPHAN_AFTER", "orphan_after", func(c *Config) any { return &c.OrphanAfter }},
	{"WXPUSH_TASK_CHECK_INTERVAL", "task_check_interval", func(c *Config) any { return &c.TaskCheckInterval }},
	{"WXPUSH_SHUTDOWN_TIMEOUT", "shutdown_timeout", func(c *Config) any { return &c.ShutdownTimeout }},
	{"WXPUSH_IDEMPOTENCY_WINDOW", "idempotency_window", func(c *Config) any { return &c.IdempotencyWindow }},
	{"WXPUSH_UI_WRITABLE", "ui_writable", func(c *Config) any { return &c.UIWritable }},
	{"WXPUSH_PPROF", "pprof", func(c *Config) any { return &c.Pprof }},
	{"WXPUSH_API_RATE", "api_rate", func(c *Config) any { return &c.APIRate }},
	{"WXPUSH_API_BURST", "api_burst", func(c *Config) any { return &c.APIBurst }},
	{"WXPUSH_EVENTS", "events", func(c *Config) any { return &c.Events }},
	{"WXPUSH_EVENTS_MAXLEN", "events_maxlen", func(c *Config) any { return &c.EventsMaxLen }},
	{"WXPUSH_WEBHOOK_WINDOW", "webhook_window", func(c *Config) any { return &c.WebhookWindow }},
	{"WXPUSH_WEBHOOK_RETRY_BASE", "webhook_retry_base", func(c *Config) any { return &c.WebhookRetryBase }},
	{"WXPUSH_WEBHOOK_RETRY_CAP", "webhook_retry_cap", func(c *Config) any { return &c.WebhookRetryCap }},
	{"WXPUSH_WEBHOOK_CONCURRENCY", "webhook_concurrency", func(c *Config) any { return &c.WebhookConcurrency }},
	{"WXPUSH_WEBHOOK_PER_ENDPOINT", "webhook_per_endpoint", func(c *Config) any { return &c.WebhookPerEndpoint }},
	{"WXPUSH_WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private", func(c *Config) any { return &c.WebhookAllowPrivate }},
	{"WXPUSH_RELAY_TIMEOUT", "relay_timeout", func(c *Config) any { return &c.RelayTimeout }},
	{"WXPUSH_CALLBACK_INBOX", "callback_inbox", func(c *Config) any { return &c.CallbackInbox }},
	{"WXPUSH_INBOX_APPLY", "inbox_apply", func(c *Config) any { return &c.InboxApply }},
	{"WXPUSH_LOG_LEVEL", "log_level", func(c *Config) any { return &c.LogLevel }},
	{"WXPUSH_LOG_FORMAT", "log_format", func(c *Config) any { return &c.LogFormat }},
}

// knobIndex maps a tuning key to its position in knobs (and its bit in Config.fromFile).
var knobIndex = func() map[string]int {
	m := make(map[string]int, len(knobs))
	for i, k := range knobs {
		m[k.key] = i
	}
	return m
}()

// set parses text into the knob's field of c; the error names the field as given.
func (k knob) set(c *Config, field, text string) error {
	switch p := k.field(c).(type) {
	case *string:
		*p = text
	case *int:
		n, err := strconv.Atoi(text)
		if err != nil {
			return fmt.Errorf("%s: %q is not an integer", field, text)
		}
		*p = n
	case *time.Duration:
		d, err := time.ParseDuration(text)
		if err != nil {
			return fmt.Errorf("%s: %q is not a duration (e.g. 30s, 10m, 168h)", field, text)
		}
		*p = d
	case *bool:
		b, err := strconv.ParseBool(text)
		if err != nil {
			return fmt.Errorf("%s: %q is not a boolean (true or false)", field, text)
		}
		*p = b
	}
	return nil
}

// tuningName is how errors name a tuning field: as the file wrote it if the value
// came from there, else by its environment variable.
func (c Config) tuningName(key string) string {
	i := knobIndex[key]
	if c.fromFile&(1<<i) != 0 {
		return "tuning." + key
	}
	return knobs[i].env
}

// envAppVars are the variables of the app named DefaultApp, by file key.
var envAppVars = []struct {
	env, key string
	set      func(a *App, v string) error
}{
	{"WECHAT_APP_ID", "appid", func(a *App, v string) error { a.AppID = v; return nil }},
	{"WECHAT_APP_SECRET", "secret", func(a *App, v string) error { a.Secret = secret.Value(v); return nil }},
	{"WECHAT_TOKEN", "token", func(a *App, v string) error { a.Token = secret.Value(v); return nil }},
	{"WECHAT_AES_KEY", "aes_key", func(a *App, v string) error { a.AESKey = secret.Value(v); return nil }},
	{"WECHAT_CALLBACK_COMPAT", "callback_compat", func(a *App, v string) (err error) {
		if a.CallbackCompat, err = strconv.ParseBool(v); err != nil {
			return fmt.Errorf("WECHAT_CALLBACK_COMPAT: %q is not true or false", v)
		}
		return nil
	}},
	{"WECHAT_STABLE_TOKEN", "stable_token", func(a *App, v string) (err error) {
		if a.StableToken, err = strconv.ParseBool(v); err != nil {
			return fmt.Errorf("WECHAT_STABLE_TOKEN: %q is not true or false", v)
		}
		return nil
	}},
	{"WXPUSH_STATUS_URL", "status_url", func(a *App, v string) error { a.StatusURL = v; return nil }},
	{"WXPUSH_WEBHOOK_SECRET", "webhook_secret", func(a *App, v string) error { a.WebhookSecret = secret.Value(v); return nil }},
	{"WXPUSH_WEBHOOK_STATES", "webhook_states", func(a *App, v string) error { a.WebhookStates = splitList(v); return nil }},
	{"WECHAT_UPSTREAM_URL", "upstream_url", func(a *App, v string) error { a.UpstreamURL = v; return nil }},
	{"WECHAT_RELAY_ALL", "relay_all", func(a *App, v string) (err error) {
		if a.RelayAll, err = strconv.ParseBool(v); err != nil {
			return fmt.Errorf("WECHAT_RELAY_ALL: %q is not true or false", v)
		}
		return nil
	}},
	{"WECHAT_RELAY_VERIFY", "relay_verify", func(a *App, v string) (err error) {
		if a.RelayVerify, err = strconv.ParseBool(v); err != nil {
			return fmt.Errorf("WECHAT_RELAY_VERIFY: %q is not true or false", v)
		}
		return nil
	}},
	{"WECHAT_RATE_LIMIT", "rate_limit.per_second", func(a *App, v string) (err error) {
		if a.RateLimit.PerSecond, err = strconv.ParseFloat(v, 64); err != nil {
			return fmt.Errorf("WECHAT_RATE_LIMIT: %q is not a number (messages per second)", v)
		}
		return nil
	}},
	{"WECHAT_RATE_BURST", "rate_limit.burst", func(a *App, v string) (err error) {
		if a.RateLimit.Burst, err = strconv.Atoi(v); err != nil {
			return fmt.Errorf("WECHAT_RATE_BURST: %q is not an integer", v)
		}
		return nil
	}},
}

// envAppVar returns the variable that sets key of the default app, if any.
func envAppVar(key string) (env string, bit uint16, ok bool) {
	for i, v := range envAppVars {
		if v.key == key {
			return v.env, 1 << i, true
		}
	}
	return "", 0, false
}

// applyEnv overrides c with the environment: tuning variables, API keys and the
// default app.
func (c *Config) applyEnv(getenv func(string) string) []error {
	var errs []error
	for i, k := range knobs {
		if v := strings.TrimSpace(getenv(k.env)); v != "" {
			c.fromFile &^= 1 << i
			if err := k.set(c, k.env, v); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, k := range strings.Split(getenv("WXPUSH_API_KEYS"), ",") {
		if k = strings.TrimSpace(k); k != "" {
			c.APIKeys = append(c.APIKeys, secret.Value(k))
		}
	}

	var a App
	at := -1 // index of the file's default app, if any
	for i := range c.Apps {
		if c.Apps[i].Name == DefaultApp {
			at = i
			a = c.Apps[i]
			break
		}
	}
	var set uint16
	for i, v := range envAppVars {
		text := strings.TrimSpace(getenv(v.env))
		if text == "" {
			continue
		}
		set |= 1 << i
		if err := v.set(&a, text); err != nil {
			errs = append(errs, err)
		}
	}
	switch {
	case set == 0:
		return errs
	case at >= 0:
		a.origin.env |= set
		c.Apps[at] = a
	case a.AppID != "":
		a.Name = DefaultApp
		a.ValidateTemplates = true
		a.origin.env = set
		c.Apps = append(c.Apps, a)
	default:
		for set != 0 {
			i := bits.TrailingZeros16(set)
			set &^= 1 << i
			msg := "%s: set, but WECHAT_APP_ID is empty"
			if getenv("WXPUSH_CONFIG") != "" {
				msg += " and WXPUSH_CONFIG has no app named default"
			}
			errs = append(errs, fmt.Errorf(msg, envAppVars[i].env))
		}
	}
	return errs
}
