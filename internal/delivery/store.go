package delivery

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Errors callers branch on.
var (
	// ErrNotFound: no record with this id (never created, or past its retention).
	ErrNotFound = errors.New("delivery: message not found")
	// ErrBacklogFull: the app has its configured maximum of unfinished messages.
	ErrBacklogFull = errors.New("delivery: app backlog is full")
	// ErrExists: a record with this id exists already.
	ErrExists = errors.New("delivery: message id exists")
	// ErrInFlight: a send attempt is in progress; its outcome decides.
	ErrInFlight = errors.New("delivery: a send attempt is in flight")
	// ErrNotDead: only dead messages can be requeued.
	ErrNotDead = errors.New("delivery: message is not dead")
	// ErrWrongShard: a new message's id does not start with its app's shard
	// character (see IDFor).
	ErrWrongShard = errors.New("delivery: message id does not start with its app's shard character")
)

// Config tunes a Store. Zero values take the defaults shown.
type Config struct {
	// Retention: how long a record is kept after it reaches a final state (default 7 days).
	Retention time.Duration
	// ConfirmTimeout: how long a sent message waits for WeChat's result callback
	// before it is settled unconfirmed (default 1 h).
	ConfirmTimeout time.Duration
	// CallbackHold: how long a callback for an unknown msgid is kept, in case the
	// sender has not stored the msgid yet (default 1 h).
	CallbackHold time.Duration
	// AttemptTimeout: how long an attempt counts as in flight, blocking a cancel,
	// if the worker dies during it (default 2 min).
	AttemptTimeout time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Events: every message's state changes go to the outbox (for GET
	// /v1/events), not only those of messages with a status_url (see events.go).
	Events bool
	// MaxHeld bounds each app's held results (held.go): past it the oldest is
	// evicted and reported to OnHeldEvicted, when set (default DefaultMaxHeld).
	MaxHeld       int
	OnHeldEvicted func(app string, n int)
	// MaxSuspects, SuspectTTL and ReplyLostSkew bound the match of lost
	// replies (replylost.go): messages kept per app, for how long, and the
	// clock skew allowed between a worker and WeChat (defaults
	// DefaultMaxSuspects, DefaultSuspectTTL, DefaultReplyLostSkew).
	MaxSuspects   int
	SuspectTTL    time.Duration
	ReplyLostSkew time.Duration
}

// Store keeps message records in Redis.
type Store struct {
	rdb redis.UniversalClient
	cfg Config
}

// NewStore returns a Store on rdb.
func NewStore(rdb redis.UniversalClient, cfg Config) *Store {
	if cfg.Retention <= 0 {
		cfg.Retention = 7 * 24 * time.Hour
	}
	if cfg.ConfirmTimeout <= 0 {
		cfg.ConfirmTimeout = time.Hour
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 2 * time.Minute
	}
	if cfg.CallbackHold <= 0 {
		cfg.CallbackHold = time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.MaxHeld = cmp.Or(max(cfg.MaxHeld, 0), DefaultMaxHeld)
	cfg.MaxSuspects = cmp.Or(max(cfg.MaxSuspects, 0), DefaultMaxSuspects)
	cfg.SuspectTTL = cmp.Or(max(cfg.SuspectTTL, 0), DefaultSuspectTTL)
	cfg.ReplyLostSkew = cmp.Or(max(cfg.ReplyLostSkew, 0), DefaultReplyLostSkew)
	return &Store{rdb: rdb, cfg: cfg}
}

// LoadScripts loads the transition scripts into Redis (every master of a
// Cluster), so that the first calls after a start do not each fail with
// NOSCRIPT and send their script again. Redis forgets scripts when it
// restarts; the calls then load them again by themselves.
func (s *Store) LoadScripts(ctx context.Context) error {
	for _, sc := range []*redis.Script{createScript, deleteScript, beginScript, sentScript, callbackScript,
		retryScript, finishScript, requeueScript, orphanScript, handOffScript, ambiguousScript} {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("delivery: load scripts: %w", err)
		}
	}
	return nil
}

