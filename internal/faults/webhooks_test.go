//go:build linux

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

// hookEvent is what the receiver process printed: a verified webhook body.
type hookEvent struct {
	EventID string `json:"event_id"`
	ID      string `json:"id"`
	State   string `json:"state"`
	Seq     int64  `json:"seq"`
}

// receiverSet is the webhook receiver process of a test, across restarts on
// one address: 'wxpush webhooks listen', which verifies every signature.
type receiverSet struct {
	c      *cluster
	addr   string
	secret string
	procs  []*proc
}

func (r *receiverSet) start() *proc {
	r.c.t.Helper()
	bin := filepath.Join(build.dir, "wxpush")
	p := r.c.launch(fmt.Sprintf("receiver#%d", len(r.procs)+1), bin, map[string]string{"HOOK_SECRET": r.secret},
		"webhooks", "listen", "-addr", r.addr, "-secret-env", "HOOK_SECRET")
	waitUntil(r.c.t, 10*time.Second, "the receiver to listen", func() bool {
		return strings.Contains(p.logs.String(), "listening on") || p.exited()
	})
	if p.exited() {
		r.c.t.Fatalf("receiver exited: %v\n%s", p.err, p.tail(10))
	}
	r.procs = append(r.procs, p)
	return p
}

// events are every verified webhook the receivers printed, in arrival order.
func (r *receiverSet) events() []hookEvent {
	var out []hookEvent
	for _, p := range r.procs {
		for _, line := range strings.Split(p.logs.String(), "\n") {
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var ev hookEvent
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				r.c.t.Errorf("receiver printed %q: %v", line, err)
				continue
			}
			out = append(out, ev)
		}
	}
	return out
}

