package events

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/webhook"
)

func outboxEntry(t *testing.T, rdb *redis.Client, id, state string, seq int) string {
	t.Helper()
	e, err := rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: delivery.OutboxKey(delivery.Shard("default")),
		Values: []any{"id", id, "a", "default", "s", state, "p", "queued", "q", seq, "n", 1, "m", "88", "t", 1733550000123}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func streamed(t *testing.T, rdb *redis.Client) []webhook.Event {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), webhook.EventsStream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []webhook.Event
	for _, m := range msgs {
		var ev struct {
			EventID string `json:"event_id"`
			ID      string `json:"id"`
			State   string `json:"state"`
			Seq     int64  `json:"seq"`
		}
		if err := json.Unmarshal([]byte(m.Values["e"].(string)), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.EventID != m.ID {
			t.Errorf("event_id %q in entry %s: want the entry's id", ev.EventID, m.ID)
		}
		out = append(out, webhook.Event{EventID: ev.EventID, ID: ev.ID, State: ev.State, Seq: ev.Seq})
	}
	return out
}

// TestForwardOnceThroughACrash: a forwarder that appended an entry and died
// before acknowledging it leaves it to another, which forwards it with the
// same event id rather than a second event; the outbox is emptied, a
// malformed entry is dropped, and the stream keeps its order.
func TestForwardOnceThroughACrash(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, rdb)
	first := NewForwarder(rdb, "first", 1000, m, logging.Discard())
	if _, err := first.Once(ctx, false); err != nil { // creates the groups
		t.Fatal(err)
	}
	outboxEntry(t, rdb, "Y1", "sent", 1)
	outboxEntry(t, rdb, "Y1", "delivered", 2)
	bad, _ := rdb.XAdd(ctx, &redis.XAddArgs{Stream: delivery.OutboxKey(delivery.Shard("default")), Values: []any{"x", "y"}}).Result()

	// The first forwarder reads and appends, then dies before its acknowledgement.
	msgs, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: Group, Consumer: "first",
		Streams: []string{delivery.OutboxKey(delivery.Shard("default")), ">"}, Count: 100, Block: -1}).Result()
	if err != nil {
		t.Fatal(err)
	}
	var es []entry
	for _, msg := range msgs[0].Messages {
		_, _, body, _ := eventJSON(msg)
		es = append(es, entry{stream: msgs[0].Stream, id: msg.ID, body: body})
	}
	if _, err := first.append(ctx, es); err != nil {
		t.Fatal(err)
	}
	before := streamed(t, rdb)

	second := NewForwarder(rdb, "second", 1000, m, logging.Discard())
	second.ClaimAfter = 0 // takes over whatever is pending, however briefly
	n, err := second.Once(ctx, true)
	if err != nil || n != 3 {
		t.Fatalf("second forwarder = %d, %v; want the 3 entries the first left", n, err)
	}
	after := streamed(t, rdb)
	if len(after) != 2 || len(before) != 2 || after[0] != before[0] || after[1] != before[1] {
		t.Fatalf("stream after the takeover = %+v, before %+v: want the same two events", after, before)
	}
	if after[0].State != "sent" || after[1].State != "delivered" || after[0].Seq != 1 || after[1].Seq != 2 {
		t.Errorf("events = %+v, want sent (1) then delivered (2)", after)
	}
	if l := rdb.XLen(ctx, delivery.OutboxKey(delivery.Shard("default"))).Val(); l != 0 {
		t.Errorf("outbox holds %d entries after forwarding (the malformed %s included), want 0", l, bad)
	}
	if got := testutil.ToFloat64(m.Forwarded); got != 3 {
		t.Errorf("forwarded = %v, want 3", got)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
	if n, err := testutil.GatherAndCount(reg, "wxpush_events_outbox_depth"); err != nil || n != 1 {
		t.Errorf("outbox depth gauge: %d, %v", n, err)
	}
}

// TestForwarderRecreatesLostGroups: after Redis lost everything (no
// persistence), the forwarder makes its groups again and goes on.
func TestForwarderRecreatesLostGroups(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	f := NewForwarder(rdb, "f", 1000, NewMetrics(prometheus.NewRegistry(), rdb), logging.Discard())
	if _, err := f.Once(ctx, false); err != nil {
		t.Fatal(err)
	}
	rdb.FlushAll(ctx)
	outboxEntry(t, rdb, "Y2", "sent", 1)
	for range 2 { // the first pass finds no group and makes it; the second forwards
		if _, err := f.Once(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	if got := streamed(t, rdb); len(got) != 1 || got[0].ID != "Y2" {
		t.Errorf("stream = %+v, want Y2's event", got)
	}
}
