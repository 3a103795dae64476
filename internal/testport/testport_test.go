package testport

import (
	"net"
	"strconv"
	"testing"
)

// TestPickNeverRepeats: with every port of the range but one already given, Pick
// returns that one, then reports the range exhausted rather than repeating.
func TestPickNeverRepeats(t *testing.T) {
	lo, top, err := pickRange()
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	saved := given
	given = map[int]bool{}
	for p := lo; p < top; p++ {
		given[p] = true
	}
	// A port nothing on this machine is likely to hold: find one that binds.
	var last int
	for p := top - 1; p >= lo; p-- {
		if ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p)); err == nil {
			ln.Close()
			last = p
			break
		}
	}
	delete(given, last)
	mu.Unlock()
	t.Cleanup(func() { mu.Lock(); given = saved; mu.Unlock() })

	got, err := Pick()
	if err != nil || got != last {
		t.Fatalf("Pick() = %d, %v; want the one port left, %d", got, err, last)
	}
	if again, err := Pick(); err == nil {
		t.Fatalf("Pick() with the range exhausted = %d, want an error", again)
	}
}

// TestPickStaysBelowEphemeral: picked ports are bindable and outside the
// kernel's ephemeral range, where outgoing connections take their ports.
func TestPickStaysBelowEphemeral(t *testing.T) {
	first, last := ephemeralRange()
	for range 50 {
		p, err := Pick()
		if err != nil {
			t.Fatal(err)
		}
		if p < lowest || (p >= first && p <= last) {
			t.Fatalf("Pick() = %d, want at least %d and outside the ephemeral range %d–%d", p, lowest, first, last)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("picked port %d does not bind: %v", p, err)
		}
		ln.Close()
	}
}
