package delivery

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/redistest"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type bundle struct {
	store *Store
	rdb   *redis.Client
	clock *clock
	ctx   context.Context
}

func setup(t *testing.T) *bundle {
	t.Helper()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	rdb.AddHook(slotCheck{t})
	c := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	store := NewStore(rdb, Config{
		Retention: 48 * time.Hour, ConfirmTimeout: 10 * time.Minute, CallbackHold: time.Hour, Now: c.Now,
	})
	return &bundle{store: store, rdb: rdb, clock: c, ctx: context.Background()}
}

func (b *bundle) create(t *testing.T, id string, mod ...func(*NewMessage)) {
	t.Helper()
	m := NewMessage{ID: id, App: "default", Queue: "normal", Body: []byte(`{"touser":"o1"}`)}
	for _, f := range mod {
		f(&m)
	}
	if _, err := b.store.Create(b.ctx, m); err != nil {
		t.Fatalf("Create(%s): %v", id, err)
	}
}

func (b *bundle) state(t *testing.T, id string) State {
	t.Helper()
	m, err := b.store.Get(b.ctx, id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return m.State
}

func (b *bundle) ttl(t *testing.T, key string) time.Duration {
	t.Helper()
	d, err := b.rdb.PTTL(b.ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestLifecycleDelivered(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ym1")
	if got := b.state(t, "Ym1"); got != StateQueued {
		t.Fatalf("new message state = %s, want queued", got)
	}
	if d := b.ttl(t, recordKey("Ym1")); d != -1 {
		t.Errorf("a non-final record has TTL %v; it must not expire before it is settled", d)
	}
	a, err := b.store.Begin(b.ctx, "Ym1")
	if err != nil || !a.Proceed || a.Attempts != 1 || string(a.Body) != `{"touser":"o1"}` || a.App != "default" {
		t.Fatalf("Begin = %+v, %v; want proceed with attempt 1 and the body", a, err)
	}
	tr, err := b.store.MarkSent(b.ctx, "Ym1", "default", 9007199254740993)
	if err != nil || tr.State != StateSent || !tr.Changed {
		t.Fatalf("MarkSent = %+v, %v", tr, err)
	}
	res, err := b.store.ApplyCallback(b.ctx, "default", "9007199254740993", StateDelivered, "success")
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != CallbackApplied || res.ID != "Ym1" || res.App != "default" || res.State != StateDelivered {
		t.Fatalf("ApplyCallback = %+v, want applied to m1", res)
	}
	m, err := b.store.Get(b.ctx, "Ym1")
	if err != nil {
		t.Fatal(err)
	}
	if m.State != StateDelivered || m.WeChatMsgID != "9007199254740993" || m.Status != "success" || m.Attempts != 1 {
		t.Errorf("record = %+v", m)
	}
	if m.SentAt == nil || m.FinishedAt == nil || len(m.History) != 3 {
		t.Errorf("record times/history incomplete: sent %v finished %v history %+v", m.SentAt, m.FinishedAt, m.History)
	}
	if d := b.ttl(t, recordKey("Ym1")); d <= 47*time.Hour || d > 48*time.Hour {
		t.Errorf("final record TTL = %v, want the 48h retention", d)
	}
	if n, _ := b.rdb.ZCard(b.ctx, sentKey(Shard("default"))).Result(); n != 0 {
		t.Errorf("settled message still waits for confirmation (sent zset has %d)", n)
	}
}

func TestCallbackIdempotent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ym1")
	b.store.Begin(b.ctx, "Ym1")
	b.store.MarkSent(b.ctx, "Ym1", "default", 42)
	first, _ := b.store.ApplyCallback(b.ctx, "default", "42", StateUserBlocked, "failed:user block")
	before, _ := b.store.Get(b.ctx, "Ym1")
	for i := 0; i < 3; i++ {
		// WeChat's retries, and a contradicting late copy.
		to := []State{StateUserBlocked, StateDelivered, StateWeChatFailed}[i]
		res, err := b.store.ApplyCallback(b.ctx, "default", "42", to, "x")
		if err != nil {
			t.Fatal(err)
		}
		if res.Outcome != CallbackDuplicate {
			t.Errorf("repeat %d outcome = %s, want duplicate", i, res.Outcome)
		}
	}
	after, _ := b.store.Get(b.ctx, "Ym1")
	if first.Outcome != CallbackApplied || after.State != StateUserBlocked || after.Status != "failed:user block" ||
		len(after.History) != len(before.History) {
		t.Errorf("repeated callbacks changed the record: before %+v after %+v", before, after)
	}
}

func TestCallbackBeforeMsgIDStored(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ym1")
	b.store.Begin(b.ctx, "Ym1")
	res, err := b.store.ApplyCallback(b.ctx, "default", "77", StateWeChatFailed, "failed: system failed")
	if err != nil || res.Outcome != CallbackHeld {
		t.Fatalf("early callback = %+v, %v; want held", res, err)
	}
	if d := b.ttl(t, heldKey("default", "77")); d <= 0 || d > time.Hour {
		t.Errorf("held callback TTL = %v, want ≤ the 1h hold", d)
	}
	// A repeat of the early callback is a duplicate, not a second hold.
	if res, _ := b.store.ApplyCallback(b.ctx, "default", "77", StateWeChatFailed, "failed: system failed"); res.Outcome != CallbackDuplicate {
		t.Errorf("repeat early callback = %s, want duplicate", res.Outcome)
	}
	if got := b.state(t, "Ym1"); got != StateQueued {
		t.Errorf("held callback changed the state to %s", got)
	}
	tr, err := b.store.MarkSent(b.ctx, "Ym1", "default", 77)
	if err != nil || tr.State != StateWeChatFailed || !tr.Changed {
		t.Fatalf("MarkSent after an early callback = %+v, %v; want wechat_failed applied", tr, err)
	}
	m, _ := b.store.Get(b.ctx, "Ym1")
	if m.Status != "failed: system failed" || m.FinishedAt == nil {
		t.Errorf("record = %+v", m)
	}
	if n, _ := b.rdb.Exists(b.ctx, heldKey("default", "77")).Result(); n != 0 {
		t.Error("held callback not removed after it was applied")
	}
	if n, _ := b.rdb.ZCard(b.ctx, sentKey(Shard("default"))).Result(); n != 0 {
		t.Error("message settled by a held callback still waits for confirmation")
	}
}

func TestCallbackUnknownMsgIDIsHeldPerApp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "9m1", func(m *NewMessage) { m.App = "shop" })
	b.store.Begin(b.ctx, "9m1")
	b.store.MarkSent(b.ctx, "9m1", "shop", 5)
	// The same msgid from another account is a different message.
	res, _ := b.store.ApplyCallback(b.ctx, "default", "5", StateDelivered, "success")
	if res.Outcome != CallbackHeld {
		t.Errorf("callback for app default = %s, want held (msgids are per account)", res.Outcome)
	}
	if got := b.state(t, "9m1"); got != StateSent {
		t.Errorf("another app's callback settled m1: %s", got)
	}
}