// NewMessage is what Create stores.
type NewMessage struct {
	ID       string
	App      string
	Kind     string // "" (template message) or "subscribe"
	To       string // the recipient's openid (also in Body), for the task's rate limits
	Queue    string
	Body     []byte // the WeChat send body, JSON, without client_msg_id
	SendAt   time.Time
	ExpireAt time.Time
	// MaxBacklog refuses the message (ErrBacklogFull) when the app already has
	// this many unfinished messages; 0 = no limit.
	MaxBacklog int
	// Fanout names the batch's asynq fanout task that will enqueue this
	// message's task (batches; "" when the caller enqueues it directly): the
	// fanout's id, or the id of the chunk task that will deliver the message,
	// ChunkID(fanout, n).
	Fanout string
	// StatusURL is where its state changes are POSTed ("" = none; see events.go).
	StatusURL string
}

// ErrorInfo is the last error WeChat (or the transport) reported.
type ErrorInfo struct {
	Code int    `json:"errcode"`
	Msg  string `json:"errmsg"`
}

// Event is one line of a message's history.
type Event struct {
	At      time.Time `json:"at"`
	Event   string    `json:"event"`
	State   State     `json:"state,omitempty"`
	ErrCode int       `json:"errcode,omitempty"`
	ErrMsg  string    `json:"errmsg,omitempty"`
	Status  string    `json:"status,omitempty"` // WeChat's raw callback Status
	Note    string    `json:"note,omitempty"`
}

// historyLine is Event as stored: Unix ms and one-letter keys, so a typical
// entry stays under Redis's 64-byte limit for compact hash values, and Lua can
// write one too.
type historyLine struct {
	At      int64  `json:"t"`
	Event   string `json:"e"`
	State   State  `json:"s,omitempty"`
	ErrCode int    `json:"c,omitempty"`
	ErrMsg  string `json:"m,omitempty"`
	Status  string `json:"st,omitempty"`
	Note    string `json:"n,omitempty"`
}

func (s *Store) line(now time.Time, ev historyLine) string {
	ev.At = now.UnixMilli()
	b, _ := json.Marshal(ev) // a struct of strings and ints cannot fail
	return string(b)
}

// Create stores a new record in state queued (or scheduled when SendAt is in the
// future). It fails with ErrBacklogFull or ErrExists and then stores nothing.
func (s *Store) Create(ctx context.Context, m NewMessage) (State, error) {
	if !m.inAppShard() {
		return "", ErrWrongShard
	}
	state, args := s.createArgs(m)
	res, err := createScript.Run(ctx, s.rdb, createKeys(m), args...).Text()
	if err != nil {
		return "", fmt.Errorf("delivery: create: %w", err)
	}
	return state, createResult(res)
}

// inAppShard reports whether the message's id can name a record and starts
// with its app's shard character (see IDFor).
func (m NewMessage) inAppShard() bool { return validID(m.ID) && m.ID[0] == Shard(m.App) }

func createKeys(m NewMessage) []string {
	return []string{recordKey(m.ID), backlogKey(shardOf(m.ID)), bodyKey(m.ID), unownedKey(shardOf(m.ID))}
}

func (s *Store) createArgs(m NewMessage) (State, []any) {
	now := s.cfg.Now()
	state := StateQueued
	if !m.SendAt.IsZero() && m.SendAt.UnixMilli() > now.UnixMilli() {
		state = StateScheduled
	}
	// Fields are named short (see keys.go) and only what cannot be derived is
	// stored: no attempt count yet (absent is 0), and the "enqueued" history
	// entry is the creation time and first state.
	args := []any{m.App, m.MaxBacklog, m.Body, m.ID, now.UnixMilli(), m.Fanout,
		"a", m.App, "s", string(state), "q", m.Queue, "c", now.UnixMilli(),
	}
	if m.Fanout != "" {
		args = append(args, "fo", m.Fanout)
	}
	if m.Kind != "" {
		args = append(args, "k", m.Kind)
	}
	if !m.SendAt.IsZero() {
		args = append(args, "sa", m.SendAt.UnixMilli())
	}
	if !m.ExpireAt.IsZero() {
		args = append(args, "ea", m.ExpireAt.UnixMilli())
	}
	args = append(args, s.eventFields(m)...)
	return state, args
}

