package inbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// ErrNotParked: no parked event has that id (never parked, or replayed).
var ErrNotParked = errors.New("inbox: no such parked event")

// ParkedEvents lists and replays the events the appliers set aside.
type ParkedEvents struct{ rdb redis.UniversalClient }

// NewParkedEvents returns the parked events on rdb.
func NewParkedEvents(rdb redis.UniversalClient) *ParkedEvents { return &ParkedEvents{rdb: rdb} }

// List returns up to limit parked events, oldest first, and how many there are.
func (p *ParkedEvents) List(ctx context.Context, limit int) ([]Parked, int64, error) {
	total, err := p.rdb.XLen(ctx, ParkedStream).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("inbox: count parked: %w", err)
	}
	events, err := ListParked(ctx, p.rdb, int64(limit))
	return events, total, err
}

// replayScript moves a parked event back into the inbox, as received (its
// receive time kept), atomically: two replays of one event append it once.
// Only the entry of exactly that id is taken: an id without its sequence
// ("1796643442000") ranges over every entry of that millisecond, which XDEL
// would not delete. KEYS: parked stream, inbox stream. ARGV: the parked id.
var replayScript = redis.NewScript(`
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 or e[1][1] ~= ARGV[1] then return 0 end
local f, keep = e[1][2], {app=true, event=true, xml=true, at=true}
local args = {}
for i = 1, #f, 2 do
  if keep[f[i]] then args[#args + 1] = f[i]; args[#args + 1] = f[i + 1] end
end
redis.call('XADD', KEYS[2], '*', unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
`)

// Replay puts parked event id back into the inbox, to be applied again
// (after whatever made it fail is fixed). Errors wrap ErrNotParked.
func (p *ParkedEvents) Replay(ctx context.Context, id string) error {
	n, err := replayScript.Run(ctx, p.rdb, []string{ParkedStream, Stream}, id).Int()
	switch {
	case err != nil:
		return fmt.Errorf("inbox: replay %s: %w", id, err)
	case n == 0:
		return fmt.Errorf("%w: %s", ErrNotParked, id)
	}
	return nil
}
