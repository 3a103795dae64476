package delivery

import (
	"strconv"
	"sync"
	"testing"
	"time"
)

// evictions collects what a Store reports to Config.OnHeldEvicted.
type evictions struct {
	mu    sync.Mutex
	byApp map[string]int
}

func (e *evictions) add(app string, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.byApp == nil {
		e.byApp = map[string]int{}
	}
	e.byApp[app] += n
}

func (e *evictions) of(app string) int { e.mu.Lock(); defer e.mu.Unlock(); return e.byApp[app] }

// storeWith is a second Store on b's Redis and clock, with cfg's bounds.
func (b *bundle) storeWith(cfg Config) *Store {
	cfg.Retention, cfg.ConfirmTimeout, cfg.CallbackHold, cfg.Now = 48*time.Hour, 10*time.Minute, time.Hour, b.clock.Now
	return NewStore(b.rdb, cfg)
}

// TestHeldResultsBoundedPerApp: results for msgids no message has are held
// at most MaxHeld per app; the oldest go first, are counted, and are no
// longer applied; another app's are untouched.
func TestHeldResultsBoundedPerApp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ev := &evictions{}
	const max, extra = 5, 3
	s := b.storeWith(Config{MaxHeld: max, OnHeldEvicted: ev.add})
	evicted := 0
	for i := 1; i <= max+extra; i++ {
		r, err := s.ApplyCallback(b.ctx, "default", strconv.Itoa(i), StateUserBlocked, "failed:user block")
		if err != nil || r.Outcome != CallbackHeld {
			t.Fatalf("callback %d = %+v, %v; want held", i, r, err)
		}
		evicted += r.Evicted
		b.clock.Advance(time.Second)
	}
	for i := 1; i <= 2; i++ {
		if r, _ := s.ApplyCallback(b.ctx, "shop", strconv.Itoa(i), StateDelivered, "success"); r.Outcome != CallbackHeld || r.Evicted != 0 {
			t.Fatalf("shop callback %d = %+v; want held, nothing evicted", i, r)
		}
	}
	if evicted != extra || ev.of("default") != extra || ev.of("shop") != 0 {
		t.Errorf("evicted: results say %d, hook says default %d shop %d; want %d, %d, 0", evicted, ev.of("default"), ev.of("shop"), extra, extra)
	}
	if n, _ := b.rdb.ZCard(b.ctx, heldIndexKey("default")).Result(); n != max {
		t.Errorf("default holds %d results, want %d", n, max)
	}
	for i := 1; i <= max+extra; i++ {
		n, _ := b.rdb.Exists(b.ctx, heldKey("default", strconv.Itoa(i))).Result()
		if want := int64(0); i > extra {
			want = 1
			if n != want {
				t.Errorf("held result %d is gone, want kept (one of the newest %d)", i, max)
			}
		} else if n != want {
			t.Errorf("held result %d is kept, want evicted (the oldest)", i)
		}
	}
	if n, _ := b.rdb.ZCard(b.ctx, heldIndexKey("shop")).Result(); n != 2 {
		t.Errorf("shop holds %d results, want its 2", n)
	}

	// An evicted result decides nothing; a kept one is applied.
	b.create(t, "Yevicted")
	b.create(t, "Ykept")
	mustBegin(t, s, "Yevicted")
	mustBegin(t, s, "Ykept")
	if tr, err := s.MarkSent(b.ctx, "Yevicted", "default", 1); err != nil || tr.State != StateSent {
		t.Errorf("MarkSent of an evicted msgid = %+v, %v; want sent (waiting for WeChat's own result)", tr, err)
	}
	if tr, err := s.MarkSent(b.ctx, "Ykept", "default", max+extra); err != nil || tr.State != StateUserBlocked {
		t.Errorf("MarkSent of a kept msgid = %+v, %v; want user_blocked", tr, err)
	}
	if n, _ := b.rdb.ZCard(b.ctx, heldIndexKey("default")).Result(); n != max-1 {
		t.Errorf("default holds %d results after one was applied, want %d", n, max-1)
	}
}

// TestHeldResultNotAppliedAfterTheHold: a held result is applied only within
// CallbackHold of when it was held, by the store's clock, whatever its key's
// TTL in Redis says.
func TestHeldResultNotAppliedAfterTheHold(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		after time.Duration
		want  State
	}{
		{name: "at the end of the hold", after: time.Hour, want: StateWeChatFailed},
		{name: "past the hold", after: time.Hour + time.Millisecond, want: StateSent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.create(t, "Ym1")
			mustBegin(t, b.store, "Ym1")
			if r, _ := b.store.ApplyCallback(b.ctx, "default", "41", StateWeChatFailed, "failed: system failed"); r.Outcome != CallbackHeld {
				t.Fatalf("callback = %+v, want held", r)
			}
			b.clock.Advance(tt.after)
			tr, err := b.store.MarkSent(b.ctx, "Ym1", "default", 41)
			if err != nil || tr.State != tt.want {
				t.Fatalf("MarkSent %v after the result was held = %+v, %v; want %s", tt.after, tr, err, tt.want)
			}
			if n, _ := b.rdb.Exists(b.ctx, heldKey("default", "41")).Result(); n != 0 {
				t.Error("the held result is still kept after MarkSent read it")
			}
		})
	}
}

// TestHeldResultForAnotherOpenID: WeChat's result for a msgid names its
// recipient; a held result naming another openid is not WeChat's for this
// message and is not applied.
func TestHeldResultForAnotherOpenID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, openID string
		want         State
	}{
		{name: "its recipient", openID: "o1", want: StateDelivered},
		{name: "no openid given", openID: "", want: StateDelivered},
		{name: "another openid", openID: "o2", want: StateSent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.create(t, "Ym1") // to o1
			mustBegin(t, b.store, "Ym1")
			rs, errs, err := b.store.ApplyCallbacks(b.ctx, []CallbackInput{
				{App: "default", MsgID: "42", To: StateDelivered, Raw: "success", OpenID: tt.openID, CreateTime: b.clock.Now()}})
			if err != nil || errs[0] != nil || rs[0].Outcome != CallbackHeld {
				t.Fatalf("callback = %+v, %v, %v; want held", rs, errs, err)
			}
			if tr, err := b.store.MarkSent(b.ctx, "Ym1", "default", 42); err != nil || tr.State != tt.want {
				t.Fatalf("MarkSent = %+v, %v; want %s", tr, err, tt.want)
			}
		})
	}
}

// TestHeldResultOfAnEarlierVersion: a result held as "state|status" by a
// version before the bounds is still applied during an upgrade.
func TestHeldResultOfAnEarlierVersion(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ym1")
	mustBegin(t, b.store, "Ym1")
	if err := b.rdb.Set(b.ctx, heldKey("default", "43"), "user_blocked|failed:user block", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if tr, err := b.store.MarkSent(b.ctx, "Ym1", "default", 43); err != nil || tr.State != StateUserBlocked {
		t.Fatalf("MarkSent = %+v, %v; want user_blocked", tr, err)
	}
	if m, _ := b.store.Get(b.ctx, "Ym1"); m.Status != "failed:user block" {
		t.Errorf("status = %q", m.Status)
	}
}
