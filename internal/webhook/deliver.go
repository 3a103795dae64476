package webhook

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/wxpush/wxpush/internal/netguard"
)

// Defaults of a Deliverer's settings.
const (
	DefaultTimeout     = 10 * time.Second
	DefaultPerEndpoint = 16
	slotWait           = 100 * time.Millisecond // how long a POST waits for an endpoint slot before it is busy
	DefaultBreakerTrip = 5                      // consecutive failures that open an endpoint's breaker
	DefaultBreakerOpen = 30 * time.Second       // how long it stays open before one probe
	maxResponseBody    = 64 << 10               // bytes of a receiver's answer read (and discarded)
	goneFor            = 30 * 24 * time.Hour
	pendingSlack       = time.Hour // a message's pending set outlives its window by this much
	maxRetry           = 100000    // asynq's own bound; the window ends a webhook first
	userAgent          = "wxpush-webhook/1"
	eventIDHeader      = "Wxpush-Event-Id"
	contentTypeJSON    = "application/json"
	// deliveredTaskRetain: a delivered event's task id blocks a repeated
	// forward this long; longer than a dead forwarder's entries wait for
	// takeover (events.ClaimAfter), and short, since asynq keeps every
	// completed task this long (about 500 bytes each).
	deliveredTaskRetain = 2 * time.Minute
)

// Results of one attempt, the result label of wxpush_webhook_attempts_total.
const (
	ResultDelivered   = "delivered"    // 2xx
	ResultGone        = "gone"         // 410: no more webhooks to that URL
	ResultRefused     = "refused"      // an inward address (SSRF guard) or no secret: dead at once
	ResultHTTPError   = "http_error"   // another status: retried
	ResultError       = "error"        // timeout, connection refused, …: retried
	ResultBreakerOpen = "breaker_open" // not attempted: the endpoint's breaker is open
	ResultBusy        = "busy"         // not attempted: the endpoint's concurrency limit is reached
	ResultWaiting     = "waiting"      // not attempted: an earlier event of the message is not done
	ResultDropped     = "dropped"      // not attempted: the URL answered 410 before
	ResultDuplicate   = "duplicate"    // not attempted: the event was done already (a repeated run)
)

// Not-attempted outcomes: the task is retried soon without spending its retry
// count (IsFailure is false for them).
var (
	errWaiting     = errors.New("webhook: an earlier event of this message is not delivered yet")
	errBusy        = errors.New("webhook: the endpoint's concurrency limit is reached")
	errBreakerOpen = errors.New("webhook: the endpoint's circuit breaker is open")
)

// IsFailure is the asynq IsFailure of the webhook server: waiting for order,
// a busy endpoint or an open breaker does not count as a failed attempt.
func IsFailure(err error) bool {
	return !errors.Is(err, errWaiting) && !errors.Is(err, errBusy) && !errors.Is(err, errBreakerOpen)
}

// RetryDelay returns the asynq RetryDelayFunc of the webhook server:
// exponential from base to limit with full jitter for failed attempts, and
// short jittered pauses for the not-attempted outcomes (about the breaker's
// open time, at most limit, for an open breaker).
func RetryDelay(base, limit time.Duration) asynq.RetryDelayFunc {
	return func(n int, err error, _ *asynq.Task) time.Duration {
		switch {
		case errors.Is(err, errWaiting):
			// A fallback: the earlier event's end runs this one at once (next).
			return 100*time.Millisecond + rand.N(400*time.Millisecond)
		case errors.Is(err, errBusy):
			return 50*time.Millisecond + rand.N(200*time.Millisecond)
		case errors.Is(err, errBreakerOpen):
			open := min(DefaultBreakerOpen, limit)
			return open/2 + rand.N(open/2+1)
		}
		d := limit
		if n < 40 && base<<n < limit && base<<n > 0 {
			d = base << n
		}
		return rand.N(d) + time.Millisecond
	}
}

