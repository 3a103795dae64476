package delivery

import (
	"context"
	"fmt"
	"time"
)

// CallbackOutcome says what a result callback did.
type CallbackOutcome string

const (
	CallbackApplied   CallbackOutcome = "applied"   // settled a sent message
	CallbackHeld      CallbackOutcome = "held"      // msgid not (yet) known: kept for CallbackHold
	CallbackDuplicate CallbackOutcome = "duplicate" // already applied or already held
	CallbackLate      CallbackOutcome = "late"      // arrived after the message was settled unconfirmed
	CallbackUnknown   CallbackOutcome = "unknown"   // the msgid's record has expired
	// CallbackCorrected: the msgid was unknown, but the result settled a
	// message whose reply was lost that had ended final (dead, rejected,
	// expired, canceled) meanwhile: see replylost.go. A not yet final one
	// settled that way is CallbackApplied.
	CallbackCorrected CallbackOutcome = "corrected"
)

// CallbackResult is what ApplyCallback did.
type CallbackResult struct {
	Outcome CallbackOutcome
	ID      string
	App     string
	State   State
	SentAt  time.Time // when applied: when WeChat accepted it, for the sent→final latency
	// Evicted: holding this result evicted that many of the app's oldest
	// held results (Config.MaxHeld); they are reported to OnHeldEvicted too.
	Evicted int
}

// CallbackInput is one result WeChat reported, for ApplyCallbacks: To is the
// final state it means and Raw its Status text. OpenID (the event's
// FromUserName) and CreateTime let a result for an unknown msgid settle a
// message whose reply was lost (replylost.go), and keep a held result from
// settling a message to another openid (held.go); zero values do neither
// (a zero CreateTime counts as the time it is applied).
type CallbackInput struct {
	App, MsgID string
	To         State
	Raw        string
	OpenID     string
	CreateTime time.Time
}

// ApplyCallback applies WeChat's result for msgID of app: to is the final state
// the result means and raw its Status text. It is idempotent, and costs one
// round trip: the script finds the record through the msgid index itself.
func (s *Store) ApplyCallback(ctx context.Context, app, msgID string, to State, raw string) (CallbackResult, error) {
	c := s.callbackCall(CallbackInput{App: app, MsgID: msgID, To: to, Raw: raw})
	res, err := callbackScript.Run(ctx, s.rdb, c.keys, c.args...).Slice()
	if err != nil {
		return CallbackResult{}, fmt.Errorf("delivery: apply callback: %w", err)
	}
	return s.callbackResult(app, res), nil
}

// ApplyCallbacks applies many results in one pipelined round trip, each as
// ApplyCallback does. errs[i] is that result's own error; err means the round
// trip failed and none is known to be applied (applying again is harmless).
func (s *Store) ApplyCallbacks(ctx context.Context, in []CallbackInput) (rs []CallbackResult, errs []error, err error) {
	calls := make([]scriptCall, len(in))
	for i, c := range in {
		calls[i] = s.callbackCall(c)
	}
	cmds, err := s.evalMany(ctx, callbackScript, calls)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: apply callbacks: %w", err)
	}
	rs, errs = make([]CallbackResult, len(in)), make([]error, len(in))
	for i, c := range cmds {
		res, err := c.Slice()
		if err != nil {
			errs[i] = fmt.Errorf("delivery: apply callback: %w", err)
			continue
		}
		rs[i] = s.callbackResult(in[i].App, res)
	}
	return rs, errs, nil
}

func (s *Store) callbackCall(c CallbackInput) scriptCall {
	shard := Shard(c.App)
	now := s.cfg.Now()
	created := now
	if !c.CreateTime.IsZero() {
		created = c.CreateTime
	}
	return scriptCall{
		keys: []string{indexKey(c.App, c.MsgID), heldKey(c.App, c.MsgID), sentKey(shard), backlogKey(shard), heldIndexKey(c.App)},
		args: []any{string(c.To), c.Raw, now.UnixMilli(), s.cfg.CallbackHold.Milliseconds(), s.cfg.Retention.Milliseconds(),
			s.line(now, historyLine{Event: "callback", State: c.To}),
			s.line(now, historyLine{Event: "late callback", State: c.To, Status: c.Raw}), tag(shard),
			c.App, c.MsgID, s.cfg.MaxHeld, c.OpenID, created.UnixMilli(),
			s.cfg.SuspectTTL.Milliseconds(), s.cfg.ReplyLostSkew.Milliseconds()},
	}
}

func (s *Store) callbackResult(app string, res []any) CallbackResult {
	r := CallbackResult{Outcome: CallbackOutcome(str(res, 0)), ID: str(res, 1), App: str(res, 2), State: State(str(res, 3)),
		SentAt: msTime(str(res, 4)), Evicted: int(num(res, 5))}
	if r.Evicted > 0 && s.cfg.OnHeldEvicted != nil {
		s.cfg.OnHeldEvicted(app, r.Evicted)
	}
	return r
}
