package delivery

import "testing"

// A message with a status_url emits sent and its final state, in order, with
// the record's fields; one without a url (and events off) emits nothing.
func TestOutboxEmitsSentAndFinal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ym1", func(m *NewMessage) { m.StatusURL = "https://example.com/hook" })
	b.create(t, "Ym2")
	for _, id := range []string{"Ym1", "Ym2"} {
		if _, err := b.store.Begin(b.ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	b.store.MarkSent(b.ctx, "Ym1", "default", 42)
	b.store.MarkSent(b.ctx, "Ym2", "default", 43)
	if r, err := b.store.ApplyCallback(b.ctx, "default", "42", StateUserBlocked, "failed:user block"); err != nil {
		t.Fatalf("ApplyCallback = %+v, %v", r, err)
	}
	entries, err := b.rdb.XRange(b.ctx, OutboxKey('Y'), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("outbox has %d entries, want 2 (sent, user_blocked of Ym1 only): %v", len(entries), entries)
	}
	e1, e2 := ParseOutboxEvent(entries[0].Values), ParseOutboxEvent(entries[1].Values)
	if e1.ID != "Ym1" || e1.State != StateSent || e1.Previous != StateQueued || e1.Seq != 1 ||
		e1.MsgID != "42" || e1.Attempts != 1 || e1.StatusURL != "https://example.com/hook" {
		t.Errorf("first event = %+v", e1)
	}
	if e2.State != StateUserBlocked || e2.Previous != StateSent || e2.Seq != 2 {
		t.Errorf("second event = %+v", e2)
	}
}
