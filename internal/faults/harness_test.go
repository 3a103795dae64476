//go:build linux

package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

// faultsEnv turns the suite on.
const faultsEnv = "WXPUSH_FAULTS"

func requireFaults(t *testing.T) {
	t.Helper()
	if os.Getenv(faultsEnv) != "1" {
		t.Skipf("fault-injection suite: set %s=1 to run it (make test-faults)", faultsEnv)
	}
}

// ---------------------------------------------------------------------------
// Binaries

var build struct {
	once sync.Once
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// binaries builds cmd/worker, cmd/enqueuer and cmd/wxpush (the CLI, whose
// 'webhooks listen' is the webhook receiver process) once per test binary run.
func binaries(t *testing.T) (worker, enqueuer string) {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "wxpush-faults-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.dir = dir
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator),
			"github.com/wxpush/wxpush/cmd/worker", "github.com/wxpush/wxpush/cmd/enqueuer", "github.com/wxpush/wxpush/cmd/wxpush")
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build cmd/worker cmd/enqueuer: %v\n%s", err, out)
			return
		}
		fmt.Fprintf(os.Stderr, "faults: built worker and enqueuer in %v\n", time.Since(start).Round(time.Millisecond))
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return filepath.Join(build.dir, "worker"), filepath.Join(build.dir, "enqueuer")
}

// ---------------------------------------------------------------------------
// Processes

// proc is one wxpush binary running as its own process.
type proc struct {
	name  string
	pid   int
	admin string // a worker's admin address
	cmd   *exec.Cmd
	logs  *syncBuffer
	done  chan struct{}
	err   error // cmd.Wait's result, valid once done is closed
	// signaled is set before the test sends the process a signal, so that an
	// exit the test did not cause can be told apart.
	signaled atomic.Bool
}

func startProc(name, bin string, env map[string]string, args ...string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	// A clean environment: only what the cluster sets, so nothing from the
	// test's own environment (WXPUSH_*, REDIS_URL) leaks in.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &proc{name: name, cmd: cmd, logs: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	// Die with the test binary (a panic or -timeout skips the cleanups).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.pid = cmd.Process.Pid
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill SIGKILLs the process and waits until it is reaped. Safe from any goroutine.
func (p *proc) kill() {
	p.signaled.Store(true)
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// terminate sends SIGTERM and waits up to within for the exit; it returns how
// long the exit took and whether it happened.
func (p *proc) terminate(within time.Duration) (time.Duration, bool) {
	p.signaled.Store(true)
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return time.Since(start), true
	case <-time.After(within):
		return time.Since(start), false
	}
}

// tail returns the last n lines of the process's output.
func (p *proc) tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.logs.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// grep returns the lines of the process's output containing any of words.
func (p *proc) grep(max int, words ...string) []string {
	var out []string
	for _, l := range strings.Split(p.logs.String(), "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
		if len(out) >= max {
			break
		}
	}
	return out
}

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

// ---------------------------------------------------------------------------
// The simulator, with a front that records sends and can slow them down

// simFront serves the simulator and watches template sends: when each
// (openid, client_msg_id) was first requested, which client_msg_ids each
// openid got, how each send was answered. It can add latency to a send after
// the simulator handled it (the send took effect; only the reply is late).
type simFront struct {
	sim *wechatsim.Server
	url string

	mu       sync.Mutex
	latency  func(openID string, nth int) time.Duration
	pairs    map[wechatsim.PairKey]*pairLog
	cmids    map[string]map[string]bool // openid → client_msg_ids requested
	sends    []time.Time                // arrival of every send request
	okAt     []time.Time                // arrival of every send answered errcode 0
	codes    map[string]int             // "errcode N" / "http N" / "no reply" → count
	codeAt   map[string][]time.Time     // when each reply was noted
	codeArr  map[string][]time.Time     // when its request arrived, in the same order
	inflight int
	// abandoned counts sends whose client went away before the reply
	// (a client timeout, or a sender that died or gave up).
	abandoned int
}

type pairLog struct {
	n     int
	first time.Time
}

func newSimFront(t *testing.T, callbackURL string) *simFront {
	t.Helper()
	sim, err := wechatsim.New(wechatsim.Config{
		Apps: []wechatsim.App{{AppID: servicetest.AppID, Secret: servicetest.Secret, Token: servicetest.Token, CallbackURL: callbackURL}},
		// The template servicetest.MessageBody uses, so the enqueuer's template
		// check and the simulator agree.
		Templates:     []wechatsim.Template{{AppID: servicetest.AppID, TemplateID: "T1", Title: "发货通知", Content: "{{thing1.DATA}}"}},
		CallbackDelay: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &simFront{sim: sim, pairs: map[wechatsim.PairKey]*pairLog{}, cmids: map[string]map[string]bool{},
		codes: map[string]int{}, codeAt: map[string][]time.Time{}, codeArr: map[string][]time.Time{}}
	srv := httptest.NewServer(f)
	f.url = srv.URL
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close(); sim.Close() })
	return f
}

func (f *simFront) setLatency(fn func(openID string, nth int) time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.latency = fn
}

func (f *simFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/cgi-bin/message/template/send" {
		f.sim.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	r.Body = io.NopCloser(bytes.NewReader(body))
	var req struct {
		ToUser      string `json:"touser"`
		ClientMsgID string `json:"client_msg_id"`
	}
	_ = json.Unmarshal(body, &req)
	now := time.Now()
	f.mu.Lock()
	key := wechatsim.PairKey{OpenID: req.ToUser, ClientMsgID: req.ClientMsgID}
	pl := f.pairs[key]
	if pl == nil {
		pl = &pairLog{first: now}
		f.pairs[key] = pl
	}
	pl.n++
	nth := pl.n
	if f.cmids[req.ToUser] == nil {
		f.cmids[req.ToUser] = map[string]bool{}
	}
	f.cmids[req.ToUser][req.ClientMsgID] = true
	f.sends = append(f.sends, now)
	f.inflight++
	var lat time.Duration
	if f.latency != nil {
		lat = f.latency(req.ToUser, nth)
	}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inflight--
		f.mu.Unlock()
	}()

	rec := &captureWriter{ResponseWriter: w}
	if lat <= 0 {
		f.sim.ServeHTTP(rec, r)
		f.note(now, rec.code(), rec.body.Bytes(), r.Context().Err() != nil)
		return
	}
	buf := httptest.NewRecorder()
	f.sim.ServeHTTP(buf, r)
	select {
	case <-time.After(lat):
	case <-r.Context().Done():
		f.note(now, buf.Code, buf.Body.Bytes(), true)
		return
	}
	for k, v := range buf.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(buf.Code)
	_, _ = w.Write(buf.Body.Bytes())
	f.note(now, buf.Code, buf.Body.Bytes(), r.Context().Err() != nil)
}