func mustRules(t *testing.T, spec string) []wechatsim.Rule {
	t.Helper()
	rules, err := wechatsim.ParseRules(spec)
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

func (r *receiverSet) refused() []string {
	var out []string
	for _, p := range r.procs {
		out = append(out, p.grep(5, "refused a webhook")...)
	}
	return out
}

// Case 9: status webhooks through a receiver outage and kills. Every
// message's sent and final-state webhooks (delivered, user_blocked,
// wechat_failed, rejected, unconfirmed) reach a real receiver process,
// signed, although the receiver is SIGKILLed and stays down 30 s while a
// worker and the enqueuer are SIGKILLed and Redis (AOF) is SIGKILLed and
// restarted. Duplicates are allowed and
// carry the event id of the first copy; one message's events are first
// received in sequence order.
func TestWebhooksThroughKills(t *testing.T) {
	requireFaults(t)
	const total = 200
	secret := "faults-webhook-secret-0123456789"
	hookAddr := servicetest.FreeAddr(t)
	c := startCluster(t, options{workers: 2, env: map[string]string{
		"WXPUSH_STATUS_URL": "http://" + hookAddr + "/hook", "WXPUSH_WEBHOOK_SECRET": secret,
		"WXPUSH_WEBHOOK_ALLOW_PRIVATE": "true",
		"WXPUSH_WEBHOOK_RETRY_BASE":    "100ms", "WXPUSH_WEBHOOK_RETRY_CAP": "2s",
		// Callbacks pushed while the enqueuer is down are lost (WeChat's own
		// retries run out too); those messages end unconfirmed, and that
		// final state must arrive as a webhook like any other.
		"WXPUSH_CONFIRM_TIMEOUT": "10s",
	}})
	if err := c.front.sim.SetRules(mustRules(t, "hook_00000*=user_block,hook_00001*=system_failed,hook_00002*=not_following,*=success")); err != nil {
		t.Fatal(err)
	}
	rcv := &receiverSet{c: c, addr: hookAddr, secret: secret}
	first := rcv.start()
	p := newProducer(c)
	p.connErrorsOK = true
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	if err := p.submitBatch(ctx, itemNames("hook", 0, total/2), "hook-batch-0"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "the first webhooks", func() bool { return len(rcv.events()) >= 20 })
	first.kill()
	downAt := time.Now()

	if err := p.submitBatch(ctx, itemNames("hook", total/2, total/2), "hook-batch-1"); err != nil {
		t.Fatal(err)
	}
	c.waitSends(total/2+20, 30*time.Second)
	w := c.liveWorkers()[0]
	w.kill()
	workerKilled := time.Now()
	c.dropWorker(w)
	c.startWorker()
	c.enqueuer().kill()
	c.startEnqueuer()
	c.redis.Kill(t)
	redisDown := time.Now()
	time.Sleep(2 * time.Second) // the outage's length
	c.redis.Restart(t)
	redisDownFor := time.Since(redisDown)

	// The receiver stays down 30 s: a fault's length, not a wait for something.
	time.Sleep(time.Until(downAt.Add(30 * time.Second)))
	rcv.start()
	upAt := time.Now()

	ids, _ := p.ackedIDs()
	if len(ids) != total {
		t.Fatalf("the API acknowledged %d of %d", len(ids), total)
	}
	rec := &leaseRecovery{c: c, fault: workerKilled}
	views := c.waitFinal(ids, 120*time.Second, rec.tick)

	want := map[string]map[int64]string{} // message → seq → state
	states := map[string]int{}
	for id, v := range views {
		states[v.State]++
		want[id] = map[int64]string{1: "sent", 2: v.State}
		if v.State == "rejected" { // never sent: its one event
			want[id] = map[int64]string{1: "rejected"}
		}
	}
	for _, st := range []string{"delivered", "user_blocked", "wechat_failed", "rejected"} {
		if states[st] == 0 {
			t.Errorf("no message ended %s (%v): the rules did not apply", st, states)
		}
	}
	arrivedAll := func() bool {
		got := map[string]map[int64]bool{}
		for _, ev := range rcv.events() {
			if got[ev.ID] == nil {
				got[ev.ID] = map[int64]bool{}
			}
			got[ev.ID][ev.Seq] = true
		}
		for id, seqs := range want {
			for seq := range seqs {
				if !got[id][seq] {
					return false
				}
			}
		}
		return true
	}
	deadline := time.Now().Add(120 * time.Second)
	for !arrivedAll() && time.Now().Before(deadline) {
		rec.tick()
		time.Sleep(200 * time.Millisecond)
	}
	lastArrival := time.Now()

	evs := rcv.events()
	eventIDs := map[string]map[int64]string{}
	firstSeen := map[string][]int64{}
	dups, missing := 0, 0
	for _, ev := range evs {
		if eventIDs[ev.ID] == nil {
			eventIDs[ev.ID] = map[int64]string{}
		}
		if prev, ok := eventIDs[ev.ID][ev.Seq]; ok {
			dups++
			if prev != ev.EventID {
				t.Errorf("%s seq %d arrived twice under event ids %s and %s", ev.ID, ev.Seq, prev, ev.EventID)
			}
			continue
		}
		eventIDs[ev.ID][ev.Seq] = ev.EventID
		firstSeen[ev.ID] = append(firstSeen[ev.ID], ev.Seq)
		if st, ok := want[ev.ID][ev.Seq]; ok && st != ev.State {
			t.Errorf("%s seq %d: state %q, want %q", ev.ID, ev.Seq, ev.State, st)
		}
	}
	for id, seqs := range want {
		for seq := range seqs {
			if _, ok := eventIDs[id][seq]; !ok {
				missing++
				if missing <= 5 {
					t.Errorf("%s: no webhook for seq %d (%s)", id, seq, seqs[seq])
				}
			}
		}
		if fs := firstSeen[id]; len(fs) >= 2 && fs[0] > fs[1] {
			t.Errorf("%s: seq %d was received before seq %d", id, fs[0], fs[1])
		}
	}
	if r := rcv.refused(); len(r) > 0 {
		t.Errorf("the receiver refused webhooks (bad signature): %q", r)
	}
	c.checkProcesses()
	expected := 0
	for _, seqs := range want {
		expected += len(seqs)
	}
	t.Logf("FIGURES case9 webhooks: messages %d %v, webhooks expected %d, received %d (duplicates %d, missing %d), "+
		"receiver down %s, Redis down %s, all had arrived %s after the receiver came back; lease recovery: %v",
		len(ids), states, expected, len(evs), dups, missing, upAt.Sub(downAt).Round(time.Second), redisDownFor.Round(100*time.Millisecond),
		since(upAt, lastArrival), rec)
}
