package api_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/inbox"
	"github.com/wxpush/wxpush/internal/relay"
)

// upstream is a stand-in for the company's existing handler: it records what
// it was sent and answers with reply.
type upstream struct {
	*httptest.Server
	mu    sync.Mutex
	got   []seen
	hits  atomic.Int32
	reply func(w http.ResponseWriter, r *http.Request)
}

type seen struct {
	method, rawQuery, contentType string
	body                          []byte
}

func newUpstream(t *testing.T, reply func(w http.ResponseWriter, r *http.Request)) *upstream {
	u := &upstream{reply: reply}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.got = append(u.got, seen{r.Method, r.URL.RawQuery, r.Header.Get("Content-Type"), b})
		u.mu.Unlock()
		u.hits.Add(1)
		u.reply(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) seen() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.got...)
}

const passiveReply = `<xml><ToUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></ToUserName><FromUserName><![CDATA[gh_7f083739789a]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello back]]></Content></xml>`

const textMessage = `<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>23456789012345678</MsgId></xml>`

// withRelay points app default at up through a relay with timeout, counting
// into the returned metrics.
func withRelay(up string, timeout time.Duration, mod func(*api.App)) (func(*api.Deps), *relay.Metrics) {
	rm := relay.NewMetrics(prometheus.NewRegistry(), []string{"default", "shop"})
	return func(d *api.Deps) {
		d.Relay = relay.New(relay.Config{Timeout: timeout}, rm)
		d.RelayTimeout = timeout
		d.Apps[0].UpstreamURL = up + "/wechat?from=wxpush"
		if mod != nil {
			mod(&d.Apps[0])
		}
	}, rm
}

func TestRelayForwardsWhatWxpushDoesNotConsume(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/xml; charset=gbk")
		_, _ = io.WriteString(w, passiveReply)
	})
	relayTo, rm := withRelay(up.URL, time.Second, nil)
	for _, mode := range []string{"plain", "safe"} {
		t.Run(mode, func(t *testing.T) {
			opts := []func(*api.Deps){relayTo}
			if mode == "safe" {
				opts = append(opts, withKeys(t))
			}
			b := setup(t, opts...)
			var rawQuery string
			var body []byte
			if mode == "plain" {
				rawQuery, body = signedQuery(defaultToken).Encode(), []byte(textMessage)
			} else {
				rawQuery, body = encryptedPost(t, defaultToken, encKey, encAppID, textMessage)
			}
			before := len(up.seen())
			r := b.do(t, http.MethodPost, "/wechat/callback/default?"+rawQuery, body, "Content-Type", "text/xml")
			if r.status != http.StatusOK || string(r.body) != passiveReply || r.header.Get("Content-Type") != "application/xml; charset=gbk" {
				t.Fatalf("WeChat got %d %q (%s), want the upstream's reply byte for byte", r.status, r.body, r.header.Get("Content-Type"))
			}
			got := up.seen()[before:]
			if len(got) != 1 {
				t.Fatalf("upstream got %d requests, want 1", len(got))
			}
			want := seen{http.MethodPost, "from=wxpush&" + rawQuery, "text/xml", body}
			if g := got[0]; g.method != want.method || g.rawQuery != want.rawQuery || g.contentType != want.contentType || !bytes.Equal(g.body, want.body) {
				t.Errorf("upstream got %s ?%s (%s) %q,\nwant %s ?%s (%s) %q", g.method, g.rawQuery, g.contentType, g.body,
					want.method, want.rawQuery, want.contentType, want.body)
			}
			if v := b.callbacks("default", "other", "relayed"); v != 1 {
				t.Errorf("callbacks_total{outcome=relayed} = %v, want 1", v)
			}
		})
	}
	if v := testutil.ToFloat64(rm.Requests.WithLabelValues("default", relay.ResultOK)); v != 2 {
		t.Errorf("relay_requests_total{result=ok} = %v, want 2", v)
	}
}