func TestBeginRefusesSentAndFinal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ysent")
	b.store.Begin(b.ctx, "Ysent")
	b.store.MarkSent(b.ctx, "Ysent", "default", 1)
	b.create(t, "Yrejected")
	b.store.Finish(b.ctx, "Yrejected", "default", StateRejected, &ErrorInfo{Code: 43004, Msg: "require subscribe rid: 1"})
	for _, id := range []string{"Ysent", "Yrejected"} {
		a, err := b.store.Begin(b.ctx, id)
		if err != nil || a.Proceed {
			t.Errorf("Begin(%s) = %+v, %v; must not proceed", id, a, err)
		}
	}
	if _, err := b.store.Begin(b.ctx, "Ynope"); err != ErrNotFound {
		t.Errorf("Begin(missing) err = %v, want ErrNotFound", err)
	}
}

func TestBeginExpires(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ym1", func(m *NewMessage) { m.ExpireAt = b.clock.Now().Add(time.Minute) })
	b.store.Begin(b.ctx, "Ym1")
	b.store.MarkRetrying(b.ctx, "Ym1", ErrorInfo{Code: -1, Msg: "system error"})
	b.clock.Advance(2 * time.Minute)
	a, err := b.store.Begin(b.ctx, "Ym1")
	if err != nil || a.Proceed || !a.Changed || a.State != StateExpired {
		t.Fatalf("Begin past expiry = %+v, %v; want expired, not sent", a, err)
	}
	if a, _ := b.store.Begin(b.ctx, "Ym1"); a.Changed {
		t.Error("expiry counted twice")
	}
}

