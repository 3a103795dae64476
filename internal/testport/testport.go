// Package testport hands tests loopback ports that nothing else in the test
// process has been given, below the kernel's ephemeral range.
//
// Asking the kernel for port 0 and closing the listener is not enough when
// tests run in parallel: the kernel may hand the same port to the next caller,
// or use it as the source port of an outgoing connection (a Redis client's,
// say) before the server that was meant to bind it does. Ports picked here
// come from outside ip_local_port_range (below it, or above it where there is
// no room below), where the kernel never picks, and are never handed out
// twice in one process. Another process may still take one
// (it is a free port, not a reserved one), so callers that start servers keep
// a retry on "address already in use".
package testport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// lowest is the bottom of the range ports are picked from: above the ports
// services on these machines listen on.
const lowest = 10000

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// Pick returns a loopback port that was free a moment ago and has not been
// returned before in this process.
func Pick() (int, error) {
	lo, hi, err := pickRange()
	if err != nil {
		return 0, err
	}
	mu.Lock()
	defer mu.Unlock()
	// Start anywhere, so that processes rarely pick alike, then walk the range.
	start := rand.IntN(hi - lo)
	for i := range hi - lo {
		port := lo + (start+i)%(hi-lo)
		if given[port] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // in use by someone else
		}
		if err := ln.Close(); err != nil {
			return 0, err
		}
		given[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("testport: no free port left in [%d, %d)", lo, hi)
}

// Addr is Pick as "127.0.0.1:port"; it fails the test if no port is free.
func Addr(tb testing.TB) string {
	tb.Helper()
	port, err := Pick()
	if err != nil {
		tb.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// minRange is the fewest ports a range to pick from must hold.
const minRange = 1000

// pickRange is the range [lo, hi) to pick from: below the kernel's ephemeral
// range (from lowest), or else above it, whichever leaves room.
func pickRange() (lo, hi int, err error) {
	first, last := ephemeralRange()
	switch {
	case first-lowest >= minRange:
		return lowest, first, nil
	case 65536-(last+1) >= minRange:
		return max(last+1, lowest), 65536, nil
	}
	return 0, 0, fmt.Errorf("testport: the ephemeral port range %d–%d leaves no %d ports outside it above %d",
		first, last, minRange, lowest)
}

// ephemeralRange is the kernel's ephemeral port range, Linux's default
// (32768–60999) when it cannot be read.
func ephemeralRange() (first, last int) {
	first, last = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return first, last
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return first, last
	}
	a, err1 := strconv.Atoi(f[0])
	z, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || a > z {
		return first, last
	}
	return a, z
}
