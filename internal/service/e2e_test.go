package service_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/service"
	"github.com/wxpush/wxpush/internal/servicetest"
)

// TestEndToEnd runs an enqueuer, two workers and the simulator against a real
// redis-server and follows messages to every callback-driven final state and to
// rejected, including a result callback that arrives before the worker stored
// the msgid.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Workers: 2,
		Rules: "block_*=user_block, sysfail_*=system_failed, nofollow_*=not_following, early_*=callback_first, busy_*=system_busy:2, *=success"})
	api, sim, redis, scrape := c.API, c.Sim, c.Redis, c.Scrape

	want := map[string]string{
		"ok_1": "delivered", "ok_2": "delivered", "block_1": "user_blocked", "sysfail_1": "wechat_failed",
		"nofollow_1": "rejected", "early_1": "delivered", "busy_1": "delivered",
	}
	ids := map[string]string{}
	for openID := range want {
		ids[openID] = servicetest.PostMessage(t, api, servicetest.MessageBody(openID))
	}
	for openID, state := range want {
		m := servicetest.WaitFinal(t, api, ids[openID], 20*time.Second)
		if m.State != state {
			t.Errorf("%s: state %s, want %s (%+v)", openID, m.State, state, m)
		}
		if p := sim.Pair(openID, ids[openID]); state != "rejected" && p.Accepted != 1 {
			t.Errorf("%s: simulator accepted (openid, client_msg_id) %d times, want once", openID, p.Accepted)
		}
	}
	if m := servicetest.GetMessage(t, api, ids["nofollow_1"]); m.LastError == nil || m.LastError.Code != 43004 {
		t.Errorf("rejected message last_error = %+v, want errcode 43004", m.LastError)
	}
	if m := servicetest.GetMessage(t, api, ids["busy_1"]); m.Attempts != 3 {
		t.Errorf("busy_1 attempts = %d, want 3 (two system-busy replies, then success)", m.Attempts)
	}
	st := sim.Stats()
	if len(st.Duplicates) != 0 {
		t.Errorf("simulator saw duplicate pushes: %v", st.Duplicates)
	}
	if st.TokenFetches[servicetest.AppID] != 1 {
		t.Errorf("token fetched %d times by two workers, want 1", st.TokenFetches[servicetest.AppID])
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
		// Six messages were accepted by WeChat, all settled by a callback.
		`wxpush_enqueue_to_sent_seconds_count{app="default"}`: 6,
	} {
		if got := servicetest.SumSeries(t, scrape, series); got != want {
			t.Errorf("%s summed over processes = %v, want %v", series, got, want)
		}
	}
	// early_1's result came before the send's reply. Applied from the inbox
	// after the worker stored the msgid, it is timed from the send like the
	// others; applied before, it was held and the worker settled it (untimed).
	held := servicetest.SumSeries(t, scrape, `wxpush_callbacks_total{app="default",event="TEMPLATESENDJOBFINISH",outcome="held"}`)
	if got, want := servicetest.SumSeries(t, scrape, `wxpush_sent_to_final_seconds_count{app="default"}`), 6-held; held > 1 || got != want {
		t.Errorf("sent_to_final_seconds_count summed over processes = %v with %v results held, want %v", got, held, want)
	}
}

// TestStandalone runs the worker with no REDIS_URL: embedded Redis, API and
// simulator in one process, and the seed's sample message reaches delivered.
func TestStandalone(t *testing.T) {
	t.Parallel()
	apiAddr := servicetest.FreeAddr(t)
	servicetest.Run(t, "standalone", service.RunWorker, map[string]string{
		"WXPUSH_HTTP_ADDR": apiAddr, "WXPUSH_ADMIN_ADDR": servicetest.FreeAddr(t),
	})
	api := "http://" + apiAddr
	servicetest.WaitHTTP(t, api+"/healthz")
	seed, err := os.ReadFile("../wechat/testdata/template-send-request.json")
	if err != nil {
		t.Fatal(err)
	}
	id := servicetest.PostMessage(t, api, string(seed))
	if m := servicetest.WaitFinal(t, api, id, 20*time.Second); m.State != "delivered" {
		t.Fatalf("seed message = %+v, want delivered", m)
	}
}

// TestEnqueuerNeedsRedisURL: the enqueuer refuses to start without Redis rather
// than silently running on something local.
func TestEnqueuerNeedsRedisURL(t *testing.T) {
	t.Parallel()
	err := service.RunEnqueuer(context.Background(), func(k string) string {
		return map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok123"}[k]
	}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "REDIS_URL") {
		t.Fatalf("service.RunEnqueuer without REDIS_URL = %v, want an error naming REDIS_URL", err)
	}
}

