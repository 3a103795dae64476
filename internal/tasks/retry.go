package tasks

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/hibiken/asynq"
)

// RetryPolicy spaces retries of failed attempts: exponential from Base, capped at
// Cap, with equal jitter (half the step fixed, half random) so that the first retry
// lands between Base/2 and Base and a burst of failures does not retry in step.
type RetryPolicy struct {
	Base time.Duration
	Cap  time.Duration
}

// Delay returns the wait before retry n+1 after n earlier failures.
func (p RetryPolicy) Delay(n int) time.Duration {
	step := p.Base
	for i := 0; i < n && step < p.Cap; i++ {
		step *= 2
	}
	if step > p.Cap {
		step = p.Cap
	}
	half := step / 2
	return half + rand.N(half+1)
}

// retryAfter is a failed attempt that must wait a set time (throttling, quota);
// it does not count as a failure.
type retryAfter struct {
	err   error
	delay time.Duration
}

func (e *retryAfter) Error() string { return e.err.Error() }
func (e *retryAfter) Unwrap() error { return e.err }

// RetryDelayFunc is asynq's RetryDelayFunc for wxpush tasks: a wait set by the
// handler wins, else the policy's backoff.
func (p RetryPolicy) RetryDelayFunc(n int, err error, _ *asynq.Task) time.Duration {
	var ra *retryAfter
	if errors.As(err, &ra) {
		return ra.delay
	}
	return p.Delay(n)
}

// IsFailure is asynq's IsFailure: throttling is not failure and spends no retry budget.
func IsFailure(err error) bool {
	var ra *retryAfter
	return !errors.As(err, &ra)
}

// shanghai is WeChat's quota clock; a fixed zone keeps the binary free of tzdata.
var shanghai = time.FixedZone("Asia/Shanghai", 8*3600)

// jitter returns a random duration in [0, d).
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// nextMinute returns the wait until just after the next minute boundary, plus
// jitter, which is when WeChat's per-minute limit (45011) lets sends through again.
func nextMinute(now time.Time) time.Duration {
	next := now.Truncate(time.Minute).Add(time.Minute)
	return next.Sub(now) + jitter(5*time.Second)
}

// nextQuotaReset returns the wait until 00:00 Asia/Shanghai, when the daily
// template quota (45009) resets, plus jitter.
func nextQuotaReset(now time.Time) time.Duration {
	t := now.In(shanghai)
	midnight := time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, shanghai)
	return midnight.Sub(now) + jitter(time.Minute)
}
