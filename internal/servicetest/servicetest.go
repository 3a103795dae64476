// Package servicetest runs wxpush deployments inside a test: a private
// redis-server, the WeChat simulator, an enqueuer and workers (service.RunEnqueuer
// and service.RunWorker on real ports), plus HTTP helpers to drive them. It is
// for tests and benchmarks only. Every process stops when the test ends, and the
// test fails if one returned an error.
package servicetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/service"
	"github.com/wxpush/wxpush/internal/tasks"
	"github.com/wxpush/wxpush/internal/testport"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

// The app every cluster configures (app "default").
const (
	AppID  = "wxe2e00000000001"
	Secret = "e2e-app-secret-value"
	Token  = "e2ecallbacktoken"
)

// FreeAddr is a loopback address for a process under test to listen on,
// never handed out twice in one test binary (see testport).
func FreeAddr(t testing.TB) string {
	t.Helper()
	return testport.Addr(t)
}

// process runs one wxpush process function until the test ends; the test fails
// if it returns an error. It returns a reader of the process's logs so far.
func Run(t testing.TB, name string, run func(context.Context, service.Env, io.Writer, io.Writer) error, env map[string]string) (logs func() string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	sink := &logSink{}
	go func() { done <- run(ctx, func(k string) string { return env[k] }, io.Discard, sink) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s logs:\n%s", name, sink.String())
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s returned %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop within 30 s of cancel", name)
		}
	})
	return sink.String
}

// logSink keeps a process's logs for the failure message; safe for concurrent use.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func WaitHTTP(t testing.TB, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not answer 200 within 20 s", url)
}

type Message struct {
	ID          string `json:"id"`
	State       string `json:"state"`
	Attempts    int    `json:"attempts"`
	WeChatMsgID string `json:"wechat_msgid"`
	LastError   *struct {
		Code int    `json:"errcode"`
		Msg  string `json:"errmsg"`
	} `json:"last_error"`
}