func TestRelayEmptyReplyStaysEmpty(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	relayTo, _ := withRelay(up.URL, time.Second, nil)
	b := setup(t, relayTo)
	r := b.postCallback(t, "default", signedQuery(defaultToken), []byte(textMessage))
	if r.status != http.StatusOK || len(r.body) != 0 || r.header.Get("Content-Type") != "" {
		t.Errorf("WeChat got %d %q Content-Type %q, want an empty 200 as the upstream sent", r.status, r.body, r.header.Get("Content-Type"))
	}
}

func TestRelayRefusesWhatWxpushCannotVerify(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "success") })
	relayTo, _ := withRelay(up.URL, time.Second, nil)
	b := setup(t, relayTo)
	q := signedQuery("not-the-token")
	if r := b.postCallback(t, "default", q, []byte(textMessage)); r.status != http.StatusForbidden {
		t.Errorf("a forged text message answered %d, want 403", r.status)
	}
	stale := signedQuery(defaultToken)
	stale.Set("timestamp", "1395658920")
	stale.Set("signature", sign(defaultToken, "1395658920", stale.Get("nonce")))
	if r := b.postCallback(t, "default", stale, []byte(textMessage)); r.status != http.StatusForbidden {
		t.Errorf("a stale text message answered %d, want 403", r.status)
	}
	q = signedQuery(defaultToken)
	b.postCallback(t, "default", q, []byte(textMessage))
	if r := b.postCallback(t, "default", q, []byte(strings.Replace(textMessage, "hello", "pay me", 1))); r.status != http.StatusForbidden {
		t.Errorf("a replayed nonce with another body answered %d, want 403", r.status)
	}
	if n := up.hits.Load(); n != 1 {
		t.Errorf("upstream got %d requests, want only the 1 genuine one", n)
	}
}

func TestRelayKeepsDeliveryResults(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "success") })
	relayTo, _ := withRelay(up.URL, time.Second, nil)
	b := setup(t, relayTo)
	sentMessage(t, b, "Ym1", "default", 9001)
	if r := b.postCallback(t, "default", signedQuery(defaultToken), []byte(resultXML(9001, "success"))); r.status != http.StatusOK || string(r.body) != "success" {
		t.Fatalf("result answered %d %q", r.status, r.body)
	}
	if st := b.record(t, "Ym1").State; st != delivery.StateDelivered {
		t.Errorf("message is %s, want delivered", st)
	}
	if n := up.hits.Load(); n != 0 {
		t.Errorf("upstream got %d requests for a delivery result, want 0 without relay_all", n)
	}

	all, _ := withRelay(up.URL, time.Second, func(a *api.App) { a.RelayAll = true })
	b2 := setup(t, all)
	sentMessage(t, b2, "Ym2", "default", 9002)
	body := []byte(resultXML(9002, "failed:user block"))
	if r := b2.postCallback(t, "default", signedQuery(defaultToken), body); r.status != http.StatusOK || string(r.body) != "success" {
		t.Fatalf("result answered %d %q", r.status, r.body)
	}
	if st := b2.record(t, "Ym2").State; st != delivery.StateUserBlocked {
		t.Errorf("message is %s, want user_blocked: relay_all copies, wxpush still consumes", st)
	}
	waitFor(t, "the relay_all copy", func() bool { return up.hits.Load() == 1 })
	if g := up.seen()[0]; !bytes.Equal(g.body, body) {
		t.Errorf("the copy's body = %q, want the callback's", g.body)
	}
}