func TestRetryingThenDead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ym1")
	b.store.Begin(b.ctx, "Ym1")
	st, err := b.store.MarkRetrying(b.ctx, "Ym1", ErrorInfo{Code: -1, Msg: "system error rid: abc"})
	if err != nil || st != StateRetrying {
		t.Fatalf("MarkRetrying = %s, %v", st, err)
	}
	b.store.Begin(b.ctx, "Ym1")
	tr, err := b.store.Finish(b.ctx, "Ym1", "default", StateDead, &ErrorInfo{Code: -1, Msg: "system error rid: def"})
	if err != nil || !tr.Changed || tr.State != StateDead {
		t.Fatalf("Finish(dead) = %+v, %v", tr, err)
	}
	m, _ := b.store.Get(b.ctx, "Ym1")
	if m.Attempts != 2 || m.LastError == nil || m.LastError.Code != -1 || m.LastError.Msg != "system error rid: def" {
		t.Errorf("record = %+v, last error %+v", m, m.LastError)
	}
	var rids []string
	for _, h := range m.History {
		if h.ErrMsg != "" {
			rids = append(rids, h.ErrMsg)
		}
	}
	if len(rids) != 2 {
		t.Errorf("history keeps errmsgs %v, want both attempts' errmsg with their rid", rids)
	}
	// A final state is never left.
	if tr, _ := b.store.Finish(b.ctx, "Ym1", "default", StateCanceled, nil); tr.Changed || tr.State != StateDead {
		t.Errorf("Finish on a dead message = %+v, want unchanged", tr)
	}
	if st, _ := b.store.MarkRetrying(b.ctx, "Ym1", ErrorInfo{}); st != StateDead {
		t.Errorf("MarkRetrying on a dead message = %s", st)
	}
	if tr, _ := b.store.MarkSent(b.ctx, "Ym1", "default", 3); tr.State != StateDead || tr.Changed {
		t.Errorf("MarkSent on a dead message = %+v", tr)
	}
}

func TestFinishDoesNotOverrideSent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ym1")
	b.store.Begin(b.ctx, "Ym1")
	b.store.MarkSent(b.ctx, "Ym1", "default", 8)
	if tr, _ := b.store.Finish(b.ctx, "Ym1", "default", StateRejected, nil); tr.Changed || tr.State != StateSent {
		t.Errorf("Finish(rejected) on a sent message = %+v; WeChat accepted it", tr)
	}
}

func TestSweepUnconfirmed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("Ym%d", i)
		b.create(t, id)
		b.store.Begin(b.ctx, id)
		b.store.MarkSent(b.ctx, id, "default", int64(100+i))
	}
	b.store.ApplyCallback(b.ctx, "default", "100", StateDelivered, "success")
	if s, _ := b.store.SweepUnconfirmed(b.ctx, 10); len(s) != 0 {
		t.Fatalf("swept %v before the deadline", s)
	}
	b.clock.Advance(11 * time.Minute)
	// Two sweepers at once settle each message exactly once.
	var wg sync.WaitGroup
	results := make([][]Settled, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], _ = b.store.SweepUnconfirmed(b.ctx, 10)
		}()
	}
	wg.Wait()
	if n := len(results[0]) + len(results[1]); n != 2 {
		t.Fatalf("sweepers settled %d messages in all (%v), want 2", n, results)
	}
	for _, id := range []string{"Ym1", "Ym2"} {
		if got := b.state(t, id); got != StateUnconfirmed {
			t.Errorf("%s = %s, want unconfirmed", id, got)
		}
	}
	if got := b.state(t, "Ym0"); got != StateDelivered {
		t.Errorf("m0 = %s, want delivered untouched", got)
	}
	// A result after the timeout is kept but does not change the final state.
	res, _ := b.store.ApplyCallback(b.ctx, "default", "101", StateDelivered, "success")
	m, _ := b.store.Get(b.ctx, "Ym1")
	if res.Outcome != CallbackLate || m.State != StateUnconfirmed || m.Status != "success" {
		t.Errorf("late callback = %+v, record %s/%q", res, m.State, m.Status)
	}
}

