// Package redistest starts private, real redis-server processes for tests; it is
// for tests only and must never be imported by production code. It owns the whole
// process lifecycle: a free loopback port, a temporary data directory, readiness by
// polling PING, and a tb.Cleanup that kills and reaps the process so that no
// redis-server outlives its test. When redis-server is not on PATH, Start skips the
// test, or fails it if WXPUSH_TEST_REQUIRE_REDIS=1 (as CI sets). A Server's methods
// call tb.Fatal, so they must be called from the goroutine running the test.
package redistest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wxpush/wxpush/internal/testport"
)

// RequireEnv names the environment variable that turns a missing redis-server
// from a skip into a failure, so that CI cannot silently skip the Redis suites.
const RequireEnv = "WXPUSH_TEST_REQUIRE_REDIS"

const (
	// readyTimeout bounds how long a start may take before the test fails. It is
	// generous because AOF loading and -race on a busy CI machine are slow.
	readyTimeout = 15 * time.Second
	// exitTimeout bounds how long Kill and Stop wait for the process to go away.
	exitTimeout = 15 * time.Second
	// pollInterval is the gap between readiness probes.
	pollInterval = 10 * time.Millisecond
	// portAttempts is how many free ports Start tries: picking a port by
	// listening on :0 and closing leaves a window in which another process
	// (often a parallel test) can take it before redis-server binds.
	portAttempts = 5
)

// Server is a redis-server process owned by one test.
type Server struct {
	bin  string
	port int
	dir  string
	opts options

	// proc is the running (or last) process; nil before the first start.
	proc *process
}

// process is one run of redis-server. done is closed once the process has
// exited and been reaped.
type process struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error // cmd.Wait's result, valid after done is closed
}

type options struct {
	appendOnly bool
	args       []string
}

// Option configures Start.
type Option func(*options)

// WithAppendOnly turns on the append-only file with appendfsync always, so every
// acknowledged write survives Stop, Kill and Restart (the data directory is kept
// for the life of the test).
func WithAppendOnly() Option {
	return func(o *options) { o.appendOnly = true }
}

// WithArgs adds redis-server command-line arguments, for example
// WithArgs("--maxmemory-policy", "allkeys-lru"). They come after the defaults,
// so they override them.
func WithArgs(args ...string) Option {
	return func(o *options) { o.args = append(o.args, args...) }
}

// requireBinary finds redis-server, or skips (fails, under RequireEnv) the test.
func requireBinary(tb testing.TB) string {
	tb.Helper()
	return requireProgram(tb, "redis-server", "redis-server")
}

// requireProgram finds name on PATH, or skips (fails, under RequireEnv) the
// test, naming the Debian package that has it.
func requireProgram(tb testing.TB, name, pkg string) string {
	tb.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		msg := fmt.Sprintf("%s not found: install it (apt-get install %s) or put it on PATH", name, pkg)
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatalf("%s (%s=1 makes a missing %s a failure)", msg, RequireEnv, name)
		}
		tb.Skipf("%s; set %s=1 to fail instead of skipping", msg, RequireEnv)
	}
	return bin
}

// Start starts a private redis-server on a free 127.0.0.1 port with a temporary
// data directory and returns once it answers PING. The process is killed and
// reaped in tb.Cleanup.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s := &Server{bin: requireBinary(tb), dir: tb.TempDir()}
	for _, o := range opts {
		o(&s.opts)
	}
	s.launch(tb, "redis-server", nil)
	return s
}

// launch starts s on a free port, trying another while the one picked turns
// out taken, and kills it in tb.Cleanup. prepare, when set, readies s for a
// port (e.g. arguments that name it) and may refuse the port.
func (s *Server) launch(tb testing.TB, what string, prepare func(port int) bool) {
	tb.Helper()
	// Registered after TempDir, so it runs before the directory is removed: the
	// server must be gone before its files are.
	tb.Cleanup(func() {
		if err := s.kill(); err != nil {
			tb.Errorf("redistest: cleanup: %v", err)
		}
	})
	var lastErr error
	for range portAttempts {
		port, err := freePort()
		if err != nil {
			tb.Fatalf("redistest: pick a port: %v", err)
		}
		if prepare != nil && !prepare(port) {
			continue
		}
		s.port = port
		lastErr = s.start()
		if lastErr == nil {
			return
		}
		if !errors.Is(lastErr, errAddrInUse) {
			break
		}
	}
	tb.Fatalf("redistest: start %s: %v", what, lastErr)
}

// Addr returns the server's address, "127.0.0.1:PORT".
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// URL returns a redis:// URL for database 0 of the server.
func (s *Server) URL() string {
	return "redis://" + s.Addr() + "/0"
}

// Client returns a new go-redis client for the server, closed in tb.Cleanup.
// The address stays the same across Restart, so a client outlives Kill and
// Restart (go-redis redials after a broken connection).
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Kill sends SIGKILL (to the server and any fork child, such as an AOF rewrite)
// and waits until the process has exited. Nothing is saved beyond what was
// already on disk, which is the point: it simulates a crash.
func (s *Server) Kill(tb testing.TB) {
	tb.Helper()
	if err := s.kill(); err != nil {
		tb.Fatalf("redistest: kill: %v", err)
	}
}

