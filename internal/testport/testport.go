// Package testport hands tests loopback ports that nothing else in the test
// process has been given, below the kernel's ephemeral range.
//
// Asking the kernel for port 0 and closing the listener is not enough when
// tests run in parallel: the kernel may hand the same port to the next caller,
// or use it as the source port of an outgoing connection (a Redis client's,
// say) before the server that was meant to bind it does. Ports picked here
// come from below ip_local_port_range, where the kernel never picks, and are
// never handed out twice in one process. Another process may still take one
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
	top := ephemeralStart()
	mu.Lock()
	defer mu.Unlock()
	// Start anywhere, so that processes rarely pick alike, then walk the range.
	start := rand.IntN(top - lowest)
	for i := range top - lowest {
		port := lowest + (start+i)%(top-lowest)
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
	return 0, fmt.Errorf("testport: no free port left in [%d, %d)", lowest, top)
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

// ephemeralStart is the first port of the kernel's ephemeral range (32768 when
// it cannot be read, Linux's default).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(fields[0])
	if err != nil || n <= lowest+1000 {
		return 32768
	}
	return n
}
