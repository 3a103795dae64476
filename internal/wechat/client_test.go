package wechat_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/testport"
	"github.com/wxpush/wxpush/internal/wechat"
)

// Distinctive credentials: if any of them shows up in an error's text, the
// error leaked the request URL or body (invariant 7).
const (
	clientTestAppID  = "wxclienttestapp"
	clientTestSecret = "SECRET-CANARY-7f3a9c1e5b"
	clientTestToken  = "TOKEN-CANARY-2d8e6f0a4c"
)

// clientTestRequest is what the fake WeChat received.
type clientTestRequest struct {
	method      string
	path        string
	query       url.Values
	contentType string
	body        []byte
}

// clientTestRecorder is a fake WeChat endpoint that records every request and
// answers each with reply.
type clientTestRecorder struct {
	mu   sync.Mutex
	reqs []clientTestRequest
}

func (rec *clientTestRecorder) handler(t *testing.T, reply string) http.HandlerFunc {
	t.Helper()
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("read request body: %v", err)
		}
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, clientTestRequest{
			method:      r.Method,
			path:        r.URL.Path,
			query:       r.URL.Query(),
			contentType: r.Header.Get("Content-Type"),
			body:        body,
		})
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "application/json; encoding=utf-8")
		_, _ = io.WriteString(w, reply)
	}
}

// only returns the single request received, failing the test otherwise.
func (rec *clientTestRecorder) only(t *testing.T) clientTestRequest {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.reqs) != 1 {
		t.Fatalf("fake WeChat got %d requests, want 1", len(rec.reqs))
	}
	return rec.reqs[0]
}

// clientTestServer starts a fake WeChat answering every request with reply.
func clientTestServer(t *testing.T, reply string) (*httptest.Server, *clientTestRecorder) {
	t.Helper()
	rec := &clientTestRecorder{}
	srv := httptest.NewServer(rec.handler(t, reply))
	t.Cleanup(srv.Close)
	return srv, rec
}

// clientTestNoLeak fails if the error, formatted in any of the ways a logger
// might, or any error in its chain, contains one of the secrets.
func clientTestNoLeak(t *testing.T, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		return
	}
	texts := []string{err.Error(), fmt.Sprint(err), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err), fmt.Sprintf("%s", err), fmt.Sprintf("%q", err)}
	for e := errors.Unwrap(err); e != nil; e = errors.Unwrap(e) {
		texts = append(texts, e.Error(), fmt.Sprintf("%+v", e))
	}
	for _, s := range secrets {
		for _, form := range []string{s, url.QueryEscape(s)} {
			for _, text := range texts {
				if strings.Contains(text, form) {
					t.Errorf("error text leaks a secret %q: %s", form, text)
				}
			}
		}
	}
}

func clientTestMessage() *wechat.TemplateMessage {
	return &wechat.TemplateMessage{
		ToUser:     "oUser123",
		TemplateID: "tmpl-1",
		Data:       map[string]wechat.DataItem{"thing1": {Value: "hello"}},
	}
}

func TestFetchToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		appID, secret string
		expiresIn     int
		trailingSlash bool
	}{
		{name: "typical reply", appID: clientTestAppID, secret: clientTestSecret, expiresIn: 7200},
		{name: "short lifetime", appID: "wx2", secret: "s2", expiresIn: 300},
		{name: "secret needing query escaping", appID: "wx3", secret: "a&b=c+d/e%f g", expiresIn: 7200},
		{name: "base URL with trailing slash", appID: "wx4", secret: "s4", expiresIn: 7200, trailingSlash: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, rec := clientTestServer(t, fmt.Sprintf(`{"access_token":"tok-%s","expires_in":%d}`, tt.appID, tt.expiresIn))
			base := srv.URL
			if tt.trailingSlash {
				base += "/"
			}
			c := wechat.NewClient(base)

			before := time.Now()
			tok, err := c.FetchToken(context.Background(), tt.appID, tt.secret)
			after := time.Now()
			if err != nil {
				t.Fatalf("FetchToken: %v", err)
			}
			if want := "tok-" + tt.appID; tok.Value != want {
				t.Errorf("Value = %q, want %q", tok.Value, want)
			}
			life := time.Duration(tt.expiresIn) * time.Second
			if tok.ExpiresAt.Before(before.Add(life)) || tok.ExpiresAt.After(after.Add(life)) {
				t.Errorf("ExpiresAt = %v, want within [%v, %v] (now + expires_in)", tok.ExpiresAt, before.Add(life), after.Add(life))
			}

			req := rec.only(t)
			if req.method != http.MethodGet {
				t.Errorf("method = %s, want GET", req.method)
			}
			if req.path != "/cgi-bin/token" {
				t.Errorf("path = %q, want /cgi-bin/token", req.path)
			}
			wantQuery := url.Values{"grant_type": {"client_credential"}, "appid": {tt.appID}, "secret": {tt.secret}}
			if !reflect.DeepEqual(req.query, wantQuery) {
				t.Errorf("query = %v, want %v", req.query, wantQuery)
			}
		})
	}
}

func TestFetchStableToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		force bool
	}{
		{name: "normal mode", force: false},
		{name: "force refresh", force: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, rec := clientTestServer(t, `{"access_token":"stable-tok","expires_in":7100}`)
			c := wechat.NewClient(srv.URL)

			before := time.Now()
			tok, err := c.FetchStableToken(context.Background(), clientTestAppID, clientTestSecret, tt.force)
			after := time.Now()
			if err != nil {
				t.Fatalf("FetchStableToken: %v", err)
			}
			if tok.Value != "stable-tok" {
				t.Errorf("Value = %q, want stable-tok", tok.Value)
			}
			life := 7100 * time.Second
			if tok.ExpiresAt.Before(before.Add(life)) || tok.ExpiresAt.After(after.Add(life)) {
				t.Errorf("ExpiresAt = %v, want within [%v, %v]", tok.ExpiresAt, before.Add(life), after.Add(life))
			}

			req := rec.only(t)
			if req.method != http.MethodPost || req.path != "/cgi-bin/stable_token" {
				t.Errorf("request = %s %s, want POST /cgi-bin/stable_token", req.method, req.path)
			}
			if len(req.query) != 0 {
				t.Errorf("query = %v, want none (the secret belongs in the body)", req.query)
			}
			if !strings.HasPrefix(req.contentType, "application/json") {
				t.Errorf("Content-Type = %q, want application/json", req.contentType)
			}
			var got map[string]any
			if err := json.Unmarshal(req.body, &got); err != nil {
				t.Fatalf("body %s is not JSON: %v", req.body, err)
			}
			want := map[string]any{
				"grant_type":    "client_credential",
				"appid":         clientTestAppID,
				"secret":        clientTestSecret,
				"force_refresh": tt.force,
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("body = %v, want %v", got, want)
			}
		})
	}
}

func TestSendTemplateRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		token string
		msg   *wechat.TemplateMessage
		want  map[string]any
	}{
		{
			name:  "every field",
			token: clientTestToken,
			msg: &wechat.TemplateMessage{
				ToUser:      "oia2TjuEGTNoeX76QEjQNrcURxG8",
				TemplateID:  "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY",
				URL:         "https://example.com/order?id=1&x=<y>",
				MiniProgram: &wechat.MiniProgram{AppID: "wxminiapp", PagePath: "index?foo=bar"},
				Data: map[string]wechat.DataItem{
					"thing1": {Value: "订单已发货", Color: "#173177"},
					"time2":  {Value: "2024-01-02 15:04"},
				},
				ClientMsgID: "msg-01HXYZ",
				Color:       "#FF0000",
				TopColor:    "#00FF00",
			},
			want: map[string]any{
				"touser":      "oia2TjuEGTNoeX76QEjQNrcURxG8",
				"template_id": "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY",
				"url":         "https://example.com/order?id=1&x=<y>",
				"miniprogram": map[string]any{"appid": "wxminiapp", "pagepath": "index?foo=bar"},
				"data": map[string]any{
					"thing1": map[string]any{"value": "订单已发货", "color": "#173177"},
					"time2":  map[string]any{"value": "2024-01-02 15:04"},
				},
				"client_msg_id": "msg-01HXYZ",
				"color":         "#FF0000",
				"topcolor":      "#00FF00",
			},
		},
		{
			name:  "only required fields: optional ones are omitted",
			token: clientTestToken,
			msg: &wechat.TemplateMessage{
				ToUser:     "oUser",
				TemplateID: "tmpl",
				Data:       map[string]wechat.DataItem{"first": {Value: ""}},
			},
			want: map[string]any{
				"touser":      "oUser",
				"template_id": "tmpl",
				// value is required by WeChat even when empty.
				"data": map[string]any{"first": map[string]any{"value": ""}},
			},
		},
		{
			name:  "mini program without page path",
			token: clientTestToken,
			msg: &wechat.TemplateMessage{
				ToUser:      "oUser",
				TemplateID:  "tmpl",
				MiniProgram: &wechat.MiniProgram{AppID: "wxmini"},
				Data:        map[string]wechat.DataItem{"k": {Value: "v"}},
			},
			want: map[string]any{
				"touser":      "oUser",
				"template_id": "tmpl",
				"miniprogram": map[string]any{"appid": "wxmini"},
				"data":        map[string]any{"k": map[string]any{"value": "v"}},
			},
		},
		{
			name:  "token needing query escaping",
			token: "a+b/c=d&e f",
			msg:   clientTestMessage(),
			want: map[string]any{
				"touser":      "oUser123",
				"template_id": "tmpl-1",
				"data":        map[string]any{"thing1": map[string]any{"value": "hello"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, rec := clientTestServer(t, `{"errcode":0,"errmsg":"ok","msgid":200228332}`)
			c := wechat.NewClient(srv.URL)

			id, err := c.SendTemplate(context.Background(), tt.token, tt.msg)
			if err != nil {
				t.Fatalf("SendTemplate: %v", err)
			}
			if id != 200228332 {
				t.Errorf("msgid = %d, want 200228332", id)
			}
			req := rec.only(t)
			if req.method != http.MethodPost || req.path != "/cgi-bin/message/template/send" {
				t.Errorf("request = %s %s, want POST /cgi-bin/message/template/send", req.method, req.path)
			}
			if got := req.query["access_token"]; len(got) != 1 || got[0] != tt.token {
				t.Errorf("access_token = %q, want [%q]", got, tt.token)
			}
			if !strings.HasPrefix(req.contentType, "application/json") {
				t.Errorf("Content-Type = %q, want application/json", req.contentType)
			}
			var got map[string]any
			if err := json.Unmarshal(req.body, &got); err != nil {
				t.Fatalf("body %s is not JSON: %v", req.body, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("body = %s\nwant   %v", req.body, tt.want)
			}
			if strings.Contains(string(req.body), tt.token) {
				t.Errorf("body carries the access token: %s", req.body)
			}
		})
	}
}

func TestSendTemplateMsgID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		reply   string
		want    int64
		wantErr bool
	}{
		{name: "small", reply: `{"errcode":0,"errmsg":"ok","msgid":200228332}`, want: 200228332},
		// 2^53+1 is the first integer float64 cannot hold: it would come back as 2^53.
		{name: "above 2^53", reply: `{"errcode":0,"errmsg":"ok","msgid":9007199254740993}`, want: 9007199254740993},
		{name: "max int64", reply: `{"errcode":0,"errmsg":"ok","msgid":9223372036854775807}`, want: 9223372036854775807},
		{name: "no errcode field", reply: `{"msgid":9007199254740995}`, want: 9007199254740995},
		{name: "beyond int64 is an error, not a wrong number", reply: `{"errcode":0,"errmsg":"ok","msgid":18446744073709551615}`, wantErr: true},
		{name: "fractional is an error", reply: `{"errcode":0,"errmsg":"ok","msgid":1.5}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, _ := clientTestServer(t, tt.reply)
			c := wechat.NewClient(srv.URL)
			id, err := c.SendTemplate(context.Background(), clientTestToken, clientTestMessage())
			if tt.wantErr {
				var te *wechat.TransportError
				if !errors.As(err, &te) {
					t.Fatalf("SendTemplate = %d, %v; want a *TransportError", id, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("SendTemplate: %v", err)
			}
			if id != tt.want {
				t.Errorf("msgid = %d, want %d", id, tt.want)
			}
		})
	}
}

// clientTestCall is one Client method, as the tests drive it.
type clientTestCall struct {
	name string
	api  string // the API name in errors and observer calls
	do   func(ctx context.Context, c *wechat.Client) error
}

func clientTestCalls() []clientTestCall {
	return []clientTestCall{
		{name: "FetchToken", api: "token", do: func(ctx context.Context, c *wechat.Client) error {
			_, err := c.FetchToken(ctx, clientTestAppID, clientTestSecret)
			return err
		}},
		{name: "FetchStableToken", api: "stable_token", do: func(ctx context.Context, c *wechat.Client) error {
			_, err := c.FetchStableToken(ctx, clientTestAppID, clientTestSecret, false)
			return err
		}},
		{name: "SendTemplate", api: "template/send", do: func(ctx context.Context, c *wechat.Client) error {
			_, err := c.SendTemplate(ctx, clientTestToken, clientTestMessage())
			return err
		}},
	}
}

func TestErrcodeRepliesBecomeAPIError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		code    int
		msg     string
		wantRID string
	}{
		{name: "system busy", code: -1, msg: "system error rid: 65f0a1b2-11", wantRID: "65f0a1b2-11"},
		{name: "invalid secret", code: 40125, msg: "invalid appsecret rid: 65f0a1b2-22", wantRID: "65f0a1b2-22"},
		{name: "not following", code: 43004, msg: "require subscribe rid: 65f0a1b2-33", wantRID: "65f0a1b2-33"},
		{name: "daily quota", code: 45009, msg: "reach max api daily quota limit", wantRID: ""},
	}
	for _, call := range clientTestCalls() {
		for _, tt := range tests {
			t.Run(call.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				body, _ := json.Marshal(map[string]any{"errcode": tt.code, "errmsg": tt.msg})
				srv, _ := clientTestServer(t, string(body))
				err := call.do(context.Background(), wechat.NewClient(srv.URL))
				var apiErr *wechat.APIError
				if !errors.As(err, &apiErr) {
					t.Fatalf("err = %v (%T), want *APIError", err, err)
				}
				if apiErr.Code != tt.code || apiErr.Msg != tt.msg || apiErr.API != call.api {
					t.Errorf("APIError = {API:%q Code:%d Msg:%q}, want {API:%q Code:%d Msg:%q}", apiErr.API, apiErr.Code, apiErr.Msg, call.api, tt.code, tt.msg)
				}
				if got := apiErr.RID(); got != tt.wantRID {
					t.Errorf("RID() = %q, want %q", got, tt.wantRID)
				}
				clientTestNoLeak(t, err, clientTestSecret, clientTestToken)
			})
		}
	}
}

// clientTestFailure is a way for a call to get no usable WeChat reply.
type clientTestFailure struct {
	name string
	// start returns the base URL of a misbehaving server, and optionally a
	// client to use and a context deadline.
	start      func(t *testing.T) string
	httpClient *http.Client
	ctxTimeout time.Duration
	wantStatus int
}

// clientTestEcho is a body that repeats the request URL and body, as a proxy's
// error page might: the client must not copy it into an error.
func clientTestEcho(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	_, _ = fmt.Fprintf(w, "<html><body>error for %s %s body=%s</body></html>", r.Method, r.URL.String(), b)
}

func clientTestFailures() []clientTestFailure {
	hang := func(t *testing.T) string {
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}))
		// Registered after NewServer, so it runs first and frees any handler
		// still blocked before Close waits for them.
		t.Cleanup(srv.Close)
		t.Cleanup(func() { close(release) })
		return srv.URL
	}
	return []clientTestFailure{
		{
			name: "HTTP 500 echoing the URL",
			start: func(t *testing.T) string {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.WriteHeader(http.StatusInternalServerError)
					clientTestEcho(w, r)
				}))
				t.Cleanup(srv.Close)
				return srv.URL
			},
			wantStatus: http.StatusInternalServerError,
		},
		{
			name: "HTTP 502 empty body",
			start: func(t *testing.T) string {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.WriteHeader(http.StatusBadGateway)
				}))
				t.Cleanup(srv.Close)
				return srv.URL
			},
			wantStatus: http.StatusBadGateway,
		},
		{
			name: "HTTP 200 non-JSON body echoing the URL",
			start: func(t *testing.T) string {
				srv := httptest.NewServer(http.HandlerFunc(clientTestEcho))
				t.Cleanup(srv.Close)
				return srv.URL
			},
		},
		{
			name: "HTTP 200 empty body",
			start: func(t *testing.T) string {
				srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
				t.Cleanup(srv.Close)
				return srv.URL
			},
		},
		{
			name: "connection dropped without a reply",
			start: func(t *testing.T) string {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					conn, _, err := http.NewResponseController(w).Hijack()
					if err == nil {
						_ = conn.Close()
					}
				}))
				t.Cleanup(srv.Close)
				return srv.URL
			},
		},
		{
			name: "connection refused",
			start: func(t *testing.T) string {
				return "http://" + testport.Addr(t) // nothing listens there
			},
		},
		{
			name:       "client timeout",
			start:      hang,
			httpClient: &http.Client{Timeout: 100 * time.Millisecond},
		},
		{
			name:       "context deadline",
			start:      hang,
			ctxTimeout: 100 * time.Millisecond,
		},
	}
}

// TestTransportFailures checks that every way of getting no WeChat reply is a
// *TransportError, classed transient, and that none of them leaks the secret
// or token that the request carried.
func TestTransportFailures(t *testing.T) {
	t.Parallel()
	for _, call := range clientTestCalls() {
		for _, tt := range clientTestFailures() {
			t.Run(call.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				base := tt.start(t)
				var opts []wechat.ClientOption
				if tt.httpClient != nil {
					opts = append(opts, wechat.WithHTTPClient(tt.httpClient))
				}
				c := wechat.NewClient(base, opts...)
				ctx := context.Background()
				if tt.ctxTimeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tt.ctxTimeout)
					defer cancel()
				}

				err := call.do(ctx, c)
				var te *wechat.TransportError
				if !errors.As(err, &te) {
					t.Fatalf("err = %v (%T), want *TransportError", err, err)
				}
				if te.API != call.api {
					t.Errorf("TransportError.API = %q, want %q", te.API, call.api)
				}
				if te.StatusCode != tt.wantStatus {
					t.Errorf("TransportError.StatusCode = %d, want %d", te.StatusCode, tt.wantStatus)
				}
				if got := wechat.ClassOfError(err); got != wechat.ClassTransient {
					t.Errorf("ClassOfError = %v, want transient", got)
				}
				clientTestNoLeak(t, err, clientTestSecret, clientTestToken)
			})
		}
	}
}

type clientTestObservation struct {
	api string
	d   time.Duration
	err error
}

type clientTestObserver struct {
	mu    sync.Mutex
	calls []clientTestObservation
}

func (o *clientTestObserver) observe(api string, d time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, clientTestObservation{api: api, d: d, err: err})
}

func (o *clientTestObserver) only(t *testing.T) clientTestObservation {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.calls) != 1 {
		t.Fatalf("observer called %d times (%v), want once", len(o.calls), o.calls)
	}
	return o.calls[0]
}

func TestObserver(t *testing.T) {
	t.Parallel()
	okReplies := map[string]string{
		"token":         `{"access_token":"tok","expires_in":7200}`,
		"stable_token":  `{"access_token":"tok","expires_in":7200}`,
		"template/send": `{"errcode":0,"errmsg":"ok","msgid":1}`,
	}
	tests := []struct {
		name    string
		reply   func(api string) string // "" = HTTP 500
		wantErr bool
	}{
		{name: "success", reply: func(api string) string { return okReplies[api] }},
		{name: "errcode", reply: func(string) string { return `{"errcode":-1,"errmsg":"system error rid: r"}` }, wantErr: true},
		{name: "http 500", reply: func(string) string { return "" }, wantErr: true},
	}
	for _, call := range clientTestCalls() {
		for _, tt := range tests {
			t.Run(call.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				reply := tt.reply(call.api)
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if reply == "" {
						w.WriteHeader(http.StatusInternalServerError)
						return
					}
					_, _ = io.WriteString(w, reply)
				}))
				t.Cleanup(srv.Close)
				obs := &clientTestObserver{}
				c := wechat.NewClient(srv.URL, wechat.WithObserver(obs.observe))

				err := call.do(context.Background(), c)
				if (err != nil) != tt.wantErr {
					t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
				}
				got := obs.only(t)
				if got.api != call.api {
					t.Errorf("observed api = %q, want %q", got.api, call.api)
				}
				if got.err != err {
					t.Errorf("observed err = %v, want the returned error %v", got.err, err)
				}
				if got.d < 0 {
					t.Errorf("observed duration %v is negative", got.d)
				}
			})
		}
	}
}

// clientTestMalformed are replies with errcode 0 (or none) that lack what the
// call needs: not an answer WeChat gives, but a proxy or a protocol change might.
func clientTestMalformed() []struct {
	call  clientTestCall
	reply string
} {
	calls := clientTestCalls()
	return []struct {
		call  clientTestCall
		reply string
	}{
		{call: calls[0], reply: `{"expires_in":7200}`},
		{call: calls[0], reply: `{"access_token":"tok"}`},
		{call: calls[1], reply: `{"errcode":0,"errmsg":"ok","expires_in":7200}`},
		{call: calls[1], reply: `{"access_token":"tok","expires_in":0}`},
		{call: calls[2], reply: `{"errcode":0,"errmsg":"ok","msgid":"abc"}`},
		{call: calls[2], reply: `{"errcode":0,"errmsg":"ok","msgid":-5}`},
	}
}

// TestSendTemplateWithoutMsgID: WeChat's answer to a de-duplicated repeat is not
// documented; a success without a msgid is an accepted message whose msgid is
// unknown (0), not an error that would make wxpush send it again.
func TestSendTemplateWithoutMsgID(t *testing.T) {
	t.Parallel()
	srv, _ := clientTestServer(t, `{"errcode":0,"errmsg":"ok"}`)
	id, err := wechat.NewClient(srv.URL).SendTemplate(context.Background(), "tok", &wechat.TemplateMessage{ToUser: "o"})
	if err != nil || id != 0 {
		t.Fatalf("SendTemplate = %d, %v; want 0, nil", id, err)
	}
}

func TestMalformedSuccessReply(t *testing.T) {
	t.Parallel()
	for _, tt := range clientTestMalformed() {
		t.Run(tt.call.name+"/"+tt.reply, func(t *testing.T) {
			t.Parallel()
			srv, _ := clientTestServer(t, tt.reply)
			err := tt.call.do(context.Background(), wechat.NewClient(srv.URL))
			var te *wechat.TransportError
			if !errors.As(err, &te) {
				t.Fatalf("err = %v (%T), want *TransportError", err, err)
			}
			if got := wechat.ClassOfError(err); got != wechat.ClassTransient {
				t.Errorf("ClassOfError = %v, want transient", got)
			}
			clientTestNoLeak(t, err, clientTestSecret, clientTestToken)
		})
	}
}

// TestMalformedReplyErrorNamesItsAPI: the error of a malformed reply names the
// API that was called, like every other error of the call.
//
// TestMalformedReplyErrorNamesItsAPI is a regression test: a bad stable_token
// reply was once reported as coming from the token API.
func TestMalformedReplyErrorNamesItsAPI(t *testing.T) {
	t.Parallel()
	for _, tt := range clientTestMalformed() {
		t.Run(tt.call.name+"/"+tt.reply, func(t *testing.T) {
			t.Parallel()
			srv, _ := clientTestServer(t, tt.reply)
			err := tt.call.do(context.Background(), wechat.NewClient(srv.URL))
			var te *wechat.TransportError
			if !errors.As(err, &te) {
				t.Fatalf("err = %v (%T), want *TransportError", err, err)
			}
			if te.API != tt.call.api {
				t.Errorf("TransportError.API = %q, want %q (err: %v)", te.API, tt.call.api, err)
			}
		})
	}
}

// TestObserverSeesMalformedReply: the observer (the API duration histogram,
// labelled by outcome) must see the error the caller gets.
//
// TestObserverSeesMalformedReply is a regression test: replies that the caller
// treats as failures were once observed (and counted) as successes.
func TestObserverSeesMalformedReply(t *testing.T) {
	t.Parallel()
	for _, tt := range clientTestMalformed() {
		t.Run(tt.call.name+"/"+tt.reply, func(t *testing.T) {
			t.Parallel()
			srv, _ := clientTestServer(t, tt.reply)
			obs := &clientTestObserver{}
			err := tt.call.do(context.Background(), wechat.NewClient(srv.URL, wechat.WithObserver(obs.observe)))
			if err == nil {
				t.Fatalf("call succeeded on malformed reply %s", tt.reply)
			}
			got := obs.only(t)
			if got.api != tt.call.api {
				t.Errorf("observed api = %q, want %q", got.api, tt.call.api)
			}
			if got.err == nil {
				t.Errorf("observer saw success, but the call returned %v", err)
			}
		})
	}
}

// TestTokenStringHidesValue: a Token printed by a logger shows no token value.
func TestTokenStringHidesValue(t *testing.T) {
	t.Parallel()
	tok := wechat.Token{Value: clientTestToken, ExpiresAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	tests := []struct {
		name string
		text string
	}{
		{name: "String", text: tok.String()},
		{name: "%v", text: fmt.Sprintf("%v", tok)},
		{name: "%+v", text: fmt.Sprintf("%+v", tok)},
		//lint:ignore S1025 the test is about what the %s verb prints
		{name: "%s", text: fmt.Sprintf("%s", tok)},
		{name: "pointer %v", text: fmt.Sprintf("%v", &tok)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if strings.Contains(tt.text, clientTestToken) {
				t.Errorf("%s leaks the token: %s", tt.name, tt.text)
			}
			if !strings.Contains(tt.text, "2025-01-02T03:04:05Z") {
				t.Errorf("%s = %q, want the expiry shown", tt.name, tt.text)
			}
		})
	}
}