// TestEndToEndSafeMode: WeChat's safe mode, where every result callback arrives
// sealed (AES-256-CBC) and signed with msg_signature, settles messages as the
// plain mode does.
func TestEndToEndSafeMode(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Workers: 1, AESKey: "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
		Rules: "block_*=user_block, *=success"})
	ok := servicetest.PostMessage(t, c.API, servicetest.MessageBody("safe_ok"))
	blocked := servicetest.PostMessage(t, c.API, servicetest.MessageBody("block_safe"))
	if m := servicetest.WaitFinal(t, c.API, ok, 20*time.Second); m.State != "delivered" {
		t.Errorf("safe-mode message = %+v, want delivered", m)
	}
	if m := servicetest.WaitFinal(t, c.API, blocked, 20*time.Second); m.State != "user_blocked" {
		t.Errorf("safe-mode message = %+v, want user_blocked", m)
	}
	if got := servicetest.SumSeries(t, c.Scrape, `wxpush_callbacks_rejected_total{app="default",reason="bad_envelope"}`); got != 0 {
		t.Errorf("%v sealed callbacks were refused", got)
	}
}

// TestEndToEndSubscribe: subscribe messages travel the same pipeline (bizsend)
// and are settled by subscribe_msg_sent_event.
func TestEndToEndSubscribe(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Workers: 1, Rules: "block_*=user_block, refuse_*=user_refused, *=success"})
	body := func(openID string) string {
		return `{"kind":"subscribe","touser":"` + openID + `","template_id":"T1","page":"pages/order","data":{"thing1":{"value":"已发货"}}}`
	}
	want := map[string]string{"sub_ok": "delivered", "block_sub": "user_blocked", "refuse_sub": "rejected"}
	ids := map[string]string{}
	for openID := range want {
		ids[openID] = servicetest.PostMessage(t, c.API, body(openID))
	}
	for openID, state := range want {
		if m := servicetest.WaitFinal(t, c.API, ids[openID], 20*time.Second); m.State != state {
			t.Errorf("%s = %+v, want %s", openID, m, state)
		}
	}
	if n := c.Sim.SubscribeSends("sub_ok"); n != 1 {
		t.Errorf("subscribe sends to sub_ok = %d, want 1", n)
	}
	if st := c.Sim.Stats(); st.SendRequests != 0 {
		t.Errorf("a subscribe message went to the template API (%d sends)", st.SendRequests)
	}
}

// TestWorkerRefusesUnreachableRedis: a worker whose REDIS_URL names a Redis,
// Sentinel or Cluster that does not answer, or a form wxpush does not know,
// says so and returns an error: it never falls back to standalone mode (its
// admin address stays closed).
func TestWorkerRefusesUnreachableRedis(t *testing.T) {
	t.Parallel()
	closed := servicetest.FreeAddr(t) // nothing listens there
	tests := []struct{ name, url, want string }{
		{"redis", "redis://" + closed + "/0", closed},
		{"sentinel", "redis-sentinel://" + closed + "/mymaster", "sentinel"},
		{"cluster", "redis-cluster://" + closed, closed},
		{"unknown form", "memcached://" + closed, "scheme must be"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			admin := servicetest.FreeAddr(t)
			env := map[string]string{"REDIS_URL": tt.url, "WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s",
				"WECHAT_TOKEN": "tok123", "WXPUSH_ADMIN_ADDR": admin}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := service.RunWorker(ctx, func(k string) string { return env[k] }, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "REDIS_URL") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("worker with REDIS_URL=%s: %v; want an error naming REDIS_URL and %q", tt.url, err, tt.want)
			}
			if ctx.Err() != nil {
				t.Fatal("the worker took the whole timeout to give up")
			}
			if c, err := net.Dial("tcp", admin); err == nil {
				c.Close()
				t.Error("the worker opened its admin address: it ran something")
			}
		})
	}
}

// TestRefusesPreviousKeyLayout: a Redis that holds unfinished messages of the
// key layout before the shards makes the worker and the enqueuer refuse to
// start, saying what to do, rather than drop those messages' tasks.
func TestRefusesPreviousKeyLayout(t *testing.T) {
	t.Parallel()
	redis := redistest.Start(t)
	if err := redis.Client(t).HSet(context.Background(), "wxpush:backlog", "default", 3).Err(); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"REDIS_URL": redis.URL(), "WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s",
		"WECHAT_TOKEN": "tok123", "WXPUSH_ADMIN_ADDR": servicetest.FreeAddr(t), "WXPUSH_HTTP_ADDR": servicetest.FreeAddr(t)}
	for name, run := range map[string]func(context.Context, service.Env, io.Writer, io.Writer) error{
		"worker": service.RunWorker, "enqueuer": service.RunEnqueuer} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := run(ctx, func(k string) string { return env[k] }, io.Discard, io.Discard)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "wxpush:backlog") || !errors.Is(err, delivery.ErrLegacyMessages) {
			t.Errorf("%s on a Redis with the previous layout's messages: %v, want ErrLegacyMessages", name, err)
		}
	}
}
