package delivery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Requeue puts a dead message back in state queued, keeping its id (and so its
// client_msg_id). It fails with ErrNotDead for any other state. The change is
// atomic, so it is a retry's claim: of concurrent callers exactly one succeeds,
// and only that one may touch the message's asynq task. The caller then
// enqueues the task again; queue is the message's asynq queue. The record is
// listed as unowned until the task begins it: should the caller die first,
// ReturnDead (through the orphan sweep) puts it back to dead.
func (s *Store) Requeue(ctx context.Context, id, app string) (queue string, err error) {
	if !validID(id) {
		return "", ErrNotFound
	}
	now := s.cfg.Now()
	res, err := requeueScript.Run(ctx, s.rdb,
		[]string{recordKey(id), backlogKey(shardOf(id)), deadKey(app), bodyKey(id), unownedKey(shardOf(id))},
		id, s.line(now, historyLine{Event: "requeued", State: StateQueued}), now.UnixMilli()).Slice()
	if err != nil {
		return "", fmt.Errorf("delivery: requeue: %w", err)
	}
	switch {
	case len(res) == 0:
		return "", ErrNotFound
	case str(res, 1) != app:
		return "", ErrNotFound
	case str(res, 0) != "requeued":
		return str(res, 2), ErrNotDead
	}
	return str(res, 2), nil
}

// ReturnDead puts back to dead a requeued message listed as unowned since
// before cutoff: the retry that claimed it (Requeue) never enqueued its task,
// and no task will ever run it. Queued without a task it would wait for ever,
// and could not be retried (it is no longer dead). The caller has checked that
// no task owns it; the listing, checked here, settles the race with a task that
// began the message meanwhile. A record that is not a requeued message
// (attempted and queued) is unlisted and left alone.
func (s *Store) ReturnDead(ctx context.Context, id, app string, cutoff time.Time) (Transition, error) {
	if !validID(id) {
		return Transition{}, ErrNotFound
	}
	now := s.cfg.Now()
	res, err := unrequeueScript.Run(ctx, s.rdb,
		[]string{recordKey(id), backlogKey(shardOf(id)), bodyKey(id), unownedKey(shardOf(id)), deadKey(app)},
		id, now.UnixMilli(),
		s.line(now, historyLine{Event: string(StateDead), State: StateDead,
			Note: "its retry was never enqueued"}),
		s.cfg.Retention.Milliseconds(), cutoff.UnixMilli()).Slice()
	if err != nil {
		return Transition{}, fmt.Errorf("delivery: return to dead: %w", err)
	}
	return transition(res)
}

// AppOf returns the app of message id.
func (s *Store) AppOf(ctx context.Context, id string) (string, error) {
	if !validID(id) {
		return "", ErrNotFound
	}
	app, err := s.rdb.HGet(ctx, recordKey(id), "a").Result()
	if err == redis.Nil {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("delivery: read app: %w", err)
	}
	return app, nil
}

// DeadPage is one page of an app's dead messages.
type DeadPage struct {
	Messages []*Message
	Total    int64 // dead messages of the app in all
	Next     int   // offset of the next page; 0 when this is the last
}

// ListDead returns up to limit dead messages of app, newest first, starting at
// offset. Dead messages leave the list when they are requeued or pass their
// retention; an entry whose record has vanished is skipped.
func (s *Store) ListDead(ctx context.Context, app string, offset, limit int) (DeadPage, error) {
	key := deadKey(app)
	var page DeadPage
	err := s.rdb.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(s.cfg.Now().Add(-s.cfg.Retention).UnixMilli(), 10)).Err()
	if err != nil {
		return page, fmt.Errorf("delivery: list dead: %w", err)
	}
	ids, err := s.rdb.ZRevRange(ctx, key, int64(offset), int64(offset+limit-1)).Result()
	if err != nil {
		return page, fmt.Errorf("delivery: list dead: %w", err)
	}
	if page.Total, err = s.rdb.ZCard(ctx, key).Result(); err != nil {
		return page, fmt.Errorf("delivery: list dead: %w", err)
	}
	page.Messages = make([]*Message, 0, len(ids))
	for _, id := range ids {
		m, err := s.Get(ctx, id)
		if err == ErrNotFound {
			// Leave the entry: removing it would shift the offsets of a client
			// paging through the list. It goes with its retention.
			continue
		}
		if err != nil {
			return page, err
		}
		page.Messages = append(page.Messages, m)
	}
	// Paging follows the index, not the records found, so a vanished record
	// cannot make a page repeat itself.
	if next := offset + len(ids); len(ids) == limit && int64(next) < page.Total {
		page.Next = next
	}
	return page, nil
}

