package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/wxpush/wxpush/internal/servicetest"
)

// quiet keeps per-message logging out of the measurement.
var quiet = map[string]string{"WXPUSH_LOG_LEVEL": "error"}

func env(extra map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range quiet {
		out[k] = v
	}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// table collects the printed figures.
type table struct {
	w *tabwriter.Writer
}

func newTable() *table {
	t := &table{w: tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)}
	fmt.Fprintln(t.w, "figure\tvalue\tgoal\thow")
	return t
}

func (t *table) row(figure, value, goal, how string) {
	fmt.Fprintf(t.w, "%s\t%s\t%s\t%s\n", figure, value, goal, how)
}

func (t *table) flush() { t.w.Flush() }

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func body(openID string) string {
	return fmt.Sprintf(`{"touser":%q,"template_id":"T1","data":{"thing1":{"value":"order shipped"}}}`, openID)
}

func batchBody(prefix string, n int) []byte {
	items := make([]string, n)
	for i := range items {
		items[i] = body(fmt.Sprintf("%s_%d", prefix, i))
	}
	return []byte(`{"messages":[` + strings.Join(items, ",") + `]}`)
}

func decodeJSON(b *testing.B, resp *http.Response, v any) {
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		b.Fatal(err)
	}
}

func post(b *testing.B, c *http.Client, url string, payload []byte, want int) {
	resp, err := c.Post(url, "application/json", bytes.NewReader(payload))
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		b.Fatalf("POST %s = %d, want %d", url, resp.StatusCode, want)
	}
}

// runParallel runs n jobs on k goroutines and returns the elapsed time.
func runParallel(k, n int, job func(i int)) time.Duration {
	var wg sync.WaitGroup
	next := make(chan int)
	start := time.Now()
	for g := 0; g < k; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				job(i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return time.Since(start)
}

// BenchmarkFigures prints wxpush's figures; run it with make bench.
func BenchmarkFigures(b *testing.B) {
	tab := newTable()
	defer tab.flush()
	parts := []struct {
		name string
		run  func(*testing.B, *table)
	}{
		{"pipeline", pipelineFigures},
		{"single", singleFigures},
		{"callbacks", callbackFigures},
		{"latency", latencyFigures},
		{"enqueue", enqueueFigures},
		{"ratelimit", rateLimitFigures},
		{"memory", memoryFigures},
		{"roundtrips", roundTripFigures},
		{"manyapps", manyAppsFigures},
	}
	// WXPUSH_BENCH_ONLY=pipeline,memory runs only the parts named (for profiling).
	only := os.Getenv("WXPUSH_BENCH_ONLY")
	for _, p := range parts {
		if only == "" || slices.Contains(strings.Split(only, ","), p.name) {
			p.run(b, tab)
		}
	}
}

// enqueueFigures: batch and single-message enqueue over HTTP, API only (no
// workers), three rounds each, medians.
func enqueueFigures(b *testing.B, tab *table) {
	c := servicetest.Start(b, servicetest.Options{Env: env(nil)})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	const batches, perBatch, clients = 20, 1000, 4
	payloads := make([][]byte, batches)
	for i := range payloads {
		payloads[i] = batchBody(fmt.Sprintf("b%d", i), perBatch)
	}
	var batchRates []float64
	for round := 0; round < 3; round++ {
		d := runParallel(clients, batches, func(i int) {
			post(b, client, c.API+"/v1/messages/batch", payloads[i], http.StatusOK)
		})
		batchRates = append(batchRates, float64(batches*perBatch)/d.Seconds())
	}
	tab.row("batch enqueue over HTTP", fmt.Sprintf("%.0f msg/s", median(batchRates)), "≥ 20,000 msg/s",
		fmt.Sprintf("median of 3 rounds: %d batches × %d, %d clients", batches, perBatch, clients))

	const singles, singleClients = 4000, 16
	one := []byte(body("single"))
	var singleRates []float64
	for round := 0; round < 3; round++ {
		d := runParallel(singleClients, singles, func(int) {
			post(b, client, c.API+"/v1/messages", one, http.StatusAccepted)
		})
		singleRates = append(singleRates, float64(singles)/d.Seconds())
	}
	tab.row("single enqueue over HTTP", fmt.Sprintf("%.0f req/s", median(singleRates)), "–",
		fmt.Sprintf("median of 3 rounds: %d requests, %d clients", singles, singleClients))
	b.ReportMetric(median(batchRates), "batch-msg/s")
	b.ReportMetric(median(singleRates), "single-req/s")
}

// rateLimitFigures: three worker processes share one per-app limit; the rate the
// simulator sees, against the limit, and the busiest 1-second window.
func rateLimitFigures(b *testing.B, tab *table) {
	const limit, burst, n = 100, 10, 1500
	c := servicetest.Start(b, servicetest.Options{Env: env(map[string]string{
		"WECHAT_RATE_LIMIT": fmt.Sprint(limit), "WECHAT_RATE_BURST": fmt.Sprint(burst),
	})})
	// Three worker processes (the worker binary) share the limit through Redis.
	for range 3 {
		startWorkerBinary(b, c.Env(b))
	}
	client := &http.Client{}
	for i := 0; i < n/1000+1; i++ {
		size := min(1000, n-i*1000)
		if size > 0 {
			post(b, client, c.API+"/v1/messages/batch", batchBody(fmt.Sprintf("rl%d", i), size), http.StatusOK)
		}
	}
	deadline := time.Now().Add(3 * time.Minute)
	for len(c.SendTimes()) < n {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d sent", len(c.SendTimes()), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sends := c.SendTimes()
	sort.Slice(sends, func(i, j int) bool { return sends[i].Before(sends[j]) })
	// Steady state: skip the initial burst, measure the rest.
	steady := sends[burst:]
	rate := float64(len(steady)-1) / steady[len(steady)-1].Sub(steady[0]).Seconds()
	most := 0
	for i := range sends {
		j := i
		for j < len(sends) && sends[j].Sub(sends[i]) < time.Second {
			j++
		}
		most = max(most, j-i)
	}
	tab.row("rate limit achieved/limit", fmt.Sprintf("%.3f", rate/limit), "0.95–1.01",
		fmt.Sprintf("3 worker processes, limit %d/s burst %d, %d messages, at the simulator", limit, burst, n))
	tab.row("rate limit busiest 1 s window", fmt.Sprintf("%d", most), fmt.Sprintf("≤ %d (limit+burst)", limit+burst),
		"sliding window over simulator arrival times")
	b.ReportMetric(rate/limit, "ratelimit-ratio")
}