// DelivererConfig is what a Deliverer needs.
type DelivererConfig struct {
	Redis redis.UniversalClient
	// Secret returns app's webhook secret; false = none (the event is dead).
	Secret func(app string) ([]byte, bool)
	// Window is how long an event is retried, from its state change (or its
	// replay), before it is dead.
	Window time.Duration
	// PerEndpoint bounds POSTs in flight to one receiver (scheme://host:port)
	// from this process; 0 = DefaultPerEndpoint.
	PerEndpoint int
	// AllowPrivate lets webhooks reach loopback/private addresses.
	AllowPrivate bool
	// Timeout of one POST; 0 = DefaultTimeout.
	Timeout time.Duration
	// BreakerTrip and BreakerOpen tune the per-endpoint circuit breaker; 0 = defaults.
	BreakerTrip uint32
	BreakerOpen time.Duration
	// Runner starts a message's next waiting event when one ends (nil: the
	// next one starts after its retry delay).
	Runner  TaskRunner
	Metrics *Metrics
	Log     *slog.Logger
	// Transport overrides the HTTP transport (tests); its dialer must apply
	// the SSRF guard itself.
	Transport http.RoundTripper
}

// Deliverer is the asynq handler of TypeDeliver: one signed POST per attempt.
type Deliverer struct {
	cfg    DelivererConfig
	client *http.Client

	mu        sync.Mutex
	endpoints map[string]*endpoint
}

// endpoint is one receiver's concurrency slots and circuit breaker.
type endpoint struct {
	slots   chan struct{}
	breaker *gobreaker.TwoStepCircuitBreaker[struct{}]
}

