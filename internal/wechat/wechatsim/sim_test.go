package wechatsim

import (
	"context"
	"crypto/sha1"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testAppID  = "wxtest0000000001"
	testSecret = "test-secret"
	testToken  = "test-callback-token"
)

var ridRE = regexp.MustCompile(` rid: [0-9a-f]{8,}$`)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type bundle struct {
	sim   *Server
	ts    *httptest.Server
	clock *fakeClock
}

// setup starts a simulator with one app (unless cfg has apps) on a fake clock.
func setup(t *testing.T, cfg Config) *bundle {
	t.Helper()
	clock := &fakeClock{t: time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)}
	if cfg.Apps == nil {
		cfg.Apps = []App{{AppID: testAppID, Secret: testSecret, Token: testToken}}
	}
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	sim, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := httptest.NewServer(sim)
	// The simulator closes first: that ends hanging replies, which would
	// otherwise keep the test server's Close waiting.
	t.Cleanup(func() {
		sim.Close()
		ts.Close()
	})
	return &bundle{sim: sim, ts: ts, clock: clock}
}

// apiResult is one API reply, decoded with UseNumber so msgids keep every digit.
type apiResult struct {
	status int
	raw    string
	fields map[string]any
}

func (r apiResult) errcode() int64 {
	n, ok := r.fields["errcode"].(json.Number)
	if !ok {
		return 0
	}
	code, _ := n.Int64()
	return code
}

func (r apiResult) str(key string) string {
	switch v := r.fields[key].(type) {
	case string:
		return v
	case json.Number:
		return v.String()
	}
	return ""
}

func (b *bundle) call(t *testing.T, method, path, body string) apiResult {
	t.Helper()
	res, err := b.callContext(context.Background(), method, path, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return res
}

func (b *bundle) callContext(ctx context.Context, method, path, body string) (apiResult, error) {
	req, err := http.NewRequestWithContext(ctx, method, b.ts.URL+path, strings.NewReader(body))
	if err != nil {
		return apiResult{}, err
	}
	resp, err := b.ts.Client().Do(req)
	if err != nil {
		return apiResult{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return apiResult{}, err
	}
	res := apiResult{status: resp.StatusCode, raw: string(raw)}
	if len(raw) > 0 && resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		dec := json.NewDecoder(strings.NewReader(res.raw))
		dec.UseNumber()
		if err := dec.Decode(&res.fields); err != nil {
			return apiResult{}, fmt.Errorf("decode %q: %w", raw, err)
		}
	}
	return res, nil
}

// token fetches a /cgi-bin/token token for the test app.
func (b *bundle) token(t *testing.T) string {
	t.Helper()
	res := b.call(t, http.MethodGet, "/cgi-bin/token?grant_type=client_credential&appid="+testAppID+"&secret="+testSecret, "")
	tok := res.str("access_token")
	if tok == "" {
		t.Fatalf("no token: %s", res.raw)
	}
	return tok
}

func (b *bundle) send(t *testing.T, tok, body string) apiResult {
	t.Helper()
	return b.call(t, http.MethodPost, "/cgi-bin/message/template/send?access_token="+url.QueryEscape(tok), body)
}

func sendBodyFor(openID, clientMsgID string) string {
	return fmt.Sprintf(`{"touser":%q,"template_id":"tmpl","client_msg_id":%q,"data":{"first":{"value":"hi"}}}`, openID, clientMsgID)
}

func wantAPIError(t *testing.T, res apiResult, code int64) {
	t.Helper()
	if res.status != http.StatusOK {
		t.Fatalf("status = %d, want 200 (body %q)", res.status, res.raw)
	}
	if got := res.errcode(); got != code {
		t.Fatalf("errcode = %d, want %d (body %q)", got, code, res.raw)
	}
	if code != 0 && !ridRE.MatchString(res.str("errmsg")) {
		t.Fatalf("errmsg %q does not end with a rid", res.str("errmsg"))
	}
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// settle waits until every callback push the simulator has started is done.
// Callers must have no send in flight, so no push can start meanwhile.
func (s *Server) settle() { s.wg.Wait() }

// callbackEvent is the result event as a receiver parses it.
type callbackEvent struct {
	ToUserName   string `xml:"ToUserName"`
	FromUserName string `xml:"FromUserName"`
	CreateTime   int64  `xml:"CreateTime"`
	MsgType      string `xml:"MsgType"`
	Event        string `xml:"Event"`
	MsgID        string `xml:"MsgID"`
	Status       string `xml:"Status"`
}

type received struct {
	query    url.Values
	body     string
	event    callbackEvent
	validSig bool
}

// receiver is a callback endpoint that checks signatures on its own.
type receiver struct {
	ts    *httptest.Server
	token string

	mu       sync.Mutex
	events   []received
	requests int
	// failFirst answers the first failFirst requests 500.
	failFirst int
	// stallFirst makes the first stallFirst requests wait for the client to
	// give up.
	stallFirst int
	// hold keeps every request this long before it is answered; inFlight and
	// peak count the requests being answered at once.
	hold           time.Duration
	inFlight, peak int
}

func newReceiver(t *testing.T, token string) *receiver {
	t.Helper()
	rc := &receiver{token: token}
	rc.ts = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.ts.Close)
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.requests++
	n := rc.requests
	rc.inFlight++
	rc.peak = max(rc.peak, rc.inFlight)
	hold := rc.hold
	rc.mu.Unlock()
	defer func() { rc.mu.Lock(); rc.inFlight--; rc.mu.Unlock() }()
	time.Sleep(hold) // a slow receiver, not a wait for a condition
	rc.mu.Lock()
	stall, fail := n <= rc.stallFirst, n <= rc.stallFirst+rc.failFirst
	rc.mu.Unlock()
	if stall {
		<-r.Context().Done()
		return
	}
	if fail {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	q := r.URL.Query()
	rec := received{query: q, body: string(body), validSig: checkSignature(rc.token, q)}
	if err := xml.Unmarshal(body, &rec.event); err != nil {
		rec.body = "unparsable: " + err.Error()
	}
	rc.mu.Lock()
	rc.events = append(rc.events, rec)
	rc.mu.Unlock()
	_, _ = io.WriteString(w, "success")
}

// checkSignature is the receiver's side of the signature, written without
// the simulator's helper.
func checkSignature(token string, q url.Values) bool {
	parts := []string{token, q.Get("timestamp"), q.Get("nonce")}
	slices.Sort(parts)
	h := sha1.New()
	for _, p := range parts {
		io.WriteString(h, p)
	}
	return fmt.Sprintf("%x", h.Sum(nil)) == q.Get("signature") && q.Get("signature") != ""
}

func (rc *receiver) got() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.events)
}

func (rc *receiver) count() int { return len(rc.got()) }

func checkSignatureHex(s string) string {
	return fmt.Sprintf("%x", sha1.Sum([]byte(s)))
}
