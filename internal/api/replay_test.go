package api_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/wechat"
)

// queryAt is a plain callback query signed with token for timestamp ts and nonce.
func queryAt(token string, ts time.Time, nonce string) url.Values {
	t := strconv.FormatInt(ts.Unix(), 10)
	return url.Values{"signature": {sign(token, t, nonce)}, "timestamp": {t}, "nonce": {nonce},
		"openid": {"oia2TjuEGTNoeX76QEjQNrcURxG8"}}
}

// sealedAt is a safe-mode callback for eventXML, sealed with the bundle's
// current keys (withKeys) and signed for timestamp ts and nonce.
func sealedAt(t *testing.T, ts time.Time, nonce, eventXML string) (url.Values, []byte) {
	t.Helper()
	c, err := wechat.NewCipher(encKey, encAppID)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := c.Seal([]byte(eventXML))
	if err != nil {
		t.Fatal(err)
	}
	tsText := strconv.FormatInt(ts.Unix(), 10)
	q := url.Values{"encrypt_type": {"aes"}, "timestamp": {tsText}, "nonce": {nonce},
		"msg_signature": {wechat.Signature(defaultToken, tsText, nonce, enc)},
		"signature":     {wechat.Signature(defaultToken, tsText, nonce)}, "openid": {"oia2TjuEGTNoeX76QEjQNrcURxG8"}}
	return q, []byte("<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><Encrypt><![CDATA[" + enc + "]]></Encrypt></xml>")
}

func (b *bundle) rejected(app, reason string) float64 {
	return testutil.ToFloat64(b.metrics.CallbacksRejected.WithLabelValues(app, reason))
}

// unchanged fails unless message id is still sent with nothing recorded on it
// and nothing is held.
func (b *bundle) unchanged(t *testing.T, id string) {
	t.Helper()
	m := b.record(t, id)
	if m.State != delivery.StateSent || m.Status != "" || m.FinishedAt != nil {
		t.Errorf("message %s became %s (%q): the refused callback changed it", id, m.State, m.Status)
	}
	if ks := b.keys(t, "wxpush:{?}:held:*"); len(ks) != 0 {
		t.Errorf("the refused callback left held results: %d keys", len(ks))
	}
}

// TestCallbackReplayRefused (issue 17 item 2): callbacks that a captured URL
// could forge are refused with a 4xx and change no message. Before the fix
// each of them was answered "success" and settled the message.
func TestCallbackReplayRefused(t *testing.T) {
	t.Parallel()
	const msgID = 31700001
	blocked := resultXML(msgID, "failed:user block")
	tests := []struct {
		name   string
		opts   []func(*api.Deps)
		post   func(t *testing.T, b *bundle) reply
		status int
		reason string
	}{
		{name: "plain callback for an app with an AES key", opts: []func(*api.Deps){withKeys(t)}, status: 403, reason: "plain_refused",
			post: func(t *testing.T, b *bundle) reply {
				return b.postCallback(t, "default", queryAt(defaultToken, time.Now(), "plain1"), []byte(blocked))
			}},
		{name: "timestamp six minutes old", status: 403, reason: "stale_timestamp",
			post: func(t *testing.T, b *bundle) reply {
				return b.postCallback(t, "default", queryAt(defaultToken, time.Now().Add(-6*time.Minute), "old1"), []byte(blocked))
			}},
		{name: "timestamp six minutes ahead", status: 403, reason: "stale_timestamp",
			post: func(t *testing.T, b *bundle) reply {
				return b.postCallback(t, "default", queryAt(defaultToken, time.Now().Add(6*time.Minute), "ahead1"), []byte(blocked))
			}},
		{name: "the seed's 2014 timestamp", status: 403, reason: "stale_timestamp",
			post: func(t *testing.T, b *bundle) reply {
				return b.postCallback(t, "default", queryAt(defaultToken, time.Unix(1395658920, 0), "1320562132"), []byte(blocked))
			}},
		{name: "encrypted callback an hour old", opts: []func(*api.Deps){withKeys(t)}, status: 403, reason: "stale_timestamp",
			post: func(t *testing.T, b *bundle) reply {
				q, body := sealedAt(t, time.Now().Add(-time.Hour), "sealed1", blocked)
				return b.postCallback(t, "default", q, body)
			}},
		{name: "used nonce with another body", status: 403, reason: "replayed",
			post: func(t *testing.T, b *bundle) reply {
				// WeChat's genuine callback for another message, then the same
				// signed query with a body of the attacker's choosing.
				sentMessage(t, b, "Yother", "default", msgID+1)
				q := queryAt(defaultToken, time.Now(), "used1")
				if r := b.postCallback(t, "default", q, []byte(resultXML(msgID+1, "success"))); r.status != 200 {
					t.Fatalf("genuine callback = %d %s", r.status, r.body)
				}
				return b.postCallback(t, "default", q, []byte(blocked))
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.opts...)
			sentMessage(t, b, "Ym1", "default", msgID)
			r := tt.post(t, b)
			if r.status != tt.status {
				t.Fatalf("callback = %d %s, want %d", r.status, r.body, tt.status)
			}
			if code, _ := mustError(t, r); code != tt.reason {
				t.Errorf("code = %q, want %q", code, tt.reason)
			}
			b.unchanged(t, "Ym1")
			if n := b.rejected("default", tt.reason); n != 1 {
				t.Errorf("callbacks_rejected_total{reason=%s} = %v, want 1", tt.reason, n)
			}
		})
	}
}

