package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/wechat"
)

// callbackN is how many result callbacks one round pushes; callbackPushers
// push them side by side, as WeChat does at a busy account's peak.
const (
	callbackN       = 4000
	callbackPushers = 64
)

// callbackFigures: result callbacks stored per second by one enqueuer, the
// path whose limit decides whether WeChat's 5-second wait is met under a
// burst. Messages are sent first with the simulator's callbacks off; then 64
// pushers post each message's signed TEMPLATESENDJOBFINISH to the enqueuer,
// and the clock runs until every one is answered. Today each is stored
// before it is answered (there is no inbox yet).
func callbackFigures(b *testing.B, tab *table) {
	const rounds = 3
	var rates []float64
	for range rounds {
		rates = append(rates, callbacksOnce(b))
	}
	tab.row("callbacks stored per second, one enqueuer", fmt.Sprintf("%.0f/s", median(rates)), "–",
		fmt.Sprintf("%d signed TEMPLATESENDJOBFINISH results by %d pushers, each stored before it is answered (store-then-answer; no inbox yet); median of %d rounds (%s)",
			callbackN, callbackPushers, rounds, rateList(rates)))
}

func callbacksOnce(b *testing.B) float64 {
	c := servicetest.Start(b, servicetest.Options{Rules: "*=no_callback", Env: env(map[string]string{"WXPUSH_CONCURRENCY": fmt.Sprint(concurrency)})})
	rdb := c.Redis.Client(b)
	worker := startWorkerBinary(b, c.Env(b))
	defer worker.stop()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: callbackPushers}}
	type sent struct{ id, openID, msgID string }
	msgs := make([]sent, callbackN)
	runParallel(callbackPushers, callbackN, func(i int) {
		openID := fmt.Sprintf("oCallback_%06d", i)
		var r struct{ ID string }
		getJSON(b, client, http.MethodPost, c.API+"/v1/messages", body(openID), http.StatusAccepted, &r)
		msgs[i] = sent{id: r.ID, openID: openID}
	})
	waitSent(b, rdb, callbackN, 2*time.Minute)
	runParallel(callbackPushers, callbackN, func(i int) {
		var v struct {
			MsgID string `json:"wechat_msgid"`
		}
		getJSON(b, client, http.MethodGet, c.API+"/v1/messages/"+msgs[i].id, "", http.StatusOK, &v)
		msgs[i].msgID = v.MsgID
	})

	var nonce atomic.Int64
	start := time.Now()
	runParallel(callbackPushers, callbackN, func(i int) {
		m := msgs[i]
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		n := strconv.FormatInt(nonce.Add(1), 10) + "bench"
		q := url.Values{"signature": {wechat.Signature(servicetest.Token, ts, n)}, "timestamp": {ts}, "nonce": {n}, "openid": {m.openID}}
		xml := "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[" + m.openID + "]]></FromUserName>" +
			"<CreateTime>" + ts + "</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>" +
			"<MsgID>" + m.msgID + "</MsgID><Status><![CDATA[success]]></Status></xml>"
		resp, err := client.Post(c.API+"/wechat/callback/default?"+q.Encode(), "text/xml", strings.NewReader(xml))
		if err != nil {
			b.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("callback: %d %s", resp.StatusCode, got)
		}
	})
	rate := float64(callbackN) / time.Since(start).Seconds()
	waitBacklog(b, rdb, 0, time.Minute) // every result was applied, not only answered
	return rate
}

// getJSON sends body ("" = none) and decodes the answer into v.
func getJSON(b *testing.B, c *http.Client, method, url, body string, want int, v any) {
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		b.Fatalf("%s %s: %d %s", method, url, resp.StatusCode, raw)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		b.Fatalf("%s %s: %v", method, url, err)
	}
}
