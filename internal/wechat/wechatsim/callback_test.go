package wechatsim

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestOutcomes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		outcome   Outcome
		status    int    // HTTP status of the send reply
		code      int64  // errcode, when status is 200
		errmsg    string // errmsg prefix for errors
		callbacks []string
		pushed    int
		accepted  int
	}{
		{outcome: OutcomeSuccess, status: 200, callbacks: []string{"success"}, pushed: 1, accepted: 1},
		{outcome: OutcomeUserBlock, status: 200, callbacks: []string{"failed:user block"}, accepted: 1},
		{outcome: OutcomeSystemFailed, status: 200, callbacks: []string{"failed: system failed"}, accepted: 1},
		{outcome: OutcomeNoCallback, status: 200, pushed: 1, accepted: 1},
		{outcome: OutcomeDuplicateCallback, status: 200, callbacks: []string{"success", "success"}, pushed: 1, accepted: 1},
		{outcome: OutcomeCallbackFirst, status: 200, callbacks: []string{"success"}, pushed: 1, accepted: 1},
		{outcome: OutcomeSystemBusy, status: 200, code: -1, errmsg: "system error rid: "},
		{outcome: OutcomeNotFollowing, status: 200, code: 43004, errmsg: "require subscribe rid: "},
		{outcome: OutcomeUserRefused, status: 200, code: 43101, errmsg: "user refuse to accept the msg rid: "},
		{outcome: OutcomeFrequencyLimit, status: 200, code: 45011},
		{outcome: OutcomeDailyQuota, status: 200, code: 45009},
		{outcome: OutcomeTokenInvalid, status: 200, code: 40001},
		{outcome: OutcomeHTTP500, status: 500},
		{outcome: OutcomeReplyLost, status: 500, callbacks: []string{"success"}, pushed: 1},
	}
	for _, tt := range tests {
		t.Run(string(tt.outcome), func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{Rules: []Rule{{OpenID: "*", Outcome: tt.outcome}}})
			rc := newReceiver(t, testToken)
			if err := b.sim.SetCallbackURL(testAppID, rc.ts.URL); err != nil {
				t.Fatal(err)
			}
			res := b.send(t, b.token(t), sendBodyFor("o1", "m1"))
			if res.status != tt.status {
				t.Fatalf("status = %d, want %d (body %q)", res.status, tt.status, res.raw)
			}
			if tt.status == 200 {
				wantAPIError(t, res, tt.code)
				if !strings.HasPrefix(res.str("errmsg"), tt.errmsg) {
					t.Errorf("errmsg = %q, want prefix %q", res.str("errmsg"), tt.errmsg)
				}
			} else if res.raw != "" {
				t.Errorf("HTTP %d body = %q, want empty", res.status, res.raw)
			}
			b.sim.settle()
			got := rc.got()
			if len(got) != len(tt.callbacks) {
				t.Fatalf("got %d callbacks, want %d", len(got), len(tt.callbacks))
			}
			for i, cb := range got {
				if cb.event.Status != tt.callbacks[i] {
					t.Errorf("callback %d Status = %q, want %q", i, cb.event.Status, tt.callbacks[i])
				}
				if tt.code == 0 && tt.status == 200 && cb.event.MsgID != res.str("msgid") {
					t.Errorf("callback %d MsgID = %s, want the send's %s", i, cb.event.MsgID, res.str("msgid"))
				}
			}
			want := PairStats{Requests: 1, Accepted: tt.accepted, Pushed: tt.pushed}
			if p := b.sim.Pair("o1", "m1"); p != want {
				t.Errorf("Pair = %+v, want %+v", p, want)
			}
		})
	}
}

func TestOutcomeCallbackFirstArrivesBeforeTheReply(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{
		Rules:         []Rule{{OpenID: "*", Outcome: OutcomeCallbackFirst}},
		CallbackDelay: time.Hour, // must not hold the send up
	})
	rc := newReceiver(t, testToken)
	rc.failFirst = 1 // and the retry is awaited too
	if err := b.sim.SetCallbackURL(testAppID, rc.ts.URL); err != nil {
		t.Fatal(err)
	}
	res := b.send(t, b.token(t), sendBodyFor("o1", "m1"))
	// No waiting: the callback must already be there when the reply is.
	got := rc.got()
	if len(got) != 1 || got[0].event.MsgID != res.str("msgid") {
		t.Fatalf("at reply time the receiver has %+v, want the callback for msgid %s", got, res.str("msgid"))
	}
}