func createResult(res string) error {
	switch res {
	case "created", "revived":
		return nil
	case "full":
		return ErrBacklogFull
	case "exists":
		return ErrExists
	}
	return fmt.Errorf("delivery: create: unexpected reply %q", res)
}

// Created is one result of CreateBatch.
type Created struct {
	State State
	Err   error // nil, ErrBacklogFull, ErrExists, or a storage error
}

// CreateBatch stores many records in one pipelined round trip. Each message
// succeeds or fails on its own (e.g. ErrBacklogFull once the app's backlog fills).
func (s *Store) CreateBatch(ctx context.Context, ms []NewMessage) ([]Created, error) {
	out := make([]Created, len(ms))
	calls := make([]scriptCall, len(ms))
	for i, m := range ms {
		if !m.inAppShard() {
			out[i].Err = ErrWrongShard
			continue
		}
		out[i].State, calls[i].args = s.createArgs(m)
		calls[i].keys = createKeys(m)
	}
	cmds, err := s.evalMany(ctx, createScript, calls)
	if err != nil {
		return nil, fmt.Errorf("delivery: create batch: %w", err)
	}
	for i, c := range cmds {
		if c == nil {
			continue
		}
		res, err := c.Text()
		if err != nil {
			out[i].Err = fmt.Errorf("delivery: create: %w", err)
			continue
		}
		out[i].Err = createResult(res)
	}
	return out, nil
}

// scriptCall is one run of a script in evalMany; one without keys is skipped.
type scriptCall struct {
	keys []string
	args []any
}

// evalMany runs sc once per call in one pipelined round trip and returns each
// call's reply at its call's index (nil for a skipped call); an error means
// the round trip failed (each reply may still hold its own script error). A new or restarted Redis has no scripts cached:
// the calls that failed with NOSCRIPT (all, or only the first ones when a
// concurrent caller loads the script meanwhile) are run again after a load.
// The others already ran.
func (s *Store) evalMany(ctx context.Context, sc *redis.Script, calls []scriptCall) ([]*redis.Cmd, error) {
	out := make([]*redis.Cmd, len(calls))
	pending := make([]int, 0, len(calls))
	for i, c := range calls {
		if len(c.keys) > 0 {
			pending = append(pending, i)
		}
	}
	for try := 0; len(pending) > 0; try++ {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range pending {
				out[i] = sc.EvalSha(ctx, p, calls[i].keys, calls[i].args...)
			}
			return nil
		})
		var re redis.Error
		if err != nil && !errors.As(err, &re) {
			return nil, err
		}
		var again []int
		for _, i := range pending {
			if err := out[i].Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") && try == 0 {
				again = append(again, i)
			}
		}
		if len(again) > 0 {
			if err := sc.Load(ctx, s.rdb).Err(); err != nil {
				return nil, err
			}
		}
		pending = again
	}
	return out, nil
}

// Delete removes a record; it undoes a Create whose task could not be enqueued.
func (s *Store) Delete(ctx context.Context, id string) error {
	if !validID(id) {
		return nil
	}
	keys := []string{recordKey(id), backlogKey(shardOf(id)), bodyKey(id), unownedKey(shardOf(id))}
	if err := deleteScript.Run(ctx, s.rdb, keys, id).Err(); err != nil {
		return fmt.Errorf("delivery: delete: %w", err)
	}
	return nil
}

