package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/metrics"
	"github.com/wxpush/wxpush/internal/ratelimit"
	"github.com/wxpush/wxpush/internal/wechat"
)

// Store is the part of the delivery store the handler needs.
type Store interface {
	Begin(ctx context.Context, id string) (delivery.Attempt, error)
	MarkSent(ctx context.Context, id, app string, msgID int64) (delivery.Transition, error)
	MarkRetrying(ctx context.Context, id string, e delivery.ErrorInfo) (delivery.State, error)
	Finish(ctx context.Context, id, app string, to delivery.State, e *delivery.ErrorInfo) (delivery.Transition, error)
	Park(ctx context.Context, app string, until time.Time) error
	MarkAmbiguous(ctx context.Context, id, app, openID string, start time.Time) (delivery.Transition, error)
}

// Limiter takes a permit from a cluster-wide rate limit (see package ratelimit).
type Limiter interface {
	Wait(ctx context.Context, key string, lim ratelimit.Limit) (deferFor, waited time.Duration, err error)
}

// TemplateCache forgets an app's template list; *templates.Cache provides it.
type TemplateCache interface {
	Invalidate(ctx context.Context, app string) error
}

// Limits returns an app's send rate and per-recipient limit; zero Limits are off.
type Limits func(app string) (perApp, perRecipient ratelimit.Limit)

// Sender sends template and subscribe messages with an access token.
type Sender interface {
	SendTemplate(ctx context.Context, accessToken string, msg *wechat.TemplateMessage) (int64, error)
	SendSubscribe(ctx context.Context, accessToken string, msg *wechat.SubscribeMessage) (int64, error)
}

// Tokens hands out the shared access token of an app.
type Tokens interface {
	Token(ctx context.Context, cred wechat.Credentials) (string, error)
	Invalidate(ctx context.Context, app, failed string) error
}

// Apps resolves an app name to its credentials.
type Apps func(app string) (wechat.Credentials, bool)

var (
	_ Store   = (*delivery.Store)(nil)
	_ Sender  = (*wechat.Client)(nil)
	_ Tokens  = (*wechat.TokenStore)(nil)
	_ Limiter = (*ratelimit.Limiter)(nil)
)

// Handler delivers TypeDeliver tasks.
type Handler struct {
	store   Store
	sender  Sender
	tokens  Tokens
	apps    Apps
	limiter Limiter
	limits  Limits
	tpl     TemplateCache
	metrics *metrics.Metrics
	log     *slog.Logger
	now     func() time.Time
	retries func(ctx context.Context) (retried, max int)
	sends   chan struct{} // one token per send in flight; nil = no bound
}

// HandlerDeps are the Handler's collaborators; all are required except Now.
type HandlerDeps struct {
	Store  Store
	Sender Sender
	Tokens Tokens
	Apps   Apps
	// Limiter and Limits apply rate limits; nil Limits means no limits.
	Limiter Limiter
	Limits  Limits
	// Templates, when set, is told when WeChat says a template id is invalid
	// (40037): the app's template set changed.
	Templates TemplateCache
	Metrics   *metrics.Metrics
	Logger    *slog.Logger
	Now       func() time.Time
	// Retries reports how many failed attempts the task has had and its budget;
	// nil reads them from asynq's task context.
	Retries func(ctx context.Context) (retried, max int)
	// MaxSends bounds the sends in flight (a chunk task sends many side by
	// side); a send waits for its turn before its timeout starts. 0 = no bound.
	MaxSends int
}

// NewHandler returns a Handler.
func NewHandler(d HandlerDeps) *Handler {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Retries == nil {
		d.Retries = asynqRetries
	}
	if d.Limits == nil {
		d.Limits = func(string) (ratelimit.Limit, ratelimit.Limit) { return ratelimit.Limit{}, ratelimit.Limit{} }
	}
	h := &Handler{store: d.Store, sender: d.Sender, tokens: d.Tokens, apps: d.Apps,
		limiter: d.Limiter, limits: d.Limits, tpl: d.Templates, metrics: d.Metrics, log: d.Logger, now: d.Now, retries: d.Retries}
	if d.MaxSends > 0 {
		h.sends = make(chan struct{}, d.MaxSends)
	}
	return h
}

