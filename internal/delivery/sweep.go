package delivery

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// SweepUnconfirmed settles, as unconfirmed, up to limit sent messages whose
// confirmation deadline has passed. Concurrent sweepers are safe: each message is
// settled by exactly one of them.
func (s *Store) SweepUnconfirmed(ctx context.Context, limit int) ([]Settled, error) {
	return s.SweepUnconfirmedUntil(ctx, s.cfg.Now(), limit)
}

// SweepUnconfirmedUntil is SweepUnconfirmed for the messages whose deadline
// passed before until (at most now): results received up to until are known
// to be applied, later ones may still wait in the callback inbox.
func (s *Store) SweepUnconfirmedUntil(ctx context.Context, until time.Time, limit int) ([]Settled, error) {
	now := strconv.FormatInt(min(until.UnixMilli(), s.cfg.Now().UnixMilli()), 10)
	shards := allShards()
	cmds := make([]*redis.StringSliceCmd, len(shards))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, sh := range shards {
			cmds[i] = p.ZRangeArgs(ctx, redis.ZRangeArgs{
				Key: sentKey(sh), ByScore: true, Start: "-inf", Stop: now, Count: int64(limit),
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delivery: sweep: %w", err)
	}
	var settled []Settled
	for _, id := range due(cmds, limit) {
		t, err := s.finish(ctx, id, "", StateUnconfirmed, nil, "sent", "no result callback in time")
		if err != nil {
			return settled, err
		}
		if t.Changed {
			settled = append(settled, Settled{ID: id, App: t.App})
		}
	}
	return settled, nil
}

// due takes up to limit of the shards' overdue ids, one shard after another
// in turn, so that a shard with many cannot hold the others back.
func due(cmds []*redis.StringSliceCmd, limit int) []string {
	var ids []string
	for i := 0; len(ids) < limit; i++ {
		took := false
		for _, c := range cmds {
			if v := c.Val(); i < len(v) && len(ids) < limit {
				ids = append(ids, v[i])
				took = true
			}
		}
		if !took {
			break
		}
	}
	return ids
}