// Owned says that the messages' delivery tasks exist (or, for a batch, that
// its fanout has enqueued them): asynq owns them from now on, and they are no
// longer candidates for SweepOrphans. Records are listed as unowned from
// Create until then; a call that fails leaves them listed, and the sweep finds
// their tasks and unlists them.
func (s *Store) Owned(ctx context.Context, ids ...string) error {
	byShard := map[byte][]any{}
	for _, id := range ids {
		if validID(id) {
			byShard[shardOf(id)] = append(byShard[shardOf(id)], id)
		}
	}
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for sh, members := range byShard {
			p.ZRem(ctx, unownedKey(sh), members...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delivery: owned: %w", err)
	}
	return nil
}

// Postpone renews the listing of unowned records that wait for a task to be
// enqueued (their batch's fanout has not run yet), so that a sweep looks at
// them again only after its cut-off, and newer records come first meanwhile.
// Records no longer listed stay unlisted.
func (s *Store) Postpone(ctx context.Context, ids ...string) error {
	now := s.cfg.Now().UnixMilli()
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, id := range ids {
			if validID(id) {
				p.ZAddXX(ctx, unownedKey(shardOf(id)), redis.Z{Score: float64(now), Member: id})
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delivery: postpone: %w", err)
	}
	return nil
}

// Unowned is a record listed as not owned by a task since before a sweep's
// cut-off: an orphan, unless its task or its batch's fanout task exists.
type Unowned struct {
	ID       string
	App      string
	State    State // "" when the record is gone
	Queue    string
	Fanout   string // the batch's fanout task, if it came in a batch
	Attempts int
}

// Unowned lists up to limit records listed as unowned since before before,
// taking shards in turn.
func (s *Store) Unowned(ctx context.Context, before time.Time, limit int) ([]Unowned, error) {
	stop := strconv.FormatInt(before.UnixMilli(), 10)
	shards := allShards()
	cmds := make([]*redis.StringSliceCmd, len(shards))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, sh := range shards {
			cmds[i] = p.ZRangeArgs(ctx, redis.ZRangeArgs{Key: unownedKey(sh), ByScore: true, Start: "-inf", Stop: stop, Count: int64(limit)})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delivery: unowned: %w", err)
	}
	ids := due(cmds, limit)
	if len(ids) == 0 {
		return nil, nil
	}
	fields := make([]*redis.SliceCmd, len(ids))
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			fields[i] = p.HMGet(ctx, recordKey(id), "a", "s", "q", "fo", "n")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delivery: unowned: %w", err)
	}
	out := make([]Unowned, len(ids))
	for i, id := range ids {
		v := fields[i].Val()
		field := func(j int) string { s, _ := v[j].(string); return s }
		n, _ := strconv.Atoi(field(4))
		out[i] = Unowned{ID: id, App: field(0), State: State(field(1)), Queue: field(2), Fanout: field(3), Attempts: n}
	}
	return out, nil
}

// CancelOrphan settles as canceled a message listed as unowned since before
// cutoff, unsent and never attempted: its request was never acknowledged and
// no task will ever run it. A retry of that request with the same
// Idempotency-Key revives it (Create). The caller has checked that no task
// owns it; the listing, checked here, settles the race with a task enqueued
// meanwhile (Owned unlists it) or a retry under way (Create renews it).
func (s *Store) CancelOrphan(ctx context.Context, id string, cutoff time.Time) (Transition, error) {
	if !validID(id) {
		return Transition{}, ErrNotFound
	}
	now := s.cfg.Now()
	res, err := orphanScript.Run(ctx, s.rdb,
		[]string{recordKey(id), backlogKey(shardOf(id)), bodyKey(id), unownedKey(shardOf(id))},
		id, now.UnixMilli(),
		s.line(now, historyLine{Event: string(StateCanceled), State: StateCanceled,
			Note: "its request was never acknowledged and no task was enqueued"}),
		s.cfg.Retention.Milliseconds(), cutoff.UnixMilli()).Slice()
	if err != nil {
		return Transition{}, fmt.Errorf("delivery: cancel orphan: %w", err)
	}
	return transition(res)
}

// Attempt is what Begin found.
type Attempt struct {
	State    State
	App      string
	Kind     string // "" (template message) or "subscribe"
	Body     []byte
	Attempts int  // attempts including this one
	Proceed  bool // false: the message is sent, final or parked: do not send now
	Changed  bool // Begin itself settled the message (expired)
	// Elsewhere (BeginMany): another chunk owns the message; leave it.
	Elsewhere bool
	// HandedOff (BeginMany): the chunk handed the message to a task of its
	// own (HandOff).
	HandedOff bool
	// ParkedUntil is set when the app is parked (daily quota): try again then.
	ParkedUntil time.Time
}

// Begin starts a send attempt. It never lets a message that WeChat accepted, or
// that is final, be sent again, and it settles an expired message instead of
// sending it late.
func (s *Store) Begin(ctx context.Context, id string) (Attempt, error) {
	if !validID(id) {
		return Attempt{}, ErrNotFound
	}
	res, err := beginScript.Run(ctx, s.rdb, beginKeys(id), s.beginArgs("")...).Slice()
	if err != nil {
		return Attempt{}, fmt.Errorf("delivery: begin: %w", err)
	}
	return beginResult(res)
}

// BeginMany begins the attempts of a batch chunk's messages in one round trip,
// as Begin does, for owner, the chunk's id (see ChunkID). The chunk begins
// the messages it owns, claiming those no attempt has touched; it does not
// begin one another chunk owns (Attempt.Elsewhere) or one it handed to a task
// of its own (Attempt.HandedOff, see HandOff). errs[i] is ErrNotFound for a
// missing record, or that call's own error; err means the round trip failed.
func (s *Store) BeginMany(ctx context.Context, owner string, ids []string) (as []Attempt, errs []error, err error) {
	as, errs = make([]Attempt, len(ids)), make([]error, len(ids))
	calls := make([]scriptCall, len(ids))
	args := s.beginArgs(owner)
	for i, id := range ids {
		if !validID(id) {
			errs[i] = ErrNotFound
			continue
		}
		calls[i] = scriptCall{keys: beginKeys(id), args: args}
	}
	cmds, err := s.evalMany(ctx, beginScript, calls)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: begin: %w", err)
	}
	for i, c := range cmds {
		if c == nil {
			continue
		}
		res, err := c.Slice()
		if err != nil {
			errs[i] = fmt.Errorf("delivery: begin: %w", err)
			continue
		}
		as[i], errs[i] = beginResult(res)
	}
	return as, errs, nil
}

