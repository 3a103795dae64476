package wechatsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

const orderContent = "{{first.DATA}}\n订单：{{keyword1.DATA}}\n商品：{{thing2.DATA}}\n{{remark.DATA}}"

func TestSendErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Templates: []Template{{AppID: testAppID, TemplateID: "tmpl_order", Title: "订单通知", Content: orderContent}}})
	tok := b.token(t)
	full := `"first":{"value":"a"},"keyword1":{"value":"b"},"thing2":{"value":"c"},"remark":{"value":"d"}`
	tests := []struct {
		name    string
		token   string
		body    string
		code    int64
		errmsg  string // a substring, when it matters
		noToken bool
	}{
		{name: "missing token", noToken: true, body: "{}", code: 41001},
		{name: "unknown token", token: "nope", body: "{}", code: 40001},
		{name: "body not json", body: "touser=o1", code: 47001},
		{name: "empty touser", body: `{"template_id":"tmpl_order","data":{` + full + `}}`, code: 40003},
		{name: "empty template_id", body: `{"touser":"o1","data":{` + full + `}}`, code: 40037},
		{name: "unknown template_id", body: `{"touser":"o1","template_id":"other","data":{` + full + `}}`, code: 40037},
		{name: "missing data", body: `{"touser":"o1","template_id":"tmpl_order"}`, code: 47003},
		{name: "empty data", body: `{"touser":"o1","template_id":"tmpl_order","data":{}}`, code: 47003},
		{name: "data value not an object", body: `{"touser":"o1","template_id":"tmpl_order","data":{"first":"a"}}`, code: 47001},
		{name: "data key missing", body: `{"touser":"o1","template_id":"tmpl_order","data":{"first":{"value":"a"},"keyword1":{"value":"b"},"thing2":{"value":"c"}}}`, code: 47003, errmsg: "argument invalid! data.remark.value invalid rid: "},
		{name: "data key extra", body: `{"touser":"o1","template_id":"tmpl_order","data":{` + full + `,"keyword9":{"value":"x"}}}`, code: 47003, errmsg: "data.keyword9.value invalid"},
		{name: "data value missing", body: `{"touser":"o1","template_id":"tmpl_order","data":{"first":{"color":"#000"},"keyword1":{"value":"b"},"thing2":{"value":"c"},"remark":{"value":"d"}}}`, code: 47003, errmsg: "data.first.value invalid"},
		{name: "thing value too long", body: `{"touser":"o1","template_id":"tmpl_order","data":{"first":{"value":"a"},"keyword1":{"value":"b"},"thing2":{"value":"` + strings.Repeat("长", 21) + `"},"remark":{"value":"d"}}}`, code: 47003, errmsg: "data.thing2.value invalid"},
		{name: "valid with every optional field", body: `{"touser":"o1","template_id":"tmpl_order","url":"https://example.com","miniprogram":{"appid":"wxmini","pagepath":"index?a=b"},"color":"#FF0000","topcolor":"#00FF00","client_msg_id":"c1","data":{` + full + `}}`, code: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := "/cgi-bin/message/template/send"
			if !tt.noToken {
				path += "?access_token=" + cmpOr(tt.token, tok)
			}
			res := b.call(t, http.MethodPost, path, tt.body)
			wantAPIError(t, res, tt.code)
			if !strings.Contains(res.str("errmsg"), tt.errmsg) {
				t.Errorf("errmsg = %q, want it to contain %q", res.str("errmsg"), tt.errmsg)
			}
		})
	}
}

func TestSendExpiredToken(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{TokenTTL: time.Minute})
	tok := b.token(t)
	b.clock.Advance(time.Minute)
	wantAPIError(t, b.send(t, tok, sendBodyFor("o1", "")), 42001)
}

func TestSendWithoutTemplatesAcceptsAnything(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	res := b.send(t, b.token(t), `{"touser":"o1","template_id":"whatever","data":{"thing1":{"value":"`+strings.Repeat("x", 50)+`"}}}`)
	wantAPIError(t, res, 0)
	if res.str("errmsg") != "ok" {
		t.Errorf("errmsg = %q, want ok", res.str("errmsg"))
	}
}

func TestSendMsgIDExceedsFloat64(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	tok := b.token(t)
	first := b.send(t, tok, sendBodyFor("o1", ""))
	second := b.send(t, tok, sendBodyFor("o1", ""))
	if !strings.Contains(first.raw, `"msgid":9007199254740993`) {
		t.Errorf("reply %s does not carry the msgid as a bare integer", first.raw)
	}
	n1, ok1 := new(big.Int).SetString(first.str("msgid"), 10)
	n2, ok2 := new(big.Int).SetString(second.str("msgid"), 10)
	if !ok1 || !ok2 {
		t.Fatalf("msgids %q, %q are not integers", first.str("msgid"), second.str("msgid"))
	}
	if n1.Cmp(big.NewInt(1<<53)) <= 0 {
		t.Errorf("msgid %v does not exceed 2^53", n1)
	}
	if diff := new(big.Int).Sub(n2, n1); diff.Int64() != 1 {
		t.Errorf("consecutive msgids differ by %v, want 1: a float64 would lose that", diff)
	}
}