// NewDeliverer returns a Deliverer; its HTTP client follows no redirects and
// dials through the SSRF guard.
func NewDeliverer(cfg DelivererConfig) *Deliverer {
	if cfg.PerEndpoint <= 0 {
		cfg.PerEndpoint = DefaultPerEndpoint
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.BreakerTrip == 0 {
		cfg.BreakerTrip = DefaultBreakerTrip
	}
	if cfg.BreakerOpen <= 0 {
		cfg.BreakerOpen = DefaultBreakerOpen
	}
	tr := cfg.Transport
	if tr == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Proxy = nil // a proxy would dial for us, past the guard
		t.DialContext = netguard.Dialer(cfg.AllowPrivate).DialContext
		t.MaxIdleConnsPerHost = cfg.PerEndpoint
		tr = t
	}
	return &Deliverer{
		cfg: cfg,
		client: &http.Client{
			Transport:     tr,
			Timeout:       cfg.Timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		endpoints: map[string]*endpoint{},
	}
}

// Task is the delivery task of ev to url, for the forwarder to enqueue: its
// id is the event id, so a repeated forward enqueues nothing new.
func Task(ev Event, url string) (*asynq.Task, error) {
	b, err := encodePayload(payload{Event: ev, URL: url, App: ev.App})
	if err != nil {
		return nil, err
	}
	return asynq.NewTask(TypeDeliver, b, asynq.Queue(Queue), asynq.TaskID(ev.EventID),
		asynq.MaxRetry(maxRetry), asynq.Retention(deliveredTaskRetain)), nil
}

// PendingKey holds the event ids of message id's events that have a webhook
// not yet done, scored by sequence number; an event is POSTed only when its
// number is the least, and its end starts the next one.
func PendingKey(id string) string { return "wxpush:webhook:pending:" + id }

// AddPending is the forwarder's step before enqueueing ev's task; it also
// marks ev forwarded (AddForwarded).
func AddPending(ctx context.Context, p redis.Pipeliner, ev Event, window time.Duration) {
	p.ZAdd(ctx, PendingKey(ev.ID), redis.Z{Score: float64(ev.Seq), Member: ev.EventID})
	p.Expire(ctx, PendingKey(ev.ID), window+pendingSlack)
	AddForwarded(ctx, p, ev.ID, ev.Seq, window)
}

// ForwardedKey holds the seqs of message id's events the forwarders have
// seen, wanted as webhooks or not (ZSET, score and member the seq).
func ForwardedKey(id string) string { return "wxpush:webhook:forwarded:" + id }

// AddForwarded records that the event seq of message id was forwarded. A
// message's events are numbered 1, 2, … with no gap, so a later event can
// tell whether every earlier one has been forwarded: one may still sit
// unacknowledged with a forwarder that died, to be taken over 30 s later,
// while the later one was forwarded at once by another.
func AddForwarded(ctx context.Context, p redis.Pipeliner, id string, seq int64, window time.Duration) {
	p.ZAdd(ctx, ForwardedKey(id), redis.Z{Score: float64(seq), Member: strconv.FormatInt(seq, 10)})
	p.Expire(ctx, ForwardedKey(id), window+pendingSlack)
}

// forwardGrace is how long a later event waits for an earlier one not yet
// forwarded: past the forwarders' takeover (30 s) with room. Beyond it the
// later event goes on (the earlier one's record may have expired).
const forwardGrace = 2 * time.Minute

func goneKey(rawURL string) string {
	sum := sha256.Sum256([]byte(rawURL))
	return "wxpush:webhook:gone:" + hex.EncodeToString(sum[:16])
}

// ProcessTask makes one delivery attempt of a webhook task.
func (d *Deliverer) ProcessTask(ctx context.Context, t *asynq.Task) error {
	p, err := decodePayload(t.Payload())
	if err != nil {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	ev := p.Event
	var replay *redis.StringCmd
	var first *redis.ZSliceCmd
	var gone *redis.IntCmd
	var mine *redis.FloatCmd
	var earlier *redis.IntCmd
	if _, err := d.cfg.Redis.Pipelined(ctx, func(pl redis.Pipeliner) error {
		replay = pl.Get(ctx, replayKey(ev.EventID))
		first = pl.ZRangeWithScores(ctx, PendingKey(ev.ID), 0, 0)
		mine = pl.ZScore(ctx, PendingKey(ev.ID), ev.EventID)
		earlier = pl.ZCount(ctx, ForwardedKey(ev.ID), "-inf", strconv.FormatInt(ev.Seq-1, 10))
		gone = pl.Exists(ctx, goneKey(p.URL))
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("webhook: read delivery state: %w", err)
	}
	start, replayed := ev.At, false
	if ms, err := strconv.ParseInt(replay.Val(), 10, 64); err == nil {
		start, replayed = time.UnixMilli(ms), true
	}
	if gone.Val() > 0 {
		d.count(ev.App, ResultDropped)
		d.done(ctx, ev)
		return nil
	}
	if !replayed && errors.Is(mine.Err(), redis.Nil) {
		// Its turn ended already: this is a second run of a done event (the
		// previous event's end may start a task that has just completed).
		d.count(ev.App, ResultDuplicate)
		return nil
	}
	if !replayed {
		if zs := first.Val(); len(zs) > 0 && int64(zs[0].Score) < ev.Seq {
			d.count(ev.App, ResultWaiting)
			return errWaiting
		}
		if earlier.Val() < ev.Seq-1 && time.Since(ev.At) < forwardGrace {
			// An earlier event is not forwarded yet (see AddForwarded).
			d.count(ev.App, ResultWaiting)
			return errWaiting
		}
	}
	secret, ok := d.cfg.Secret(ev.App)
	if !ok {
		d.count(ev.App, ResultRefused)
		d.dead(ctx, ev)
		return fmt.Errorf("webhook: app %q has no webhook_secret: %w", ev.App, asynq.SkipRetry)
	}

	ep := d.endpoint(p.URL)
	if !ep.acquire(ctx) {
		d.count(ev.App, ResultBusy)
		return errBusy
	}
	defer ep.release()
	doneBreaker, err := ep.breaker.Allow()
	if err != nil {
		d.count(ev.App, ResultBreakerOpen)
		return errBreakerOpen
	}
	status, err := d.post(ctx, p.URL, ev, secret)
	doneBreaker(breakerError(status, err))

	switch {
	case err == nil && status >= 200 && status < 300:
		d.count(ev.App, ResultDelivered)
		if !replayed {
			d.cfg.Metrics.Lag.Observe(time.Since(ev.At).Seconds())
		}
		d.done(ctx, ev)
		return nil
	case err == nil && status == http.StatusGone:
		d.count(ev.App, ResultGone)
		d.cfg.Log.Warn("webhook receiver answered 410: no more webhooks to it", "app", ev.App, "endpoint", endpointOf(p.URL))
		_ = d.cfg.Redis.Set(ctx, goneKey(p.URL), 1, goneFor).Err()
		d.done(ctx, ev)
		return nil
	case errors.Is(err, netguard.ErrPrivate):
		d.count(ev.App, ResultRefused)
		d.dead(ctx, ev)
		return fmt.Errorf("webhook: %s: %w: %w", endpointOf(p.URL), netguard.ErrPrivate, asynq.SkipRetry)
	}
	var attempt error
	if err != nil {
		d.count(ev.App, ResultError)
		attempt = fmt.Errorf("webhook: POST %s: %s", endpointOf(p.URL), describe(err))
	} else {
		d.count(ev.App, ResultHTTPError)
		attempt = fmt.Errorf("webhook: POST %s: HTTP %d", endpointOf(p.URL), status)
	}
	if time.Since(start) >= d.cfg.Window {
		d.dead(ctx, ev)
		return fmt.Errorf("%w; delivery window of %s ran out: %w", attempt, d.cfg.Window, asynq.SkipRetry)
	}
	return attempt
}

// post sends ev signed and returns the receiver's status.
func (d *Deliverer) post(ctx context.Context, rawURL string, ev Event, secret []byte) (int, error) {
	body, err := ev.MarshalJSON()
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", contentTypeJSON)
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set(eventIDHeader, ev.EventID)
	req.Header.Set(SignatureHeader, Sign(secret, time.Now(), body))
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBody))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// done ends ev's turn in its message's order, and its replay mark, and
// runs the message's next event at once if it waits for a retry.
func (d *Deliverer) done(ctx context.Context, ev Event) {
	var next *redis.StringSliceCmd
	_, err := d.cfg.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, PendingKey(ev.ID), ev.EventID)
		p.Del(ctx, replayKey(ev.EventID))
		next = p.ZRange(ctx, PendingKey(ev.ID), 0, 0)
		return nil
	})
	if err != nil {
		// The pending set expires after the window; until then later events wait.
		d.cfg.Log.Warn("webhook: could not mark an event done", "event_id", ev.EventID, "err", err)
		return
	}
	if ids := next.Val(); len(ids) > 0 && d.cfg.Runner != nil {
		// It may be running or pending already (then this fails, harmlessly);
		// if it waits for a retry, it runs now instead of after its delay.
		_ = d.cfg.Runner.RunTask(Queue, ids[0])
	}
}

