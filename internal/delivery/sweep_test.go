package delivery

import (
	"testing"
	"time"
)

// SweepUnconfirmedUntil leaves a message whose deadline is after until: its
// result may be waiting in the callback inbox.
func TestSweepUnconfirmedUntil(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ys1")
	b.store.Begin(b.ctx, "Ys1")
	sentAt := b.clock.Now()
	b.store.MarkSent(b.ctx, "Ys1", "default", 700)
	b.clock.Advance(11 * time.Minute) // the 10-minute deadline has passed
	if s, err := b.store.SweepUnconfirmedUntil(b.ctx, sentAt.Add(5*time.Minute), 10); err != nil || len(s) != 0 {
		t.Fatalf("swept %v, %v with results applied only up to before its deadline", s, err)
	}
	if got := b.state(t, "Ys1"); got != StateSent {
		t.Fatalf("Ys1 = %s, want sent", got)
	}
	if s, _ := b.store.SweepUnconfirmedUntil(b.ctx, b.clock.Now().Add(time.Hour), 10); len(s) != 1 {
		t.Fatalf("swept %v with until after now, want Ys1 (until is capped at now)", s)
	}
}
