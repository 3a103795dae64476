package wechatsim

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestSimEndpoints(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	rc := newReceiver(t, testToken)
	tok := b.token(t)

	steps := []struct {
		name   string
		method string
		path   string
		body   string
		status int
		want   string // body substring
	}{
		{name: "bad rules", method: http.MethodPost, path: "/sim/rules", body: "a=explode", status: 400, want: `rule 1 "a=explode"`},
		{name: "rules", method: http.MethodPost, path: "/sim/rules", body: "busy=system_busy:1", status: 204},
		{name: "callback url of unknown app", method: http.MethodPost, path: "/sim/callback_url?appid=wxnobody&url=" + url.QueryEscape(rc.ts.URL), status: 404},
		{name: "relative callback url", method: http.MethodPost, path: "/sim/callback_url?appid=" + testAppID + "&url=/cb", status: 400},
		{name: "callback url", method: http.MethodPost, path: "/sim/callback_url?appid=" + testAppID + "&url=" + url.QueryEscape(rc.ts.URL), status: 204},
		{name: "revoke unknown app", method: http.MethodPost, path: "/sim/revoke?appid=wxnobody", status: 404},
	}
	for _, st := range steps {
		res := b.call(t, st.method, st.path, st.body)
		if res.status != st.status || !strings.Contains(res.raw, st.want) {
			t.Errorf("%s: %d %q, want %d containing %q", st.name, res.status, res.raw, st.status, st.want)
		}
	}

	wantAPIError(t, b.send(t, tok, sendBodyFor("busy", "m1")), -1)
	wantAPIError(t, b.send(t, tok, sendBodyFor("busy", "m1")), 0)
	wantAPIError(t, b.send(t, tok, sendBodyFor("busy", "m1")), 0)
	b.sim.settle()

	var st Stats
	if err := json.Unmarshal([]byte(b.call(t, http.MethodGet, "/sim/stats", "").raw), &st); err != nil {
		t.Fatal(err)
	}
	if st.SendRequests != 3 || st.Accepted != 2 || st.Pushed != 1 || st.CallbacksPushed != 1 ||
		st.TokenFetches[testAppID] != 1 || len(st.Duplicates) != 1 || st.Duplicates[0] != (PairKey{"busy", "m1"}) {
		t.Errorf("/sim/stats = %+v", st)
	}
	var pair PairStats
	if err := json.Unmarshal([]byte(b.call(t, http.MethodGet, "/sim/pair?openid=busy&client_msg_id=m1", "").raw), &pair); err != nil {
		t.Fatal(err)
	}
	if pair != (PairStats{Requests: 3, Accepted: 2, Pushed: 1}) {
		t.Errorf("/sim/pair = %+v", pair)
	}

	if res := b.call(t, http.MethodPost, "/sim/revoke?appid="+testAppID, ""); res.status != 204 {
		t.Fatalf("revoke: %d %q", res.status, res.raw)
	}
	wantAPIError(t, b.send(t, tok, sendBodyFor("o1", "")), 40001)

	if res := b.call(t, http.MethodPost, "/sim/rules", ""); res.status != 204 {
		t.Fatalf("clearing rules: %d %q", res.status, res.raw)
	}
	wantAPIError(t, b.send(t, b.token(t), sendBodyFor("busy", "m2")), 0)
}
