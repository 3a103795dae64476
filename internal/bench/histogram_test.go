package bench

import (
	"bufio"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// histogram is one Prometheus histogram without labels, as scraped: its
// cumulative bucket counts by upper bound, +Inf last.
type histogram struct {
	bounds []float64
	counts []float64
}

// scrapeHistogram reads histogram name from a /metrics page.
func scrapeHistogram(b *testing.B, url, name string) histogram {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	type bucket struct{ le, n float64 }
	var bs []bucket
	prefix := name + `_bucket{le="`
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		le, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		bound, err1 := strconv.ParseFloat(le, 64) // "+Inf" parses as +Inf
		n, err2 := strconv.ParseFloat(val, 64)
		if err1 != nil || err2 != nil {
			b.Fatalf("%s: bad bucket line %q", url, sc.Text())
		}
		bs = append(bs, bucket{bound, n})
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	if len(bs) == 0 {
		b.Fatalf("%s: no histogram %s", url, name)
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	var h histogram
	for _, x := range bs {
		h.bounds = append(h.bounds, x.le)
		h.counts = append(h.counts, x.n)
	}
	return h
}

// count is how many observations the histogram holds.
func (h histogram) count() float64 {
	if len(h.counts) == 0 {
		return 0
	}
	return h.counts[len(h.counts)-1]
}

// add sums two histograms with the same buckets, as sum by (le) does; the
// zero histogram adds nothing.
func (h histogram) add(o histogram) histogram {
	if len(h.bounds) == 0 {
		return histogram{bounds: append([]float64(nil), o.bounds...), counts: append([]float64(nil), o.counts...)}
	}
	out := histogram{bounds: h.bounds, counts: append([]float64(nil), h.counts...)}
	for i := range out.counts {
		out.counts[i] += o.counts[i]
	}
	return out
}

// quantile estimates the q-quantile as Prometheus's histogram_quantile
// does: linear interpolation inside the bucket that holds the rank, from 0
// for the first bucket; a rank in the +Inf bucket gives the highest finite
// bound. NaN when the histogram is empty.
func (h histogram) quantile(q float64) float64 {
	total := h.count()
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	i := sort.Search(len(h.counts), func(i int) bool { return h.counts[i] >= rank })
	if math.IsInf(h.bounds[i], 1) {
		if i == 0 {
			return math.NaN()
		}
		return h.bounds[i-1]
	}
	lower, below := 0.0, 0.0
	if i > 0 {
		lower, below = h.bounds[i-1], h.counts[i-1]
	}
	inBucket := h.counts[i] - below
	if inBucket == 0 {
		return h.bounds[i]
	}
	return lower + (h.bounds[i]-lower)*(rank-below)/inBucket
}

// ms formats seconds as milliseconds, or "–" for NaN (no observations).
func ms(s float64) string {
	switch {
	case math.IsNaN(s):
		return "–"
	case s < 0.01:
		return fmt.Sprintf("%.1f ms", s*1000)
	}
	return fmt.Sprintf("%.0f ms", s*1000)
}

// TestHistogramQuantile checks quantile against values histogram_quantile
// gives for the same buckets.
func TestHistogramQuantile(t *testing.T) {
	inf := math.Inf(1)
	h := histogram{bounds: []float64{0.01, 0.1, 1, inf}, counts: []float64{50, 90, 100, 100}}
	tests := []struct {
		name string
		h    histogram
		q    float64
		want float64
	}{
		{"first bucket interpolates from 0", h, 0.25, 0.005},
		{"bucket boundary", h, 0.5, 0.01},
		{"middle bucket", h, 0.7, 0.01 + 0.09*20/40},
		{"last finite bucket", h, 0.99, 0.1 + 0.9*9/10},
		{"rank in +Inf gives the highest finite bound", histogram{bounds: []float64{0.01, inf}, counts: []float64{1, 10}}, 0.99, 0.01},
		{"sum by le", h.add(h), 0.7, 0.01 + 0.09*20/40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.h.quantile(tt.q); math.Abs(got-tt.want) > 1e-12 {
				t.Errorf("quantile(%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
	if got := (histogram{}).quantile(0.5); !math.IsNaN(got) {
		t.Errorf("empty histogram: quantile = %v, want NaN", got)
	}
}
