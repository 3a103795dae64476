package service_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/servicetest"
)

// TestPipelineOnRedisCluster: with REDIS_URL=redis-cluster://, an enqueuer and
// two workers run the whole pipeline on a 3-master Redis Cluster: single and
// batch enqueue, the shared token and rate limit, sends, callbacks, cancel,
// status queries and the cluster-wide gauges read at scrape time.
func TestPipelineOnRedisCluster(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartCluster(t, 3)
	c := servicetest.Start(t, servicetest.Options{Workers: 2, Env: map[string]string{
		"REDIS_URL":         "redis-cluster://" + strings.Join(cluster.Addrs()[:2], ","),
		"WECHAT_RATE_LIMIT": "500", "WECHAT_RATE_BURST": "50"}})

	// A message scheduled an hour out, canceled before it is due.
	code, body := servicetest.Do(t, http.MethodPost, c.API+"/v1/messages",
		`{"touser":"oCluster_later","template_id":"T1","data":{"thing1":{"value":"x"}},"send_at":"`+
			time.Now().Add(time.Hour).UTC().Format(time.RFC3339)+`"}`)
	if code != http.StatusAccepted {
		t.Fatalf("scheduled message = %d %s", code, body)
	}
	later := body[strings.Index(body, `"id":"`)+6:][:26]
	if code, body := servicetest.Do(t, http.MethodDelete, c.API+"/v1/messages/"+later, ""); code != http.StatusOK {
		t.Fatalf("cancel = %d %s", code, body)
	}

	ids := []string{servicetest.PostMessage(t, c.API, servicetest.MessageBody("oCluster_single"))}
	bodies := make([]string, 200)
	for i := range bodies {
		bodies[i] = servicetest.MessageBody(fmt.Sprintf("oCluster_%03d", i))
	}
	ids = append(ids, servicetest.PostBatch(t, c.API, bodies)...)
	for _, id := range ids {
		if m := servicetest.WaitFinal(t, c.API, id, 60*time.Second); m.State != "delivered" {
			t.Fatalf("%s = %+v, want delivered", id, m)
		}
	}
	if m := servicetest.GetMessage(t, c.API, later); m.State != "canceled" {
		t.Errorf("canceled message = %s", m.State)
	}
	st := c.Sim.Stats()
	if st.TokenFetches[servicetest.AppID] != 1 {
		t.Errorf("token fetches = %v, want one for the cluster", st.TokenFetches)
	}
	if got := servicetest.SumSeries(t, c.Scrape, `wxpush_messages_finished_total{app="default",state="delivered"}`); got != float64(len(ids)) {
		t.Errorf("delivered counter = %v, want %d", got, len(ids))
	}
	// The gauges read from Redis see the cluster (an empty backlog, Redis up).
	if got := servicetest.SumSeries(t, c.Scrape[:1], `wxpush_cluster_state_up`); got != 1 {
		t.Errorf("wxpush_cluster_state_up = %v, want 1", got)
	}
}
