package delivery

import (
	"strings"
	"testing"
	"time"
)

// lostThenDead runs message id (to o1) through an attempt whose reply was
// lost at start, a failed attempt, and dead: WeChat had it all along.
func (b *bundle) lostThenDead(t *testing.T, s *Store, id string) (start time.Time) {
	t.Helper()
	start = b.clock.Now()
	mustBegin(t, s, id)
	if tr, err := s.MarkAmbiguous(b.ctx, id, "default", "o1", start); err != nil || tr.Changed {
		t.Fatalf("MarkAmbiguous(%s) = %+v, %v; want recorded, unchanged", id, tr, err)
	}
	if _, err := s.MarkRetrying(b.ctx, id, ErrorInfo{Msg: "wechat: template/send: http status 500"}); err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(time.Second)
	mustBegin(t, s, id)
	if tr, err := s.Finish(b.ctx, id, "default", StateDead, &ErrorInfo{Code: -1, Msg: "system error"}); err != nil || tr.State != StateDead {
		t.Fatalf("Finish dead = %+v, %v", tr, err)
	}
	return start
}

func (b *bundle) result(t *testing.T, s *Store, in CallbackInput) CallbackResult {
	t.Helper()
	if in.App == "" {
		in.App = "default"
	}
	if in.To == "" {
		in.To, in.Raw = StateDelivered, "success"
	}
	rs, errs, err := s.ApplyCallbacks(b.ctx, []CallbackInput{in})
	if err != nil || errs[0] != nil {
		t.Fatalf("ApplyCallbacks(%+v) = %v, %v", in, errs, err)
	}
	return rs[0]
}

// TestReplyLostCallbackAfterDead: WeChat accepted an attempt whose reply was
// lost; the message ended dead; WeChat's success callback for a msgid wxpush
// never stored then settles it delivered, by openid and time, and takes it
// off the dead list. Its backlog slot is not given back twice.
func TestReplyLostCallbackAfterDead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ylost")
	start := b.lostThenDead(t, b.store, "Ylost")
	m, _ := b.store.Get(b.ctx, "Ylost")
	if !PossibleDuplicate(m) {
		t.Errorf("a dead message with a lost reply is not a possible duplicate: %+v", m.History)
	}
	backlog := b.backlog(t, "default")

	r := b.result(t, b.store, CallbackInput{MsgID: "5001", OpenID: "o1", CreateTime: start.Add(2 * time.Second)})
	if r.Outcome != CallbackCorrected || r.ID != "Ylost" || r.State != StateDelivered {
		t.Fatalf("callback = %+v; want corrected Ylost delivered", r)
	}
	m, _ = b.store.Get(b.ctx, "Ylost")
	last := m.History[len(m.History)-1]
	if m.State != StateDelivered || m.WeChatMsgID != "5001" || m.Status != "success" ||
		last.Event != "callback" || !strings.Contains(last.Note, "it was dead") {
		t.Errorf("record = state %s msgid %q status %q last %+v; want delivered, 5001, a note that it was dead", m.State, m.WeChatMsgID, m.Status, last)
	}
	if PossibleDuplicate(m) {
		t.Error("a message WeChat's result settled is still a possible duplicate")
	}
	if page, _ := b.store.ListDead(b.ctx, "default", 0, 10); page.Total != 0 {
		t.Errorf("dead list = %+v, want empty", page)
	}
	if got := b.backlog(t, "default"); got != backlog {
		t.Errorf("backlog = %d, want %d (the slot was released once, when it died)", got, backlog)
	}
	if n, _ := b.rdb.Exists(b.ctx, bodyKey("Ylost"), heldKey("default", "5001")).Result(); n != 0 {
		t.Errorf("%d of body and held result kept, want none", n)
	}
	// WeChat's repeat finds the stored msgid.
	if r := b.result(t, b.store, CallbackInput{MsgID: "5001", OpenID: "o1", CreateTime: start.Add(2 * time.Second)}); r.Outcome != CallbackDuplicate {
		t.Errorf("repeat = %+v, want duplicate", r)
	}
}

