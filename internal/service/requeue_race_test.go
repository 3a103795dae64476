package service_test

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/servicetest"
)

// TestConcurrentRetryOfDeadMessages: ten simultaneous retries of each of 40
// dead messages. Exactly one retry per message is accepted (202), the others
// get 409, and every message is then delivered exactly once — none is left
// queued without its asynq task (a loser must never touch the winner's task).
func TestConcurrentRetryOfDeadMessages(t *testing.T) {
	t.Parallel()
	const n, callers = 40, 10
	c := servicetest.Start(t, servicetest.Options{Workers: 1, Rules: fmt.Sprintf("rq_*=system_busy:%d, *=success", 2*n), // two failed attempts each
		Env: map[string]string{"WXPUSH_MAX_ATTEMPTS": "2", "WXPUSH_RETRY_BASE": "10ms", "WXPUSH_RETRY_CAP": "20ms"}})
	bodies := make([]string, n)
	for i := range bodies {
		bodies[i] = servicetest.MessageBody(fmt.Sprintf("rq_%d", i))
	}
	ids := servicetest.PostBatch(t, c.API, bodies)
	for _, id := range ids {
		if m := servicetest.WaitFinal(t, c.API, id, 60*time.Second); m.State != "dead" {
			t.Fatalf("message %s = %+v, want dead", id, m)
		}
	}

	codes := make([][callers]int, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, id := range ids {
		for k := 0; k < callers; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				codes[i][k], _ = servicetest.Do(t, http.MethodPost, c.API+"/v1/messages/"+id+"/retry", "")
			}()
		}
	}
	close(start)
	wg.Wait()

	// Wait until every message is final again, or the deadline: a stranded
	// message stays queued for ever.
	deadline := time.Now().Add(60 * time.Second)
	final := map[string]servicetest.Message{}
	for len(final) < n && time.Now().Before(deadline) {
		for _, id := range ids {
			if _, ok := final[id]; ok {
				continue
			}
			if m := servicetest.GetMessage(t, c.API, id); isFinal(m.State) {
				final[id] = m
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	insp := asynq.NewInspectorFromRedisClient(c.Redis.Client(t))
	stranded := 0
	for i, id := range ids {
		accepted := 0
		for _, code := range codes[i] {
			switch code {
			case http.StatusAccepted:
				accepted++
			case http.StatusConflict:
			default:
				t.Errorf("%s: a retry answered %d, want 202 or 409", id, code)
			}
		}
		if accepted != 1 {
			t.Errorf("%s: %d of %d retries accepted, want exactly 1", id, accepted, callers)
		}
		m, ok := final[id]
		if !ok {
			m = servicetest.GetMessage(t, c.API, id)
			_, err := insp.GetTaskInfo("normal", id)
			if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
				stranded++
			}
			t.Errorf("%s is still %s after the retries (task lookup: %v)", id, m.State, err)
			continue
		}
		if m.State != "delivered" {
			t.Errorf("%s ended %s, want delivered", id, m.State)
		}
		if p := c.Sim.Pair(fmt.Sprintf("rq_%d", i), id); p.Accepted != 1 {
			t.Errorf("%s: WeChat accepted it %d times, want exactly once", id, p.Accepted)
		}
	}
	t.Logf("%d of %d messages stranded (queued without a task) after %d concurrent retries each", stranded, n, callers)
}

func isFinal(state string) bool {
	switch state {
	case "delivered", "user_blocked", "wechat_failed", "rejected", "dead", "expired", "canceled", "unconfirmed":
		return true
	}
	return false
}