func beginKeys(id string) []string {
	return []string{recordKey(id), backlogKey(shardOf(id)), parkedKey(shardOf(id)), bodyKey(id), unownedKey(shardOf(id))}
}

func (s *Store) beginArgs(owner string) []any {
	now := s.cfg.Now()
	return []any{now.UnixMilli(), s.line(now, historyLine{Event: "expired", State: StateExpired}),
		s.cfg.Retention.Milliseconds(), now.Add(s.cfg.AttemptTimeout).UnixMilli(), owner}
}

func beginResult(res []any) (Attempt, error) {
	if len(res) == 0 {
		return Attempt{}, ErrNotFound
	}
	a := Attempt{State: State(str(res, 0)), App: str(res, 1)}
	switch len(res) {
	case 5:
		a.Body = []byte(str(res, 2))
		a.Attempts = int(num(res, 3))
		a.Kind = str(res, 4)
		a.Proceed = true
	case 4:
		a.HandedOff = str(res, 3) == "handed"
		a.Elsewhere = !a.HandedOff
	case 3:
		if a.State == "parked" {
			ms, _ := strconv.ParseInt(str(res, 2), 10, 64)
			a.State, a.ParkedUntil = "", time.UnixMilli(ms)
		} else {
			a.Changed = true
		}
	}
	return a, nil
}

