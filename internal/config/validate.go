package config

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/wxpush/wxpush/internal/secret"
)

// MinOrphanAfter is the least OrphanAfter: three times the longest a request
// may take to store a message and enqueue its task (tasks.SubmitTimeout),
// which leaves room for clock skew between enqueuers and workers.
const MinOrphanAfter = 30 * time.Second

// MinCallbackWindow is the least CallbackWindow: WeChat retries a callback it
// got no answer to with the same timestamp for about 15 s (3 tries, 5 s
// each), and the window must also absorb clock skew.
const MinCallbackWindow = 30 * time.Second

var (
	appNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	// tokenRE is WeChat's rule for the callback token: 3–32 letters and digits.
	tokenRE  = regexp.MustCompile(`^[A-Za-z0-9]{3,32}$`)
	aesKeyRE = regexp.MustCompile(`^[A-Za-z0-9+/]{43}$`)
)

// Validate checks the configuration and returns every problem, joined. Each error names
// the field as the user wrote it (apps[2].aes_key, tuning.retry_base, or the
// environment variable it came from) and the bad value — except a secret's, which is
// described by its length and never quoted.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	name := c.tuningName

	if c.RedisURL != "" {
		// The URL may hold a password: name only its scheme.
		scheme, _, found := strings.Cut(c.RedisURL, "://")
		if !found {
			scheme = ""
		}
		switch scheme {
		case "redis", "rediss", "redis-sentinel", "redis-cluster", "rediss-cluster":
		default:
			bad("%s: scheme must be redis://, rediss://, redis-sentinel://, redis-cluster:// or rediss-cluster:// (got %q)", name("redis_url"), scheme)
		}
	}
	if c.WeChatAPIBase != "" && !strings.HasPrefix(c.WeChatAPIBase, "http://") && !strings.HasPrefix(c.WeChatAPIBase, "https://") {
		bad("%s: %q must be an http(s) URL", name("wechat_api_base"), c.WeChatAPIBase)
	}
	for _, p := range []struct {
		key string
		v   int
	}{{"concurrency", c.Concurrency}, {"max_attempts", c.MaxAttempts}} {
		if p.v < 1 {
			bad("%s: %d must be at least 1", name(p.key), p.v)
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"retry_base", c.RetryBase}, {"retry_cap", c.RetryCap}, {"send_timeout", c.SendTimeout},
		{"retention", c.Retention}, {"confirm_timeout", c.ConfirmTimeout}, {"callback_hold", c.CallbackHold},
		{"task_check_interval", c.TaskCheckInterval}, {"shutdown_timeout", c.ShutdownTimeout},
		{"idempotency_window", c.IdempotencyWindow},
	} {
		if d.v <= 0 {
			bad("%s: %s must be positive", name(d.key), d.v)
		}
	}
	if c.EventsMaxLen < 100 {
		bad("%s: %d must be at least 100", name("events_maxlen"), c.EventsMaxLen)
	}
	if c.APIRate < 0 || c.APIBurst < 0 {
		bad("%s: %d/%d must not be negative", name("api_rate"), c.APIRate, c.APIBurst)
	}
	if c.OrphanAfter < MinOrphanAfter {
		bad("%s: %s must be at least %s, longer than a request may take to store and enqueue a message",
			name("orphan_after"), c.OrphanAfter, MinOrphanAfter)
	}
	if c.CallbackWindow < MinCallbackWindow {
		bad("%s: %s must be at least %s: WeChat retries a callback with its first timestamp for about 15 s",
			name("callback_window"), c.CallbackWindow, MinCallbackWindow)
	}
	if c.RetryCap < c.RetryBase {
		bad("%s: %s is less than %s %s", name("retry_cap"), c.RetryCap, name("retry_base"), c.RetryBase)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("%s: %q must be debug, info, warn or error", name("log_level"), c.LogLevel)
	}
	switch c.LogFormat {
	case "json", "text", "auto":
	default:
		bad("%s: %q must be json, text or auto", name("log_format"), c.LogFormat)
	}

	first := make(map[string]int, len(c.Apps))
	for i, a := range c.Apps {
		errs = append(errs, a.validate(i, first)...)
		errs = append(errs, a.validateWebhooks(i, c.WebhookAllowPrivate)...)
		errs = append(errs, a.validateRelay(i)...)
	}
	errs = append(errs, c.validateWebhooks()...)
	errs = append(errs, c.validateRelay()...)
	return errors.Join(errs...)
}

