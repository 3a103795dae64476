package delivery

import (
	"strconv"
	"time"
)

// State changes for producers (status webhooks, GET /v1/events) leave the
// transition scripts through a transactional outbox: settle() and sentScript
// append an entry to the shard's outbox stream in the same script that changes
// the state, so an event exists exactly when its change does, through any
// crash. The webhook package's forwarder moves entries on from there.
//
//	wxpush:{S}:outbox   STREAM one entry per state change of a record that wants events
//
// Record fields: u (status_url), ev ("1": events on for this record), es (the
// last event's sequence number).

// OutboxKey is the outbox stream of shard.
func OutboxKey(shard byte) string { return tag(shard) + "outbox" }

// OutboxKeys lists the outbox streams of every shard.
func OutboxKeys() []string {
	keys := make([]string, 0, Shards)
	for _, sh := range allShards() {
		keys = append(keys, OutboxKey(sh))
	}
	return keys
}

// eventFields are the record fields that make the scripts emit m's events.
func (s *Store) eventFields(m NewMessage) []any {
	var f []any
	if m.StatusURL != "" {
		f = append(f, "u", m.StatusURL)
	}
	if s.cfg.Events {
		f = append(f, "ev", "1")
	}
	return f
}

// OutboxEvent is one outbox entry: a state change as the script saw it.
type OutboxEvent struct {
	ID        string
	App       string
	State     State
	Previous  State
	Seq       int64
	Attempts  int
	MsgID     string
	LastError *ErrorInfo
	StatusURL string
	At        time.Time
}

// ParseOutboxEvent reads an outbox entry's fields.
func ParseOutboxEvent(v map[string]any) OutboxEvent {
	str := func(k string) string { s, _ := v[k].(string); return s }
	num := func(k string) int64 { n, _ := strconv.ParseInt(str(k), 10, 64); return n }
	e := OutboxEvent{
		ID: str("id"), App: str("a"), State: State(str("s")), Previous: State(str("p")),
		Seq: num("q"), Attempts: int(num("n")), MsgID: str("m"), StatusURL: str("u"),
		At: time.UnixMilli(num("t")),
	}
	if e.MsgID == "0" {
		e.MsgID = ""
	}
	if str("ec") != "" || str("em") != "" {
		e.LastError = &ErrorInfo{Code: int(num("ec")), Msg: str("em")}
	}
	return e
}
