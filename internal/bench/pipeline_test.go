package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/tasks"
)

const (
	pipelineN   = 20000
	concurrency = 20
)

// bareAsynq is the ceiling: the same Redis setup, the same concurrency, queues
// and polling, a no-op handler, tasks enqueued by the asynq client.
func bareAsynq(b *testing.B) float64 {
	rdb := redistest.Start(b).Client(b)
	client := asynq.NewClientFromRedisClient(rdb)
	payload := []byte(`{"id":"01JZZZZZZZZZZZZZZZZZZZZZZZ","app":"default","to":"oia2TjuEGTNoeX76QEjQNrcURxG8"}`)
	runParallel(8, pipelineN, func(int) {
		if _, err := client.Enqueue(asynq.NewTask("noop", payload), asynq.Queue(tasks.QueueNormal)); err != nil {
			b.Fatal(err)
		}
	})
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency: concurrency, Queues: tasks.QueueWeights, TaskCheckInterval: 100 * time.Millisecond,
		DelayedTaskCheckInterval: 200 * time.Millisecond, LogLevel: asynq.ErrorLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc("noop", func(context.Context, *asynq.Task) error { return nil })
	insp := asynq.NewInspectorFromRedisClient(rdb)
	start := time.Now()
	if err := srv.Start(mux); err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	for {
		info, err := insp.GetQueueInfo(tasks.QueueNormal)
		if err == nil && info.Pending == 0 && info.Active == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return pipelineN / time.Since(start).Seconds()
}

// pipelineFigures runs the full pipeline (enqueue over HTTP → worker →
// simulator → sent → callback → final) and compares it with bare asynq.
func pipelineFigures(b *testing.B, tab *table) {
	asynqRate := bareAsynq(b)

	c := servicetest.Start(b, servicetest.Options{CallbackDelay: -1, Env: env(map[string]string{
		"WXPUSH_CONCURRENCY": fmt.Sprint(concurrency)})})
	rdb := c.Redis.Client(b)
	client := &http.Client{}
	for i := 0; i < pipelineN/1000; i++ {
		post(b, client, c.API+"/v1/messages/batch", batchBody(fmt.Sprintf("p%d", i), 1000), http.StatusOK)
	}
	rdb.ConfigResetStat(context.Background())

	worker := startWorkerBinary(b, c)
	start := time.Now()
	waitBacklog(b, rdb, 0, 5*time.Minute)
	pipeRate := pipelineN / time.Since(start).Seconds()
	rss := worker.peakRSS(b)
	calls := commandCalls(b, rdb)

	tab.row("bare asynq throughput", fmt.Sprintf("%.0f tasks/s", asynqRate), "–",
		fmt.Sprintf("%d no-op tasks, concurrency %d", pipelineN, concurrency))
	tab.row("pipeline throughput", fmt.Sprintf("%.0f msg/s", pipeRate), "–",
		fmt.Sprintf("%d messages to delivered, 1 worker process, concurrency %d", pipelineN, concurrency))
	tab.row("worker peak RSS", fmt.Sprintf("%.1f MiB", float64(rss)/(1<<20)), "≤ 64 MiB", "VmHWM of the worker binary during that run")
	tab.row("Redis commands per message", fmt.Sprintf("%.2f", float64(calls.total)/pipelineN), "–",
		"commandstats delta while the worker ran, incl. commands inside scripts: "+calls.top(6, pipelineN))
	ratio := pipeRate / asynqRate
	b.ReportMetric(ratio, "pipeline/asynq")
	fmt.Printf("pipeline/asynq throughput ratio: %.2f\n", ratio)
}

// memoryFigures: Redis bytes per queued message and per retained final record.
func memoryFigures(b *testing.B, tab *table) {
	const n = 5000
	c := servicetest.Start(b, servicetest.Options{CallbackDelay: -1, Env: env(nil)})
	rdb := c.Redis.Client(b)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	base := usedMemory(b, rdb)
	runParallel(8, n, func(i int) {
		post(b, client, c.API+"/v1/messages", []byte(body(fmt.Sprintf("oia2TjuEGTNoeX76QEjQN%07d", i))), http.StatusAccepted)
	})
	queued := float64(usedMemory(b, rdb)-base) / n
	c.AddWorker(b)
	waitBacklog(b, rdb, 0, 2*time.Minute)
	final := float64(usedMemory(b, rdb)-base) / n
	tab.row("Redis bytes per queued message", fmt.Sprintf("%.0f B", queued), "≤ 1 KiB", fmt.Sprintf("used_memory delta / %d, record + asynq task", n))
	tab.row("Redis bytes per retained final record", fmt.Sprintf("%.0f B", final), "≤ 512 B", "after delivery: record + msgid index")
}

// latencyFigures: at light load (100 msg/s), enqueue→sent and enqueue→final.
func latencyFigures(b *testing.B, tab *table) {
	const rate, n = 100, 1000
	c := servicetest.Start(b, servicetest.Options{Workers: 1, CallbackDelay: -1, Env: env(nil)})
	client := &http.Client{}
	ids := make([]string, n)
	var mu sync.Mutex
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := servicetest.PostMessage(b, c.API, body(fmt.Sprintf("lat_%d", i)))
			mu.Lock()
			ids[i] = id
			mu.Unlock()
		}()
	}
	wg.Wait()
	var toSent, toFinal []float64
	for _, id := range ids {
		servicetest.WaitFinal(b, c.API, id, time.Minute)
		resp, err := client.Get(c.API + "/v1/messages/" + id)
		if err != nil {
			b.Fatal(err)
		}
		var m struct {
			C time.Time `json:"created_at"`
			S time.Time `json:"sent_at"`
			F time.Time `json:"finished_at"`
		}
		decodeJSON(b, resp, &m)
		toSent = append(toSent, m.S.Sub(m.C).Seconds()*1000)
		toFinal = append(toFinal, m.F.Sub(m.C).Seconds()*1000)
	}
	tab.row("enqueue→sent p50 / p99", fmt.Sprintf("%.0f / %.0f ms", pct(toSent, 50), pct(toSent, 99)), "≤ 10 / ≤ 50 ms",
		fmt.Sprintf("%d messages at %d/s, 1 worker, record timestamps (ms)", n, rate))
	tab.row("enqueue→final p50 / p99", fmt.Sprintf("%.0f / %.0f ms", pct(toFinal, 50), pct(toFinal, 99)), "–",
		"same messages, simulator callback without delay")
}

