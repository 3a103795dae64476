package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/redisconn"
	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/service"
	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/wechat"
)

// The secrets of TestSecretsNeverLeak besides servicetest.Secret and
// servicetest.Token. Each is made only of letters, digits, '-' and '_', so that
// JSON, logfmt and URL encoding leave it unchanged and a leak through any of
// them is still a substring match.
const (
	leakAPIKey = "wxpk-leakcheck-api-key-7Hq2Lm9Zr4"
	// leakAESKey is a 43-character EncodingAESKey.
	leakAESKey = "wxpushLeakCheckAesKey0123456789abcdefghijkE"
	// The "broken" app has a secret WeChat refuses (40125), which drives the
	// token-fetch error path; its token signs nothing.
	leakBrokenSecret = "broken-app-secret-leakcheck-Vb7Nq3"
	leakBrokenToken  = "brokenAppCallbackTokenLeakcheck5"
	// leakWebhookSecret signs app default's status webhooks.
	leakWebhookSecret = "webhook-secret-leakcheck-Qp4Tz8Wm2"
)

// The recipients, one per path through the system; the rules prefix-match them.
const (
	oOK1      = "oLeakOk_Q1w2E3r4T5y6"
	oOK2      = "oLeakOk_Z9x8C7v6B5n4"
	oBatch    = "oLeakOk_Batch_U8i9O0p1"
	oPerm     = "oLeakPerm_A1s2D3f4G5"
	oBusy     = "oLeakBusy_H6j7K8l9M0"
	oHTTP     = "oLeakHttp_P0o9I8u7Y6"
	oHang     = "oLeakHang_T5r4E3w2Q1"
	oTokenBad = "oLeakTok_L1k2J3h4G5f6"
	oDead     = "oLeakDead_V5c4X3z2A1"
	oBlock    = "oLeakBlock_N8m7B6v5C4"
	oLater    = "oLeakLater_R2t3Y4u5I6"
	oBroken   = "oLeakBroken_W3e4R5t6Y7"
	oCallback = "oLeakCallback_S7d8F9g0H1"
	oBadInput = "oLeakBadInput_J2k3L4m5"
)

var leakRules = "oLeakPerm*=not_following, oLeakBusy*=system_busy:2, oLeakHttp*=http_500:1, oLeakHang*=hang:1, " +
	"oLeakTok*=token_invalid:1, oLeakDead*=system_busy, oLeakBlock*=user_block, *=success"

// client is an API client that sends the API key and keeps every response it
// received (status line, headers and body) for the leak check. It is used from
// the test's goroutine only.
type client struct {
	t         *testing.T
	base      string
	key       string
	responses []string
}

// do sends a request with the API key (unless key is "") and returns the status
// and body.
func (c *client) do(method, path, body string, header ...string) (int, string) {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s %s → %s\n", method, path, resp.Status)
	_ = resp.Header.Write(&sb)
	sb.Write(b)
	c.responses = append(c.responses, sb.String())
	return resp.StatusCode, string(b)
}

// post enqueues one message and returns its id.
func (c *client) post(body string) string {
	c.t.Helper()
	code, resp := c.do("POST", "/v1/messages", body)
	var r struct{ ID string }
	if err := json.Unmarshal([]byte(resp), &r); err != nil || code != http.StatusAccepted || r.ID == "" {
		c.t.Fatalf("POST /v1/messages %s = %d %s", body, code, resp)
	}
	return r.ID
}

func (c *client) get(id string) servicetest.Message {
	c.t.Helper()
	code, resp := c.do("GET", "/v1/messages/"+id, "")
	var m servicetest.Message
	if err := json.Unmarshal([]byte(resp), &m); err != nil || code != http.StatusOK {
		c.t.Fatalf("GET /v1/messages/%s = %d %s", id, code, resp)
	}
	return m
}

