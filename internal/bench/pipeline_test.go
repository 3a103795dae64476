package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/servicetest"
)

const (
	pipelineN   = 20000
	concurrency = 20
)

// bareAsynq is the ceiling: asynqRun with 8 producers, as wxpush's fanout
// enqueues its tasks one by one.
func bareAsynq(b *testing.B, endToEnd bool) float64 { return asynqRun(b, 8, pipelineN, endToEnd) }

// pipelineRun is one timed run of the full pipeline: its throughput, the CPU
// each process spent, the worker's peak RSS and Redis's command counts.
type pipelineRun struct {
	rate  float64
	cpu   cpuSplit
	rss   int64
	calls callStats
}

// runPipeline times the full pipeline (enqueue over HTTP → worker → simulator
// → sent → callback → final) over pipelineN messages, with the worker binary
// as its own process. With endToEnd the worker runs first and the clock covers
// the batch enqueue; without it the batches are accepted first and only the
// drain (fanout included) is timed, as sessions 1 and 2 measured.
func runPipeline(b *testing.B, endToEnd, profiled bool) pipelineRun {
	// The simulator's result callback follows its send by 50 ms (its default),
	// as WeChat's follows delivery to the phone; with no delay the callback
	// races the worker's own write of the msgid, which real traffic never does.
	c := servicetest.Start(b, servicetest.Options{Env: env(map[string]string{
		"WXPUSH_CONCURRENCY": fmt.Sprint(concurrency)})})
	rdb := c.Redis.Client(b)
	client := &http.Client{}
	enqueue := func() {
		for i := 0; i < pipelineN/1000; i++ {
			post(b, client, c.API+"/v1/messages/batch", batchBody(fmt.Sprintf("p%d", i), 1000), http.StatusOK)
		}
	}
	var worker *workerProc
	if endToEnd {
		worker = startWorkerBinary(b, c.Env(b))
	} else {
		enqueue()
	}
	rdb.ConfigResetStat(context.Background())
	if !endToEnd {
		worker = startWorkerBinary(b, c.Env(b))
	}
	cpu0 := cpuTimes(b, rdb, worker)
	stopProfiles := func() {}
	if profiled {
		stopProfiles = profile(b, worker)
	}
	start := time.Now()
	if endToEnd {
		enqueue()
	}
	waitBacklog(b, rdb, 0, 5*time.Minute)
	stopProfiles()
	r := pipelineRun{rate: pipelineN / time.Since(start).Seconds()}
	r.cpu = cpuTimes(b, rdb, worker).sub(cpu0)
	r.rss = worker.peakRSS(b)
	r.calls = commandCalls(b, rdb)
	worker.stop()
	return r
}

// pipelineFigures compares the full pipeline with bare asynq, end to end (the
// issue's figure) and, for comparison with earlier runs, drain only.
func pipelineFigures(b *testing.B, tab *table) {
	asynqRate := bareAsynq(b, true)
	pipe := runPipeline(b, true, true)
	asynqDrain := bareAsynq(b, false)
	pipeDrain := runPipeline(b, false, false)

	tab.row("bare asynq throughput", fmt.Sprintf("%.0f tasks/s", asynqRate), "–",
		fmt.Sprintf("%d no-op tasks, concurrency %d, enqueued by 8 producers while the server runs", pipelineN, concurrency))
	tab.row("pipeline throughput", fmt.Sprintf("%.0f msg/s", pipe.rate), "–",
		fmt.Sprintf("%d messages, batch enqueue over HTTP to delivered, 1 worker process, concurrency %d", pipelineN, concurrency))
	tab.row("CPU per message", pipe.cpu.per(pipelineN), "–",
		"CPU time during that run: redis-server, worker process, this process (enqueuer with the callback, simulator)")
	tab.row("worker peak RSS", fmt.Sprintf("%.1f MiB", float64(pipe.rss)/(1<<20)), "≤ 64 MiB", "VmHWM of the worker binary during that run")
	tab.row("Redis commands per message", fmt.Sprintf("%.2f", float64(pipe.calls.total)/pipelineN), "–",
		"commandstats delta during that run, incl. commands inside scripts: "+pipe.calls.top(6, pipelineN))
	tab.row("drain only: pipeline/asynq", fmt.Sprintf("%.2f (%.0f msg/s vs %.0f tasks/s)", pipeDrain.rate/asynqDrain, pipeDrain.rate, asynqDrain), "–",
		"enqueued first, only the drain timed (the fanout's enqueues inside it, asynq's outside): sessions 1–2's figure")
	ratio := pipe.rate / asynqRate
	b.ReportMetric(ratio, "pipeline/asynq")
	fmt.Printf("pipeline/asynq throughput ratio: %.2f\n", ratio)
}

