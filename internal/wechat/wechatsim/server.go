package wechatsim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Config describes the accounts and behaviour of a simulator.
type Config struct {
	// Apps are the accounts the simulator knows; at least one is required.
	Apps []App
	// Templates are per-app templates. An app with none accepts any
	// template_id and does not check data, so tests that do not care need no setup.
	Templates []Template
	// CallbackDelay is waited before a result callback is pushed; zero = push
	// right away (always in the background, except for OutcomeCallbackFirst).
	CallbackDelay time.Duration
	// CallbackTimeout is how long one callback try waits for a reply before it
	// counts as failed and is retried; zero = 5s, WeChat's own wait.
	CallbackTimeout time.Duration
	// CallbackConcurrency bounds the callbacks being pushed at once, as a
	// pusher with a queue does: more events wait their turn, and a try's
	// timeout starts with its request; zero = 64. (WeChat does not document
	// its pusher's concurrency; pushing every event at once would turn a
	// burst of sends into as many simultaneous requests.)
	CallbackConcurrency int
	// TokenTTL is the expires_in of issued tokens; zero = 7200s.
	TokenTTL time.Duration
	// Latency is added to every API reply, after the request took effect, so a
	// client that times out may still have sent the message; zero = none.
	Latency time.Duration
	// Rules decide the outcome of valid sends: the first matching rule wins,
	// no match = OutcomeSuccess.
	Rules []Rule
	// MsgIDBase is the first msgid minus one; zero = 1<<53, so msgids exceed
	// float64 precision and prove clients keep them as int64 or string.
	MsgIDBase int64
	// HTTPClient pushes callbacks; nil = a client with a 5s timeout.
	HTTPClient *http.Client
	// Logger receives callback and rule events; nil = discard.
	Logger *slog.Logger
	// Now is the clock for token lifetimes, de-duplication windows and the
	// timestamps of pushed callbacks (receivers check them against theirs); nil =
	// time.Now. Delays and timeouts always use real time.
	Now func() time.Time
}

// App is one Official Account.
type App struct {
	AppID  string
	Secret string
	// Token is the callback token that signs pushed events.
	Token string
	// CallbackURL receives result events; "" = none are pushed.
	CallbackURL string
	// OriginalID is the gh_… ToUserName of events; "" = "gh_" + AppID.
	OriginalID string
	// AESKey (EncodingAESKey), when set, pushes events in safe mode: sealed
	// and signed with msg_signature.
	AESKey string
}

// SampleTemplateID is the seed article's card-payment template (the 黄先生
// notice), which standalone mode and the wechat-sim binary give every app.
const SampleTemplateID = "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY"

// SampleTemplate returns that template for appID.
func SampleTemplate(appID string) Template {
	return Template{
		AppID: appID, TemplateID: SampleTemplateID, Title: "信用卡消费提醒",
		Content: "{{User.DATA}}，您好：\n您尾号{{CardNumber.DATA}}的卡于{{Date.DATA}}{{Type.DATA}}{{Money.DATA}}。\n" +
			"截至{{DeadTime.DATA}}，可用余额{{Left.DATA}}。",
	}
}

// Template is a private template of one app.
type Template struct {
	AppID      string
	TemplateID string
	Title      string
	// Content holds the {{key.DATA}} placeholders; their keys are exactly the
	// keys a send's data must provide.
	Content         string
	PrimaryIndustry string
	DeputyIndustry  string
	Example         string
}

const (
	defaultTokenTTL            = 7200 * time.Second
	defaultCallbackTimeout     = 5 * time.Second
	defaultCallbackConcurrency = 64
	defaultMsgIDBase           = 1 << 53
	// tokenGrace is how long a superseded token keeps working: WeChat lets old
	// and new overlap for about five minutes.
	tokenGrace = 5 * time.Minute
	// dedupWindow is how long a (touser, client_msg_id) pair is remembered.
	dedupWindow   = 10 * time.Minute
	callbackTries = 3
	maxBodyBytes  = 1 << 20
)

// Server is the simulator; it is an http.Handler.
type Server struct {
	tokenTTL        time.Duration
	callbackDelay   time.Duration
	callbackTimeout time.Duration
	latency         time.Duration
	client          *http.Client
	ownClient       bool
	// pushers holds one token per callback being pushed (CallbackConcurrency).
	pushers chan struct{}
	log     *slog.Logger
	now     func() time.Time
	mux     *http.ServeMux

	// quit is closed by Close; callback pushes and hanging replies watch it.
	quit chan struct{}
	wg   sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	apps      map[string]*app
	tokens    map[string]*token
	rules     []ruleState
	nextMsgID int64
	recent    map[dedupKey]int64
	// recentOrder lists recent keys oldest first, so expiry is cheap.
	recentOrder []recentEntry
	stats       counters
	pairs       map[PairKey]*PairStats
}