// TestRaceCallbackAndMarkSent runs the early-callback race many times: whichever of
// the callback and the sender's write lands first, the message ends delivered and
// is settled exactly once.
func TestRaceCallbackAndMarkSent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const n = 200
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("Yr%d", i)
		b.create(t, id)
		b.store.Begin(b.ctx, id)
	}
	var wg sync.WaitGroup
	changes := make(chan string, 2*n)
	for i := 0; i < n; i++ {
		id, msgID := fmt.Sprintf("Yr%d", i), int64(1000+i)
		wg.Add(2)
		go func() {
			defer wg.Done()
			tr, err := b.store.MarkSent(b.ctx, id, "default", msgID)
			if err != nil {
				t.Error(err)
			}
			if tr.Changed && tr.State.Final() {
				changes <- id
			}
		}()
		go func() {
			defer wg.Done()
			res, err := b.store.ApplyCallback(b.ctx, "default", fmt.Sprint(msgID), StateDelivered, "success")
			if err != nil {
				t.Error(err)
			}
			if res.Outcome == CallbackApplied {
				changes <- id
			}
		}()
	}
	wg.Wait()
	close(changes)
	settled := map[string]int{}
	for id := range changes {
		settled[id]++
	}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("Yr%d", i)
		if got := b.state(t, id); got != StateDelivered {
			t.Errorf("%s = %s, want delivered", id, got)
		}
		if settled[id] != 1 {
			t.Errorf("%s settled %d times, want exactly once", id, settled[id])
		}
	}
}

func TestCreateRefusesExistingID(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ym1")
	if _, err := b.store.Create(b.ctx, NewMessage{ID: "Ym1", App: "default", Body: []byte("{}")}); err == nil {
		t.Error("Create with an existing id succeeded; it must not overwrite a record")
	}
	b.create(t, "Ys1", func(m *NewMessage) { m.SendAt = b.clock.Now().Add(time.Hour) })
	if got := b.state(t, "Ys1"); got != StateScheduled {
		t.Errorf("future send_at state = %s, want scheduled", got)
	}
}

func TestRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	store := NewStore(rdb, Config{})
	srv.Kill(t)
	if _, err := store.Create(context.Background(), NewMessage{ID: "Cx", App: "a", Body: []byte("{}")}); err == nil {
		t.Error("Create with Redis down returned nil")
	}
	if _, err := store.Get(context.Background(), "Cx"); err == nil || err == ErrNotFound {
		t.Errorf("Get with Redis down = %v, want a storage error, not ErrNotFound", err)
	}
}

// TestSettledRecordIsCompact: a delivered record drops its send body and keeps
// Redis's compact hash encoding (memory per retained message); a dead one keeps
// its body, which a requeue needs, and so does a rejected one.
func TestSettledRecordIsCompact(t *testing.T) {
	t.Parallel()
	b := setup(t)
	long := func(m *NewMessage) {
		m.Body = []byte(`{"touser":"oia2TjuEGTNoeX76QEjQNrcURxG8","template_id":"ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY","data":{"User":{"value":"黄先生"}}}`)
	}
	b.create(t, "Yok", long)
	b.store.Begin(b.ctx, "Yok")
	b.store.MarkSent(b.ctx, "Yok", "default", 9007199254740993)
	b.store.ApplyCallback(b.ctx, "default", "9007199254740993", StateDelivered, "success")
	m, _ := b.store.Get(b.ctx, "Yok")
	if len(m.Body) != 0 || m.State != StateDelivered || len(m.History) != 3 || m.WeChatMsgID != "9007199254740993" {
		t.Errorf("delivered record = %+v (body %d bytes); want no body, its history and msgid", m, len(m.Body))
	}
	if enc, _ := b.rdb.ObjectEncoding(b.ctx, recordKey("Yok")).Result(); enc != "listpack" && enc != "ziplist" {
		t.Errorf("delivered record encoding = %q, want the compact listpack", enc)
	}
	if d := b.ttl(t, recordKey("Yok")); d <= 0 {
		t.Errorf("compacted record lost its retention TTL (%v)", d)
	}
	if n, _ := b.rdb.Exists(b.ctx, bodyKey("Yok")).Result(); n != 0 {
		t.Error("a delivered message's body is still stored")
	}

	for _, to := range []State{StateDead, StateRejected} {
		id := "Ykeep-" + string(to)
		b.create(t, id, long)
		b.store.Begin(b.ctx, id)
		b.store.Finish(b.ctx, id, "default", to, &ErrorInfo{Code: -1, Msg: "system error"})
		if m, _ := b.store.Get(b.ctx, id); len(m.Body) == 0 {
			t.Errorf("%s record lost its body", to)
		}
		if d := b.ttl(t, bodyKey(id)); d <= 0 || d > 48*time.Hour {
			t.Errorf("%s body expires in %v, want with the record's retention", to, d)
		}
	}
}