// validate checks the app at position i; first maps names seen so far to their position.
func (a App) validate(i int, first map[string]int) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	f := func(key string) string { return a.fieldName(i, key) }

	if !appNameRE.MatchString(a.Name) {
		bad("%s: %q must be 1–64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit", f("name"), a.Name)
	}
	if j, dup := first[a.Name]; dup {
		bad("%s: %q is defined twice (first as apps[%d])", f("name"), a.Name, j)
	} else {
		first[a.Name] = i
	}
	if a.AppID == "" {
		bad("%s: required", f("appid"))
	}
	if a.Secret.IsZero() {
		bad("%s: required", f("secret"))
	}
	const tokenRule = "3–32 letters or digits (WeChat's callback token rule"
	if a.Token.IsZero() {
		bad("%s: required, %s)", f("token"), tokenRule)
	} else if !tokenRE.MatchString(a.Token.Reveal()) {
		bad("%s: required, %s; got %s)", f("token"), tokenRule, describe(a.Token, tokenLen, "letters or digits"))
	}
	if !a.PreviousToken.IsZero() && !tokenRE.MatchString(a.PreviousToken.Reveal()) {
		bad("%s: must be %s; got %s)", f("previous_token"), tokenRule, describe(a.PreviousToken, tokenLen, "letters or digits"))
	}
	for _, k := range []struct {
		key string
		v   secret.Value
	}{{"aes_key", a.AESKey}, {"previous_aes_key", a.PreviousAESKey}} {
		if !k.v.IsZero() && !aesKeyRE.MatchString(k.v.Reveal()) {
			bad("%s: must be 43 characters of base64 (got %s)", f(k.key), describe(k.v, aesKeyLen, "A-Za-z0-9+/"))
		}
	}

	r := a.RateLimit
	switch {
	case math.IsNaN(r.PerSecond) || math.IsInf(r.PerSecond, 0) || r.PerSecond < 0:
		bad("%s: %v must be a finite number ≥ 0", f("rate_limit.per_second"), r.PerSecond)
	case r.PerSecond > 0 && r.Burst == 0:
		bad("%s: 0 must be at least 1 when %s is set", f("rate_limit.burst"), f("rate_limit.per_second"))
	case r.PerSecond == 0 && r.Burst > 0:
		bad("%s: %d is set but %s is 0 (no limit)", f("rate_limit.burst"), r.Burst, f("rate_limit.per_second"))
	}
	if r.Burst < 0 {
		bad("%s: %d must be ≥ 0", f("rate_limit.burst"), r.Burst)
	}

	rl := a.RecipientLimit
	if rl.Max < 0 {
		bad("%s: %d must be ≥ 0", f("recipient_limit.max"), rl.Max)
	}
	if rl.Window < 0 {
		bad("%s: %s must be ≥ 0", f("recipient_limit.window"), rl.Window)
	}
	if rl.Max > 0 && rl.Window == 0 {
		bad("%s: required when %s is set", f("recipient_limit.window"), f("recipient_limit.max"))
	}
	if rl.Max == 0 && rl.Window > 0 {
		bad("%s: required when %s is set", f("recipient_limit.max"), f("recipient_limit.window"))
	}
	if a.MaxBacklog < 0 {
		bad("%s: %d must be ≥ 0", f("max_backlog"), a.MaxBacklog)
	}
	return errs
}

// fieldName is how errors name key of the app at position i: by its WECHAT_* variable
// if that set it (or for a default app built without a file, as before files
// existed), else by its path in the file.
func (a App) fieldName(i int, key string) string {
	if env, bit, ok := envAppVar(key); ok && (a.origin.env&bit != 0 || (!a.origin.file && a.Name == DefaultApp)) {
		return env
	}
	return fmt.Sprintf("apps[%d].%s", i, key)
}

// describe says what is wrong with a secret without revealing it: its length, and
// when the length is allowed, that some characters are not.
func describe(v secret.Value, lenOK func(int) bool, allowed string) string {
	n := utf8.RuneCountInString(v.Reveal())
	if !lenOK(n) {
		return fmt.Sprint(n)
	}
	return fmt.Sprintf("%d, some not %s", n, allowed)
}

func tokenLen(n int) bool  { return n >= 3 && n <= 32 }
func aesKeyLen(n int) bool { return n == 43 }