// A bad upstream never costs WeChat its answer within 5 s, nor a result.
func TestRelayBadUpstreams(t *testing.T) {
	t.Parallel()
	var elsewhere atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	t.Cleanup(target.Close)
	big := bytes.Repeat([]byte("x"), 10<<20)
	const budget = 500 * time.Millisecond
	for _, tc := range []struct {
		name, result string
		reply        func(w http.ResponseWriter, r *http.Request)
	}{
		{"hangs", relay.ResultTimeout, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
		{"answers 500", relay.ResultStatus5xx, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }},
		{"answers 10 MB", relay.ResultTooLarge, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(big) }},
		{"redirects", relay.ResultRedirect, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target.URL+"/steal", http.StatusTemporaryRedirect)
		}},
		{"is down", relay.ResultError, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { tc.reply(w, r) })
			if tc.reply == nil {
				up.Close()
			}
			relayTo, rm := withRelay(up.URL, budget, func(a *api.App) { a.RelayAll = true })
			b := setup(t, relayTo)
			start := time.Now()
			r := b.postCallback(t, "default", signedQuery(defaultToken), []byte(textMessage))
			if took := time.Since(start); r.status != http.StatusOK || string(r.body) != "success" || took > 4*time.Second {
				t.Errorf("WeChat got %d %q after %s, want success within its 5 s", r.status, r.body, took)
			}
			waitFor(t, "the failure to be counted", func() bool {
				return testutil.ToFloat64(rm.Requests.WithLabelValues("default", tc.result)) == 1
			})
			// A delivery result beside it is consumed as ever (and its
			// relay_all copy fails the same way, in the background).
			sentMessage(t, b, "Ym1", "default", 9100)
			start = time.Now()
			r = b.postCallback(t, "default", signedQuery(defaultToken), []byte(resultXML(9100, "success")))
			if took := time.Since(start); r.status != http.StatusOK || string(r.body) != "success" || took > 4*time.Second {
				t.Errorf("the result got %d %q after %s", r.status, r.body, took)
			}
			if st := b.record(t, "Ym1").State; st != delivery.StateDelivered {
				t.Errorf("message is %s, want delivered: a bad upstream must not lose a result", st)
			}
		})
	}
	t.Cleanup(func() {
		if n := elsewhere.Load(); n != 0 {
			t.Errorf("the redirect was followed %d times; WeChat's signed request must go nowhere else", n)
		}
	})
}

// With Redis down a user's message still reaches the upstream (its replay
// check skipped), while a delivery result is answered 503 to be retried.
func TestRelayWithRedisDown(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, passiveReply) })
	relayTo, _ := withRelay(up.URL, time.Second, nil)
	b := setup(t, relayTo)
	b.redis.Stop(t)
	if r := b.postCallback(t, "default", signedQuery(defaultToken), []byte(textMessage)); r.status != http.StatusOK || string(r.body) != passiveReply {
		t.Errorf("text message with Redis down: %d %q, want the upstream's reply", r.status, r.body)
	}
	if r := b.postCallback(t, "default", signedQuery(defaultToken), []byte(resultXML(1, "success"))); r.status != http.StatusServiceUnavailable {
		t.Errorf("result with Redis down: %d, want 503", r.status)
	}
}

func TestRelayURLVerification(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "upstream:"+r.URL.Query().Get("echostr"))
	})
	verify := func(b *bundle, token string) reply {
		q := signedQuery(token)
		q.Set("echostr", "4242")
		return b.do(t, http.MethodGet, "/wechat/callback/default?"+q.Encode(), nil)
	}
	local, _ := withRelay(up.URL, time.Second, nil)
	if r := verify(setup(t, local), defaultToken); string(r.body) != "4242" || up.hits.Load() != 0 {
		t.Errorf("without relay_verify: %q, upstream hits %d; want the local echo and no relay", r.body, up.hits.Load())
	}
	relayed, _ := withRelay(up.URL, time.Second, func(a *api.App) { a.RelayVerify = true })
	b := setup(t, relayed)
	if r := verify(b, defaultToken); string(r.body) != "upstream:4242" {
		t.Errorf("with relay_verify: %q, want the upstream's reply", r.body)
	}
	if r := verify(b, "not-the-token"); r.status != http.StatusForbidden || up.hits.Load() != 1 {
		t.Errorf("forged verification: %d, upstream hits %d; want 403 and not relayed", r.status, up.hits.Load())
	}
	up.Close()
	if r := verify(b, defaultToken); r.status != http.StatusOK || string(r.body) != "4242" {
		t.Errorf("upstream down: %d %q, want the local echo", r.status, r.body)
	}
}