// TestReplyLostCallbackFirst: the callback came while the reply was still on
// its way, and is held; the worker's report of the lost reply settles the
// message from it, and the dead that would have followed changes nothing.
func TestReplyLostCallbackFirst(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Yfirst")
	start := b.clock.Now()
	mustBegin(t, b.store, "Yfirst")
	r := b.result(t, b.store, CallbackInput{MsgID: "6001", OpenID: "o1", CreateTime: start.Add(time.Second)})
	if r.Outcome != CallbackHeld {
		t.Fatalf("callback = %+v, want held", r)
	}
	b.clock.Advance(10 * time.Second) // the worker's timeout
	tr, err := b.store.MarkAmbiguous(b.ctx, "Yfirst", "default", "o1", start)
	if err != nil || !tr.Changed || tr.State != StateDelivered {
		t.Fatalf("MarkAmbiguous = %+v, %v; want delivered, changed", tr, err)
	}
	if tr, _ := b.store.Finish(b.ctx, "Yfirst", "default", StateDead, nil); tr.Changed || tr.State != StateDelivered {
		t.Errorf("Finish dead after = %+v, want delivered unchanged", tr)
	}
	if got := b.backlog(t, "default"); got != 0 {
		t.Errorf("backlog = %d, want 0", got)
	}
	m, _ := b.store.Get(b.ctx, "Yfirst")
	if m.WeChatMsgID != "6001" || PossibleDuplicate(m) {
		t.Errorf("record msgid %q, possible duplicate %v; want 6001, false", m.WeChatMsgID, PossibleDuplicate(m))
	}
	if n, _ := b.rdb.Exists(b.ctx, heldKey("default", "6001"), heldByUserKey("default", "o1")).Result(); n != 0 {
		t.Errorf("the used held result is still kept (%d keys)", n)
	}
	if got, _ := b.rdb.Get(b.ctx, indexKey("default", "6001")).Result(); got != "Yfirst" {
		t.Errorf("msgid index = %q, want Yfirst", got)
	}
}

// TestReplyLostWhileRetrying: the result comes before the message is final:
// it is settled as any callback settles a message, and is not sent again.
func TestReplyLostWhileRetrying(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Yretry")
	start := b.clock.Now()
	mustBegin(t, b.store, "Yretry")
	b.store.MarkAmbiguous(b.ctx, "Yretry", "default", "o1", start)
	b.store.MarkRetrying(b.ctx, "Yretry", ErrorInfo{Msg: "timeout"})
	r := b.result(t, b.store, CallbackInput{MsgID: "7001", OpenID: "o1", CreateTime: start, To: StateUserBlocked, Raw: "failed:user block"})
	if r.Outcome != CallbackApplied || r.State != StateUserBlocked || r.ID != "Yretry" {
		t.Fatalf("callback = %+v; want applied user_blocked", r)
	}
	if got := b.backlog(t, "default"); got != 0 {
		t.Errorf("backlog = %d, want 0", got)
	}
	if a, err := b.store.Begin(b.ctx, "Yretry"); err != nil || a.Proceed {
		t.Errorf("Begin after = %+v, %v; want no send", a, err)
	}
}

// TestReplyLostNoMatch: a result for an unknown msgid settles a message whose
// reply was lost only for its openid, within the skew and the suspects' TTL,
// and not once WeChat's acceptance was stored after all.
func TestReplyLostNoMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		prepare func(b *bundle, start time.Time) CallbackInput
		want    State
	}{
		{name: "another openid", want: StateDead, prepare: func(b *bundle, start time.Time) CallbackInput {
			return CallbackInput{OpenID: "o2", CreateTime: start.Add(time.Second)}
		}},
		{name: "no openid", want: StateDead, prepare: func(b *bundle, start time.Time) CallbackInput {
			return CallbackInput{CreateTime: start.Add(time.Second)}
		}},
		{name: "created before the attempt, beyond the skew", want: StateDead, prepare: func(b *bundle, start time.Time) CallbackInput {
			return CallbackInput{OpenID: "o1", CreateTime: start.Add(-DefaultReplyLostSkew - time.Second)}
		}},
		{name: "created before the attempt, within the skew", want: StateDelivered, prepare: func(b *bundle, start time.Time) CallbackInput {
			return CallbackInput{OpenID: "o1", CreateTime: start.Add(-DefaultReplyLostSkew)}
		}},
		{name: "past the suspects' TTL", want: StateDead, prepare: func(b *bundle, start time.Time) CallbackInput {
			b.clock.Advance(DefaultSuspectTTL + time.Second)
			return CallbackInput{OpenID: "o1", CreateTime: b.clock.Now()}
		}},
		{name: "requeued and sent after all", want: StateSent, prepare: func(b *bundle, start time.Time) CallbackInput {
			if _, err := b.store.Requeue(b.ctx, "Ylost", "default"); err != nil {
				panic(err)
			}
			b.store.Begin(b.ctx, "Ylost")
			b.store.MarkSent(b.ctx, "Ylost", "default", 9999)
			return CallbackInput{OpenID: "o1", CreateTime: start.Add(time.Second)}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.create(t, "Ylost")
			start := b.lostThenDead(t, b.store, "Ylost")
			in := tt.prepare(b, start)
			in.MsgID = "8001"
			r := b.result(t, b.store, in)
			if got := b.state(t, "Ylost"); got != tt.want {
				t.Errorf("state = %s after %+v, want %s", got, r, tt.want)
			}
			if tt.want != StateDelivered && r.Outcome != CallbackHeld {
				t.Errorf("callback = %+v, want held", r)
			}
		})
	}
}