func TestSendDeduplication(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	rc := newReceiver(t, testToken)
	if err := b.sim.SetCallbackURL(testAppID, rc.ts.URL); err != nil {
		t.Fatal(err)
	}
	tok := b.token(t)

	first := b.send(t, tok, sendBodyFor("o1", "m1"))
	repeat := b.send(t, tok, sendBodyFor("o1", "m1"))
	wantAPIError(t, repeat, 0)
	if first.str("msgid") != repeat.str("msgid") {
		t.Errorf("repeat msgid %s, want the first one %s", repeat.str("msgid"), first.str("msgid"))
	}
	otherID := b.send(t, tok, sendBodyFor("o1", "m2"))
	otherUser := b.send(t, tok, sendBodyFor("o2", "m1"))
	noID1 := b.send(t, tok, sendBodyFor("o3", ""))
	noID2 := b.send(t, tok, sendBodyFor("o3", ""))
	seen := map[string]bool{first.str("msgid"): true}
	for _, r := range []apiResult{otherID, otherUser, noID1, noID2} {
		if seen[r.str("msgid")] {
			t.Errorf("msgid %s reused for a different message", r.str("msgid"))
		}
		seen[r.str("msgid")] = true
	}

	// After the window the pair is new again.
	b.clock.Advance(10 * time.Minute)
	late := b.send(t, tok, sendBodyFor("o1", "m1"))
	if late.str("msgid") == first.str("msgid") {
		t.Error("a repeat after 10 minutes got the old msgid")
	}

	b.sim.settle()
	tests := []struct {
		name string
		pair PairKey
		want PairStats
	}{
		{name: "repeated pair", pair: PairKey{"o1", "m1"}, want: PairStats{Requests: 3, Accepted: 3, Pushed: 2}},
		{name: "other id", pair: PairKey{"o1", "m2"}, want: PairStats{Requests: 1, Accepted: 1, Pushed: 1}},
		{name: "no id", pair: PairKey{"o3", ""}, want: PairStats{Requests: 2, Accepted: 2, Pushed: 2}},
		{name: "never sent", pair: PairKey{"o9", "m9"}, want: PairStats{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := b.sim.Pair(tt.pair.OpenID, tt.pair.ClientMsgID); got != tt.want {
				t.Errorf("Pair = %+v, want %+v", got, tt.want)
			}
		})
	}
	st := b.sim.Stats()
	if len(st.Duplicates) != 1 || st.Duplicates[0] != (PairKey{"o1", "m1"}) {
		t.Errorf("Duplicates = %v, want only {o1 m1}", st.Duplicates)
	}
	if st.SendRequests != 7 || st.Accepted != 7 || st.Pushed != 6 {
		t.Errorf("Stats = %+v, want 7 requests, 7 accepted, 6 pushed", st)
	}
	if n := rc.count(); n != 6 || st.CallbacksPushed != 6 {
		t.Errorf("callbacks: receiver got %d, CallbacksPushed %d, want 6 each (none for the repeat)", n, st.CallbacksPushed)
	}
}

func TestLatencyAppliesAfterTheSendTookEffect(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Latency: 300 * time.Millisecond})
	tok := b.token(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := b.callContext(ctx, http.MethodPost, "/cgi-bin/message/template/send?access_token="+tok, sendBodyFor("o1", "m1"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("send: err = %v, want a deadline error", err)
	}
	// The client gave up, yet the user got the message: the case that
	// client_msg_id exists for.
	waitFor(t, "the send to count", func() bool { return b.sim.Pair("o1", "m1").Pushed == 1 })
}

func TestConcurrentSendsGetDistinctMsgIDs(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Rules: []Rule{{OpenID: "busy*", Outcome: OutcomeSystemBusy}}})
	tok := b.token(t)
	const senders = 32
	ids := make([]string, senders)
	var wg sync.WaitGroup
	for i := range senders {
		wg.Go(func() {
			res, err := b.callContext(context.Background(), http.MethodPost, "/cgi-bin/message/template/send?access_token="+tok, sendBodyFor(fmt.Sprintf("o%d", i), "m"))
			if err == nil {
				ids[i] = res.str("msgid")
			}
		})
	}
	wg.Wait()
	seen := make(map[string]bool)
	for i, id := range ids {
		if id == "" || seen[id] {
			t.Errorf("sender %d: msgid %q missing or repeated", i, id)
		}
		seen[id] = true
	}
	if st := b.sim.Stats(); st.Accepted != senders || st.SendRequests != senders {
		t.Errorf("Stats = %+v, want %d accepted", st, senders)
	}
}

func TestTemplateList(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{
		Apps: []App{
			{AppID: testAppID, Secret: testSecret, Token: testToken},
			{AppID: "wxother", Secret: "s2", Token: "t2"},
		},
		Templates: []Template{
			{AppID: testAppID, TemplateID: "t_a", Title: "A", Content: orderContent, PrimaryIndustry: "IT科技", DeputyIndustry: "互联网|电子商务", Example: "ex"},
			{AppID: "wxother", TemplateID: "t_b", Title: "B", Content: "{{x.DATA}}"},
		},
	})
	res := b.call(t, http.MethodGet, "/cgi-bin/template/get_all_private_template?access_token="+b.token(t), "")
	var got struct {
		TemplateList []map[string]string `json:"template_list"`
	}
	if err := json.Unmarshal([]byte(res.raw), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"template_id": "t_a", "title": "A", "primary_industry": "IT科技", "deputy_industry": "互联网|电子商务", "content": orderContent, "example": "ex"}
	if len(got.TemplateList) != 1 || fmt.Sprint(got.TemplateList[0]) != fmt.Sprint(want) {
		t.Errorf("template_list = %v, want [%v]", got.TemplateList, want)
	}

	empty := setup(t, Config{})
	res = empty.call(t, http.MethodGet, "/cgi-bin/template/get_all_private_template?access_token="+empty.token(t), "")
	if res.raw != `{"template_list":[]}` {
		t.Errorf("no templates = %s, want an empty list", res.raw)
	}
	wantAPIError(t, empty.call(t, http.MethodGet, "/cgi-bin/template/get_all_private_template", ""), 41001)
}