func asynqRetries(ctx context.Context) (int, int) {
	retried, _ := asynq.GetRetryCount(ctx)
	max, _ := asynq.GetMaxRetry(ctx)
	return retried, max
}

// ProcessTask implements asynq.Handler.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	p, err := parseDeliverPayload(t.Payload())
	if err != nil {
		h.log.Error("dropping task with a bad payload", "type", t.Type())
		return err
	}
	log := h.log.With("msg_id", p.ID, "app", p.App)

	if wait, err := h.throttle(ctx, p); err != nil || wait > 0 {
		if err != nil {
			return fmt.Errorf("tasks: rate limit: %w", err)
		}
		return &retryAfter{err: errRateLimited, delay: wait}
	}

	a, err := h.store.Begin(ctx, p.ID)
	if proceed, err := h.begun(log, a, err); !proceed {
		return err
	}
	retried, budget := h.retries(ctx)
	msgID, log, err := h.try(ctx, log, p.ID, a, retried, budget)
	if err != nil {
		return err
	}
	tr, err := h.store.MarkSent(ctx, p.ID, a.App, msgID)
	if err != nil {
		// WeChat has the message; a retry re-sends with the same client_msg_id,
		// which WeChat drops as a duplicate.
		return fmt.Errorf("tasks: store sent: %w", err)
	}
	h.recordSent(log, a.App, msgID, tr)
	return nil
}

// begun reads Begin's answer: proceed with the send, or the outcome as
// ProcessTask returns it.
func (h *Handler) begun(log *slog.Logger, a delivery.Attempt, err error) (proceed bool, _ error) {
	switch {
	case errors.Is(err, delivery.ErrNotFound):
		// The record is gone (retention ran out, or its enqueue was undone): there
		// is nothing to send and nothing to settle.
		log.Warn("no record for task; skipping")
		return false, nil
	case err != nil:
		return false, fmt.Errorf("tasks: begin: %w", err)
	case a.Changed:
		h.metrics.Finished.WithLabelValues(a.App, string(a.State)).Inc()
		log.Info("message expired before it could be sent", "state", a.State)
		return false, nil
	case !a.ParkedUntil.IsZero():
		// The app's daily quota is spent: wait for the reset (or a resume)
		// without spending an attempt.
		return false, &retryAfter{err: errParked, delay: a.ParkedUntil.Sub(h.now()) + jitter(time.Minute), park: true}
	case !a.Proceed:
		// Invariant: never re-send what WeChat accepted or what is settled.
		log.Info("message already sent or settled; not sending", "state", a.State)
		return false, nil
	}
	return true, nil
}

// try sends a begun message. A nil error: WeChat accepted it with msgID, and
// the caller stores that. Otherwise the error is the outcome, as ProcessTask
// returns it: settled (asynq.SkipRetry), deferred (*retryAfter) or a failed
// attempt to retry, with retried failed attempts so far out of a budget of
// retries. The returned logger names the recipient and the attempt.
func (h *Handler) try(ctx context.Context, log *slog.Logger, id string, a delivery.Attempt, retried, budget int) (int64, *slog.Logger, error) {
	cred, found := h.apps(a.App)
	if !found {
		return 0, log, h.failed(ctx, log, id, a.App, wechat.ClassConfig, fmt.Errorf("tasks: app %q is not configured", a.App), retried, budget)
	}
	call, toUser, err := h.sendCall(a, id)
	if err != nil {
		return 0, log, h.settle(ctx, log, id, a.App, delivery.StateRejected, &delivery.ErrorInfo{Msg: "stored body is not valid JSON"})
	}
	log = log.With("touser", logging.MaskOpenID(toUser), "attempt", a.Attempts)
	// A worker's sends in flight are bounded; the wait for a turn is not part
	// of the send and spends nothing.
	if h.sends != nil {
		select {
		case h.sends <- struct{}{}:
			defer func() { <-h.sends }()
		case <-ctx.Done():
			return 0, log, &retryAfter{err: fmt.Errorf("tasks: no turn to send: %w", ctx.Err())}
		}
	}
	start := h.now()
	msgID, called, err := h.send(ctx, cred, call)
	if err == nil {
		h.metrics.Attempts.WithLabelValues(a.App, metrics.ResultOK).Inc()
		return msgID, log, nil
	}
	class := wechat.ClassOfError(err)
	h.metrics.Attempts.WithLabelValues(a.App, class.String()).Inc()
	if called && mayHaveReached(err) {
		if settled := h.replyLost(ctx, log, id, a.App, toUser, start, err); settled != nil {
			return 0, log, settled
		}
	}
	if class == wechat.ClassPermanent {
		var apiErr *wechat.APIError
		if h.tpl != nil && errors.As(err, &apiErr) && apiErr.Code == 40037 {
			if ierr := h.tpl.Invalidate(ctx, a.App); ierr != nil {
				log.Warn("could not invalidate the template cache", "err", ierr)
			}
		}
		return 0, log, h.settle(ctx, log, id, a.App, delivery.StateRejected, errorInfo(err))
	}
	return 0, log, h.failed(ctx, log, id, a.App, class, err, retried, budget)
}

