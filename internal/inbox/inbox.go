// Package inbox is the durable callback inbox. The enqueuer answers WeChat's
// delivery-result callbacks after one Redis round trip: a script that records
// the callback's nonce and appends the event to one stream (Stream), with the
// event's XML and the time it was received. The workers' Appliers then read
// the stream through one consumer group and settle the records in batches.
// An appended event is applied exactly once in effect: an applier that dies
// mid-batch leaves its entries pending, another claims them after ClaimAfter
// and applies them again, which the store's callback script makes harmless.
// An event that cannot be applied (unreadable, or failing MaxDeliveries
// times) is parked in ParkedStream with its reason and never blocks others.
package inbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/wechat"
)

// Keys. Every key shares the {inbox} hash tag, so that the append script's
// nonce key (wechat.NonceKey, shared with every other callback path) and
// stream sit in one Redis Cluster slot.
const (
	Stream       = "wxpush:{inbox}:events"
	ParkedStream = "wxpush:{inbox}:parked"
	Group        = "appliers"
)

// Entry fields.
const (
	fieldApp      = "app"
	fieldEvent    = "event"
	fieldXML      = "xml"
	fieldReceived = "at" // Unix milliseconds
	fieldReason   = "reason"
)

// Entry is one received callback: the event's plaintext XML (decrypted in
// safe mode; its signature was checked before it was appended).
type Entry struct {
	App      string
	Event    string // the event name, for metrics
	XML      []byte
	Received time.Time
}

// Use says what an Append did.
type Use int

const (
	// Appended: first use of the callback's timestamp and nonce; the event
	// is in the inbox.
	Appended Use = iota
	// Retried: WeChat sent this callback again (same nonce, same body). It
	// was appended the first time (the nonce is recorded in the same
	// script), so it is answered and not appended twice.
	Retried
	// Replayed: the timestamp and nonce were used with another body, which
	// WeChat never does: refuse it.
	Replayed
)

// appendScript records the nonce and appends the event, atomically, unless
// the nonce was used. KEYS: nonce key, stream. ARGV: body hash, nonce ttl ms,
// app, event, xml, received ms. Returns 0 appended, 1 retry, 2 replayed.
var appendScript = redis.NewScript(`
local prev = redis.call('GET', KEYS[1])
if prev then
  if prev == ARGV[1] then return 1 end
  return 2
end
redis.call('XADD', KEYS[2], '*', 'app', ARGV[3], 'event', ARGV[4], 'xml', ARGV[5], 'at', ARGV[6])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 0
`)

// Inbox appends callbacks. It is safe for concurrent use.
type Inbox struct {
	rdb     redis.UniversalClient
	metrics *Metrics
}

// New returns an Inbox on rdb, counting appends into m.
func New(rdb redis.UniversalClient, m *Metrics) *Inbox { return &Inbox{rdb: rdb, metrics: m} }

// Append stores e unless its callback was seen: timestamp and nonce are
// WeChat's (covered by the signature), body the request body as received,
// remembered for nonceTTL. One round trip.
func (ib *Inbox) Append(ctx context.Context, e Entry, timestamp, nonce string, body []byte, nonceTTL time.Duration) (Use, error) {
	sum := sha256.Sum256(body)
	key := wechat.NonceKey(e.App, timestamp, nonce)
	n, err := appendScript.Run(ctx, ib.rdb, []string{key, Stream}, hex.EncodeToString(sum[:]),
		max(nonceTTL, time.Second).Milliseconds(), e.App, e.Event, e.XML, e.Received.UnixMilli()).Int()
	if err != nil {
		return 0, fmt.Errorf("inbox: append: %w", err)
	}
	if Use(n) == Appended {
		ib.metrics.Appended.WithLabelValues(e.App).Inc()
	}
	return Use(n), nil
}

// Oldest is the receive time of the oldest event not yet applied, and false
// when the inbox is empty. Applied events are deleted, so it is the first
// entry of the stream.
func Oldest(ctx context.Context, rdb redis.UniversalClient) (time.Time, bool, error) {
	msgs, err := rdb.XRangeN(ctx, Stream, "-", "+", 1).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return time.Time{}, false, fmt.Errorf("inbox: oldest: %w", err)
	}
	if len(msgs) == 0 {
		return time.Time{}, false, nil
	}
	return entryTime(msgs[0]), true, nil
}

// entryTime is when an entry was received: its field, else its id's time.
func entryTime(m redis.XMessage) time.Time {
	if s, ok := m.Values[fieldReceived].(string); ok {
		if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.UnixMilli(ms)
		}
	}
	var ms int64
	if _, err := fmt.Sscanf(m.ID, "%d-", &ms); err == nil {
		return time.UnixMilli(ms)
	}
	return time.Time{}
}

// Parked is an event the appliers gave up on.
type Parked struct {
	ID       string // its id in ParkedStream
	App      string
	Event    string
	XML      string
	Received time.Time
	Reason   string
}

// ListParked returns up to limit parked events, oldest first.
func ListParked(ctx context.Context, rdb redis.UniversalClient, limit int64) ([]Parked, error) {
	msgs, err := rdb.XRangeN(ctx, ParkedStream, "-", "+", limit).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("inbox: list parked: %w", err)
	}
	out := make([]Parked, len(msgs))
	for i, m := range msgs {
		out[i] = Parked{ID: m.ID, App: str(m, fieldApp), Event: str(m, fieldEvent), XML: str(m, fieldXML),
			Received: entryTime(m), Reason: str(m, fieldReason)}
	}
	return out, nil
}

func str(m redis.XMessage, f string) string {
	s, _ := m.Values[f].(string)
	return s
}