func pct(xs []float64, p int) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func usedMemory(b *testing.B, rdb *redis.Client) int64 {
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(l, "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no used_memory in INFO")
	return 0
}

func waitBacklog(b *testing.B, rdb *redis.Client, want int64, within time.Duration) {
	deadline := time.Now().Add(within)
	for {
		n, err := rdb.HGet(context.Background(), "wxpush:backlog", "default").Int64()
		if (err == redis.Nil || err == nil) && n == want {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("backlog still %d after %v", n, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type callStats struct {
	total int64
	by    map[string]int64
}

func (c callStats) top(k int, n int) string {
	type kv struct {
		cmd   string
		calls int64
	}
	var all []kv
	for cmd, v := range c.by {
		all = append(all, kv{cmd, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].calls > all[j].calls })
	var parts []string
	for i := 0; i < len(all) && i < k; i++ {
		parts = append(parts, fmt.Sprintf("%s %.2f", all[i].cmd, float64(all[i].calls)/float64(n)))
	}
	return strings.Join(parts, ", ")
}

func commandCalls(b *testing.B, rdb *redis.Client) callStats {
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	st := callStats{by: map[string]int64{}}
	for _, l := range strings.Split(info, "\r\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(l, "cmdstat_"), ":calls=")
		if !ok || strings.HasPrefix(name, "info") || strings.HasPrefix(name, "config") {
			continue
		}
		v, _, _ := strings.Cut(rest, ",")
		n, _ := strconv.ParseInt(v, 10, 64)
		st.by[name] += n
		st.total += n
	}
	return st
}

// workerProc is the worker binary run as its own process.
type workerProc struct {
	cmd *exec.Cmd
}

// startWorkerBinary builds cmd/worker and runs it against the cluster.
func startWorkerBinary(b *testing.B, c *servicetest.Cluster) *workerProc {
	bin := filepath.Join(b.TempDir(), "worker")
	build := exec.Command("go", "build", "-o", bin, "github.com/wxpush/wxpush/cmd/worker")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build worker: %v\n%s", err, out)
	}
	env := c.Env(b)
	cmd := exec.Command(bin)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	servicetest.WaitHTTP(b, "http://"+env["WXPUSH_ADMIN_ADDR"]+"/healthz")
	return &workerProc{cmd: cmd}
}

// peakRSS reads VmHWM, the process's peak resident set.
func (w *workerProc) peakRSS(b *testing.B) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", w.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