// HandOff records that a batch chunk (owner) hands messages to delivery tasks
// of their own; it is called before those tasks are enqueued, and returns the
// ids marked: those the chunk owns, or claims untouched (see BeginMany), and
// those it marked before. Should the chunk run again, BeginMany reports them
// as HandedOff, so the chunk makes sure their tasks exist and never sends them
// itself. A message another chunk owns, or one that is gone, is not marked:
// it must not get a task from this chunk.
func (s *Store) HandOff(ctx context.Context, owner string, ids ...string) ([]string, error) {
	calls := make([]scriptCall, len(ids))
	for i, id := range ids {
		if validID(id) {
			calls[i] = scriptCall{keys: []string{recordKey(id)}, args: []any{owner}}
		}
	}
	cmds, err := s.evalMany(ctx, handOffScript, calls)
	if err != nil {
		return nil, fmt.Errorf("delivery: hand off: %w", err)
	}
	var marked []string
	for i, c := range cmds {
		if c == nil {
			continue
		}
		n, err := c.Int()
		if err != nil {
			return nil, fmt.Errorf("delivery: hand off: %w", err)
		}
		if n == 1 {
			marked = append(marked, ids[i])
		}
	}
	return marked, nil
}

// ChunkID is the id of a batch's n-th chunk task, whose records name it (see
// NewMessage.Fanout); FanoutOf reads the fanout's id back. A fanout's id holds
// no "." (wxpush's are "fanout-" and a ULID), and an owner ending in "!" marks
// a message its chunk handed to a task of its own.
func ChunkID(fanout string, n int) string { return fanout + "." + strconv.Itoa(n) }

// FanoutOf splits a record's owner (NewMessage.Fanout) into the batch's
// fanout task and, when the message came in a chunk, the chunk task; the mark
// of a message its chunk handed off (see HandOff) is dropped.
func FanoutOf(owner string) (fanout, chunk string) {
	owner = strings.TrimSuffix(owner, "!")
	fanout, _, found := strings.Cut(owner, ".")
	if found {
		chunk = owner
	}
	return fanout, chunk
}

// Transition is the result of a state change request.
type Transition struct {
	State   State  // the state after the call
	App     string // the message's app
	Changed bool   // this call moved the message (count it exactly once)
	// CreatedAt is set by MarkSent: the enqueue time, for the enqueue→sent latency.
	CreatedAt time.Time

	inflight bool
}

// MarkSent records that WeChat accepted the message with msgID. If WeChat's result
// callback arrived first, it is applied now and the returned state is final.
func (s *Store) MarkSent(ctx context.Context, id, app string, msgID int64) (Transition, error) {
	if !validID(id) {
		return Transition{}, ErrNotFound
	}
	keys, args := s.sentCall(id, app, msgID)
	res, err := sentScript.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return Transition{}, fmt.Errorf("delivery: mark sent: %w", err)
	}
	tr, err := transition(res)
	tr.CreatedAt = msTime(str(res, 3))
	return tr, err
}

// Accepted is a message WeChat accepted, for MarkSentMany.
type Accepted struct {
	ID, App string
	MsgID   int64
}

// MarkSentMany records WeChat's acceptance of many messages in one round
// trip, as MarkSent does. errs[i] is that message's error; err means the round
// trip failed.
func (s *Store) MarkSentMany(ctx context.Context, acc []Accepted) (trs []Transition, errs []error, err error) {
	trs, errs = make([]Transition, len(acc)), make([]error, len(acc))
	calls := make([]scriptCall, len(acc))
	for i, a := range acc {
		if !validID(a.ID) {
			errs[i] = ErrNotFound
			continue
		}
		calls[i].keys, calls[i].args = s.sentCall(a.ID, a.App, a.MsgID)
	}
	cmds, err := s.evalMany(ctx, sentScript, calls)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: mark sent: %w", err)
	}
	for i, c := range cmds {
		if c == nil {
			continue
		}
		res, err := c.Slice()
		if err != nil {
			errs[i] = fmt.Errorf("delivery: mark sent: %w", err)
			continue
		}
		trs[i], errs[i] = transition(res)
		trs[i].CreatedAt = msTime(str(res, 3))
	}
	return trs, errs, nil
}