func TestOutcomeHang(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Rules: []Rule{{OpenID: "*", Outcome: OutcomeHang}}})
	tok := b.token(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := b.callContext(ctx, http.MethodPost, "/cgi-bin/message/template/send?access_token="+tok, sendBodyFor("o1", "m1"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
	if p := b.sim.Pair("o1", "m1"); p != (PairStats{Requests: 1}) {
		t.Errorf("Pair = %+v, want one request and nothing sent", p)
	}

	// Close ends a hang the client has not given up on.
	done := make(chan error, 1)
	go func() {
		_, err := b.callContext(context.Background(), http.MethodPost, "/cgi-bin/message/template/send?access_token="+tok, sendBodyFor("o1", "m2"))
		done <- err
	}()
	waitFor(t, "the second send to arrive", func() bool { return b.sim.Pair("o1", "m2").Requests == 1 })
	b.sim.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("a hang ended by Close produced a reply, want a transport error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the hanging send")
	}
}

func TestCallbackSignatureAndBody(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		originalID string
		wantTo     string
		openID     string
	}{
		{name: "default original id", wantTo: "gh_" + testAppID, openID: "oia2TjuEGTNoeX76QEjQNrcURxG8"},
		{name: "configured original id", originalID: "gh_7f083739789a", wantTo: "gh_7f083739789a", openID: "o-with]]>cdata-end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, testToken)
			b := setup(t, Config{Apps: []App{{
				AppID: testAppID, Secret: testSecret, Token: testToken,
				// The receiver's own query must survive the signing.
				CallbackURL: rc.ts.URL + "/wechat/callback?app=main",
				OriginalID:  tt.originalID,
			}}})
			res := b.send(t, b.token(t), sendBodyFor(tt.openID, "m1"))
			b.sim.settle()
			got := rc.got()
			if len(got) != 1 {
				t.Fatalf("got %d callbacks, want 1", len(got))
			}
			cb := got[0]
			if !cb.validSig {
				t.Errorf("signature %q does not verify for query %v", cb.query.Get("signature"), cb.query)
			}
			if cb.query.Get("openid") != tt.openID || cb.query.Get("app") != "main" {
				t.Errorf("query = %v, want openid=%s and app=main", cb.query, tt.openID)
			}
			if ts, err := strconv.ParseInt(cb.query.Get("timestamp"), 10, 64); err != nil || ts != b.clock.Now().Unix() {
				t.Errorf("timestamp = %q, want %d", cb.query.Get("timestamp"), b.clock.Now().Unix())
			}
			want := callbackEvent{
				ToUserName:   tt.wantTo,
				FromUserName: tt.openID,
				CreateTime:   b.clock.Now().Unix(),
				MsgType:      "event",
				Event:        "TEMPLATESENDJOBFINISH",
				MsgID:        res.str("msgid"),
				Status:       "success",
			}
			if cb.event != want {
				t.Errorf("event = %+v, want %+v", cb.event, want)
			}
			for _, part := range []string{"<xml>\n<ToUserName><![CDATA[", "<MsgID>" + res.str("msgid") + "</MsgID>", "<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>", "</xml>"} {
				if !strings.Contains(cb.body, part) {
					t.Errorf("body %q lacks %q", cb.body, part)
				}
			}
		})
	}
}

