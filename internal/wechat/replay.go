package wechat

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultCallbackWindow is how far a callback's timestamp may be from the
// receiver's clock, either way, before it is refused as stale.
const DefaultCallbackWindow = 5 * time.Minute

// ErrStaleTimestamp: a callback's timestamp is not a Unix time within the
// window. A receiver refuses the request and changes no state.
var ErrStaleTimestamp = errors.New("wechat: callback timestamp outside the accepted window")

// CheckTimestamp reports whether timestamp (decimal Unix seconds, as WeChat
// puts in a callback's query) lies within window of now, either way. A
// signature alone never expires, so without this check a captured callback
// URL could be replayed for ever. Errors wrap ErrStaleTimestamp.
func CheckTimestamp(timestamp string, now time.Time, window time.Duration) error {
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %q is not a Unix time", ErrStaleTimestamp, envelopeTruncate([]byte(timestamp), 20))
	}
	// Compare with bounds in seconds: subtracting an absurd timestamp from now
	// could overflow.
	w := int64(window / time.Second)
	if lo, hi := now.Unix()-w, now.Unix()+w; ts < lo || ts > hi {
		return fmt.Errorf("%w: %s is not within ±%s of this server's clock", ErrStaleTimestamp, timestamp, window)
	}
	return nil
}

// NonceUse says what a callback's nonce was used for before.
type NonceUse int

const (
	// NonceFresh: first use of this timestamp and nonce.
	NonceFresh NonceUse = iota
	// NonceRetry: used before with the same body. WeChat retries a callback
	// it got no answer to within 5 s with the same query and body, so this
	// is WeChat trying again, to be answered and applied (idempotently) as
	// the first delivery was.
	NonceRetry
	// NonceReplayed: used before with a different body. WeChat never does
	// that; someone who captured a signed URL is posting their own body.
	NonceReplayed
)

// NonceStore remembers the timestamp and nonce of accepted callbacks, with a
// hash of their body, in Redis shared by every enqueuer. Each use is one key
// of its own (no multi-key operation, so it works on Redis Cluster) that
// expires when the timestamp leaves the window. It is safe for concurrent use.
type NonceStore struct {
	rdb redis.UniversalClient
}

// NewNonceStore returns a NonceStore on rdb.
func NewNonceStore(rdb redis.UniversalClient) *NonceStore { return &NonceStore{rdb: rdb} }

// nonceScript sets KEYS[1] to the body hash ARGV[1] for ARGV[2] ms unless it
// exists, and returns the hash found there (nil when it was set now): one
// round trip, atomic, on Redis versions before 7's SET NX GET and miniredis.
var nonceScript = redis.NewScript(`
local prev = redis.call('GET', KEYS[1])
if prev then return prev end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
`)

// NonceKey names one use of a callback's timestamp and nonce by app. The
// app, timestamp and nonce are all covered by the signature the receiver
// checked before, so only WeChat chooses them. Every callback of an app
// records its use under this one key, whatever path takes it (the relay,
// the callback inbox's append script, the store-then-answer path), so that
// a signed query captured from one kind of callback cannot carry another
// kind's body. The key carries the callback inbox's hash tag: the inbox's
// append script records the use and appends the event in one Redis Cluster
// slot.
func NonceKey(app, timestamp, nonce string) string {
	return "wxpush:{inbox}:nonce:" + app + ":" + timestamp + ":" + nonce
}

// Remember records that app accepted a callback with timestamp, nonce and
// body, for ttl (at least the time the timestamp stays within the window),
// and reports any earlier use. body is the request body as received.
func (s *NonceStore) Remember(ctx context.Context, app, timestamp, nonce string, body []byte, ttl time.Duration) (NonceUse, error) {
	sum := sha256.Sum256(body)
	hash := hex.EncodeToString(sum[:])
	prev, err := nonceScript.Run(ctx, s.rdb, []string{NonceKey(app, timestamp, nonce)}, hash, max(ttl, time.Second).Milliseconds()).Text()
	switch {
	case errors.Is(err, redis.Nil):
		return NonceFresh, nil
	case err != nil:
		return 0, fmt.Errorf("wechat: remember callback nonce: %w", err)
	case prev == hash:
		return NonceRetry, nil
	}
	return NonceReplayed, nil
}