// TaskRunner moves a scheduled or retrying task to pending; *asynq.Inspector is one.
type TaskRunner interface {
	RunTask(queue, id string) error
}

// acquire takes one of the endpoint's slots, waiting for one at most
// slotWait; false = the endpoint is busy.
func (ep *endpoint) acquire(ctx context.Context) bool {
	select {
	case ep.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(slotWait)
	defer t.Stop()
	select {
	case ep.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

func (ep *endpoint) release() { <-ep.slots }

// dead is done for an event that goes to the dead-letter list.
func (d *Deliverer) dead(ctx context.Context, ev Event) {
	d.cfg.Metrics.Dead.WithLabelValues(ev.App).Inc()
	d.done(ctx, ev)
}

func (d *Deliverer) count(app, result string) {
	d.cfg.Metrics.Attempts.WithLabelValues(app, result).Inc()
}

// endpoint returns rawURL's receiver state, made on first use.
func (d *Deliverer) endpoint(rawURL string) *endpoint {
	key := endpointOf(rawURL)
	d.mu.Lock()
	defer d.mu.Unlock()
	if ep, ok := d.endpoints[key]; ok {
		return ep
	}
	trip := d.cfg.BreakerTrip
	ep := &endpoint{
		slots: make(chan struct{}, d.cfg.PerEndpoint),
		breaker: gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
			Name:        key,
			MaxRequests: 1,
			Timeout:     d.cfg.BreakerOpen,
			ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= trip },
			OnStateChange: func(name string, from, to gobreaker.State) {
				if to == gobreaker.StateOpen {
					d.cfg.Metrics.BreakerTrips.Inc()
					d.cfg.Log.Warn("webhook endpoint failing: circuit breaker open", "endpoint", name, "for", d.cfg.BreakerOpen)
				}
				d.cfg.Metrics.breakerMoved(from, to)
			},
		}),
	}
	d.endpoints[key] = ep
	return ep
}

// breakerError is what the breaker counts: a receiver that is down or
// overloaded fails; one that answers (even 4xx) is up.
func breakerError(status int, err error) error {
	switch {
	case err != nil:
		return err
	case status >= 500 || status == http.StatusTooManyRequests:
		return fmt.Errorf("HTTP %d", status)
	}
	return nil
}

// endpointOf is a URL's scheme://host[:port]: how logs, limits and breakers
// name a receiver (never its path or query, which may hold a token).
func endpointOf(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "invalid-url"
	}
	return strings.ToLower(u.Scheme + "://" + u.Host)
}

// describe is an error without its URL (which may hold a token in its query).
func describe(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Client.Timeout") {
		return "timeout"
	}
	return err.Error()
}
