package bench

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/tasks"
)

// floor is the least a system can spend on a single message measured the
// way wxpush is: bare asynq behind the three HTTP exchanges every such
// message makes, and nothing else. The producer POSTs the message to a front
// door that enqueues one asynq task; the task's handler POSTs it to the
// simulator; the simulator's result callback reaches a handler that checks
// its signature and counts it. Nothing is stored but asynq's task: no
// record, no msgid, no state. Its rate against bare asynq is the ceiling of
// the single-message ratio on this machine (the simulator, standing for
// WeChat, and the producers run on the same cores).
type floor struct {
	client    *asynq.Client
	api       string // the simulator
	token     string
	http      *http.Client
	delivered atomic.Int64
}

// accept is the front door: decode, enqueue, answer 202.
func (f *floor) accept(w http.ResponseWriter, r *http.Request) {
	var m struct {
		ToUser string `json:"touser"`
	}
	body, err := io.ReadAll(r.Body)
	if err == nil {
		err = json.Unmarshal(body, &m)
	}
	if err != nil || m.ToUser == "" {
		http.Error(w, `{"error":"bad body"}`, http.StatusBadRequest)
		return
	}
	if _, err := f.client.EnqueueContext(r.Context(), asynq.NewTask("send", body), asynq.Queue(tasks.QueueNormal)); err != nil {
		http.Error(w, `{"error":"enqueue"}`, http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	io.WriteString(w, `{"state":"queued"}`)
}

// send POSTs the task's message to the simulator.
func (f *floor) send(_ context.Context, t *asynq.Task) error {
	_, err := postTemplate(f.http, f.api, f.token, t.Payload())
	return err
}

// callback checks the signature, reads the status and counts the result.
func (f *floor) callback(w http.ResponseWriter, r *http.Request) {
	if !signedByWeChat(r) {
		http.Error(w, "bad signature", http.StatusForbidden)
		return
	}
	var ev struct {
		Status string `xml:"Status"`
	}
	if err := xml.NewDecoder(r.Body).Decode(&ev); err != nil || ev.Status == "" {
		http.Error(w, "bad xml", http.StatusBadRequest)
		return
	}
	f.delivered.Add(1)
	io.WriteString(w, "success")
}

// floorRun times n single messages through the floor, producers POSTing one
// at a time as they do to wxpush, until every result callback has come.
func floorRun(b *testing.B, producers, n int) cost {
	rdb := redistest.Start(b).Client(b)
	f := &floor{client: asynq.NewClientFromRedisClient(rdb), http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * concurrency}}}
	cb := httptest.NewServer(http.HandlerFunc(f.callback))
	defer cb.Close()
	sim := startSim(b, cb.URL+"/wechat")
	f.api, f.token = sim.url, sim.token
	front := httptest.NewServer(http.HandlerFunc(f.accept))
	defer front.Close()

	srv := asynqServer(rdb)
	mux := asynq.NewServeMux()
	mux.HandleFunc("send", f.send)
	if err := srv.Start(mux); err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: producers}}
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = []byte(body(fmt.Sprintf("oFloor%d_%06d", producers, i)))
	}
	cpu0, start := cpuTimes(b, rdb, nil), time.Now()
	runParallel(producers, n, func(i int) {
		post(b, client, front.URL+"/v1/messages", bodies[i], http.StatusAccepted)
	})
	if lost := sim.waitCallbacks(b, "floor", n, &f.delivered); lost > 0 {
		// Nothing here answers a callback but 200 or 403/400, so none is lost
		// unless the machine stalled past the simulator's timeout.
		b.Fatalf("floor: the simulator gave up on %d of %d callbacks", lost, n)
	}
	wall := time.Since(start)
	return cost{rate: float64(n) / wall.Seconds(), cpu: cpuTimes(b, rdb, nil).sub(cpu0), wall: wall}
}
