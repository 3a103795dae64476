package testport

import (
	"net"
	"strconv"
	"testing"
)

// TestPickNeverRepeats: with every port of the range but one already given, Pick
// returns that one, then reports the range exhausted rather than repeating.
func TestPickNeverRepeats(t *testing.T) {
	top := ephemeralStart()
	mu.Lock()
	saved := given
	given = map[int]bool{}
	for p := lowest; p < top; p++ {
		given[p] = true
	}
	// A port nothing on this machine is likely to hold: find one that binds.
	var last int
	for p := top - 1; p >= lowest; p-- {
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

// TestPickStaysBelowEphemeral: picked ports are bindable and below the
// kernel's ephemeral range, where outgoing connections take their ports.
func TestPickStaysBelowEphemeral(t *testing.T) {
	top := ephemeralStart()
	for range 50 {
		p, err := Pick()
		if err != nil {
			t.Fatal(err)
		}
		if p < lowest || p >= top {
			t.Fatalf("Pick() = %d, want in [%d, %d)", p, lowest, top)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("picked port %d does not bind: %v", p, err)
		}
		ln.Close()
	}
}