func (s *Store) sentCall(id, app string, msgID int64) ([]string, []any) {
	now := s.cfg.Now()
	mid := strconv.FormatInt(msgID, 10)
	return []string{recordKey(id), indexKey(app, mid), heldKey(app, mid), sentKey(shardOf(id)), backlogKey(shardOf(id)), bodyKey(id)},
		[]any{id, mid, now.UnixMilli(),
			s.line(now, historyLine{Event: "sent", State: StateSent}),
			(s.cfg.ConfirmTimeout + s.cfg.Retention).Milliseconds(),
			now.Add(s.cfg.ConfirmTimeout).UnixMilli(),
			s.cfg.Retention.Milliseconds(), s.cfg.CallbackHold.Milliseconds()}
}

// MarkRetrying records a failed attempt that will be retried.
func (s *Store) MarkRetrying(ctx context.Context, id string, e ErrorInfo) (State, error) {
	if !validID(id) {
		return "", ErrNotFound
	}
	now := s.cfg.Now()
	st, err := retryScript.Run(ctx, s.rdb, []string{recordKey(id), backlogKey(shardOf(id))},
		s.line(now, historyLine{Event: "attempt failed", State: StateRetrying, ErrCode: e.Code, ErrMsg: e.Msg}),
		e.Code, e.Msg).Text()
	if err != nil {
		return "", fmt.Errorf("delivery: mark retrying: %w", err)
	}
	if st == "" {
		return "", ErrNotFound
	}
	return State(st), nil
}

// Finish settles a message of app that was never accepted by WeChat in a final
// state (rejected, dead or expired). A message already sent or final is left alone.
func (s *Store) Finish(ctx context.Context, id, app string, to State, e *ErrorInfo) (Transition, error) {
	return s.finish(ctx, id, app, to, e, "unsent", "")
}

// Cancel settles a message that WeChat has not accepted as canceled. It fails with
// ErrInFlight while a send attempt is in progress (that attempt's outcome wins;
// ask again), and leaves a sent or final message alone (the returned state says so).
func (s *Store) Cancel(ctx context.Context, id string) (Transition, error) {
	tr, err := s.finish(ctx, id, "", StateCanceled, nil, "cancel", "canceled by the API")
	if err == nil && tr.inflight {
		return tr, ErrInFlight
	}
	return tr, err
}

func (s *Store) finish(ctx context.Context, id, app string, to State, e *ErrorInfo, mode, note string) (Transition, error) {
	if !validID(id) {
		return Transition{}, ErrNotFound
	}
	now := s.cfg.Now()
	line := historyLine{Event: string(to), State: to, Note: note}
	code, msg := "", ""
	if e != nil {
		line.ErrCode, line.ErrMsg = e.Code, e.Msg
		code, msg = strconv.Itoa(e.Code), e.Msg
	}
	// The dead list is the app's; a caller that does not know the app never
	// settles dead, and the record's own shard stands in.
	dead := deadKey(app)
	if app == "" {
		dead = tag(shardOf(id)) + "dead:"
	}
	res, err := finishScript.Run(ctx, s.rdb, []string{recordKey(id), sentKey(shardOf(id)), backlogKey(shardOf(id)), dead, bodyKey(id)},
		string(to), now.UnixMilli(), s.line(now, line), code, msg,
		s.cfg.Retention.Milliseconds(), id, mode).Slice()
	if err != nil {
		return Transition{}, fmt.Errorf("delivery: finish: %w", err)
	}
	return transition(res)
}

