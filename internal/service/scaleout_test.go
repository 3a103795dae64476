package service_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/service"
	"github.com/wxpush/wxpush/internal/servicetest"
)

// TestTwoEnqueuersThreeWorkers: many processes on one Redis. Producers spread
// over two enqueuers, WeChat's callbacks land on either, three workers share the
// work, one rate limit and one access token.
func TestTwoEnqueuersThreeWorkers(t *testing.T) {
	t.Parallel()
	// The batches make 21 chunk tasks of up to 16 messages: with 4 tasks at
	// a time per worker, two workers cannot hold them all, so the third's
	// share does not depend on how soon it polls.
	c := servicetest.Start(t, servicetest.Options{Workers: 3, Env: map[string]string{
		"WECHAT_RATE_LIMIT": "200", "WECHAT_RATE_BURST": "20", "WXPUSH_CONCURRENCY": "4"}})
	// A second enqueuer on the same Redis.
	env := c.Env(t)
	second := servicetest.FreeAddr(t)
	env["WXPUSH_HTTP_ADDR"] = second
	servicetest.Run(t, "enqueuer 2", service.RunEnqueuer, env)
	servicetest.WaitHTTP(t, "http://"+second+"/healthz")

	// WeChat's callbacks alternate between the two enqueuers.
	targets := []*url.URL{mustURL(t, c.API), mustURL(t, "http://"+second)}
	var n atomic.Int64
	var perEnqueuer [2]atomic.Int64
	lb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1) % 2
		perEnqueuer[i].Add(1)
		httputil.NewSingleHostReverseProxy(targets[i]).ServeHTTP(w, r)
	}))
	t.Cleanup(lb.Close)
	if err := c.Sim.SetCallbackURL(servicetest.AppID, lb.URL+"/wechat/callback/default"); err != nil {
		t.Fatal(err)
	}

	const total = 300
	apis := []string{c.API, "http://" + second}
	var ids []string
	for i := 0; i < 3; i++ {
		bodies := make([]string, total/3)
		for j := range bodies {
			bodies[j] = servicetest.MessageBody(fmt.Sprintf("multi_%d_%d", i, j))
		}
		ids = append(ids, servicetest.PostBatch(t, apis[i%2], bodies)...)
	}
	for _, id := range ids {
		if m := servicetest.WaitFinal(t, apis[len(id)%2], id, 60*time.Second); m.State != "delivered" {
			t.Fatalf("%s = %+v, want delivered", id, m)
		}
	}
	st := c.Sim.Stats()
	if st.TokenFetches[servicetest.AppID] != 1 {
		t.Errorf("token fetched %d times by 3 workers and 2 enqueuers, want 1", st.TokenFetches[servicetest.AppID])
	}
	if len(st.Duplicates) != 0 {
		t.Errorf("duplicate pushes: %v", st.Duplicates)
	}
	if perEnqueuer[0].Load() == 0 || perEnqueuer[1].Load() == 0 {
		t.Errorf("callbacks per enqueuer = %d/%d, want both used", perEnqueuer[0].Load(), perEnqueuer[1].Load())
	}
	// Work is shared: every worker sent some.
	for i, u := range c.Scrape[1:] {
		if got := servicetest.SumSeries(t, []string{u}, `wxpush_send_attempts_total{app="default",result="ok"}`); got == 0 {
			t.Errorf("worker %d sent nothing", i)
		}
	}
	if got := servicetest.SumSeries(t, append(c.Scrape, "http://"+second+"/metrics"), `wxpush_messages_finished_total{app="default",state="delivered"}`); got != total {
		t.Errorf("delivered summed over all processes = %v, want %d", got, total)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
