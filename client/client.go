package client

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Defaults of New.
const (
	DefaultRetries   = 3
	DefaultRetryBase = 200 * time.Millisecond
	// DefaultTimeout bounds one HTTP request of the default HTTP client.
	DefaultTimeout = 30 * time.Second
)

const (
	// maxBackoff caps the exponential backoff ceiling between retries.
	maxBackoff = 30 * time.Second
	// maxRetryAfter caps how long a Retry-After header can make a call wait.
	maxRetryAfter = 5 * time.Minute
	// maxResponseBytes bounds a response body: a page of 500 dead messages with
	// their histories is a few MiB at most.
	maxResponseBytes = 32 << 20
	userAgent        = "wxpush-go-client"
)

// Client talks to one wxpush enqueuer. Build it with New.
type Client struct {
	base string // scheme://host[/prefix], without a trailing slash
	hc   *http.Client
	// key is a pointer so that printing the struct (by accident, through
	// reflection) shows an address, never the key.
	key       *string
	retries   int
	retryBase time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithAPIKey sends key as "Authorization: Bearer <key>" on every request (the
// server's WXPUSH_API_KEYS). Without it the server serves loopback clients only.
func WithAPIKey(key string) Option {
	return func(c *Client) {
		if key == "" {
			c.key = nil
			return
		}
		c.key = &key
	}
}

// WithHTTPClient sends requests through hc (its Transport and Timeout) instead
// of a default client with a 30-second timeout. A nil hc keeps the default.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.hc = hc
		}
	}
}

// WithRetries sets how many times a call is retried after a retryable answer
// or a transport error (n = 0: never) and the backoff base: retry k waits a
// random time in [0, base·2^k) (capped at 30 s) unless the server sent
// Retry-After. A base ≤ 0 keeps 200 ms.
func WithRetries(n int, base time.Duration) Option {
	return func(c *Client) {
		c.retries = max(n, 0)
		if base > 0 {
			c.retryBase = base
		}
	}
}

// New returns a Client of the API at baseURL ("http://127.0.0.1:8080", or with a
// path prefix behind a gateway).
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		// url.Parse's error repeats the URL, which may hold a password.
		return nil, errors.New("wxpush: server URL: not a URL; want e.g. http://127.0.0.1:8080")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("wxpush: server URL %q: want an absolute http(s) URL without query, e.g. http://127.0.0.1:8080", u.Redacted())
	}
	c := &Client{
		base:      strings.TrimRight(u.String(), "/"),
		hc:        &http.Client{Timeout: DefaultTimeout},
		retries:   DefaultRetries,
		retryBase: DefaultRetryBase,
	}
	for _, opt := range opts {
		opt(c)
	}
	return c, nil
}

// String describes the client without its API key.
func (c Client) String() string {
	key := "none"
	if c.key != nil {
		key = "set"
	}
	return fmt.Sprintf("wxpush client{server: %s, api key: %s, retries: %d}", redactedBase(c.base), key, c.retries)
}

// GoString is String, so that %#v hides the API key too.
func (c Client) GoString() string { return c.String() }

func redactedBase(base string) string {
	if u, err := url.Parse(base); err == nil {
		return u.Redacted()
	}
	return "?"
}

// call is one API request.
type call struct {
	method string
	path   string // escaped, from the API root: "/v1/messages/01K…"
	body   []byte // JSON; nil for none
	// idemKey is sent as Idempotency-Key, the same on every try.
	idemKey string
}

// do runs c, retrying as the package doc says, and decodes a 2xx body into out
// (when out is not nil).
func (c *Client) do(ctx context.Context, req call, out any) error {
	for attempt := 0; ; attempt++ {
		retry, wait, err := c.once(ctx, req, out)
		if err == nil || !retry || attempt >= c.retries {
			return err
		}
		if wait < 0 {
			wait = c.backoff(attempt)
		}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return err // waiting would only end in a deadline error; this one says more
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (gave up retrying: %w)", err, ctx.Err())
		case <-t.C:
		}
	}
}

// once sends one try. It reports whether the outcome may be retried and, when
// the server said, after how long (-1: use the backoff).
func (c *Client) once(ctx context.Context, cl call, out any) (retry bool, wait time.Duration, err error) {
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, c.base+cl.path, body)
	if err != nil {
		return false, 0, fmt.Errorf("wxpush: %s %s: %w", cl.method, cl.path, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)
	if cl.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if cl.idemKey != "" {
		req.Header.Set("Idempotency-Key", cl.idemKey)
	}
	if c.key != nil {
		req.Header.Set("Authorization", "Bearer "+*c.key)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// *url.Error names the method and URL, never the headers.
		return ctx.Err() == nil, -1, fmt.Errorf("wxpush: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return ctx.Err() == nil, -1, fmt.Errorf("wxpush: %s %s: reading the response: %w", cl.method, cl.path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if out == nil {
			return false, 0, nil
		}
		if err := json.Unmarshal(b, out); err != nil {
			return false, 0, fmt.Errorf("wxpush: %s %s: decoding the %d response: %w", cl.method, cl.path, resp.StatusCode, err)
		}
		return false, 0, nil
	}
	e := responseError(resp, b)
	return e.retryable(), retryAfter(resp.Header.Get("Retry-After")), e
}

// backoff is full jitter: a random wait in [0, base·2^attempt), capped.
func (c *Client) backoff(attempt int) time.Duration {
	ceiling := maxBackoff
	if attempt < 30 {
		ceiling = min(c.retryBase<<attempt, maxBackoff)
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling)
}

// retryAfter reads Retry-After (seconds or an HTTP date); -1 when absent or bad.
func retryAfter(v string) time.Duration {
	if v == "" {
		return -1
	}
	if secs, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		switch {
		case secs < 0:
			return -1
		case secs > int(maxRetryAfter/time.Second):
			return maxRetryAfter
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(time.Until(t), 0), maxRetryAfter)
	}
	return -1
}

// newKey returns a random idempotency key.
func newKey() string {
	return "wxpush-go-" + crand.Text()
}