type app struct {
	App
	// templates is nil when the app has none configured, which turns the
	// template and data checks off.
	templates    map[string]Template
	templateList []Template
	current      string // newest /cgi-bin/token token
	previous     string // the one before it, in its grace period
	stable       string // current stable_token token
	stablePrev   string
}

// New validates cfg and returns a simulator. Errors name the bad field.
func New(cfg Config) (*Server, error) {
	if err := validate(cfg); err != nil {
		return nil, fmt.Errorf("wechatsim: %w", err)
	}
	s := &Server{
		tokenTTL:        cmpOr(cfg.TokenTTL, defaultTokenTTL),
		callbackDelay:   cfg.CallbackDelay,
		callbackTimeout: cmpOr(cfg.CallbackTimeout, defaultCallbackTimeout),
		pushers:         make(chan struct{}, cmpOr(cfg.CallbackConcurrency, defaultCallbackConcurrency)),
		latency:         cfg.Latency,
		client:          cfg.HTTPClient,
		log:             cfg.Logger,
		now:             cfg.Now,
		quit:            make(chan struct{}),
		apps:            make(map[string]*app, len(cfg.Apps)),
		tokens:          make(map[string]*token),
		rules:           newRuleStates(cfg.Rules),
		nextMsgID:       cmpOr(cfg.MsgIDBase, defaultMsgIDBase),
		recent:          make(map[dedupKey]int64),
		stats:           counters{tokenFetches: make(map[string]int), subscribeSends: make(map[string]int)},
		pairs:           make(map[PairKey]*PairStats),
	}
	if s.client == nil {
		// A transport of our own, so Close can drop its idle connections and
		// leave no goroutines behind. Callbacks go out concurrently, one per
		// accepted message, to one receiver: keep enough connections alive
		// for them (the default keeps 2 and dials the rest afresh).
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 256
		tr.MaxIdleConns = 256
		s.client = &http.Client{Timeout: defaultCallbackTimeout, Transport: tr}
		s.ownClient = true
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	for _, a := range cfg.Apps {
		if a.OriginalID == "" {
			a.OriginalID = "gh_" + a.AppID
		}
		s.apps[a.AppID] = &app{App: a}
	}
	for _, t := range cfg.Templates {
		a := s.apps[t.AppID]
		if a.templates == nil {
			a.templates = make(map[string]Template)
		}
		a.templates[t.TemplateID] = t
		a.templateList = append(a.templateList, t)
	}
	s.mux = s.routes()
	return s, nil
}

func cmpOr[T comparable](v, fallback T) T {
	var zero T
	if v == zero {
		return fallback
	}
	return v
}

func validate(cfg Config) error {
	if len(cfg.Apps) == 0 {
		return errors.New("Apps: at least one app is required")
	}
	seen := make(map[string]bool)
	for i, a := range cfg.Apps {
		switch {
		case a.AppID == "":
			return fmt.Errorf("Apps[%d].AppID: empty", i)
		case seen[a.AppID]:
			return fmt.Errorf("Apps[%d].AppID: %q appears twice", i, a.AppID)
		case a.Secret == "":
			return fmt.Errorf("Apps[%d].Secret: empty", i)
		case a.Token == "":
			return fmt.Errorf("Apps[%d].Token: empty (it signs callbacks)", i)
		}
		if err := checkCallbackURL(a.CallbackURL); err != nil {
			return fmt.Errorf("Apps[%d].CallbackURL: %w", i, err)
		}
		seen[a.AppID] = true
	}
	templates := make(map[[2]string]bool)
	for i, t := range cfg.Templates {
		key := [2]string{t.AppID, t.TemplateID}
		switch {
		case !seen[t.AppID]:
			return fmt.Errorf("Templates[%d].AppID: %q is not in Apps", i, t.AppID)
		case t.TemplateID == "":
			return fmt.Errorf("Templates[%d].TemplateID: empty", i)
		case templates[key]:
			return fmt.Errorf("Templates[%d].TemplateID: %q appears twice for app %q", i, t.TemplateID, t.AppID)
		}
		templates[key] = true
	}
	for name, d := range map[string]time.Duration{
		"CallbackDelay":   cfg.CallbackDelay,
		"CallbackTimeout": cfg.CallbackTimeout,
		"TokenTTL":        cfg.TokenTTL,
		"Latency":         cfg.Latency,
	} {
		if d < 0 {
			return fmt.Errorf("%s: %v is negative", name, d)
		}
	}
	if cfg.TokenTTL != 0 && cfg.TokenTTL < time.Second {
		return fmt.Errorf("TokenTTL: %v is under the 1s that expires_in can express", cfg.TokenTTL)
	}
	if cfg.CallbackConcurrency < 0 {
		return fmt.Errorf("CallbackConcurrency: %d is negative", cfg.CallbackConcurrency)
	}
	if cfg.MsgIDBase < 0 {
		return fmt.Errorf("MsgIDBase: %d is negative", cfg.MsgIDBase)
	}
	return validateRules(cfg.Rules)
}

func checkCallbackURL(raw string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http(s) URL", raw)
	}
	return nil
}