// TestCallbackWeChatRetry: WeChat resends a callback it got no answer to with
// the same query and body; that is answered "success" every time, applied
// once, and not counted as a replay.
func TestCallbackWeChatRetry(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"plain", "encrypted"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			var opts []func(*api.Deps)
			if mode == "encrypted" {
				opts = append(opts, withKeys(t))
			}
			b := setup(t, opts...)
			const msgID = 31700100
			sentMessage(t, b, "Ym1", "default", msgID)
			q, body := queryAt(defaultToken, time.Now().Add(-4*time.Minute), "retry1"), []byte(resultXML(msgID, "success"))
			if mode == "encrypted" {
				q, body = sealedAt(t, time.Now().Add(-4*time.Minute), "retry1", resultXML(msgID, "success"))
			}
			for try := range 3 {
				if r := b.postCallback(t, "default", q, body); r.status != 200 || string(r.body) != "success" {
					t.Fatalf("try %d = %d %s, want 200 success", try, r.status, r.body)
				}
			}
			if m := b.record(t, "Ym1"); m.State != delivery.StateDelivered {
				t.Errorf("state %s, want delivered", m.State)
			}
			if n := b.callbacks("default", wechat.EventTemplateSendJobFinish, "applied"); n != 1 {
				t.Errorf("applied %v, want 1", n)
			}
			if n := b.callbacks("default", wechat.EventTemplateSendJobFinish, "duplicate"); n != 2 {
				t.Errorf("duplicate %v, want 2", n)
			}
			if n := b.rejected("default", "replayed"); n != 0 {
				t.Errorf("WeChat's own retries counted as %v replays", n)
			}
		})
	}
}

// TestCallbackVerifyStale: URL verification keeps working with WeChat's
// current timestamp and refuses an old one.
func TestCallbackVerifyStale(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, tt := range []struct {
		name   string
		at     time.Time
		status int
	}{
		{name: "now", at: time.Now(), status: 200},
		{name: "ten minutes old", at: time.Now().Add(-10 * time.Minute), status: 403},
	} {
		q := queryAt(defaultToken, tt.at, "v1")
		q.Set("echostr", "e-"+tt.name)
		r := b.do(t, http.MethodGet, "/wechat/callback/default?"+q.Encode(), nil)
		if r.status != tt.status {
			t.Errorf("%s: verify = %d %s, want %d", tt.name, r.status, r.body, tt.status)
		}
	}
}

// subscribeEvent is a subscribe_msg_sent_event with n results, for msgids
// from first on.
func subscribeEvent(first int64, n int) []byte {
	var list strings.Builder
	for i := range n {
		fmt.Fprintf(&list, `<List><MsgID>%d</MsgID><ErrorCode>0</ErrorCode></List>`, first+int64(i))
	}
	return []byte(`<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o7esq5OI1Uej6Xixw1lA2H7XDVbc]]></FromUserName>` +
		`<CreateTime>1620963428</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_sent_event]]></Event>` +
		`<SubscribeMsgSentEvent>` + list.String() + `</SubscribeMsgSentEvent></xml>`)
}

// heldTrips counts the Redis round trips that touch a held-result key.
type heldTrips struct {
	mu sync.Mutex
	n  int
}