// recordSent counts and logs a message whose acceptance is stored.
func (h *Handler) recordSent(log *slog.Logger, app string, msgID int64, tr delivery.Transition) {
	if tr.Changed && !tr.CreatedAt.IsZero() {
		h.metrics.SentLatency.WithLabelValues(app).Observe(h.now().Sub(tr.CreatedAt).Seconds())
	}
	if tr.Changed && tr.State.Final() {
		h.metrics.Finished.WithLabelValues(app, string(tr.State)).Inc()
	}
	log.Info("message accepted by wechat", "wechat_msgid", msgID, "state", tr.State)
}

// send gets the shared token and sends; a token error invalidates the token (only
// if it is still the one that failed) and retries once at once, which is not
// counted as a failed attempt. called: the error is the send's own, not the
// token's.
func (h *Handler) send(ctx context.Context, cred wechat.Credentials, call sendFunc) (_ int64, called bool, _ error) {
	for try := 0; ; try++ {
		token, err := h.tokens.Token(ctx, cred)
		if err != nil {
			return 0, false, err
		}
		id, err := call(ctx, token)
		if err == nil || wechat.ClassOfError(err) != wechat.ClassToken || try > 0 {
			return id, true, err
		}
		if err := h.tokens.Invalidate(ctx, cred.App, token); err != nil {
			return 0, false, err
		}
	}
}

// sendFunc sends one message with an access token.
type sendFunc func(ctx context.Context, token string) (int64, error)

// sendCall decodes the stored body for the message's kind. A template message
// carries its id as client_msg_id on every attempt; the subscribe API has no
// such field.
func (h *Handler) sendCall(a delivery.Attempt, id string) (sendFunc, string, error) {
	if a.Kind == KindSubscribe {
		var sub wechat.SubscribeMessage
		if err := json.Unmarshal(a.Body, &sub); err != nil {
			return nil, "", err
		}
		return func(ctx context.Context, tok string) (int64, error) { return h.sender.SendSubscribe(ctx, tok, &sub) }, sub.ToUser, nil
	}
	var msg wechat.TemplateMessage
	if err := json.Unmarshal(a.Body, &msg); err != nil {
		return nil, "", err
	}
	msg.ClientMsgID = id
	return func(ctx context.Context, tok string) (int64, error) { return h.sender.SendTemplate(ctx, tok, &msg) }, msg.ToUser, nil
}

// KindSubscribe marks a subscribe message (bizsend) in the delivery store.
const KindSubscribe = "subscribe"