func PostMessage(t testing.TB, api, body string) string {
	t.Helper()
	resp, err := http.Post(api+"/v1/messages", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct{ ID, State string }
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != http.StatusAccepted || r.ID == "" {
		t.Fatalf("POST /v1/messages = %d %+v %v", resp.StatusCode, r, err)
	}
	return r.ID
}

func GetMessage(t testing.TB, api, id string) Message {
	t.Helper()
	resp, err := http.Get(api + "/v1/messages/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m Message
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("GET %s: %v", id, err)
	}
	return m
}

// WaitFinal polls a message until its state is final, with a deadline.
func WaitFinal(t testing.TB, api, id string, within time.Duration) Message {
	t.Helper()
	deadline := time.Now().Add(within)
	var m Message
	for time.Now().Before(deadline) {
		m = GetMessage(t, api, id)
		switch m.State {
		case "delivered", "user_blocked", "wechat_failed", "rejected", "dead", "expired", "canceled", "unconfirmed":
			return m
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("message %s still %q after %v", id, m.State, within)
	return m
}

func MessageBody(openID string) string {
	return fmt.Sprintf(`{"touser":%q,"template_id":"T1","data":{"thing1":{"value":"order shipped"}}}`, openID)
}

// SumSeries adds up one series over several /metrics pages.
func SumSeries(t testing.TB, urls []string, series string) float64 {
	t.Helper()
	var sum float64
	for _, u := range urls {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, series+" "); ok {
				var f float64
				fmt.Sscan(v, &f)
				sum += f
			}
		}
	}
	return sum
}

// PostBatch enqueues messages over the batch API and returns their ids.
func PostBatch(t testing.TB, api string, bodies []string) []string {
	t.Helper()
	resp, err := http.Post(api+"/v1/messages/batch", "application/json",
		strings.NewReader(`{"messages":[`+strings.Join(bodies, ",")+`]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Accepted int
		Results  []struct {
			ID    string
			Error *struct{ Code, Message string }
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != http.StatusOK || r.Accepted != len(bodies) {
		var first any
		for _, res := range r.Results {
			if res.Error != nil {
				first = *res.Error
				break
			}
		}
		t.Fatalf("batch = %d, accepted %d of %d (%v); first error %+v", resp.StatusCode, r.Accepted, len(bodies), err, first)
	}
	ids := make([]string, len(r.Results))
	for i, res := range r.Results {
		ids[i] = res.ID
	}
	return ids
}

func Do(t testing.TB, method, url, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, rd)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Options shapes a test deployment.
type Options struct {
	Workers  int
	Rules    string // wechatsim.ParseRules spec; "" = all succeed
	Latency  time.Duration
	Env      map[string]string // extra environment for every process
	RedisOpt []redistest.Option
	// CallbackDelay is the simulator's delay before a result callback: zero =
	// 50 ms, negative = none.
	CallbackDelay time.Duration
	// AESKey, when set, runs callbacks in safe mode: the simulator seals them
	// and the app is configured with WECHAT_AES_KEY.
	AESKey string
}

// Cluster is a running deployment: a real redis-server, the simulator, one
// enqueuer and some workers, each a RunEnqueuer/RunWorker call in this process.
type Cluster struct {
	Redis   *redistest.Server
	Sim     *wechatsim.Server
	API     string   // enqueuer base URL
	Scrape  []string // every process's /metrics
	env     map[string]string
	logs    map[string]func() string // process name → its logs so far
	workers int
	sendsMu sync.Mutex
	sends   []time.Time // when the simulator received each template send
	// FailTemplates makes the simulator's template list answer HTTP 500.
	FailTemplates atomic.Bool
}

// Start runs a deployment until the test ends.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	c := &Cluster{Redis: redistest.Start(t, o.RedisOpt...)}
	apiAddr := FreeAddr(t)
	c.API = "http://" + apiAddr
	cfg := wechatsim.Config{
		Apps: []wechatsim.App{{AppID: AppID, Secret: Secret, Token: Token, AESKey: o.AESKey, CallbackURL: c.API + "/wechat/callback/default"}},
		// The one template every test message uses (MessageBody), so that the
		// enqueuer's template validation and the simulator agree.
		Templates:     []wechatsim.Template{{AppID: AppID, TemplateID: "T1", Title: "发货通知", Content: "{{thing1.DATA}}"}},
		CallbackDelay: 50 * time.Millisecond,
		Latency:       o.Latency,
	}
	if o.CallbackDelay != 0 {
		cfg.CallbackDelay = max(o.CallbackDelay, 0)
	}
	if o.Rules != "" {
		rules, err := wechatsim.ParseRules(o.Rules)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Rules = rules
	}
	sim, err := wechatsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Sim = sim
	simSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cgi-bin/template/get_all_private_template" && c.FailTemplates.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		if r.URL.Path == "/cgi-bin/message/template/send" {
			c.sendsMu.Lock()
			c.sends = append(c.sends, time.Now())
			c.sendsMu.Unlock()
		}
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { simSrv.Close(); sim.Close() })

	env := map[string]string{
		"REDIS_URL": c.Redis.URL(), "WECHAT_API_BASE": simSrv.URL,
		"WECHAT_APP_ID": AppID, "WECHAT_APP_SECRET": Secret, "WECHAT_TOKEN": Token,
		"WXPUSH_HTTP_ADDR": apiAddr, "WXPUSH_RETRY_BASE": "100ms", "WXPUSH_SHUTDOWN_TIMEOUT": "5s",
	}
	if o.AESKey != "" {
		env["WECHAT_AES_KEY"] = o.AESKey
	}
	// Tests drive the API far faster than one producer should; a test of the
	// API rate limit sets WXPUSH_API_RATE itself.
	env["WXPUSH_API_RATE"] = "0"
	for k, v := range o.Env {
		env[k] = v
	}
	c.env = env
	c.logs = map[string]func() string{"enqueuer": Run(t, "enqueuer", service.RunEnqueuer, env)}
	c.Scrape = append(c.Scrape, c.API+"/metrics")
	for i := 0; i < o.Workers; i++ {
		c.AddWorker(t)
	}
	WaitHTTP(t, c.API+"/healthz")
	return c
}

// Env returns the environment of the cluster's processes, with a fresh
// WXPUSH_ADMIN_ADDR, for a worker started some other way (e.g. its binary).
func (c *Cluster) Env(t testing.TB) map[string]string {
	t.Helper()
	env := map[string]string{"WXPUSH_ADMIN_ADDR": FreeAddr(t)}
	for k, v := range c.env {
		if k != "WXPUSH_ADMIN_ADDR" {
			env[k] = v
		}
	}
	return env
}

// AddWorker starts one more worker and waits until it is healthy.
func (c *Cluster) AddWorker(t testing.TB) { c.AddWorkerEnv(t, nil) }

// AddWorkerEnv starts one more worker with extra environment over the
// cluster's, and waits until it is healthy.
func (c *Cluster) AddWorkerEnv(t testing.TB, extra map[string]string) {
	t.Helper()
	env := c.Env(t)
	for k, v := range extra {
		env[k] = v
	}
	c.workers++
	name := fmt.Sprintf("worker %d", c.workers)
	c.logs[name] = Run(t, name, service.RunWorker, env)
	WaitHTTP(t, "http://"+env["WXPUSH_ADMIN_ADDR"]+"/healthz")
	c.Scrape = append(c.Scrape, "http://"+env["WXPUSH_ADMIN_ADDR"]+"/metrics")
}

// Logs returns every process's logs so far, by process name ("enqueuer",
// "worker 1", …). Call it from the test's goroutine, as AddWorker is.
func (c *Cluster) Logs() map[string]string {
	logs := make(map[string]string, len(c.logs))
	for name, read := range c.logs {
		logs[name] = read()
	}
	return logs
}

// SendTimes returns when the simulator received each send.
func (c *Cluster) SendTimes() []time.Time {
	c.sendsMu.Lock()
	defer c.sendsMu.Unlock()
	return append([]time.Time(nil), c.sends...)
}

// QueueSize is pending + scheduled + retry tasks of an asynq queue.
func (c *Cluster) QueueSize(t testing.TB, queue string) int {
	t.Helper()
	info, err := asynq.NewInspectorFromRedisClient(c.Redis.Client(t)).GetQueueInfo(queue)
	if err != nil {
		return 0
	}
	return info.Pending + info.Scheduled + info.Retry
}

// QueuedMessages is the number of messages the pending, scheduled and retry
// delivery and chunk tasks of an asynq queue carry.
func (c *Cluster) QueuedMessages(t testing.TB, queue string) int {
	t.Helper()
	insp := asynq.NewInspectorFromRedisClient(c.Redis.Client(t))
	n := 0
	for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
		insp.ListPendingTasks, insp.ListScheduledTasks, insp.ListRetryTasks} {
		for page := 1; ; page++ {
			infos, err := list(queue, asynq.Page(page), asynq.PageSize(1000))
			if errors.Is(err, asynq.ErrQueueNotFound) {
				return 0 // nothing was enqueued on it yet
			}
			if err != nil {
				t.Fatalf("list tasks of %s: %v", queue, err)
			}
			for _, ti := range infos {
				if msgs, err := tasks.Carried(ti.Type, ti.Payload); err == nil {
					n += len(msgs)
				}
			}
			if len(infos) < 1000 {
				break
			}
		}
	}
	return n
}

// retrying is the number of tasks in an asynq queue's retry set.
func (c *Cluster) Retrying(t testing.TB, queue string) int {
	t.Helper()
	info, err := asynq.NewInspectorFromRedisClient(c.Redis.Client(t)).GetQueueInfo(queue)
	if err != nil {
		return 0
	}
	return info.Retry
}
