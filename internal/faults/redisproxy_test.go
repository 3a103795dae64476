//go:build linux

package faults

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// redisProxy forwards TCP connections to Redis and can be armed to act at an
// exact command: when a client writes a chunk holding every one of a set of
// byte patterns, the chunk is held back (Redis never sees it), the armed
// action runs (it kills the client process), and the connection is cut. This
// puts a crash at a chosen point of a request — here, after a batch was
// committed and before its idempotent response was stored.
type redisProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns map[net.Conn]struct{}

	armed atomic.Pointer[trigger]
}

type trigger struct {
	patterns [][]byte
	action   func()
	fired    chan struct{}
}

func newRedisProxy(t *testing.T, target string) *redisProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &redisProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *redisProxy) addr() string { return p.ln.Addr().String() }

// arm makes the next client chunk holding all of patterns fire action; the
// returned channel closes once it fired.
func (p *redisProxy) arm(action func(), patterns ...string) <-chan struct{} {
	tr := &trigger{action: action, fired: make(chan struct{})}
	for _, s := range patterns {
		tr.patterns = append(tr.patterns, []byte(s))
	}
	p.armed.Store(tr)
	return tr.fired
}

func (p *redisProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *redisProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *redisProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
		_ = c.Close()
	}
}

func (p *redisProxy) handle(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = client.Close()
		return
	}
	if !p.track(client, server) {
		_ = client.Close()
		_ = server.Close()
		return
	}
	defer p.untrack(client, server)
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(client, server)
		done <- struct{}{}
	}()
	go func() {
		p.upstream(client, server)
		done <- struct{}{}
	}()
	<-done
}

// upstream copies client → server, watching for the armed trigger. A small
// tail of the previous chunk is kept so a pattern split across two reads
// still matches.
func (p *redisProxy) upstream(client, server net.Conn) {
	buf := make([]byte, 64<<10)
	var tail []byte
	for {
		n, err := client.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if tr := p.armed.Load(); tr != nil && matchesAll(append(tail, chunk...), tr.patterns) &&
				p.armed.CompareAndSwap(tr, nil) {
				tr.action()
				close(tr.fired)
				return
			}
			if _, werr := server.Write(chunk); werr != nil {
				return
			}
			tail = append(tail[:0], chunk[max(0, n-256):]...)
		}
		if err != nil {
			return // EOF or a closed connection: handle closes both sides
		}
	}
}

func matchesAll(b []byte, patterns [][]byte) bool {
	for _, pat := range patterns {
		if !bytes.Contains(b, pat) {
			return false
		}
	}
	return true
}

func (p *redisProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for c := range conns {
		_ = c.Close()
	}
}