var errcodeRE = regexp.MustCompile(`"errcode":\s*(-?\d+)`)

// note records how a send that arrived at arrived was answered; gone = the
// client was no longer there.
func (f *simFront) note(arrived time.Time, status int, body []byte, gone bool) {
	code := fmt.Sprintf("http %d", status)
	if m := errcodeRE.FindSubmatch(body); status == http.StatusOK && m != nil {
		code = "errcode " + string(m[1])
	} else if status == 0 || (status == http.StatusOK && len(body) == 0) {
		code = "no reply"
	}
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.codes[code]++
	f.codeAt[code] = append(f.codeAt[code], now)
	f.codeArr[code] = append(f.codeArr[code], arrived)
	if code == "errcode 0" && !gone {
		f.okAt = append(f.okAt, arrived)
	}
	if gone {
		f.abandoned++
	}
}

// captureWriter passes a reply through and keeps its status and body; Unwrap
// lets the simulator hijack the connection (hang, abort) through it.
type captureWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (c *captureWriter) WriteHeader(s int) {
	if c.status == 0 {
		c.status = s
	}
	c.ResponseWriter.WriteHeader(s)
}

func (c *captureWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	c.body.Write(b)
	return c.ResponseWriter.Write(b)
}

func (c *captureWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (c *captureWriter) code() int { return c.status }

func (f *simFront) sendCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sends)
}

func (f *simFront) inFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inflight
}

func (f *simFront) abandonedSends() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.abandoned
}

// firstAfter returns the first time in ts after t0 (zero if none).
func firstAfter(ts []time.Time, t0 time.Time) time.Time {
	for _, t := range ts {
		if t.After(t0) {
			return t
		}
	}
	return time.Time{}
}

// firstOKAfter is the arrival of the first send that came after t0 and was
// answered errcode 0: when sending worked again after a fault that ended at t0.
func (f *simFront) firstOKAfter(t0 time.Time) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	first := time.Time{}
	for _, t := range f.okAt { // answers come out of arrival order
		if t.After(t0) && (first.IsZero() || t.Before(first)) {
			first = t
		}
	}
	return first
}

func (f *simFront) firstSendAfter(t0 time.Time) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return firstAfter(f.sends, t0)
}

// codesWithin counts the replies of each kind to requests that arrived at or
// after from and were answered before to: sends the simulator decided wholly
// within the window, none straddling a change of its rules at either end.
func (f *simFront) codesWithin(from, to time.Time) map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for code, ts := range f.codeAt {
		for i, t := range ts {
			if !f.codeArr[code][i].Before(from) && t.Before(to) {
				out[code]++
			}
		}
	}
	return out
}

