package tasks

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/hibiken/asynq"
)

// RetryPolicy spaces retries of failed attempts: exponential with full jitter.
// Retry n+1 waits a uniformly random time in [0, min(Cap, 2·Base·2^n)), so its
// mean is Base·2^n: about Base for the first retry, doubling after each failure,
// never more than Cap. Full jitter spreads a burst of failures (a WeChat outage)
// so the retries do not return in step.
type RetryPolicy struct {
	Base time.Duration
	Cap  time.Duration
}

// Delay returns the wait before retry n+1 after n earlier failures.
func (p RetryPolicy) Delay(n int) time.Duration {
	ceiling := 2 * p.Base
	for i := 0; i < n && ceiling < p.Cap; i++ {
		ceiling *= 2
	}
	if ceiling > p.Cap {
		ceiling = p.Cap
	}
	return rand.N(ceiling + 1)
}

// retryAfter is a failed attempt that must wait a set time (throttling, quota);
// it does not count as a failure. park: the wait is the app's park (daily quota,
// configuration error), which a resume ends early (Submitter.WakeApp).
type retryAfter struct {
	err   error
	delay time.Duration
	park  bool
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