// Settled is a message a sweep moved to a final state.
type Settled struct {
	ID  string
	App string
}

// Message is a record as the API shows it.
type Message struct {
	ID          string     `json:"id"`
	App         string     `json:"app"`
	Kind        string     `json:"kind"`
	State       State      `json:"state"`
	Queue       string     `json:"-"`
	Body        []byte     `json:"-"` // the WeChat send body`
	Attempts    int        `json:"attempts"`
	WeChatMsgID string     `json:"wechat_msgid,omitempty"`
	LastError   *ErrorInfo `json:"last_error,omitempty"`
	Status      string     `json:"wechat_status,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	SendAt      *time.Time `json:"send_at,omitempty"`
	ExpireAt    *time.Time `json:"expire_at,omitempty"`
	SentAt      *time.Time `json:"sent_at,omitempty"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
	History     []Event    `json:"history"`
}

// Get returns the record of id.
func (s *Store) Get(ctx context.Context, id string) (*Message, error) {
	if !validID(id) {
		return nil, ErrNotFound
	}
	var rec *redis.MapStringStringCmd
	var body *redis.StringCmd
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		rec = p.HGetAll(ctx, recordKey(id))
		body = p.Get(ctx, bodyKey(id))
		return nil
	})
	if err != nil && err != redis.Nil {
		return nil, fmt.Errorf("delivery: get: %w", err)
	}
	h := rec.Val()
	if len(h) == 0 || h["s"] == "" {
		return nil, ErrNotFound
	}
	m := &Message{
		ID: id, App: h["a"], Kind: cmp.Or(h["k"], "template"), State: State(h["s"]), Queue: h["q"], Body: []byte(body.Val()),
		WeChatMsgID: h["m"], Status: h["w"],
		CreatedAt: msTime(h["c"]), SendAt: optTime(h["sa"]), ExpireAt: optTime(h["ea"]),
		SentAt: optTime(h["ts"]), FinishedAt: optTime(h["tf"]),
	}
	// The first event is implied by the creation time: scheduled when it was
	// created with a send time still ahead, else queued.
	first := StateQueued
	if m.SendAt != nil && m.SendAt.After(m.CreatedAt) {
		first = StateScheduled
	}
	m.History = []Event{{At: m.CreatedAt, Event: "enqueued", State: first}}
	m.Attempts, _ = strconv.Atoi(h["n"])
	if c := h["ec"]; c != "" {
		code, _ := strconv.Atoi(c)
		m.LastError = &ErrorInfo{Code: code, Msg: h["em"]}
	}
	n, _ := strconv.Atoi(h["hn"])
	for i := 1; i <= n; i++ {
		var hl historyLine
		if json.Unmarshal([]byte(h["h"+strconv.Itoa(i)]), &hl) != nil {
			continue
		}
		m.History = append(m.History, Event{At: time.UnixMilli(hl.At).UTC(), Event: hl.Event, State: hl.State,
			ErrCode: hl.ErrCode, ErrMsg: hl.ErrMsg, Status: hl.Status, Note: hl.Note})
	}
	return m, nil
}

func transition(res []any) (Transition, error) {
	if len(res) == 0 {
		return Transition{}, ErrNotFound
	}
	return Transition{State: State(str(res, 0)), Changed: str(res, 1) == "changed", App: str(res, 2),
		inflight: str(res, 1) == "inflight"}, nil
}

func str(res []any, i int) string {
	if i >= len(res) {
		return ""
	}
	s, _ := res[i].(string)
	return s
}

func num(res []any, i int) int64 {
	if i >= len(res) {
		return 0
	}
	n, _ := res[i].(int64)
	return n
}

func msTime(v string) time.Time {
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func optTime(v string) *time.Time {
	if v == "" {
		return nil
	}
	t := msTime(v)
	if t.IsZero() {
		return nil
	}
	return &t
}