func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /cgi-bin/token", s.api(s.handleToken))
	mux.Handle("POST /cgi-bin/stable_token", s.api(s.handleStableToken))
	mux.Handle("POST /cgi-bin/message/template/send", s.api(s.handleSend))
	mux.Handle("POST /cgi-bin/message/subscribe/bizsend", s.api(s.handleSubscribeSend))
	mux.Handle("GET /cgi-bin/template/get_all_private_template", s.api(s.handleTemplates))
	mux.HandleFunc("GET /sim/stats", s.handleSimStats)
	mux.HandleFunc("GET /sim/pair", s.handleSimPair)
	mux.HandleFunc("POST /sim/rules", s.handleSimRules)
	mux.HandleFunc("POST /sim/revoke", s.handleSimRevoke)
	mux.HandleFunc("POST /sim/callback_url", s.handleSimCallbackURL)
	return mux
}

// ServeHTTP answers the WeChat API under /cgi-bin/ and the test controls under /sim/.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// SetRules replaces the rules; their Times counts start afresh.
func (s *Server) SetRules(rules []Rule) error {
	if err := validateRules(rules); err != nil {
		return fmt.Errorf("wechatsim: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules = newRuleStates(rules)
	return nil
}

// SetCallbackURL points an app's result events at rawURL ("" = none). It
// applies to callbacks pushed from now on, including those already waiting.
func (s *Server) SetCallbackURL(appID, rawURL string) error {
	if err := checkCallbackURL(rawURL); err != nil {
		return fmt.Errorf("wechatsim: callback URL: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[appID]
	if !ok {
		return fmt.Errorf("wechatsim: unknown app %q", appID)
	}
	a.CallbackURL = rawURL
	return nil
}

// Close stops pushing callbacks, ends hanging replies and waits for every
// goroutine the server started. The API keeps answering afterwards, but
// accepted messages push no callbacks. Close is idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.quit)
	}
	s.mu.Unlock()
	s.wg.Wait()
	if s.ownClient {
		s.client.CloseIdleConnections()
	}
}

// reply is what an API handler answers; writing it is left to api, which
// adds the configured latency first.
type reply struct {
	status int // zero = 200
	body   any // nil = empty body
	// abort drops the connection without a reply.
	abort bool
}

type errorBody struct {
	ErrCode int    `json:"errcode"`
	ErrMsg  string `json:"errmsg"`
}

// apiError is WeChat's error shape: HTTP 200 with errcode and an errmsg that
// ends in a request id.
func apiError(code int, msg string) reply {
	return reply{body: errorBody{ErrCode: code, ErrMsg: msg + " rid: " + rid()}}
}

func rid() string {
	return fmt.Sprintf("%016x", rand.Uint64())
}

func (s *Server) api(h func(*http.Request) reply) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rep := h(r)
		if rep.abort {
			abort(w)
			return
		}
		if s.latency > 0 {
			t := time.NewTimer(s.latency)
			defer t.Stop()
			select {
			case <-t.C:
			case <-s.quit:
			case <-r.Context().Done():
				return
			}
		}
		writeReply(w, rep)
	})
}

func writeReply(w http.ResponseWriter, rep reply) {
	if rep.body == nil {
		w.WriteHeader(cmpOr(rep.status, http.StatusOK))
		return
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// WeChat writes <, > and & as they are.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rep.body); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	// The odd "encoding" parameter is what WeChat sends.
	w.Header().Set("Content-Type", "application/json; encoding=utf-8")
	w.WriteHeader(cmpOr(rep.status, http.StatusOK))
	_, _ = w.Write(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
}

// abort closes the connection so the client sees a transport error rather
// than an empty 200.
func abort(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	_ = conn.Close()
}

// hang blocks until the client gives up or the server closes.
func (s *Server) hang(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-s.quit:
	}
}

// decodeJSON reads a JSON body of at most maxBodyBytes.
func decodeJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	if err != nil {
		return err
	}
	if len(body) > maxBodyBytes {
		return errors.New("body too large")
	}
	return json.Unmarshal(body, v)
}
