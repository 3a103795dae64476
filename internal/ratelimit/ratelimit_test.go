package ratelimit

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/redistest"
)

func TestPerSecond(t *testing.T) {
	tests := []struct {
		name  string
		rate  float64
		burst int
		want  Limit
	}{
		{"integer", 20, 5, Limit{Max: 20, Window: time.Second, Burst: 5}},
		{"fraction", 0.5, 0, Limit{Max: 500, Window: 1000 * time.Second, Burst: 1}},
		{"off", 0, 3, Limit{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PerSecond(tt.rate, tt.burst); got != tt.want {
				t.Errorf("PerSecond(%v, %d) = %+v, want %+v", tt.rate, tt.burst, got, tt.want)
			}
		})
	}
}

// TestSharedBudget: three limiters (three processes) on one Redis share one
// bucket: with a burst of 5 and a long window, exactly 5 permits are handed out in
// all, and the rest are deferred, not dropped.
func TestSharedBudget(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lim := Limit{Max: 1, Window: time.Hour, Burst: 5}
	var granted, deferred atomic.Int64
	var wg sync.WaitGroup
	for p := 0; p < 3; p++ {
		l := New(srv.Client(t), 0)
		for i := 0; i < 10; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, _, err := l.Wait(context.Background(), "app:x", lim)
				if err != nil {
					t.Error(err)
					return
				}
				if d == 0 {
					granted.Add(1)
				} else {
					deferred.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	if granted.Load() != 5 || deferred.Load() != 25 {
		t.Errorf("granted %d, deferred %d; want 5 and 25", granted.Load(), deferred.Load())
	}
}

// TestWaitInPlace: a short wait happens inside Wait and ends with a permit.
func TestWaitInPlace(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	l := New(srv.Client(t), 5*time.Second)
	lim := Limit{Max: 20, Window: time.Second, Burst: 1} // one every 50 ms
	for i := 0; i < 3; i++ {
		d, _, err := l.Wait(context.Background(), "app:y", lim)
		if err != nil || d != 0 {
			t.Fatalf("Wait %d = defer %v, %v; want a permit after waiting in place", i, d, err)
		}
	}
	if d, _, _ := New(srv.Client(t), 5*time.Second).Wait(context.Background(), "app:y", Limit{}); d != 0 {
		t.Errorf("no limit deferred %v", d)
	}
}

// TestWindowNeverAboveLimitPlusBurst: three limiters (processes) take permits as
// fast as they can; in no 1-second window are more than limit + burst permits
// granted. Timestamps are taken at the grant, so they carry no send latency.
func TestWindowNeverAboveLimitPlusBurst(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	const rate, burst, perWorker = 40, 5, 25
	lim := PerSecond(rate, burst)
	var mu sync.Mutex
	var grants []time.Time
	var wg sync.WaitGroup
	for p := 0; p < 3; p++ {
		l := New(srv.Client(t), 10*time.Second)
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < perWorker; i++ {
					d, _, err := l.Wait(context.Background(), "app:w", lim)
					if err != nil || d != 0 {
						t.Errorf("Wait = %v, %v", d, err)
						return
					}
					mu.Lock()
					grants = append(grants, time.Now())
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	sort.Slice(grants, func(i, j int) bool { return grants[i].Before(grants[j]) })
	most := 0
	for i := range grants {
		j := i
		for j < len(grants) && grants[j].Sub(grants[i]) < time.Second {
			j++
		}
		most = max(most, j-i)
	}
	span := grants[len(grants)-1].Sub(grants[0])
	t.Logf("%d grants over %v (%.1f/s); busiest 1 s window %d", len(grants), span, float64(len(grants)-1)/span.Seconds(), most)
	if most > rate+burst {
		t.Errorf("a 1 s window held %d grants, more than limit+burst = %d", most, rate+burst)
	}
}