// memoryFigures: Redis bytes per queued message and per retained final record.
func memoryFigures(b *testing.B, tab *table) {
	const n = 5000
	const hold = 2 * time.Second
	c := servicetest.Start(b, servicetest.Options{CallbackDelay: -1, Env: env(map[string]string{
		"WXPUSH_CALLBACK_HOLD": hold.String()})})
	rdb := c.Redis.Client(b)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	base := keyMemory(b, rdb)
	runParallel(8, n, func(i int) {
		post(b, client, c.API+"/v1/messages", []byte(body(fmt.Sprintf("oia2TjuEGTNoeX76QEjQN%07d", i))), http.StatusAccepted)
	})
	queued := float64(keyMemory(b, rdb)-base) / n
	c.AddWorker(b)
	waitBacklog(b, rdb, 0, 2*time.Minute)
	settled := float64(keyMemory(b, rdb)-base) / n
	// Once the callback hold has passed, the msgid indexes expire: what stays
	// for the retention is the record.
	keys := rdb.DBSize(context.Background()).Val()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if k := rdb.DBSize(context.Background()).Val(); keys-k >= n {
			break
		}
	}
	retained := float64(keyMemory(b, rdb)-base) / n
	tab.row("Redis bytes per queued message", fmt.Sprintf("%.0f B", queued), "≤ 1 KiB",
		fmt.Sprintf("key memory delta / %d (Σ MEMORY USAGE + key tables): record + asynq task", n))
	tab.row("Redis bytes per retained final record", fmt.Sprintf("%.0f B", retained), "≤ 512 B",
		"the delivered record, after the msgid index's callback hold (WXPUSH_CALLBACK_HOLD)")
	tab.row("… right after delivery", fmt.Sprintf("%.0f B", settled), "–", "record + msgid index, kept for the callback hold")
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

// keyMemory is the memory Redis holds for keys: the sum of MEMORY USAGE over
// every key (its name, value and table entry, as allocated), plus the main
// table's bucket array and the expiry table from MEMORY STATS. used_memory
// would also count each client connection's buffers, which grow with the
// worker's connection pool during the run and are not a per-message cost.
func keyMemory(b *testing.B, rdb *redis.Client) int64 {
	ctx := context.Background()
	var total, keys int64
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		n, err := rdb.MemoryUsage(ctx, iter.Val(), 0).Result()
		if err != nil && err != redis.Nil {
			b.Fatal(err)
		}
		total += n
		keys++
	}
	if err := iter.Err(); err != nil {
		b.Fatal(err)
	}
	st, err := rdb.Do(ctx, "MEMORY", "STATS").Result()
	if err != nil {
		b.Fatal(err)
	}
	if m, ok := st.(map[any]any); ok {
		if db, ok := m["db.0"].(map[any]any); ok {
			main, _ := db["overhead.hashtable.main"].(int64)
			expires, _ := db["overhead.hashtable.expires"].(int64)
			const dictEntry = 24 // counted by MEMORY USAGE already
			total += main - dictEntry*keys + expires
		}
	}
	return total
}

func waitBacklog(b *testing.B, rdb *redis.Client, want int64, within time.Duration) {
	deadline := time.Now().Add(within)
	for {
		n, err := delivery.NewStore(rdb, delivery.Config{}).Backlog(context.Background(), "default")
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
	cmd   *exec.Cmd
	admin string // base URL of its admin listener
	once  sync.Once
}

// workerBinary builds cmd/worker once per run, over the previous run's binary.
var workerBinary = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(os.TempDir(), "wxpush-bench-worker")
	build := exec.Command("go", "build", "-o", bin, "github.com/wxpush/wxpush/cmd/worker")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build worker: %v\n%s", err, out)
	}
	return bin, nil
})

// startWorkerBinary runs cmd/worker with env and waits for its /healthz.
func startWorkerBinary(b *testing.B, env map[string]string) *workerProc {
	bin, err := workerBinary()
	if err != nil {
		b.Fatal(err)
	}
	if os.Getenv("WXPUSH_BENCH_PROFILE") != "" {
		env["WXPUSH_PPROF"] = "true"
	}
	w := &workerProc{cmd: exec.Command(bin), admin: "http://" + env["WXPUSH_ADMIN_ADDR"]}
	cmd := w.cmd
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.stop)
	servicetest.WaitHTTP(b, w.admin+"/healthz")
	return w
}

// stop interrupts the worker and waits for it to exit; a second stop is a no-op.
func (w *workerProc) stop() {
	w.once.Do(func() {
		w.cmd.Process.Signal(os.Interrupt)
		w.cmd.Wait()
	})
}

// peakRSS reads VmHWM, the process's peak resident set.
func (w *workerProc) peakRSS(b *testing.B) int64 { return w.status(b, "VmHWM:") }

// rss reads VmRSS, the process's resident set now.
func (w *workerProc) rss(b *testing.B) int64 { return w.status(b, "VmRSS:") }

