package bench

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/servicetest"
)

// roundTripFigures counts the requests wxpush's processes send Redis per
// delivered message, by command, from wxpush_redis_round_trips_total (a
// pipeline counts once): from a batch enqueue of n messages until all are
// delivered, with asynq's own polling and heartbeats.
func roundTripFigures(b *testing.B, tab *table) {
	const n = 2000
	// WeChat's result callback comes after the message reached the phone; the
	// simulator's default 50 ms stands in for that.
	c := servicetest.Start(b, servicetest.Options{Workers: 1, Env: env(nil)})
	before := roundTrips(b, c.Scrape)
	client := &http.Client{}
	for i := 0; i < n/1000; i++ {
		post(b, client, c.API+"/v1/messages/batch", batchBody(fmt.Sprintf("rt%d", i), 1000), http.StatusOK)
	}
	waitBacklog(b, c.Redis.Client(b), 0, 2*time.Minute)
	after := roundTrips(b, c.Scrape)
	st := callStats{by: map[string]int64{}}
	for cmd, v := range after {
		st.by[cmd] = v - before[cmd]
		st.total += v - before[cmd]
	}
	tab.row("Redis round trips per message", fmt.Sprintf("%.2f", float64(st.total)/n), "≤ 8, aim 5",
		fmt.Sprintf("wxpush_redis_round_trips_total of the enqueuer and worker, %d messages from batch enqueue to delivered: %s",
			n, st.top(8, n)))
}

// roundTrips sums wxpush_redis_round_trips_total by command over urls.
func roundTrips(b *testing.B, urls []string) map[string]int64 {
	out := map[string]int64{}
	const prefix = `wxpush_redis_round_trips_total{command="`
	for _, u := range urls {
		resp, err := http.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			rest, ok := strings.CutPrefix(sc.Text(), prefix)
			if !ok {
				continue
			}
			cmd, val, _ := strings.Cut(rest, `"} `)
			v, _ := strconv.ParseFloat(val, 64)
			out[cmd] += int64(v)
		}
		resp.Body.Close()
	}
	return out
}