func TestCallbackInboxAppendsInsteadOfApplying(t *testing.T) {
	t.Parallel()
	var im *inbox.Metrics
	b := setupRedis(t, func(rdb *redis.Client, d *api.Deps) {
		im = inbox.NewMetrics(prometheus.NewRegistry(), rdb, []string{"default", "shop"})
		d.Inbox = inbox.New(rdb, im)
	})
	sentMessage(t, b, "Ym1", "default", 9200)
	q := signedQuery(defaultToken)
	body := []byte(resultXML(9200, "success"))
	for range 2 { // WeChat's retry of the same callback
		if r := b.postCallback(t, "default", q, body); r.status != http.StatusOK || string(r.body) != "success" {
			t.Fatalf("result answered %d %q", r.status, r.body)
		}
	}
	if st := b.record(t, "Ym1").State; st != delivery.StateSent {
		t.Errorf("message is %s before any applier ran, want sent: the receiver only appends", st)
	}
	msgs, err := b.rdb.XRange(t.Context(), inbox.Stream, "-", "+").Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("inbox holds %d events (%v), want 1: a retry is not appended again", len(msgs), err)
	}
	if v := msgs[0].Values; v["app"] != "default" || v["event"] != "TEMPLATESENDJOBFINISH" || v["xml"] != string(body) || v["at"] == "" {
		t.Errorf("inbox entry = %v", v)
	}
	if r := b.postCallback(t, "default", q, []byte(resultXML(9201, "success"))); r.status != http.StatusForbidden {
		t.Errorf("a used nonce with another body answered %d, want 403", r.status)
	}
	// A popup event settles nothing and is not appended.
	popup := `<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_popup_event]]></Event></xml>`
	if r := b.postCallback(t, "default", signedQuery(defaultToken), []byte(popup)); r.status != http.StatusOK {
		t.Errorf("popup answered %d", r.status)
	}
	if n, _ := b.rdb.XLen(t.Context(), inbox.Stream).Result(); n != 1 {
		t.Errorf("inbox holds %d events after a popup, want 1", n)
	}
	// A plain signature does not cover the body: the signed query of a
	// popup (taken by the nonce store) must not carry a result into the
	// inbox, nor the query of a result (taken by the inbox) a popup.
	popupQuery := signedQuery(defaultToken)
	if r := b.postCallback(t, "default", popupQuery, []byte(popup)); r.status != http.StatusOK {
		t.Fatalf("popup answered %d", r.status)
	}
	if r := b.postCallback(t, "default", popupQuery, []byte(resultXML(9200, "failed:user block"))); r.status != http.StatusForbidden {
		t.Errorf("a popup's query with a result body answered %d %q, want 403", r.status, r.body)
	}
	if r := b.postCallback(t, "default", q, []byte(popup)); r.status != http.StatusForbidden {
		t.Errorf("a result's query with a popup body answered %d %q, want 403", r.status, r.body)
	}
	if n, _ := b.rdb.XLen(t.Context(), inbox.Stream).Result(); n != 1 {
		t.Errorf("inbox holds %d events after the crossed replays, want 1", n)
	}
	// A result whose status wxpush cannot read is kept, for the appliers to
	// park and an operator to replay once wxpush reads it.
	if r := b.postCallback(t, "default", signedQuery(defaultToken), []byte(resultXML(9203, "pending"))); r.status != http.StatusOK {
		t.Errorf("a result with an unknown status answered %d %q, want 200", r.status, r.body)
	}
	if n, _ := b.rdb.XLen(t.Context(), inbox.Stream).Result(); n != 2 {
		t.Errorf("inbox holds %d events after a result with an unknown status, want 2", n)
	}
	b.redis.Stop(t)
	if r := b.postCallback(t, "default", signedQuery(defaultToken), []byte(resultXML(9202, "success"))); r.status != http.StatusServiceUnavailable {
		t.Errorf("with Redis down a result answered %d, want 503 so that WeChat tries again", r.status)
	}
}