func TestCallbackRetries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		failFirst    int
		stallFirst   int
		wantAttempts int
		wantPushed   int
		wantFailed   int
	}{
		{name: "first reply 500", failFirst: 1, wantAttempts: 2, wantPushed: 1},
		{name: "two replies 500", failFirst: 2, wantAttempts: 3, wantPushed: 1},
		{name: "every reply 500", failFirst: 3, wantAttempts: 3, wantFailed: 1},
		{name: "first reply too slow", stallFirst: 1, wantAttempts: 2, wantPushed: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, testToken)
			rc.failFirst, rc.stallFirst = tt.failFirst, tt.stallFirst
			b := setup(t, Config{CallbackTimeout: 100 * time.Millisecond})
			if err := b.sim.SetCallbackURL(testAppID, rc.ts.URL); err != nil {
				t.Fatal(err)
			}
			b.send(t, b.token(t), sendBodyFor("o1", "m1"))
			b.sim.settle()
			st := b.sim.Stats()
			if st.CallbackAttempts != tt.wantAttempts || st.CallbacksPushed != tt.wantPushed || st.CallbacksFailed != tt.wantFailed {
				t.Errorf("attempts/pushed/failed = %d/%d/%d, want %d/%d/%d",
					st.CallbackAttempts, st.CallbacksPushed, st.CallbacksFailed, tt.wantAttempts, tt.wantPushed, tt.wantFailed)
			}
			if rc.count() != tt.wantPushed {
				t.Errorf("receiver accepted %d events, want %d", rc.count(), tt.wantPushed)
			}
		})
	}
}

// TestCallbackConcurrency: a burst of accepted sends is pushed by at most
// CallbackConcurrency requests at once; the others wait their turn, and every
// event arrives.
func TestCallbackConcurrency(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, testToken)
	rc.hold = 20 * time.Millisecond
	b := setup(t, Config{CallbackConcurrency: 3})
	if err := b.sim.SetCallbackURL(testAppID, rc.ts.URL); err != nil {
		t.Fatal(err)
	}
	tok := b.token(t)
	const n = 12
	for i := range n {
		b.send(t, tok, sendBodyFor(fmt.Sprintf("o%d", i), fmt.Sprintf("m%d", i)))
	}
	b.sim.settle()
	rc.mu.Lock()
	peak := rc.peak
	rc.mu.Unlock()
	if rc.count() != n || peak > 3 || peak < 2 {
		t.Errorf("receiver got %d events with at most %d at once, want %d with at most 3 (and pushes side by side)", rc.count(), peak, n)
	}
}

func TestCallbackDelayAndClose(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, testToken)
	b := setup(t, Config{CallbackDelay: 30 * time.Millisecond})
	if err := b.sim.SetCallbackURL(testAppID, rc.ts.URL); err != nil {
		t.Fatal(err)
	}
	tok := b.token(t)
	b.send(t, tok, sendBodyFor("o1", "m1"))
	waitFor(t, "the delayed callback", func() bool { return rc.count() == 1 })

	// A push still waiting out its delay is dropped by Close, promptly.
	slow := setup(t, Config{CallbackDelay: time.Hour})
	if err := slow.sim.SetCallbackURL(testAppID, rc.ts.URL); err != nil {
		t.Fatal(err)
	}
	tok = slow.token(t)
	slow.send(t, tok, sendBodyFor("o1", "m2"))
	closed := make(chan struct{})
	go func() {
		slow.sim.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited on a delayed callback")
	}
	if rc.count() != 1 {
		t.Errorf("receiver got %d callbacks, want 1", rc.count())
	}
	// After Close the API still answers, and pushes nothing.
	wantAPIError(t, slow.send(t, tok, sendBodyFor("o1", "m3")), 0)
	slow.sim.settle()
	if st := slow.sim.Stats(); st.CallbackAttempts != 0 || st.Pushed != 2 {
		t.Errorf("closed simulator Stats = %+v, want 2 pushed and no callback tried", st)
	}
}

func TestCallbackWithoutURL(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	wantAPIError(t, b.send(t, b.token(t), sendBodyFor("o1", "m1")), 0)
	b.sim.settle()
	if st := b.sim.Stats(); st.CallbackAttempts != 0 || st.Pushed != 1 {
		t.Errorf("Stats = %+v, want the message pushed and no callback tried", st)
	}
}

func TestSignature(t *testing.T) {
	t.Parallel()
	// Sorted by hand: "1409304348" < "1663788000" < "mytoken".
	want := checkSignatureHex("1409304348" + "1663788000" + "mytoken")
	if got := signature("mytoken", "1409304348", "1663788000"); got != want {
		t.Errorf("signature = %s, want %s", got, want)
	}
}