// status reads a size field of /proc/pid/status.
func (w *workerProc) status(b *testing.B, field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", w.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// cpuSplit is CPU time spent by each process of the pipeline.
type cpuSplit struct{ redis, worker, self time.Duration }

func (c cpuSplit) sub(d cpuSplit) cpuSplit {
	return cpuSplit{c.redis - d.redis, c.worker - d.worker, c.self - d.self}
}

func (c cpuSplit) plus(d cpuSplit) cpuSplit {
	return cpuSplit{c.redis + d.redis, c.worker + d.worker, c.self + d.self}
}

func (c cpuSplit) per(n int) string {
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	return fmt.Sprintf("redis %.0f µs, worker %.0f µs, enqueuer+sim %.0f µs", us(c.redis), us(c.worker), us(c.self))
}

// cpuTimes reads redis-server's used_cpu, the worker's (if any) and this
// process's user+system time from /proc.
func cpuTimes(b *testing.B, rdb *redis.Client, w *workerProc) cpuSplit {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var redisSec float64
	for _, l := range strings.Split(info, "\r\n") {
		for _, k := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(l, k); ok {
				f, _ := strconv.ParseFloat(v, 64)
				redisSec += f
			}
		}
	}
	c := cpuSplit{redis: time.Duration(redisSec * float64(time.Second)), self: procCPU(b, os.Getpid())}
	if w != nil {
		c.worker = procCPU(b, w.cmd.Process.Pid)
	}
	return c
}

// busy is the cores the processes kept busy over wall, on average (2 is all of
// this machine's).
func (c cpuSplit) busy(wall time.Duration) float64 {
	return float64(c.redis+c.worker+c.self) / float64(wall)
}

// procCPU is utime+stime of a process, from /proc/pid/stat (clock ticks of 10 ms).
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// profile, when WXPUSH_BENCH_PROFILE names a directory, writes CPU profiles of
// this process (enqueuer, simulator) and of the worker binary until stop is
// called: bench.pprof and worker.pprof, for go tool pprof.
func profile(b *testing.B, w *workerProc) (stop func()) {
	dir := os.Getenv("WXPUSH_BENCH_PROFILE")
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, "bench.pprof"))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		// The worker's profile covers a fixed window from the start of the run.
		resp, err := http.Get(w.admin + "/debug/pprof/profile?seconds=5")
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		out, err := os.Create(filepath.Join(dir, "worker.pprof"))
		if err == nil {
			_, err = io.Copy(out, resp.Body)
			out.Close()
		}
		done <- err
	}()
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		if err := <-done; err != nil {
			b.Errorf("worker profile: %v", err)
		}
	}
}

// manyAppsFigures: the worker's startup time and idle memory with 10 and with
// 10,000 apps in WXPUSH_CONFIG (medians of 3 starts each).
func manyAppsFigures(b *testing.B, tab *table) {
	redis := redistest.Start(b)
	measure := func(apps int) (start time.Duration, rss int64) {
		cfg := filepath.Join(b.TempDir(), "apps.yaml")
		var y strings.Builder
		y.WriteString("apps:\n")
		for i := 0; i < apps; i++ {
			fmt.Fprintf(&y, "  - {name: app%05d, appid: wx%016d, secret: secret%05d, token: token%05d}\n", i, i, i, i)
		}
		if err := os.WriteFile(cfg, []byte(y.String()), 0o600); err != nil {
			b.Fatal(err)
		}
		var starts, rsss []float64
		for range 3 {
			env := map[string]string{"REDIS_URL": redis.URL(), "WECHAT_API_BASE": "http://127.0.0.1:1",
				"WXPUSH_CONFIG": cfg, "WXPUSH_ADMIN_ADDR": servicetest.FreeAddr(b), "WXPUSH_LOG_LEVEL": "error"}
			t0 := time.Now()
			w := startWorkerBinary(b, env)
			starts = append(starts, float64(time.Since(t0)))
			time.Sleep(time.Second) // idle
			rsss = append(rsss, float64(w.rss(b)))
			w.stop()
		}
		return time.Duration(median(starts)), int64(median(rsss))
	}
	s10, m10 := measure(10)
	s10k, m10k := measure(10000)
	tab.row("worker start → /healthz, 10 / 10,000 apps", fmt.Sprintf("%d / %d ms", s10.Milliseconds(), s10k.Milliseconds()), "flat",
		"median of 3 starts of the worker binary, config file parsed and validated")
	tab.row("worker idle RSS, 10 / 10,000 apps", fmt.Sprintf("%.1f / %.1f MiB", float64(m10)/(1<<20), float64(m10k)/(1<<20)), "flat",
		"VmRSS one second after start; no per-app goroutine, timer or connection (TestManyAppsStayFlat)")
}