// Park stops sending for app until the given time (the daily quota is spent).
// Messages of a parked app wait without spending attempts. Parking never
// shortens an existing park.
func (s *Store) Park(ctx context.Context, app string, until time.Time) error {
	err := s.rdb.ZAddGT(ctx, parkedKey(Shard(app)), redis.Z{Score: float64(until.UnixMilli()), Member: app}).Err()
	if err != nil {
		return fmt.Errorf("delivery: park: %w", err)
	}
	return nil
}

// Resume lifts an app's park; it reports whether the app was parked.
func (s *Store) Resume(ctx context.Context, app string) (bool, error) {
	n, err := s.rdb.ZRem(ctx, parkedKey(Shard(app)), app).Result()
	if err != nil {
		return false, fmt.Errorf("delivery: resume: %w", err)
	}
	return n > 0, nil
}

// ParkedApps returns the apps parked now, with when each park ends.
func (s *Store) ParkedApps(ctx context.Context) (map[string]time.Time, error) {
	now := strconv.FormatInt(s.cfg.Now().UnixMilli(), 10)
	shards := allShards()
	cmds := make([]*redis.ZSliceCmd, len(shards))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, sh := range shards {
			cmds[i] = p.ZRangeByScoreWithScores(ctx, parkedKey(sh), &redis.ZRangeBy{Min: "(" + now, Max: "+inf"})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delivery: parked apps: %w", err)
	}
	out := make(map[string]time.Time)
	for _, c := range cmds {
		for _, z := range c.Val() {
			if app, ok := z.Member.(string); ok {
				out[app] = time.UnixMilli(int64(z.Score))
			}
		}
	}
	return out, nil
}

// Backlog returns how many messages of app are not final yet.
func (s *Store) Backlog(ctx context.Context, app string) (int64, error) {
	n, err := s.rdb.HGet(ctx, backlogKey(Shard(app)), app).Int64()
	if err == redis.Nil {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("delivery: backlog: %w", err)
	}
	return n, nil
}

// TrySweepLock takes the cluster-wide sweeper lock for d; it reports whether this
// process won it. The lock simply expires: a sweep is idempotent, so the worst a
// slow sweeper can cause is a second, redundant sweep.
func (s *Store) TrySweepLock(ctx context.Context, d time.Duration) (bool, error) {
	ok, err := s.rdb.SetNX(ctx, sweepLockKey, "1", d).Result()
	if err != nil {
		return false, fmt.Errorf("delivery: sweep lock: %w", err)
	}
	return ok, nil
}

// Backlog counts of one app: unfinished messages in all and by state.
type AppBacklog struct {
	Total   int64
	ByState map[State]int64 // queued, scheduled, retrying, sent
}

// Backlogs returns the unfinished-message counts of every app that has any.
func (s *Store) Backlogs(ctx context.Context) (map[string]AppBacklog, error) {
	shards := allShards()
	cmds := make([]*redis.MapStringStringCmd, len(shards))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, sh := range shards {
			cmds[i] = p.HGetAll(ctx, backlogKey(sh))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delivery: backlogs: %w", err)
	}
	out := make(map[string]AppBacklog)
	get := func(app string) AppBacklog {
		b, ok := out[app]
		if !ok {
			b = AppBacklog{ByState: map[State]int64{}}
		}
		return b
	}
	for _, c := range cmds {
		for field, v := range c.Val() {
			n, _ := strconv.ParseInt(v, 10, 64)
			if app, state, ok := strings.Cut(field, "|"); ok {
				b := get(app)
				b.ByState[State(state)] = n
				out[app] = b
				continue
			}
			b := get(field)
			b.Total = n
			out[field] = b
		}
	}
	return out, nil
}

// legacyBacklogKey is where the key layout before the shards (ids without a
// shard character, records at wxpush:msg:{id}) counted unfinished messages.
const legacyBacklogKey = "wxpush:backlog"

// ErrLegacyMessages: Redis holds unfinished messages of the key layout before
// the shards, which this version cannot read.
var ErrLegacyMessages = errors.New("delivery: Redis holds unfinished messages of the key layout before wxpush's shards " +
	"(the hash wxpush:backlog counts them): let the previous version finish them, or delete wxpush:backlog to give them up")

// CheckLayout fails with ErrLegacyMessages when Redis holds unfinished messages
// of the previous key layout: a process of this version would drop their tasks
// as messages without a record.
func (s *Store) CheckLayout(ctx context.Context) error {
	n, err := s.rdb.Exists(ctx, legacyBacklogKey).Result()
	if err != nil {
		return fmt.Errorf("delivery: check layout: %w", err)
	}
	if n > 0 {
		return ErrLegacyMessages
	}
	return nil
}