// waitState polls a message until it is in state, with a deadline.
func (c *client) waitState(id, state string) servicetest.Message {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := c.get(id)
		if m.State == state {
			return m
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("message %s is %q after 30 s, want %s (%+v)", id, m.State, state, m)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// callback posts to the default app's callback URL with the given query and
// body and records the response like any other.
func (c *client) callback(method, query, body string) (int, string) {
	c.t.Helper()
	saved := c.key
	c.key = "" // WeChat sends no API key; the callback is authenticated by its signature
	defer func() { c.key = saved }()
	return c.do(method, "/wechat/callback/default?"+query, body)
}

func resultXML(openID string, msgID int64) string {
	return fmt.Sprintf(`<xml><ToUserName><![CDATA[gh_leakcheck]]></ToUserName><FromUserName><![CDATA[%s]]></FromUserName>`+
		`<CreateTime>%d</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>`+
		`<MsgID>%d</MsgID><Status><![CDATA[success]]></Status></xml>`, openID, time.Now().Unix(), msgID)
}

// TestSecretsNeverLeak (invariant 7) runs the full stack with distinctive
// secrets, drives every kind of traffic through it — successes, permanent and
// transient failures, a WeChat timeout, a revoked token, a dead message and its
// retry, an app with a wrong secret, forged and malformed callbacks, bad API
// input — then searches every log line of every process, every /metrics page
// and every API response for the app secrets, callback tokens, AES key, API key
// and access tokens, and the logs for any whole openid.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	cfg := filepath.Join(t.TempDir(), "wxpush.yaml")
	yaml := fmt.Sprintf("apps:\n  - name: broken\n    appid: %s\n    secret: %s\n    token: %s\n    validate_templates: true\n",
		servicetest.AppID, leakBrokenSecret, leakBrokenToken)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	// Every message POSTs its status webhooks here: their bodies and headers
	// are a surface too.
	var hooksMu sync.Mutex
	var hooks strings.Builder
	hookRecv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		hooksMu.Lock()
		fmt.Fprintf(&hooks, "%s %s %v\n%s\n", r.Method, r.URL, r.Header, b)
		hooksMu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer hookRecv.Close()
	c := servicetest.Start(t, servicetest.Options{Workers: 2, AESKey: leakAESKey, Rules: leakRules,
		Env: map[string]string{
			"WXPUSH_STATUS_URL": hookRecv.URL + "/hook", "WXPUSH_WEBHOOK_SECRET": leakWebhookSecret,
			"WXPUSH_WEBHOOK_ALLOW_PRIVATE": "true",
			"WXPUSH_API_KEYS":              "another-key-leakcheck-Jd8Ws1," + leakAPIKey, "WXPUSH_CONFIG": cfg,
			"WXPUSH_LOG_LEVEL": "debug", "WXPUSH_SEND_TIMEOUT": "1s", "WXPUSH_MAX_ATTEMPTS": "4",
		}})
	api := &client{t: t, base: c.API, key: leakAPIKey}
	rdb := c.Redis.Client(t)
	ctx := context.Background()
	accessToken := func() string {
		t.Helper()
		tok, err := rdb.HGet(ctx, "wxpush:token:{default}", "token").Result()
		if err != nil || tok == "" {
			t.Fatalf("access token of app default in Redis: %q, %v", tok, err)
		}
		return tok
	}

	// Successes first, so that the token they used is known before the
	// token_invalid rule makes the workers fetch another.
	body := servicetest.MessageBody
	for _, openID := range []string{oOK1, oOK2} {
		api.waitState(api.post(body(openID)), "delivered")
	}
	tokens := []string{accessToken()}

	ids := map[string]string{}
	for _, openID := range []string{oPerm, oBusy, oHTTP, oHang, oTokenBad, oDead, oBlock} {
		ids[openID] = api.post(body(openID))
	}
	if code, resp := api.do("POST", "/v1/messages/batch",
		`{"messages":[`+body(oBatch)+`,{"touser":"`+oBadInput+`"}]}`); code != http.StatusOK {
		t.Errorf("batch with one bad item = %d %s", code, resp)
	}
	later := api.post(`{"touser":"` + oLater + `","template_id":"T1","data":{"thing1":{"value":"later"}},"send_at":"` +
		time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}`)
	if code, resp := api.do("DELETE", "/v1/messages/"+later, ""); code != http.StatusOK {
		t.Errorf("cancel a scheduled message = %d %s", code, resp)
	}
	broken := api.post(`{"app":"broken","touser":"` + oBroken + `","template_id":"T1","data":{"thing1":{"value":"x"}}}`)

	// Bad input of every kind; each must be refused.
	for _, tt := range []struct {
		name, method, path, body string
		header                   []string
		want                     int
	}{
		{name: "invalid JSON", method: "POST", path: "/v1/messages", body: `{"touser":`, want: 400},
		{name: "no touser", method: "POST", path: "/v1/messages", body: `{"template_id":"T1","data":{}}`, want: 400},
		{name: "unknown app", method: "POST", path: "/v1/messages",
			body: `{"app":"nosuch","touser":"` + oBadInput + `","template_id":"T1","data":{"thing1":{"value":"x"}}}`, want: 400},
		{name: "bad send_at", method: "POST", path: "/v1/messages",
			body: `{"touser":"` + oBadInput + `","template_id":"T1","data":{"thing1":{"value":"x"}},"send_at":"tomorrow"}`, want: 400},
		{name: "unknown template field", method: "POST", path: "/v1/messages",
			body: `{"touser":"` + oBadInput + `","template_id":"T1","data":{"nosuch9":{"value":"x"}}}`, want: 400},
		{name: "too large", method: "POST", path: "/v1/messages",
			body: `{"touser":"` + oBadInput + `","template_id":"T1","data":{"thing1":{"value":"` + strings.Repeat("x", 100<<10) + `"}}}`, want: 413},
		{name: "unknown id", method: "GET", path: "/v1/messages/nosuchid", want: 404},
		{name: "retry a live message", method: "POST", path: "/v1/messages/" + ids[oBlock] + "/retry", want: 409},
		{name: "list without state", method: "GET", path: "/v1/messages", want: 400},
	} {
		if code, resp := api.do(tt.method, tt.path, tt.body, tt.header...); code != tt.want {
			t.Errorf("%s: %s %s = %d %s, want %d", tt.name, tt.method, tt.path, code, resp, tt.want)
		}
	}
	idem := body(oOK1)
	api.do("POST", "/v1/messages", idem, "Idempotency-Key", "leakcheck-idem-1")
	if code, resp := api.do("POST", "/v1/messages", body(oOK2), "Idempotency-Key", "leakcheck-idem-1"); code < 400 {
		t.Errorf("an Idempotency-Key reused with another body = %d %s, want a refusal", code, resp)
	}
	// A key that contains the real one, and none at all: 401, and the answer
	// must not echo what was sent.
	for _, key := range []string{leakAPIKey + "x", ""} {
		wrong := &client{t: t, base: c.API, key: key}
		if code, resp := wrong.do("POST", "/v1/messages", body(oBadInput)); code != http.StatusUnauthorized {
			t.Errorf("POST with API key %q = %d %s, want 401", key, code, resp)
		}
		api.responses = append(api.responses, wrong.responses...)
	}

	// Callbacks: forged, malformed and unknown ones, plain and encrypted.
	ts, nonce := strconv.FormatInt(time.Now().Unix(), 10), "leaknonce1"
	plainSig := wechat.Signature(servicetest.Token, ts, nonce)
	cipher, err := wechat.NewCipher(leakAESKey, servicetest.AppID)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := cipher.Seal([]byte(resultXML(oCallback, 880000001)))
	if err != nil {
		t.Fatal(err)
	}
	envelope := func(encrypt string) string {
		return `<xml><ToUserName><![CDATA[gh_leakcheck]]></ToUserName><Encrypt><![CDATA[` + encrypt + `]]></Encrypt></xml>`
	}
	garbage := "bm90IGFuIGVudmVsb3BlIGF0IGFsbCwganVzdCBiYXNlNjQgdGV4dA=="
	aesQuery := func(encrypt string) string {
		return "encrypt_type=aes&timestamp=" + ts + "&nonce=" + nonce +
			"&msg_signature=" + wechat.Signature(servicetest.Token, ts, nonce, encrypt)
	}
	for _, tt := range []struct {
		name, method, query, body string
		want                      int
	}{
		// App default has an AES key, so every plain callback is refused
		// (403 plain_refused) before its signature or body is looked at.
		{name: "plain, bad signature", method: "POST", query: "signature=0123abcd&timestamp=" + ts + "&nonce=" + nonce,
			body: resultXML(oCallback, 880000002), want: 403},
		{name: "plain, no signature", method: "POST", query: "timestamp=" + ts, body: resultXML(oCallback, 880000002), want: 403},
		{name: "plain, signed, unknown msgid", method: "POST", query: "signature=" + plainSig + "&timestamp=" + ts + "&nonce=" + nonce,
			body: resultXML(oCallback, 880000003), want: 403},
		{name: "plain, signed, not XML", method: "POST", query: "signature=" + plainSig + "&timestamp=" + ts + "&nonce=" + nonce,
			body: "not xml at all " + oCallback, want: 403},
		{name: "verify, bad signature", method: "GET", query: "signature=0123abcd&timestamp=" + ts + "&nonce=" + nonce + "&echostr=e1",
			want: 403},
		{name: "verify, signed", method: "GET", query: "signature=" + plainSig + "&timestamp=" + ts + "&nonce=" + nonce + "&echostr=e2",
			want: 200},
		{name: "encrypted, bad msg_signature", method: "POST",
			query: "encrypt_type=aes&timestamp=" + ts + "&nonce=" + nonce + "&msg_signature=0123abcd", body: envelope(sealed), want: 403},
		{name: "encrypted, signed, bad envelope", method: "POST", query: aesQuery(garbage), body: envelope(garbage), want: 400},
		{name: "encrypted, signed, unknown msgid", method: "POST", query: aesQuery(sealed), body: envelope(sealed), want: 200},
	} {
		if code, resp := api.callback(tt.method, tt.query, tt.body); code != tt.want {
			t.Errorf("callback %s = %d %s, want %d", tt.name, code, resp, tt.want)
		}
	}

	// Every message reaches the state its rule leads to.
	for openID, state := range map[string]string{oPerm: "rejected", oBusy: "delivered", oHTTP: "delivered",
		oHang: "delivered", oTokenBad: "delivered", oDead: "dead", oBlock: "user_blocked"} {
		api.waitState(ids[openID], state)
	}
	api.waitState(later, "canceled")
	if code, resp := api.do("GET", "/v1/messages?state=dead", ""); code != http.StatusOK || !strings.Contains(resp, ids[oDead]) {
		t.Errorf("dead list = %d %s, want it to hold %s", code, resp, ids[oDead])
	}
	if code, resp := api.do("POST", "/v1/messages/"+ids[oDead]+"/retry", ""); code != http.StatusAccepted {
		t.Errorf("retry the dead message = %d %s", code, resp)
	}
	api.waitState(ids[oDead], "dead")
	api.do("GET", "/v1/apps/default/templates", "")
	api.do("GET", "/v1/apps/broken/templates", "")
	// The broken app's send stops the app: wait for the worker to say so, then
	// resume it (which runs the failing fetch once more).
	waitLog(t, c, "app stopped")
	api.do("POST", "/v1/apps/broken/resume", "")
	api.get(broken)
	tokens = append(tokens, accessToken())
	if tokens[0] == tokens[1] {
		t.Errorf("the access token did not change after token_invalid; the refresh path was not exercised")
	}
	if n := c.Sim.Stats().TokenFetches[servicetest.AppID]; n != len(tokens) {
		t.Errorf("the simulator issued %d access tokens, but the test searches for %d", n, len(tokens))
	}

	// Collect every surface.
	surfaces := map[string]string{}
	hooksMu.Lock()
	surfaces["status webhooks"] = hooks.String()
	hooksMu.Unlock()
	if !strings.Contains(surfaces["status webhooks"], `"state":"delivered"`) {
		t.Errorf("no delivered status webhook arrived; the webhook surface went unchecked:\n%.500s", surfaces["status webhooks"])
	}
	logs := c.Logs()
	for name, text := range logs {
		if !strings.Contains(text, `"level":"INFO"`) {
			t.Fatalf("%s logged no INFO line; the log capture is broken:\n%s", name, text)
		}
		surfaces[name+" logs"] = text
	}
	for i, resp := range api.responses {
		surfaces[fmt.Sprintf("API response %d", i)] = resp
	}
	for _, u := range c.Scrape {
		for _, page := range []string{u, strings.TrimSuffix(u, "/metrics") + "/readyz", strings.TrimSuffix(u, "/metrics") + "/healthz"} {
			// The enqueuer's /metrics asks for an API key when keys are set.
			req, _ := http.NewRequest(http.MethodGet, page, nil)
			req.Header.Set("Authorization", "Bearer "+leakAPIKey)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("GET %s = %d: that surface went unchecked", page, resp.StatusCode)
			}
			surfaces[page] = string(b)
		}
	}

	secrets := map[string]string{
		"app secret": servicetest.Secret, "broken app's secret": leakBrokenSecret,
		"callback token": servicetest.Token, "broken app's callback token": leakBrokenToken,
		"AES key": leakAESKey, "API key": leakAPIKey, "first access token": tokens[0], "second access token": tokens[1],
		"webhook secret": leakWebhookSecret,
	}
	for surface, text := range surfaces {
		for what, value := range secrets {
			if line, ok := lineWith(text, value); ok {
				t.Errorf("LEAK: %s contains the %s:\n  %s", surface, what, strings.ReplaceAll(line, value, "<"+what+">"))
			}
		}
	}
	openIDs := []string{oOK1, oOK2, oBatch, oPerm, oBusy, oHTTP, oHang, oTokenBad, oDead, oBlock, oLater, oBroken, oCallback, oBadInput}
	for _, openID := range openIDs {
		if line, ok := lineWith(surfaces["status webhooks"], openID); ok {
			t.Errorf("LEAK: a status webhook holds the openid %s:\n  %s", openID, line)
		}
	}
	for name, text := range logs {
		for _, openID := range openIDs {
			if line, ok := lineWith(text, openID); ok {
				t.Errorf("LEAK: %s logs hold the whole openid %s:\n  %s", name, openID, line)
			}
		}
	}
	// The masked form shows that recipients were logged, and masked.
	if !strings.Contains(logs["enqueuer"], `"touser":"`+logging.MaskOpenID(oOK1)+`"`) {
		t.Errorf("the enqueuer never logged the masked openid of %s; was the message accepted?", oOK1)
	}
}

// lineWith returns the first line of text containing s.
func lineWith(text, s string) (string, bool) {
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, s) {
			return line, true
		}
	}
	return "", false
}

// waitLog polls the cluster's logs until one process logged substr.
func waitLog(t *testing.T, c *servicetest.Cluster, substr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, text := range c.Logs() {
			if strings.Contains(text, substr) {
				return
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("no process logged %q within 30 s", substr)
}

// The Redis configuration checks at process start (issue 6) are tested here
// rather than in their own file because this file is where the service tests of
// this work live.

// TestUnsafeRedisConfigRefusesToStart: a Redis that may evict keys stops both
// processes before they serve, with the setting named and no password shown.
func TestUnsafeRedisConfigRefusesToStart(t *testing.T) {
	t.Parallel()
	const password = "redis-acl-pw-leakcheck-Xy3"
	redis := redistest.Start(t, redistest.WithArgs("--maxmemory-policy", "allkeys-lru"))
	if err := redis.Client(t).Do(context.Background(), "ACL", "SETUSER", "wxpush", "on", ">"+password, "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	for name, run := range map[string]func(context.Context, service.Env, io.Writer, io.Writer) error{
		"enqueuer": service.RunEnqueuer, "worker": service.RunWorker,
	} {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{
				"REDIS_URL":     "redis://wxpush:" + password + "@" + redis.Addr() + "/0",
				"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok123",
				"WXPUSH_ADMIN_ADDR": servicetest.FreeAddr(t), "WXPUSH_HTTP_ADDR": servicetest.FreeAddr(t),
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var logs strings.Builder
			err := run(ctx, func(k string) string { return env[k] }, io.Discard, &logs)
			var unsafe *redisconn.UnsafeConfigError
			if !errors.As(err, &unsafe) || !strings.Contains(err.Error(), "maxmemory-policy") || !strings.Contains(err.Error(), "allkeys-lru") {
				t.Fatalf("%s against allkeys-lru = %v, want an error naming maxmemory-policy and allkeys-lru", name, err)
			}
			if strings.Contains(err.Error(), password) || strings.Contains(logs.String(), password) {
				t.Errorf("the refusal or the logs contain the Redis password: %v\n%s", err, logs.String())
			}
		})
	}
}

// TestRedisConfigWarningsAreLogged: a Redis without persistence is allowed, but
// each process says at WARN what it risks, naming the setting.
func TestRedisConfigWarningsAreLogged(t *testing.T) {
	t.Parallel()
	redis := redistest.Start(t) // no persistence
	addr := servicetest.FreeAddr(t)
	logs := servicetest.Run(t, "worker", service.RunWorker, map[string]string{
		"REDIS_URL": redis.URL(), "WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok123",
		"WXPUSH_ADMIN_ADDR": addr,
	})
	servicetest.WaitHTTP(t, "http://"+addr+"/healthz")
	line, ok := lineWith(logs(), "a restart loses every queued message")
	if !ok || !strings.Contains(line, `"level":"WARN"`) || !strings.Contains(line, `"setting":"appendonly,save"`) {
		t.Errorf("worker logs = %s\nwant a WARN line with setting appendonly,save about persistence", logs())
	}
}

// TestEnqueuerSkipsConfigCheckWhenRedisIsDown: the enqueuer starts without
// Redis (and answers 503), logging that it could not check the settings.
func TestEnqueuerSkipsConfigCheckWhenRedisIsDown(t *testing.T) {
	t.Parallel()
	addr := servicetest.FreeAddr(t)
	logs := servicetest.Run(t, "enqueuer", service.RunEnqueuer, map[string]string{
		"REDIS_URL":     "redis://" + servicetest.FreeAddr(t) + "/0", // nothing listens there
		"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok123", "WXPUSH_HTTP_ADDR": addr,
	})
	api := "http://" + addr
	servicetest.WaitHTTP(t, api+"/healthz")
	if code, body := servicetest.Do(t, "POST", api+"/v1/messages", servicetest.MessageBody("oSkipCheckUser01")); code != http.StatusServiceUnavailable {
		t.Errorf("POST with Redis down = %d %s, want 503", code, body)
	}
	if line, ok := lineWith(logs(), "redis configuration check skipped"); !ok || !strings.Contains(line, `"level":"WARN"`) {
		t.Errorf("enqueuer logs = %s\nwant a WARN line saying the check was skipped", logs())
	}
}
