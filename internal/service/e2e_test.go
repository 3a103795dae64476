package service

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
)

const (
	e2eAppID  = "wxe2e00000000001"
	e2eSecret = "e2e-app-secret-value"
	e2eToken  = "e2ecallbacktoken"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// process runs one wxpush process function until the test ends; the test fails
// if it returns an error.
func process(t *testing.T, name string, run func(context.Context, Env, io.Writer, io.Writer) error, env map[string]string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs := &logSink{}
	go func() { done <- run(ctx, func(k string) string { return env[k] }, io.Discard, logs) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s logs:\n%s", name, logs.String())
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

func waitHTTP(t *testing.T, url string) {
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

type messageView struct {
	ID          string `json:"id"`
	State       string `json:"state"`
	Attempts    int    `json:"attempts"`
	WeChatMsgID string `json:"wechat_msgid"`
	LastError   *struct {
		Code int    `json:"errcode"`
		Msg  string `json:"errmsg"`
	} `json:"last_error"`
}

func postMessage(t *testing.T, api, body string) string {
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

func getMessage(t *testing.T, api, id string) messageView {
	t.Helper()
	resp, err := http.Get(api + "/v1/messages/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m messageView
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("GET %s: %v", id, err)
	}
	return m
}

// waitFinal polls a message until its state is final, with a deadline.
func waitFinal(t *testing.T, api, id string, within time.Duration) messageView {
	t.Helper()
	deadline := time.Now().Add(within)
	var m messageView
	for time.Now().Before(deadline) {
		m = getMessage(t, api, id)
		switch m.State {
		case "delivered", "user_blocked", "wechat_failed", "rejected", "dead", "expired", "canceled", "unconfirmed":
			return m
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("message %s still %q after %v", id, m.State, within)
	return m
}

func messageBody(openID string) string {
	return fmt.Sprintf(`{"touser":%q,"template_id":"T1","data":{"thing1":{"value":"order shipped"}}}`, openID)
}

// TestEndToEnd runs an enqueuer, two workers and the simulator against a real
// redis-server and follows messages to every callback-driven final state and to
// rejected, including a result callback that arrives before the worker stored
// the msgid.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	c := startCluster(t, clusterOpts{workers: 2,
		rules: "block_*=user_block, sysfail_*=system_failed, nofollow_*=not_following, early_*=callback_first, busy_*=system_busy:2, *=success"})
	api, sim, redis, scrape := c.api, c.sim, c.redis, c.scrape

	want := map[string]string{
		"ok_1": "delivered", "ok_2": "delivered", "block_1": "user_blocked", "sysfail_1": "wechat_failed",
		"nofollow_1": "rejected", "early_1": "delivered", "busy_1": "delivered",
	}
	ids := map[string]string{}
	for openID := range want {
		ids[openID] = postMessage(t, api, messageBody(openID))
	}
	for openID, state := range want {
		m := waitFinal(t, api, ids[openID], 20*time.Second)
		if m.State != state {
			t.Errorf("%s: state %s, want %s (%+v)", openID, m.State, state, m)
		}
		if p := sim.Pair(openID, ids[openID]); state != "rejected" && p.Accepted != 1 {
			t.Errorf("%s: simulator accepted (openid, client_msg_id) %d times, want once", openID, p.Accepted)
		}
	}
	if m := getMessage(t, api, ids["nofollow_1"]); m.LastError == nil || m.LastError.Code != 43004 {
		t.Errorf("rejected message last_error = %+v, want errcode 43004", m.LastError)
	}
	if m := getMessage(t, api, ids["busy_1"]); m.Attempts != 3 {
		t.Errorf("busy_1 attempts = %d, want 3 (two system-busy replies, then success)", m.Attempts)
	}
	st := sim.Stats()
	if len(st.Duplicates) != 0 {
		t.Errorf("simulator saw duplicate pushes: %v", st.Duplicates)
	}
	if st.TokenFetches[e2eAppID] != 1 {
		t.Errorf("token fetched %d times by two workers, want 1", st.TokenFetches[e2eAppID])
	}

	// Nothing is left active or pending in asynq.
	insp := asynq.NewInspectorFromRedisClient(redis.Client(t))
	deadline := time.Now().Add(10 * time.Second)
	for {
		var busy int
		for _, q := range []string{"high", "normal", "low"} {
			if info, err := insp.GetQueueInfo(q); err == nil {
				busy += info.Active + info.Pending + info.Retry + info.Scheduled
			}
		}
		if busy == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d asynq tasks still active/pending/retry/scheduled after every message settled", busy)
		}
		time.Sleep(25 * time.Millisecond)
	}

	// The fixed counters, summed over the three processes as Prometheus would:
	// each settlement is counted once, by whichever process made it.
	for series, want := range map[string]float64{
		`wxpush_messages_enqueued_total{app="default"}`:                       7,
		`wxpush_messages_finished_total{app="default",state="delivered"}`:     4,
		`wxpush_messages_finished_total{app="default",state="user_blocked"}`:  1,
		`wxpush_messages_finished_total{app="default",state="wechat_failed"}`: 1,
		`wxpush_messages_finished_total{app="default",state="rejected"}`:      1,
		`wxpush_send_attempts_total{app="default",result="ok"}`:               6,
		`wxpush_send_attempts_total{app="default",result="transient"}`:        2,
		`wxpush_send_attempts_total{app="default",result="permanent"}`:        1,
	} {
		if got := sumSeries(t, scrape, series); got != want {
			t.Errorf("%s summed over processes = %v, want %v", series, got, want)
		}
	}
}

// sumSeries adds up one series over several /metrics pages.
func sumSeries(t *testing.T, urls []string, series string) float64 {
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

// TestStandalone runs the worker with no REDIS_URL: embedded Redis, API and
// simulator in one process, and the seed's sample message reaches delivered.
func TestStandalone(t *testing.T) {
	t.Parallel()
	apiAddr := freeAddr(t)
	process(t, "standalone", RunWorker, map[string]string{
		"WXPUSH_HTTP_ADDR": apiAddr, "WXPUSH_ADMIN_ADDR": freeAddr(t),
	})
	api := "http://" + apiAddr
	waitHTTP(t, api+"/healthz")
	seed, err := os.ReadFile("../wechat/testdata/template-send-request.json")
	if err != nil {
		t.Fatal(err)
	}
	id := postMessage(t, api, string(seed))
	if m := waitFinal(t, api, id, 20*time.Second); m.State != "delivered" {
		t.Fatalf("seed message = %+v, want delivered", m)
	}
}

// TestEnqueuerNeedsRedisURL: the enqueuer refuses to start without Redis rather
// than silently running on something local.
func TestEnqueuerNeedsRedisURL(t *testing.T) {
	t.Parallel()
	err := RunEnqueuer(context.Background(), func(k string) string {
		return map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok123"}[k]
	}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "REDIS_URL") {
		t.Fatalf("RunEnqueuer without REDIS_URL = %v, want an error naming REDIS_URL", err)
	}
}