// failed handles an attempt that may be retried: throttling waits without spending
// the budget; other failures retry with backoff until the budget is spent, then the
// message is dead.
func (h *Handler) failed(ctx context.Context, log *slog.Logger, id, app string, class wechat.Class, err error, retried, budget int) error {
	info := errorInfo(err)
	var wait time.Duration
	park := false
	switch class {
	case wechat.ClassThrottled:
		wait = nextMinute(h.now())
	case wechat.ClassQuota:
		wait, park = nextQuotaReset(h.now()), true
		// Park the whole app, so its other messages wait without calling WeChat.
		if perr := h.store.Park(ctx, app, h.now().Add(wait)); perr != nil {
			log.Error("could not park the app", "err", perr)
		} else {
			log.Warn("daily quota exhausted: app parked until the quota resets", "until", h.now().Add(wait))
		}
	case wechat.ClassConfig:
		// Wrong secret, IP not whitelisted, API not authorised…: retrying cannot
		// help and would burn the token endpoint's small daily quota. Stop the
		// app; one attempt per ConfigStop re-checks, or an operator resumes it.
		wait, park = ConfigStop, true
		h.metrics.ConfigErrors.WithLabelValues(app).Inc()
		if perr := h.store.Park(ctx, app, h.now().Add(wait)); perr != nil {
			log.Error("could not stop the app", "err", perr)
		} else {
			log.Error("app stopped: WeChat reports a configuration error; fix it, then POST /v1/apps/"+app+"/resume",
				"err", err, "recheck_at", h.now().Add(wait))
		}
	default:
		if retried >= budget {
			log.Warn("retries exhausted", "err", err)
			return h.settle(ctx, log, id, app, delivery.StateDead, info)
		}
	}
	if _, serr := h.store.MarkRetrying(ctx, id, *info); serr != nil && !errors.Is(serr, delivery.ErrNotFound) {
		log.Error("could not record the failed attempt", "err", serr)
	}
	h.metrics.RetriesWaited.WithLabelValues(app, class.String()).Inc()
	if wait > 0 {
		log.Info("throttled by wechat; waiting without spending retries", "class", class, "wait", wait, "err", err)
		return &retryAfter{err: err, delay: wait, park: park}
	}
	log.Warn("attempt failed; will retry", "class", class, "err", err)
	return err
}

// settle moves the message to a final state and tells asynq not to retry.
func (h *Handler) settle(ctx context.Context, log *slog.Logger, id, app string, to delivery.State, info *delivery.ErrorInfo) error {
	tr, err := h.store.Finish(ctx, id, app, to, info)
	if err != nil && !errors.Is(err, delivery.ErrNotFound) {
		return fmt.Errorf("tasks: settle %s: %w", to, err)
	}
	if tr.Changed {
		h.metrics.Finished.WithLabelValues(app, string(to)).Inc()
	}
	log.Warn("message settled", "state", tr.State, "errcode", info.Code, "errmsg", info.Msg)
	return fmt.Errorf("tasks: message %s: %w", to, asynq.SkipRetry)
}

// ConfigStop is how long an app is stopped after a configuration error before
// one attempt checks again.
const ConfigStop = time.Hour

var (
	errRateLimited = errors.New("tasks: rate limited: deferred")
	errParked      = errors.New("tasks: app parked (daily quota): deferred")
)

// throttle applies the app's and the recipient's rate limits. A short wait
// happens in place; a longer one is returned so the task is rescheduled without
// spending an attempt.
func (h *Handler) throttle(ctx context.Context, p DeliverPayload) (time.Duration, error) {
	perApp, perRecipient := h.limits(p.App)
	checks := []struct {
		scope, key string
		lim        ratelimit.Limit
	}{
		{"app", "wxpush:app:" + p.App, perApp},
		{"recipient", "wxpush:rcpt:" + p.App + ":" + p.To, perRecipient},
	}
	for _, c := range checks {
		if c.lim.IsZero() || (c.scope == "recipient" && p.To == "") {
			continue
		}
		wait, waited, err := h.limiter.Wait(ctx, c.key, c.lim)
		if waited > 0 || wait > 0 {
			h.metrics.RateLimitWaits.WithLabelValues(p.App, c.scope).Inc()
			h.metrics.RateLimitWaited.WithLabelValues(p.App, c.scope).Add(waited.Seconds())
		}
		if err != nil || wait > 0 {
			return wait + jitter(wait/10+time.Millisecond), err
		}
	}
	return 0, nil
}

func errorInfo(err error) *delivery.ErrorInfo {
	var apiErr *wechat.APIError
	if errors.As(err, &apiErr) {
		return &delivery.ErrorInfo{Code: apiErr.Code, Msg: apiErr.Msg}
	}
	return &delivery.ErrorInfo{Msg: err.Error()}
}
