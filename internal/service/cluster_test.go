package service

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

// clusterOpts shapes a test deployment.
type clusterOpts struct {
	workers  int
	rules    string // wechatsim.ParseRules spec; "" = all succeed
	latency  time.Duration
	env      map[string]string // extra environment for every process
	redisOpt []redistest.Option
}

// cluster is a running deployment: a real redis-server, the simulator, one
// enqueuer and some workers, each a RunEnqueuer/RunWorker call in this process.
type cluster struct {
	redis   *redistest.Server
	sim     *wechatsim.Server
	api     string   // enqueuer base URL
	scrape  []string // every process's /metrics
	sendsMu sync.Mutex
	sends   []time.Time // when the simulator received each template send
}

func startCluster(t *testing.T, o clusterOpts) *cluster {
	t.Helper()
	c := &cluster{redis: redistest.Start(t, o.redisOpt...)}
	apiAddr := freeAddr(t)
	c.api = "http://" + apiAddr
	cfg := wechatsim.Config{
		Apps:          []wechatsim.App{{AppID: e2eAppID, Secret: e2eSecret, Token: e2eToken, CallbackURL: c.api + "/wechat/callback/default"}},
		CallbackDelay: 50 * time.Millisecond,
		Latency:       o.latency,
	}
	if o.rules != "" {
		rules, err := wechatsim.ParseRules(o.rules)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Rules = rules
	}
	sim, err := wechatsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.sim = sim
	simSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cgi-bin/message/template/send" {
			c.sendsMu.Lock()
			c.sends = append(c.sends, time.Now())
			c.sendsMu.Unlock()
		}
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { simSrv.Close(); sim.Close() })

	env := map[string]string{
		"REDIS_URL": c.redis.URL(), "WECHAT_API_BASE": simSrv.URL,
		"WECHAT_APP_ID": e2eAppID, "WECHAT_APP_SECRET": e2eSecret, "WECHAT_TOKEN": e2eToken,
		"WXPUSH_HTTP_ADDR": apiAddr, "WXPUSH_RETRY_BASE": "100ms", "WXPUSH_SHUTDOWN_TIMEOUT": "5s",
	}
	for k, v := range o.env {
		env[k] = v
	}
	process(t, "enqueuer", RunEnqueuer, env)
	c.scrape = append(c.scrape, c.api+"/metrics")
	for i := 0; i < o.workers; i++ {
		wenv := map[string]string{"WXPUSH_ADMIN_ADDR": freeAddr(t)}
		for k, v := range env {
			if k != "WXPUSH_ADMIN_ADDR" {
				wenv[k] = v
			}
		}
		process(t, fmt.Sprintf("worker %d", i), RunWorker, wenv)
		waitHTTP(t, "http://"+wenv["WXPUSH_ADMIN_ADDR"]+"/healthz")
		c.scrape = append(c.scrape, "http://"+wenv["WXPUSH_ADMIN_ADDR"]+"/metrics")
	}
	waitHTTP(t, c.api+"/healthz")
	return c
}

// sendTimes returns when the simulator received each send.
func (c *cluster) sendTimes() []time.Time {
	c.sendsMu.Lock()
	defer c.sendsMu.Unlock()
	return append([]time.Time(nil), c.sends...)
}

// queueSize is pending + scheduled + retry tasks of an asynq queue.
func (c *cluster) queueSize(t *testing.T, queue string) int {
	t.Helper()
	info, err := asynq.NewInspectorFromRedisClient(c.redis.Client(t)).GetQueueInfo(queue)
	if err != nil {
		return 0
	}
	return info.Pending + info.Scheduled + info.Retry
}

// retrying is the number of tasks in an asynq queue's retry set.
func (c *cluster) retrying(t *testing.T, queue string) int {
	t.Helper()
	info, err := asynq.NewInspectorFromRedisClient(c.redis.Client(t)).GetQueueInfo(queue)
	if err != nil {
		return 0
	}
	return info.Retry
}
