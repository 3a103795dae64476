package config

import (
	"fmt"
	"net/url"
	"time"
)

// MaxRelayTimeout is the longest RelayTimeout: WeChat waits 5 s for an
// answer, and wxpush needs a little of that to answer "success" in time.
const MaxRelayTimeout = 4800 * time.Millisecond

// validateRelay checks the app's relay settings. The upstream is the
// operator's own server, usually on a private address, so the SSRF guard of
// the webhooks does not apply; the URL must still be a plain http(s) one.
func (a App) validateRelay(i int) []error {
	var errs []error
	f := func(key string) string { return a.fieldName(i, key) }
	if a.UpstreamURL != "" {
		if err := checkUpstreamURL(a.UpstreamURL); err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", f("upstream_url"), err))
		}
	}
	for _, o := range []struct {
		key string
		on  bool
	}{{"relay_all", a.RelayAll}, {"relay_verify", a.RelayVerify}} {
		if o.on && a.UpstreamURL == "" {
			errs = append(errs, fmt.Errorf("%s: needs %s", f(o.key), f("upstream_url")))
		}
	}
	return errs
}

// checkUpstreamURL refuses what would make a relay go astray or put a secret
// in logs: another scheme, no host, credentials, a fragment.
func checkUpstreamURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return fmt.Errorf("not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("scheme must be http or https (got %q)", u.Scheme)
	case u.Host == "":
		return fmt.Errorf("no host")
	case u.User != nil:
		return fmt.Errorf("must not carry credentials")
	case u.Fragment != "" || u.RawFragment != "":
		return fmt.Errorf("must not have a fragment")
	}
	return nil
}

// validateRelay checks the relay tuning.
func (c Config) validateRelay() []error {
	if c.RelayTimeout <= 0 || c.RelayTimeout > MaxRelayTimeout {
		return []error{fmt.Errorf("%s: %s must be positive and at most %s (WeChat waits 5 s)",
			c.tuningName("relay_timeout"), c.RelayTimeout, MaxRelayTimeout)}
	}
	return nil
}
