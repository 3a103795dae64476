package config

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/wxpush/wxpush/internal/netguard"
)

// DefaultWebhookStates are the state changes POSTed to a status_url when the
// app names none: sent, and every final state.
var DefaultWebhookStates = []string{
	"sent", "delivered", "user_blocked", "wechat_failed", "rejected", "dead", "expired", "canceled", "unconfirmed",
}

// WantsWebhook reports whether a change to state is POSTed to the app's
// status webhooks.
func (a App) WantsWebhook(state string) bool {
	if a.WebhookStates == nil {
		return slices.Contains(DefaultWebhookStates, state)
	}
	return slices.Contains(a.WebhookStates, state)
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// validateWebhooks checks the app's webhook settings.
func (a App) validateWebhooks(i int, allowPrivate bool) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	f := func(key string) string { return a.fieldName(i, key) }
	if a.StatusURL != "" {
		if err := netguard.CheckURL(a.StatusURL, allowPrivate); err != nil {
			bad("%s: %v", f("status_url"), err)
		}
		if a.WebhookSecret.IsZero() {
			bad("%s: required when %s is set (it signs the webhooks)", f("webhook_secret"), f("status_url"))
		}
	}
	if n := len(a.WebhookSecret.Reveal()); n > 0 && n < 16 {
		bad("%s: %d characters is too short for an HMAC key (at least 16)", f("webhook_secret"), n)
	}
	for _, s := range a.WebhookStates {
		if !slices.Contains(DefaultWebhookStates, s) {
			bad("%s: %q is not a state that is POSTed (one of %s)", f("webhook_states"), s, strings.Join(DefaultWebhookStates, ", "))
		}
	}
	return errs
}

// validateWebhooks checks the webhook tuning.
func (c Config) validateWebhooks() []error {
	var errs []error
	name := c.tuningName
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"webhook_window", c.WebhookWindow}, {"webhook_retry_base", c.WebhookRetryBase}, {"webhook_retry_cap", c.WebhookRetryCap}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: %s must be positive", name(d.key), d.v))
		}
	}
	if c.WebhookRetryCap < c.WebhookRetryBase {
		errs = append(errs, fmt.Errorf("%s: %s is less than %s %s", name("webhook_retry_cap"), c.WebhookRetryCap, name("webhook_retry_base"), c.WebhookRetryBase))
	}
	for _, p := range []struct {
		key string
		v   int
	}{{"webhook_concurrency", c.WebhookConcurrency}, {"webhook_per_endpoint", c.WebhookPerEndpoint}} {
		if p.v < 1 {
			errs = append(errs, fmt.Errorf("%s: %d must be at least 1", name(p.key), p.v))
		}
	}
	return errs
}
