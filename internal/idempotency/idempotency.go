// Package idempotency makes API requests safe to retry: a request carrying an
// Idempotency-Key header is executed once per key within a window, and a repeat
// gets the first response back byte for byte. The same key with a different body
// is a conflict. Entries live in Redis, so every enqueuer shares them. Safe for
// concurrent use; two concurrent requests with one key cannot both execute.
package idempotency

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Errors Begin returns when the request must not run.
var (
	// ErrMismatch: the key was used with a different request body.
	ErrMismatch = errors.New("idempotency: key reused with a different request")
	// ErrInProgress: the first request with this key has not finished yet.
	ErrInProgress = errors.New("idempotency: a request with this key is in progress")
)

// MaxKeyLength bounds the header value.
const MaxKeyLength = 255

// Store keeps idempotency entries.
type Store struct {
	rdb    redis.UniversalClient
	window time.Duration
	lease  time.Duration
}

// New returns a Store keeping responses for window (24 h when zero).
func New(rdb redis.UniversalClient, window time.Duration) *Store {
	if window <= 0 {
		window = 24 * time.Hour
	}
	return &Store{rdb: rdb, window: window, lease: 30 * time.Second}
}

// Response is a stored response.
type Response struct {
	Status int
	Body   []byte
}

// Claim is a running request's hold on its key. Its token tells this hold
// from a later one on the same key (taken once this one's lease lapsed).
type Claim struct {
	key, hash, token string
}

func (c *Claim) pending() string { return "pending " + c.hash + " " + c.token }

func redisKey(scope, key string) string { return "wxpush:idem:{" + scope + "}:" + key }

// Hash fingerprints a request: the method and path as well as the body, so one
// key cannot be replayed against another endpoint.
func Hash(method, path string, body []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s %s\n", method, path)
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// Begin claims key (within scope, e.g. the API key's identity) for a request
// with the given hash. It returns the stored response of an earlier identical
// request (replay), or a Claim that the caller must Complete or Abort, or
// ErrMismatch / ErrInProgress.
func (s *Store) Begin(ctx context.Context, scope, key, hash string) (*Response, *Claim, error) {
	c := &Claim{key: redisKey(scope, key), hash: hash, token: rand.Text()}
	k := c.key
	ok, err := s.rdb.SetNX(ctx, k, c.pending(), s.lease).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("idempotency: %w", err)
	}
	if ok {
		return nil, c, nil
	}
	v, err := s.rdb.Get(ctx, k).Result()
	if err == redis.Nil {
		// Expired between the two calls: treat as in progress; the client retries.
		return nil, nil, ErrInProgress
	}
	if err != nil {
		return nil, nil, fmt.Errorf("idempotency: %w", err)
	}
	return parse(v, hash)
}

// parse reads "pending <hash> <token>" or "done <hash> <status>\n<body>".
func parse(v, hash string) (*Response, *Claim, error) {
	head, body, _ := strings.Cut(v, "\n")
	f := strings.Fields(head)
	if len(f) < 2 || f[1] != hash {
		return nil, nil, ErrMismatch
	}
	if f[0] != "done" || len(f) != 3 {
		return nil, nil, ErrInProgress
	}
	status, err := strconv.Atoi(f[2])
	if err != nil {
		return nil, nil, ErrInProgress
	}
	return &Response{Status: status, Body: []byte(body)}, nil, nil
}

// Complete stores the response of a claimed request for the window.
func (s *Store) Complete(ctx context.Context, c *Claim, r Response) error {
	v := fmt.Sprintf("done %s %d\n%s", c.hash, r.Status, r.Body)
	if err := s.rdb.Set(ctx, c.key, v, s.window).Err(); err != nil {
		return fmt.Errorf("idempotency: %w", err)
	}
	return nil
}

// Abort releases a claim whose request failed without effect, so a retry with
// the same key can run. It releases only this claim: should its lease have
// lapsed and another request have claimed the key since, that claim stands.
func (s *Store) Abort(ctx context.Context, c *Claim) error {
	if err := abortScript.Run(ctx, s.rdb, []string{c.key}, c.pending()).Err(); err != nil {
		return fmt.Errorf("idempotency: %w", err)
	}
	return nil
}

// abortScript deletes KEYS[1] if it still holds ARGV[1].
var abortScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0`)