// Stop shuts the server down with SHUTDOWN, which saves first when persistence
// is on, and waits until the process has exited.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	p := s.proc
	if p == nil || p.exited() {
		return
	}
	if err := shutdown(s.Addr()); err != nil {
		tb.Fatalf("redistest: SHUTDOWN: %v\n--- redis-server log:\n%s", err, p.log.String())
	}
	if err := p.wait(exitTimeout); err != nil {
		tb.Fatalf("redistest: stop: %v\n--- redis-server log:\n%s", err, p.log.String())
	}
}

// Restart starts the server again on the same port and data directory and
// waits until it answers PING. A server that is still running is stopped with
// Stop first. Another process may have taken the port in the meantime; Restart
// keeps trying until its deadline, then fails the test.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Stop(tb)
	deadline := time.Now().Add(readyTimeout)
	for {
		err := s.start()
		if err == nil {
			return
		}
		if !errors.Is(err, errAddrInUse) || time.Now().After(deadline) {
			tb.Fatalf("redistest: restart on port %d: %v", s.port, err)
		}
		<-time.After(pollInterval)
	}
}

var errAddrInUse = errors.New("address already in use")

// start launches redis-server on s.port and waits until it answers PING.
func (s *Server) start() error {
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--daemonize", "no",
		"--save", "",
		"--appendonly", "no",
	}
	if s.opts.appendOnly {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	}
	args = append(args, s.opts.args...)

	cmd := exec.Command(s.bin, args...)
	p := &process{cmd: cmd, log: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.log
	cmd.Stderr = p.log
	setProcAttr(cmd)
	// A fork child (AOF rewrite, RDB save) inherits the log pipe; after a
	// SIGKILL of the parent alone, Wait would block on it. Bound that.
	cmd.WaitDelay = exitTimeout
	if err := cmd.Start(); err != nil {
		return err
	}
	s.proc = p
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()

	deadline := time.Now().Add(readyTimeout)
	for {
		if probe(s.Addr(), cmd.Process.Pid) == nil {
			return nil
		}
		select {
		case <-p.done:
			log := p.log.String()
			if strings.Contains(log, "Address already in use") {
				return fmt.Errorf("port %d: %w", s.port, errAddrInUse)
			}
			return fmt.Errorf("redis-server exited before answering PING (%v)\n--- redis-server log:\n%s", p.err, log)
		case <-time.After(pollInterval):
		}
		if time.Now().After(deadline) {
			_ = s.kill()
			return fmt.Errorf("redis-server did not answer PING on %s within %v\n--- redis-server log:\n%s",
				s.Addr(), readyTimeout, p.log.String())
		}
	}
}

// kill SIGKILLs the current process, if any, and waits for it to be reaped.
func (s *Server) kill() error {
	p := s.proc
	if p == nil || p.exited() {
		return nil
	}
	killProcess(p.cmd)
	return p.wait(exitTimeout)
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("redis-server (pid %d) still running after %v", p.cmd.Process.Pid, timeout)
	}
}

// freePort picks a free loopback port (see testport). The port is released
// before redis-server binds it, and another process may take it first, hence
// the retries in launch.
func freePort() (int, error) { return testport.Pick() }

// probe checks that the server on addr is ready and is the process with the
// given pid. The pid check matters: when our redis-server loses the race for
// its port, another test's server may be answering there. It speaks RESP
// directly so that probing leaves no client pool or goroutine behind. A server
// still loading its AOF answers PING with -LOADING, which counts as not ready.
func probe(addr string, pid int) error {
	conn, r, err := dial(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")); err != nil {
		return err
	}
	if line, err := readLine(r); err != nil {
		return err
	} else if line != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	line, err := readLine(r)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(strings.TrimPrefix(line, "$"))
	if !strings.HasPrefix(line, "$") || err != nil {
		return fmt.Errorf("INFO answered %q", line)
	}
	info := make([]byte, n)
	if _, err := io.ReadFull(r, info); err != nil {
		return err
	}
	want := "process_id:" + strconv.Itoa(pid) + "\r\n"
	if !bytes.Contains(info, []byte(want)) {
		return fmt.Errorf("another process answers on %s", addr)
	}
	return nil
}

// shutdown sends SHUTDOWN. On success the server closes the connection without
// a reply; an error reply (for example a failed save) is returned.
func shutdown(addr string) error {
	conn, r, err := dial(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("*1\r\n$8\r\nSHUTDOWN\r\n")); err != nil {
		return err
	}
	if line, err := readLine(r); err == nil && strings.HasPrefix(line, "-") {
		return errors.New(line)
	}
	return nil
}

func dial(addr string) (net.Conn, *bufio.Reader, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, nil, err
	}
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, bufio.NewReader(conn), nil
}

func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// syncBuffer is a bytes.Buffer safe for the exec copy goroutine writing while
// a failing test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