// TestReplyLostOldestFirst: two messages to one openid lost their replies;
// the first result settles the one whose attempt began first.
func TestReplyLostOldestFirst(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Yone")
	b.create(t, "Ytwo")
	start := b.lostThenDead(t, b.store, "Yone")
	b.clock.Advance(10 * time.Second)
	b.lostThenDead(t, b.store, "Ytwo")
	r1 := b.result(t, b.store, CallbackInput{MsgID: "1", OpenID: "o1", CreateTime: start.Add(15 * time.Second)})
	r2 := b.result(t, b.store, CallbackInput{MsgID: "2", OpenID: "o1", CreateTime: start.Add(15 * time.Second)})
	if r1.ID != "Yone" || r2.ID != "Ytwo" || r1.Outcome != CallbackCorrected || r2.Outcome != CallbackCorrected {
		t.Errorf("results settled %+v then %+v; want Yone then Ytwo", r1, r2)
	}
}

// TestSuspectsBoundedPerApp: at most MaxSuspects messages per app wait for a
// result by openid; the oldest go first (their retry still warns).
func TestSuspectsBoundedPerApp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s := b.storeWith(Config{MaxSuspects: 3})
	ids := []string{"Ys1", "Ys2", "Ys3", "Ys4", "Ys5"}
	var starts []time.Time
	for _, id := range ids {
		b.create(t, id)
		starts = append(starts, b.lostThenDead(t, s, id))
		b.clock.Advance(time.Minute)
	}
	if n, _ := b.rdb.ZCard(b.ctx, suspectIndexKey("default")).Result(); n != 3 {
		t.Errorf("%d suspects kept, want 3", n)
	}
	if n, _ := b.rdb.ZCard(b.ctx, suspectKey("default", "o1")).Result(); n != 3 {
		t.Errorf("%d suspects kept for o1, want 3", n)
	}
	// Within the skew of the first only: it was evicted.
	if r := b.result(t, s, CallbackInput{MsgID: "1", OpenID: "o1", CreateTime: starts[0]}); r.Outcome != CallbackHeld {
		t.Errorf("callback for an evicted suspect = %+v, want held", r)
	}
	if m, _ := s.Get(b.ctx, "Ys1"); !PossibleDuplicate(m) {
		t.Error("an evicted suspect is no longer a possible duplicate")
	}
	if r := b.result(t, s, CallbackInput{MsgID: "3", OpenID: "o1", CreateTime: starts[2]}); r.ID != "Ys3" {
		t.Errorf("callback for a kept suspect = %+v, want Ys3", r)
	}
}

func TestPossibleDuplicate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Yplain")
	mustBegin(t, b.store, "Yplain")
	b.store.Finish(b.ctx, "Yplain", "default", StateDead, &ErrorInfo{Code: -1})
	m, _ := b.store.Get(b.ctx, "Yplain")
	if PossibleDuplicate(m) || PossibleDuplicate(nil) {
		t.Error("a message without a lost reply is a possible duplicate")
	}
	b.create(t, "Ynoopenid")
	mustBegin(t, b.store, "Ynoopenid")
	b.store.MarkAmbiguous(b.ctx, "Ynoopenid", "default", "", b.clock.Now())
	b.store.Finish(b.ctx, "Ynoopenid", "default", StateDead, &ErrorInfo{Code: -1})
	if m, _ := b.store.Get(b.ctx, "Ynoopenid"); !PossibleDuplicate(m) {
		t.Error("a lost reply without a known recipient is not a possible duplicate")
	}
}