func (h *heldTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *heldTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.note([]redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

func (h *heldTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.note(cmds)
		return next(ctx, cmds)
	}
}

func (h *heldTrips) note(cmds []redis.Cmder) {
	for _, c := range cmds {
		for _, a := range c.Args() {
			if s, ok := a.(string); ok && strings.Contains(s, ":held:") {
				h.mu.Lock()
				h.n++
				h.mu.Unlock()
				return
			}
		}
	}
}

func (h *heldTrips) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

// TestCallbackManyEntries (issue 17 item 3): a subscribe_msg_sent_event with
// more results than WeChat sends is refused before anything is stored (it used
// to run a script and keep a held key per entry: 1,000 for a 64 KiB body), and
// the results of an accepted one are applied in one round trip, not one each.
func TestCallbackManyEntries(t *testing.T) {
	t.Parallel()
	t.Run("1,000 entries", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		body := subscribeEvent(51700000, 1000)
		if len(body) > 64<<10 {
			t.Fatalf("the event is %d bytes, over the body limit", len(body))
		}
		r := b.postCallback(t, "default", signedQuery(defaultToken), body)
		if r.status != http.StatusBadRequest {
			t.Fatalf("callback = %d %s, want 400", r.status, r.body)
		}
		if code, field := mustError(t, r); code != "too_many_entries" || field == "" {
			t.Errorf("error %s on %q, want too_many_entries naming the field", code, field)
		}
		if ks := b.keys(t, "wxpush:{?}:held:*"); len(ks) != 0 {
			t.Errorf("the refused event left %d held keys", len(ks))
		}
		if n := b.rejected("default", "too_many_entries"); n != 1 {
			t.Errorf("rejected{too_many_entries} = %v, want 1", n)
		}
	})
	t.Run("20 entries", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		if err := b.store.LoadScripts(t.Context()); err != nil {
			t.Fatal(err)
		}
		trips := &heldTrips{}
		b.rdb.AddHook(trips)
		r := b.postCallback(t, "default", signedQuery(defaultToken), subscribeEvent(51710000, 20))
		if r.status != http.StatusOK {
			t.Fatalf("callback = %d %s, want 200", r.status, r.body)
		}
		if n := trips.count(); n != 1 {
			t.Errorf("the event's 20 results took %d round trips to Redis, want 1", n)
		}
		if ks := b.keys(t, "wxpush:{?}:held:*"); len(ks) != 20 {
			t.Errorf("%d held keys, want one per result (20)", len(ks))
		}
		if n := b.callbacks("default", wechat.EventSubscribeMsgSent, "held"); n != 20 {
			t.Errorf("callbacks{held} = %v, want 20", n)
		}
	})
}

// failingBody yields some bytes of a callback, then the error a read deadline gives.
type failingBody struct{ sent bool }

func (f *failingBody) Read(p []byte) (int, error) {
	if !f.sent {
		f.sent = true
		return copy(p, "<xml><ToUserName>"), nil
	}
	return 0, os.ErrDeadlineExceeded
}

func (f *failingBody) Close() error { return nil }

// TestCallbackReadError (issue 17 item 8): a body that times out or is cut off
// while being read is counted as read_error, not too_large; only a body over
// the limit is too_large.
func TestCallbackReadError(t *testing.T) {
	t.Parallel()
	t.Run("read deadline", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "/wechat/callback/default?"+signedQuery(defaultToken).Encode(), nil)
		req.Body = &failingBody{}
		rec := httptest.NewRecorder()
		b.handler.ServeHTTP(rec, req)
		if rec.Code < 400 || rec.Code > 499 || rec.Code == http.StatusRequestEntityTooLarge {
			t.Errorf("status %d, want a 4xx other than 413", rec.Code)
		}
		if n := b.rejected("default", "too_large"); n != 0 {
			t.Errorf("rejected{too_large} = %v for a body that timed out, want 0", n)
		}
		if n := b.rejected("default", "read_error"); n != 1 {
			t.Errorf("rejected{read_error} = %v, want 1", n)
		}
	})
	t.Run("client closes early", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		u, err := url.Parse(b.url)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		body := resultXML(31700200, "success")
		fmt.Fprintf(conn, "POST /wechat/callback/default?%s HTTP/1.1\r\nHost: %s\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s",
			signedQuery(defaultToken).Encode(), u.Host, len(body)+100, body[:len(body)/2])
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusRequestEntityTooLarge {
				t.Errorf("a cut-off body answered %d", resp.StatusCode)
			}
		}
		waitFor(t, "the cut-off body to be counted", func() bool {
			return b.rejected("default", "read_error")+b.rejected("default", "too_large") > 0
		})
		if n := b.rejected("default", "too_large"); n != 0 {
			t.Errorf("rejected{too_large} = %v for a cut-off body, want 0", n)
		}
		if n := b.rejected("default", "read_error"); n != 1 {
			t.Errorf("rejected{read_error} = %v, want 1", n)
		}
	})
	t.Run("over the limit", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		huge := []byte("<xml><Event>" + strings.Repeat("x", 65<<10) + "</Event></xml>")
		if r := b.postCallback(t, "default", signedQuery(defaultToken), huge); r.status != http.StatusRequestEntityTooLarge {
			t.Fatalf("callback = %d, want 413", r.status)
		}
		if n := b.rejected("default", "too_large"); n != 1 {
			t.Errorf("rejected{too_large} = %v, want 1", n)
		}
		if n := b.rejected("default", "read_error"); n != 0 {
			t.Errorf("rejected{read_error} = %v for an oversized body, want 0", n)
		}
	})
}