// codesBetween counts the replies of each kind in [from, to).
func (f *simFront) codesBetween(from, to time.Time) map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for code, ts := range f.codeAt {
		for _, t := range ts {
			if !t.Before(from) && t.Before(to) {
				out[code]++
			}
		}
	}
	return out
}

func (f *simFront) clientMsgIDs(openID string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id := range f.cmids[openID] {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (f *simFront) pair(openID, clientMsgID string) (pairLog, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pl, ok := f.pairs[wechatsim.PairKey{OpenID: openID, ClientMsgID: clientMsgID}]
	if !ok {
		return pairLog{}, false
	}
	return *pl, true
}

// pairsBefore lists the pairs first requested before t.
func (f *simFront) pairsBefore(t time.Time) []wechatsim.PairKey {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []wechatsim.PairKey
	for k, pl := range f.pairs {
		if pl.first.Before(t) {
			out = append(out, k)
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Callback proxy

// callbackProxy sits between the simulator's result callbacks and the enqueuer,
// and remembers which WeChat msgids the enqueuer acknowledged (2xx). A message
// may end unconfirmed only if its callback was never acknowledged.
type callbackProxy struct {
	url    string
	target atomic.Pointer[string]
	client *http.Client

	mu    sync.Mutex
	acked map[string]bool
	tries int
	fails int
}

var msgIDRE = regexp.MustCompile(`<MsgID>(\d+)</MsgID>`)

func newCallbackProxy(t *testing.T) *callbackProxy {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	p := &callbackProxy{client: &http.Client{Timeout: 5 * time.Second, Transport: tr}, acked: map[string]bool{}}
	srv := httptest.NewServer(p)
	p.url = srv.URL
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close(); tr.CloseIdleConnections() })
	return p
}

func (p *callbackProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var msgID string
	if m := msgIDRE.FindSubmatch(body); m != nil {
		msgID = string(m[1])
	}
	target := *p.target.Load() + r.URL.Path
	if r.URL.RawQuery != "" {
		target += "?" + r.URL.RawQuery
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, target, bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	req.Header.Set("Content-Type", r.Header.Get("Content-Type"))
	resp, err := p.client.Do(req)
	p.mu.Lock()
	p.tries++
	if err != nil || resp.StatusCode < 200 || resp.StatusCode > 299 {
		p.fails++
	} else if msgID != "" {
		p.acked[msgID] = true
	}
	p.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(b)
}

func (p *callbackProxy) wasAcked(msgID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acked[msgID]
}

func (p *callbackProxy) counts() (tries, fails int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tries, p.fails
}

// ---------------------------------------------------------------------------
// The cluster

type options struct {
	workers int
	env     map[string]string
	// enqueuerViaProxy connects the enqueuer to Redis through a redisProxy, so
	// a test can kill it at an exact command.
	enqueuerViaProxy bool
}

type cluster struct {
	t       *testing.T
	redis   *redistest.Server
	rdb     *redis.Client
	front   *simFront
	cb      *callbackProxy
	proxy   *redisProxy
	api     string
	apiAddr string
	env     map[string]string

	workerBin, enqueuerBin string

	mu      sync.Mutex
	enq     *proc
	workers []*proc // live workers
	procs   []*proc // every process started
	seq     int
}

func startCluster(t *testing.T, o options) *cluster {
	t.Helper()
	wbin, ebin := binaries(t)
	c := &cluster{t: t, workerBin: wbin, enqueuerBin: ebin}
	c.redis = redistest.Start(t, redistest.WithAppendOnly())
	c.rdb = c.redis.Client(t)
	c.cb = newCallbackProxy(t)
	c.front = newSimFront(t, c.cb.url+"/wechat/callback/default")
	c.apiAddr = servicetest.FreeAddr(t)
	c.api = "http://" + c.apiAddr
	c.cb.target.Store(&c.api)
	c.env = map[string]string{
		"REDIS_URL":       c.redis.URL(),
		"WECHAT_API_BASE": c.front.url,
		"WECHAT_APP_ID":   servicetest.AppID, "WECHAT_APP_SECRET": servicetest.Secret, "WECHAT_TOKEN": servicetest.Token,
		"WXPUSH_HTTP_ADDR":  c.apiAddr,
		"WXPUSH_RETRY_BASE": "100ms", "WXPUSH_RETRY_CAP": "2s",
		"WXPUSH_SHUTDOWN_TIMEOUT": "5s",
		// The test polls every message; the per-caller API rate stays on (it
		// is part of the surface under test) but out of the way.
		"WXPUSH_API_RATE": "100000", "WXPUSH_API_BURST": "100000",
		"WXPUSH_LOG_FORMAT": "text", "WXPUSH_LOG_LEVEL": "info",
	}
	for k, v := range o.env {
		c.env[k] = v
	}
	if o.enqueuerViaProxy {
		c.proxy = newRedisProxy(t, c.redis.Addr())
	}
	t.Cleanup(c.cleanup)
	c.startEnqueuer()
	for range o.workers {
		c.startWorker()
	}
	return c
}

func (c *cluster) cleanup() {
	c.mu.Lock()
	procs := slices.Clone(c.procs)
	c.mu.Unlock()
	for _, p := range procs {
		if !p.exited() {
			p.kill()
		}
	}
	if c.t.Failed() {
		for _, p := range procs {
			c.t.Logf("--- %s (pid %d, %v) last lines:\n%s", p.name, p.pid, p.err, p.tail(25))
		}
	}
}

func (c *cluster) envWith(extra map[string]string) map[string]string {
	env := make(map[string]string, len(c.env)+len(extra))
	for k, v := range c.env {
		env[k] = v
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

func (c *cluster) launch(name, bin string, env map[string]string, args ...string) *proc {
	c.t.Helper()
	p, err := startProc(name, bin, env, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

// waitHealthy polls url until it answers 200, failing at once if p exits.
func (c *cluster) waitHealthy(p *proc, url string) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if p.exited() {
			c.t.Fatalf("%s exited during start-up (%v):\n%s", p.name, p.err, p.tail(30))
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("%s: %s did not answer 200 within 20 s:\n%s", p.name, url, p.tail(30))
}

// startEnqueuer starts an enqueuer on the cluster's API address.
func (c *cluster) startEnqueuer() *proc {
	c.t.Helper()
	env := c.envWith(nil)
	if c.proxy != nil {
		env["REDIS_URL"] = "redis://" + c.proxy.addr() + "/0"
	}
	c.mu.Lock()
	c.seq++
	name := fmt.Sprintf("enqueuer#%d", c.seq)
	c.mu.Unlock()
	p := c.launch(name, c.enqueuerBin, env)
	c.waitHealthy(p, c.api+"/healthz")
	c.mu.Lock()
	c.enq = p
	c.mu.Unlock()
	return p
}

func (c *cluster) enqueuer() *proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.enq
}

// startWorker starts one more worker and waits until it is healthy.
func (c *cluster) startWorker() *proc { return c.startWorkerWith(nil) }

// startWorkerWith starts a worker with extra environment over the cluster's.
func (c *cluster) startWorkerWith(extra map[string]string) *proc {
	c.t.Helper()
	admin := servicetest.FreeAddr(c.t)
	c.mu.Lock()
	c.seq++
	name := fmt.Sprintf("worker#%d", c.seq)
	c.mu.Unlock()
	env := c.envWith(extra)
	env["WXPUSH_ADMIN_ADDR"] = admin
	p := c.launch(name, c.workerBin, env)
	p.admin = admin
	c.waitHealthy(p, "http://"+admin+"/healthz")
	c.mu.Lock()
	c.workers = append(c.workers, p)
	c.mu.Unlock()
	return p
}

func (c *cluster) liveWorkers() []*proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.workers)
}

func (c *cluster) dropWorker(p *proc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.workers = slices.DeleteFunc(c.workers, func(w *proc) bool { return w == p })
}

// scrapeURLs are the /metrics pages of the enqueuer and the live workers.
func (c *cluster) scrapeURLs() []string {
	urls := []string{c.api + "/metrics"}
	for _, w := range c.liveWorkers() {
		urls = append(urls, "http://"+w.admin+"/metrics")
	}
	return urls
}

// waitSends waits until the simulator has seen n sends.
func (c *cluster) waitSends(n int, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for c.front.sendCount() < n {
		if time.Now().After(deadline) {
			c.t.Fatalf("only %d sends within %v (want %d)", c.front.sendCount(), within, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leaseWait is how long after a fault asynq's recoverer may take tasks whose
// lease stopped being extended then: the lease (30 s) plus the recoverer's
// 30 s clock-skew allowance, plus a margin.
const leaseWait = 62 * time.Second

// leaseRecovery returns a waitFinal tick that starts one more worker once the
// leases held at fault are due for recovery, if messages are still pending:
// a new asynq server runs its recoverer at start-up, while running ones wait
// for their once-a-minute tick (see the package doc). It records when it did.
type leaseRecovery struct {
	c       *cluster
	fault   time.Time
	started time.Time
	waiting int // asynq tasks pending/scheduled/retry when it started
	active  int // asynq tasks active when it started
}

func (l *leaseRecovery) tick() {
	if l.started.IsZero() && time.Since(l.fault) > leaseWait {
		l.active, l.waiting = l.c.queueActive()
		l.c.startWorker()
		l.started = time.Now()
	}
}

func (l *leaseRecovery) String() string {
	if l.started.IsZero() {
		return "not needed"
	}
	return fmt.Sprintf("extra worker started %s after the fault (asynq then: %d active, %d waiting)",
		since(l.fault, l.started), l.active, l.waiting)
}

// waitUntil polls cond until it holds, failing the test after within.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkProcesses fails the test for a process that exited without being told
// to, or that panicked.
func (c *cluster) checkProcesses() {
	c.t.Helper()
	c.mu.Lock()
	procs := slices.Clone(c.procs)
	c.mu.Unlock()
	for _, p := range procs {
		if p.exited() && !p.signaled.Load() {
			c.t.Errorf("%s (pid %d) exited on its own: %v\n%s", p.name, p.pid, p.err, p.tail(40))
		}
		if bad := p.grep(20, "panic:", "fatal error:", "DATA RACE"); len(bad) > 0 {
			c.t.Errorf("%s (pid %d) logged a panic:\n%s\n%s", p.name, p.pid, strings.Join(bad, "\n"), p.tail(40))
		}
	}
}

func (c *cluster) inspector() *asynq.Inspector {
	return asynq.NewInspectorFromRedisClient(c.rdb)
}

// ---------------------------------------------------------------------------
// Producer

// producer submits logical items (each one openid, so one message to one user)
// and records what the API acknowledged.
type producer struct {
	c      *cluster
	client *http.Client
	// connErrorsOK: a connection error is expected (the enqueuer is being
	// killed); otherwise it is a finding.
	connErrorsOK bool

	inflight atomic.Int32 // requests awaiting an answer

	mu         sync.Mutex
	acked      map[string]string   // message id → item
	byItem     map[string][]string // item → ids acknowledged for it
	status     map[string]int      // "503", "409 idempotency_in_progress", "conn error", …
	statusAt   map[string][]time.Time
	unexpected []string
	noRetryAft int // 503/429 without Retry-After
}

func newProducer(c *cluster) *producer {
	return &producer{
		c:      c,
		client: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}},
		acked:  map[string]string{}, byItem: map[string][]string{},
		status: map[string]int{}, statusAt: map[string][]time.Time{},
	}
}

func (p *producer) note(status string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status[status]++
	p.statusAt[status] = append(p.statusAt[status], time.Now())
}

func (p *producer) fail(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.unexpected) < 50 {
		p.unexpected = append(p.unexpected, fmt.Sprintf(format, a...))
	}
}

func (p *producer) ack(id, item string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, seen := p.acked[id]; seen {
		return // a replayed response
	}
	p.acked[id] = item
	p.byItem[item] = append(p.byItem[item], id)
}

func (p *producer) inFlight() int { return int(p.inflight.Load()) }

// statusesBetween counts the responses of each kind in [from, to).
func (p *producer) statusesBetween(from, to time.Time) map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for s, ts := range p.statusAt {
		for _, t := range ts {
			if !t.Before(from) && t.Before(to) {
				out[s]++
			}
		}
	}
	return out
}

// ackedIDs returns the acknowledged ids (sorted) and their items.
func (p *producer) ackedIDs() ([]string, map[string]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]string, 0, len(p.acked))
	items := make(map[string]string, len(p.acked))
	for id, item := range p.acked {
		ids = append(ids, id)
		items[id] = item
	}
	sort.Strings(ids)
	return ids, items
}

func itemNames(prefix string, from, n int) []string {
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf("%s_%06d", prefix, from+i)
	}
	return items
}

// submitBatch posts items as one batch until the API answers it, retrying what
// a client may retry: 503 and 429 (after a short wait rather than the full
// Retry-After, to keep the test quick), 409 idempotency_in_progress, and — when
// the enqueuer is being killed — connection errors and cut-off replies. key is
// the Idempotency-Key ("" = none).
func (p *producer) submitBatch(ctx context.Context, items []string, key string) error {
	bodies := make([]string, len(items))
	for i, it := range items {
		bodies[i] = servicetest.MessageBody(it)
	}
	body := `{"messages":[` + strings.Join(bodies, ",") + `]}`
	return p.submit(ctx, "/v1/messages/batch", body, key, items)
}

// submitOne posts one item to POST /v1/messages.
func (p *producer) submitOne(ctx context.Context, item, key string) error {
	return p.submit(ctx, "/v1/messages", servicetest.MessageBody(item), key, []string{item})
}

func (p *producer) submit(ctx context.Context, path, body, key string, items []string) error {
	for {
		if err := ctx.Err(); err != nil {
			p.fail("%s %s: gave up unanswered: %v", path, key, err)
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.c.api+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		p.inflight.Add(1)
		resp, err := p.client.Do(req)
		p.inflight.Add(-1)
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			p.note("conn error")
			if !p.connErrorsOK {
				p.fail("%s: %v", path, err)
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		raw, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		status := resp.StatusCode
		switch {
		case (status == http.StatusOK || status == http.StatusAccepted) && rerr == nil:
			ids, err := parseAccepted(path, raw, len(items))
			if err != nil {
				p.fail("%s: %d with a body that does not parse: %v: %.200s", path, status, err, raw)
				return err
			}
			p.note(fmt.Sprint(status))
			for i, id := range ids {
				if id == "" {
					p.fail("%s: item %d (%s) refused in a %d: %.300s", path, i, items[i], status, raw)
					continue
				}
				p.ack(id, items[i])
			}
			return nil
		case rerr != nil:
			// The reply was cut off: the outcome is unknown, retry.
			p.note("cut-off reply")
			if !p.connErrorsOK {
				p.fail("%s: reply cut off: %v", path, rerr)
			}
			time.Sleep(50 * time.Millisecond)
		case status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests:
			p.note(fmt.Sprint(status))
			if resp.Header.Get("Retry-After") == "" {
				p.mu.Lock()
				p.noRetryAft++
				p.mu.Unlock()
			}
			time.Sleep(200 * time.Millisecond)
		case status == http.StatusConflict && bytes.Contains(raw, []byte("idempotency_in_progress")):
			p.note("409 idempotency_in_progress")
			time.Sleep(500 * time.Millisecond)
		default:
			p.note(fmt.Sprint(status))
			p.fail("%s: unexpected %d: %.300s", path, status, raw)
			return fmt.Errorf("%s: %d", path, status)
		}
	}
}

// parseAccepted returns the id of each item of a 2xx response ("" for an item
// refused inside a batch).
func parseAccepted(path string, raw []byte, n int) ([]string, error) {
	if path == "/v1/messages" {
		var r struct{ ID string }
		if err := json.Unmarshal(raw, &r); err != nil || r.ID == "" {
			return nil, fmt.Errorf("no id (%v)", err)
		}
		return []string{r.ID}, nil
	}
	var r struct {
		Results []struct{ ID string }
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, err
	}
	if len(r.Results) != n {
		return nil, fmt.Errorf("%d results for %d items", len(r.Results), n)
	}
	ids := make([]string, n)
	for i, res := range r.Results {
		ids[i] = res.ID
	}
	return ids, nil
}

// ---------------------------------------------------------------------------
// Checks

// msgView is what GET /v1/messages/{id} says.
type msgView struct {
	ID          string     `json:"id"`
	State       string     `json:"state"`
	Attempts    int        `json:"attempts"`
	WeChatMsgID string     `json:"wechat_msgid"`
	CreatedAt   time.Time  `json:"created_at"`
	SentAt      *time.Time `json:"sent_at"`
	FinishedAt  *time.Time `json:"finished_at"`
	LastError   *struct {
		Code int    `json:"errcode"`
		Msg  string `json:"errmsg"`
	} `json:"last_error"`
	History []struct {
		Event string `json:"event"`
	} `json:"history"`
}

// lateCallback reports whether the message's result callback came after it
// had settled unconfirmed (recorded, but no longer able to change its state).
func (v msgView) lateCallback() bool {
	for _, e := range v.History {
		if e.Event == "late callback" {
			return true
		}
	}
	return false
}

var finalStates = map[string]bool{"delivered": true, "user_blocked": true, "wechat_failed": true, "rejected": true,
	"dead": true, "expired": true, "canceled": true, "unconfirmed": true}

// waitFinal polls GET /v1/messages/{id} for every id until all are final or
// within runs out (then it reports the rest as errors). tick, if set, runs on
// the test goroutine between rounds.
func (c *cluster) waitFinal(ids []string, within time.Duration, tick func()) map[string]msgView {
	c.t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer client.CloseIdleConnections()
	views := make(map[string]msgView, len(ids))
	pending := slices.Clone(ids)
	lastErr := map[string]string{}
	var mu sync.Mutex
	deadline := time.Now().Add(within)
	for len(pending) > 0 {
		var next []string
		var wg sync.WaitGroup
		work := make(chan string)
		for range 8 {
			wg.Go(func() {
				for id := range work {
					v, err := getMessage(client, c.api, id)
					mu.Lock()
					if err != nil {
						lastErr[id] = err.Error()
						next = append(next, id)
					} else {
						views[id] = v
						if !finalStates[v.State] {
							next = append(next, id)
						}
					}
					mu.Unlock()
				}
			})
		}
		for _, id := range pending {
			work <- id
		}
		close(work)
		wg.Wait()
		pending = next
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			sort.Strings(pending)
			var sample []string
			for _, id := range pending[:min(len(pending), 15)] {
				sample = append(sample, fmt.Sprintf("%s=%q(attempts %d, err %q)", id, views[id].State, views[id].Attempts, lastErr[id]))
			}
			c.t.Errorf("%d of %d acknowledged messages not final after %v; e.g. %s", len(pending), len(ids), within, strings.Join(sample, ", "))
			return views
		}
		if tick != nil {
			tick()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return views
}

func getMessage(client *http.Client, api, id string) (msgView, error) {
	resp, err := client.Get(api + "/v1/messages/" + id)
	if err != nil {
		return msgView{}, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return msgView{}, fmt.Errorf("GET %s: %d %.200s", id, resp.StatusCode, raw)
	}
	var v msgView
	if err := json.Unmarshal(raw, &v); err != nil {
		return msgView{}, err
	}
	return v, nil
}

// expectation is the final state a case accepts: delivered, or also
// unconfirmed for a message whose result callback the enqueuer never
// acknowledged (it came while Redis or the enqueuer was down).
type expectation int

const (
	expectDelivered expectation = iota
	expectDeliveredOrLostCallback
)

// lateCallback reports whether v's callback was recorded as late: in v, or,
// for one acknowledged after v was read (the simulator may still be retrying
// callbacks when every message is final), in the record as it is now. The
// enqueuer records the late callback before it acknowledges it.
func (c *cluster) lateCallback(v msgView) bool {
	if v.lateCallback() {
		return true
	}
	now, err := getMessage(&http.Client{Timeout: 5 * time.Second}, c.api, v.ID)
	if err != nil {
		c.t.Errorf("read %s again: %v", v.ID, err)
		return false
	}
	return now.lateCallback()
}

// checkStates checks the final state of every acknowledged message and counts them by state.
func (c *cluster) checkStates(ids []string, views map[string]msgView, exp expectation) map[string]int {
	c.t.Helper()
	byState := map[string]int{}
	var bad []string
	late := 0
	for _, id := range ids {
		v, ok := views[id]
		if !ok || !finalStates[v.State] {
			continue // reported by waitFinal
		}
		byState[v.State]++
		switch {
		case v.State == "delivered":
		case v.State == "unconfirmed" && exp == expectDeliveredOrLostCallback && !c.cb.wasAcked(v.WeChatMsgID):
		case v.State == "unconfirmed" && exp == expectDeliveredOrLostCallback && c.lateCallback(v):
			// Acknowledged, but only after WXPUSH_CONFIRM_TIMEOUT had settled
			// the message: the state machine keeps its one final state.
			late++
		default:
			why := ""
			if v.LastError != nil {
				why = fmt.Sprintf(" (last error %d %q)", v.LastError.Code, v.LastError.Msg)
			}
			if v.State == "unconfirmed" {
				why += fmt.Sprintf(" although the enqueuer acknowledged the callback of msgid %s", v.WeChatMsgID)
			}
			bad = append(bad, fmt.Sprintf("%s %s after %d attempts%s", id, v.State, v.Attempts, why))
		}
	}
	if len(bad) > 0 {
		c.t.Errorf("%d messages in the wrong final state, e.g.:\n  %s", len(bad), strings.Join(bad[:min(len(bad), 15)], "\n  "))
	}
	if late > 0 {
		c.t.Logf("%d unconfirmed messages had their callback acknowledged after they settled (recorded as late)", late)
	}
	return byState
}

// pushFigures are what the simulator saw.
type pushFigures struct {
	items         int // logical items checked
	pushed        int // template messages users got
	repeatedPairs int // (openid, client_msg_id) accepted more than once (WeChat de-duplicated)
	repeatSends   int // extra accepted sends over those pairs
	dupItems      int // items a user got more than once: must be 0
}

// checkPushes checks that no user got an item twice and every delivered
// message was pushed once; strictAccepted also forbids repeats WeChat had to
// de-duplicate (where no crash could cause them).
func (c *cluster) checkPushes(ids []string, items map[string]string, views map[string]msgView, strictAccepted bool) pushFigures {
	c.t.Helper()
	sim := c.front.sim
	stats := sim.Stats()
	var f pushFigures
	f.pushed = stats.Pushed
	for _, k := range stats.Duplicates {
		f.repeatedPairs++
		f.repeatSends += sim.Pair(k.OpenID, k.ClientMsgID).Accepted - 1
	}
	if strictAccepted && len(stats.Duplicates) > 0 {
		c.t.Errorf("%d (openid, client_msg_id) pairs were accepted more than once although no sender crashed, e.g. %v",
			len(stats.Duplicates), stats.Duplicates[:min(len(stats.Duplicates), 10)])
	}
	seen := map[string]bool{}
	var dups, missing []string
	for _, id := range ids {
		item := items[id]
		if !seen[item] {
			seen[item] = true
			f.items++
			total := 0
			var parts []string
			for _, cmid := range c.front.clientMsgIDs(item) {
				ps := sim.Pair(item, cmid)
				total += ps.Pushed
				parts = append(parts, fmt.Sprintf("client_msg_id %s: requests %d accepted %d pushed %d", cmid, ps.Requests, ps.Accepted, ps.Pushed))
			}
			if total > 1 {
				f.dupItems++
				dups = append(dups, fmt.Sprintf("%s pushed %d times [%s]", item, total, strings.Join(parts, "; ")))
			}
		}
		if v := views[id]; v.State == "delivered" {
			if ps := sim.Pair(item, id); ps.Pushed != 1 {
				missing = append(missing, fmt.Sprintf("%s (%s): delivered but pushed %d times", id, item, ps.Pushed))
			}
		}
	}
	if len(dups) > 0 {
		sort.Strings(dups)
		c.t.Errorf("%d logical items reached their user more than once (duplicate push), e.g.:\n  %s", len(dups), strings.Join(dups[:min(len(dups), 10)], "\n  "))
	}
	if len(missing) > 0 {
		c.t.Errorf("%d delivered messages do not match the simulator's pushes, e.g.:\n  %s", len(missing), strings.Join(missing[:min(len(missing), 10)], "\n  "))
	}
	return f
}

// orphanFigures describe records that no API response acknowledged.
type orphanFigures struct {
	records   int            // records in Redis
	unacked   map[string]int // state → records never acknowledged to the producer
	backlog   int64          // the backlog count for the app at the end
	stuckIDs  []string       // unacknowledged records that are not final
	pushedIDs []string       // unacknowledged records that were sent to a user
}

// orphans scans the message records for ones the producer never got an id
// for: a request cut off after it wrote them. They are not covered by the
// "nothing accepted is lost" invariant, but one that was pushed is a push the
// producer cannot know about (its retry makes a second), and one that never
// settles holds a backlog slot forever.
func (c *cluster) orphans(acked map[string]string) orphanFigures {
	c.t.Helper()
	ctx := context.Background()
	f := orphanFigures{unacked: map[string]int{}}
	store := delivery.NewStore(c.rdb, delivery.Config{})
	iter := c.rdb.Scan(ctx, 0, delivery.RecordKeyPattern, 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		id := delivery.IDOfRecordKey(key)
		f.records++
		if _, ok := acked[id]; ok {
			continue
		}
		var st string
		if m, err := store.Get(ctx, id); err == nil {
			st = string(m.State)
		}
		f.unacked[st]++
		if !finalStates[st] {
			f.stuckIDs = append(f.stuckIDs, id+"="+st)
		} else if st == "delivered" || st == "unconfirmed" {
			f.pushedIDs = append(f.pushedIDs, id)
		}
	}
	if err := iter.Err(); err != nil {
		c.t.Errorf("scan records: %v", err)
	}
	f.backlog, _ = store.Backlog(ctx, "default")
	return f
}

// waitOrphans is orphans once no unacknowledged record is left non-final and
// the backlog is empty, or at the deadline (the orphan sweep's cut-off plus
// its ticks, past the last write an orphan can come from).
func (c *cluster) waitOrphans(acked map[string]string, deadline time.Time) orphanFigures {
	c.t.Helper()
	for {
		o := c.orphans(acked)
		if (o.backlog == 0 && len(o.stuckIDs) == 0) || time.Now().After(deadline) {
			return o
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// checkBacklog fails when records are left unfinished for ever (a backlog slot
// leak: admission control and the backlog gauge count them).
func (c *cluster) checkBacklog(o orphanFigures) {
	c.t.Helper()
	if o.backlog != 0 || len(o.stuckIDs) > 0 {
		c.t.Errorf("after everything acknowledged settled, the backlog still counts %d unfinished messages; "+
			"%d records no response acknowledged are stuck non-final (no task will ever run them), e.g. %v",
			o.backlog, len(o.stuckIDs), o.stuckIDs[:min(len(o.stuckIDs), 10)])
	}
}

// lastFinished is the latest finished_at among views.
func lastFinished(views map[string]msgView) time.Time {
	var last time.Time
	for _, v := range views {
		if v.FinishedAt != nil && v.FinishedAt.After(last) {
			last = *v.FinishedAt
		}
	}
	return last
}

func mostAttempts(views map[string]msgView) int {
	m := 0
	for _, v := range views {
		m = max(m, v.Attempts)
	}
	return m
}

func since(t0, t time.Time) string {
	if t.IsZero() {
		return "n/a"
	}
	return t.Sub(t0).Round(10 * time.Millisecond).String()
}

// queueActive sums asynq's active tasks over wxpush's queues.
func (c *cluster) queueActive() (active, waiting int) {
	c.t.Helper()
	insp := c.inspector()
	for _, q := range []string{"high", "normal", "low"} {
		info, err := insp.GetQueueInfo(q)
		if err != nil {
			continue // a queue never used does not exist
		}
		active += info.Active
		waiting += info.Pending + info.Scheduled + info.Retry
	}
	return active, waiting
}