// TestIndexOutlivesRepeatsOnly: once a message is settled its msgid index is
// kept for the callback hold (WeChat's repeats), not the whole retention.
func TestIndexOutlivesRepeatsOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ym1")
	b.store.Begin(b.ctx, "Ym1")
	b.store.MarkSent(b.ctx, "Ym1", "default", 77)
	if d := b.ttl(t, indexKey("default", "77")); d <= 47*time.Hour {
		t.Fatalf("index of a sent message expires in %v; it must last the confirmation wait and retention", d)
	}
	b.store.ApplyCallback(b.ctx, "default", "77", StateDelivered, "success")
	if d := b.ttl(t, indexKey("default", "77")); d <= 0 || d > time.Hour {
		t.Errorf("index of a settled message expires in %v, want within the 1 h hold", d)
	}
	if res, _ := b.store.ApplyCallback(b.ctx, "default", "77", StateDelivered, "success"); res.Outcome != CallbackDuplicate {
		t.Errorf("a repeat within the hold = %s, want duplicate", res.Outcome)
	}
}

// commandCount counts the commands a client sends, pipelined ones included.
type commandCount struct {
	mu   sync.Mutex
	cmds []string
}

func (*commandCount) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *commandCount) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		if cmd.Name() != "hello" { // a new connection's handshake
			h.cmds = append(h.cmds, cmd.Name())
		}
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (h *commandCount) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.mu.Lock()
		for _, c := range cmds {
			if c.Name() == "evalsha" { // not a new connection's handshake
				h.cmds = append(h.cmds, "pipeline")
				break
			}
		}
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

// TestCallbackIsOneScript: a callback finds its record through the msgid
// index inside its script, so no MarkSent can slip in between a read of the
// index and the script (the race the two-step lookup had to detect and retry),
// and it costs one round trip. Before MarkSent it is held and MarkSent
// applies it; after, it is applied at once, to the right record.
func TestCallbackIsOneScript(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Yearly")
	b.create(t, "Ylate")
	for _, id := range []string{"Yearly", "Ylate"} {
		b.store.Begin(b.ctx, id)
	}
	counted := &commandCount{}
	client := redis.NewClient(&redis.Options{Addr: b.rdb.Options().Addr})
	t.Cleanup(func() { client.Close() })
	client.AddHook(counted)
	receiver := NewStore(client, Config{Now: b.clock.Now})
	if err := receiver.LoadScripts(b.ctx); err != nil {
		t.Fatal(err)
	}
	counted.cmds = nil

	res, err := receiver.ApplyCallback(b.ctx, "default", "88", StateDelivered, "success")
	if err != nil || res.Outcome != CallbackHeld {
		t.Fatalf("callback before MarkSent = %+v, %v; want held", res, err)
	}
	if tr, err := b.store.MarkSent(b.ctx, "Yearly", "default", 88); err != nil || tr.State != StateDelivered {
		t.Fatalf("MarkSent after an early callback = %+v, %v; want delivered", tr, err)
	}
	if _, err := b.store.MarkSent(b.ctx, "Ylate", "default", 99); err != nil {
		t.Fatal(err)
	}
	res, err = receiver.ApplyCallback(b.ctx, "default", "99", StateUserBlocked, "failed:user block")
	if err != nil || res.Outcome != CallbackApplied || res.ID != "Ylate" || res.State != StateUserBlocked {
		t.Fatalf("callback after MarkSent = %+v, %v; want applied to Ylate", res, err)
	}
	if got := b.state(t, "Ylate"); got != StateUserBlocked {
		t.Errorf("Ylate = %s, want user_blocked", got)
	}
	if got := strings.Join(counted.cmds, " "); got != "evalsha evalsha" {
		t.Errorf("two callbacks sent %q, want one evalsha each", got)
	}

	// Batched: one round trip for many, each result its own.
	counted.cmds = nil
	rs, errs, err := receiver.ApplyCallbacks(b.ctx, []CallbackInput{
		{App: "default", MsgID: "99", To: StateDelivered, Raw: "success"},
		{App: "default", MsgID: "100", To: StateDelivered, Raw: "success"},
	})
	if err != nil || errs[0] != nil || errs[1] != nil {
		t.Fatal(err, errs)
	}
	if rs[0].Outcome != CallbackDuplicate || rs[1].Outcome != CallbackHeld {
		t.Errorf("ApplyCallbacks = %+v, want duplicate then held", rs)
	}
	if got := strings.Join(counted.cmds, " "); got != "pipeline" {
		t.Errorf("ApplyCallbacks sent %q, want one pipeline", got)
	}
}
