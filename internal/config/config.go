package config

import (
	"errors"
	"math"
	"strings"
	"time"

	"github.com/wxpush/wxpush/internal/secret"
)

// DefaultApp is the name of the app defined by the WECHAT_* variables.
const DefaultApp = "default"

// App is one WeChat Official Account wxpush sends for.
type App struct {
	Name   string // wxpush's name: in the API, callback path /wechat/callback/{Name}, metric labels
	AppID  string
	Secret secret.Value
	Token  secret.Value // callback token: signs WeChat's callbacks
	AESKey secret.Value // EncodingAESKey (encrypted callbacks); empty = plaintext callbacks only
	// PreviousToken and PreviousAESKey are still accepted on callbacks while a rotation
	// is in progress; empty = only the current ones.
	PreviousToken  secret.Value
	PreviousAESKey secret.Value
	// CallbackCompat accepts plain callbacks too for an app with an AESKey
	// (WeChat's compatible mode). The zero value accepts only encrypted ones
	// from such an app: a plain signature covers neither the body nor anything
	// a captured URL does not already show.
	CallbackCompat bool
	// StableToken uses /cgi-bin/stable_token instead of /cgi-bin/token.
	StableToken bool
	// RateLimit caps this app's sends across the cluster; the zero value = no
	// wxpush-side limit (WeChat's own limits still apply).
	RateLimit RateLimit
	// RecipientLimit caps messages per openid; the zero value = no cap.
	RecipientLimit RecipientLimit
	// MaxBacklog is the most unfinished messages the API accepts for this app before it
	// answers 429; 0 = unlimited.
	MaxBacklog int
	// ValidateTemplates checks a message's template_id and data keys before it is
	// queued. Load sets it to true unless the file says false; the zero value = off.
	ValidateTemplates bool
	// StatusURL is where the state changes of this app's messages that name no
	// status_url of their own are POSTed; empty = none (see config/webhook.go).
	StatusURL string
	// WebhookSecret signs this app's status webhooks (Wxpush-Signature); it is
	// required when StatusURL is set or messages carry a status_url.
	WebhookSecret secret.Value
	// WebhookStates are the states whose changes are POSTed; nil = DefaultWebhookStates.
	WebhookStates []string
	// UpstreamURL is the company's existing WeChat handler: every callback
	// wxpush does not consume is relayed to it (see config/relay.go); empty =
	// none, such callbacks are answered "success".
	UpstreamURL string
	// RelayAll also copies the callbacks wxpush consumes (delivery results,
	// subscribe popups) to UpstreamURL, in the background.
	RelayAll bool
	// RelayVerify relays WeChat's URL verification (GET with echostr) to
	// UpstreamURL and answers its reply; false = wxpush answers it itself.
	RelayVerify bool

	origin origin // where the fields came from, so Validate names them as written
}

// RateLimit is a token bucket: PerSecond sustained, Burst at once.
type RateLimit struct {
	PerSecond float64 // 0 = no limit
	Burst     int     // Load sets 0 to ceil(PerSecond) when PerSecond > 0
}

// RecipientLimit allows at most Max messages per openid in any Window.
type RecipientLimit struct {
	Max    int // 0 = no limit
	Window time.Duration
}

// origin records which source set an App's fields. The zero value (an App built in
// code) is named like a file app, except an app called DefaultApp, whose fields are
// named by their WECHAT_* variables as before files existed.
type origin struct {
	file bool   // the app is in WXPUSH_CONFIG
	env  uint16 // bit i: envAppVars[i] overrode the field
}

// Config is everything a wxpush process needs.
type Config struct {
	// RedisURL is redis://[user:pass@]host:port/db, rediss://… (TLS) or
	// redis-sentinel://[user:pass@]host:port[,host:port…]/master[/db]; empty =
	// standalone mode.
	RedisURL      string
	WeChatAPIBase string // empty = the real WeChat host
	HTTPAddr      string // enqueuer: API, callback, metrics
	AdminAddr     string // worker: metrics, health
	APIKeys       []secret.Value
	// Apps are the configured apps: the file's in file order, then the env-defined
	// default app if the file has none of that name. Treat as read-only after Load;
	// replacing the whole slice is fine (App then falls back to a scan).
	Apps []App

	Concurrency    int           // worker goroutines sending at once
	MaxAttempts    int           // send attempts before a message is dead
	RetryBase      time.Duration // first retry delay (exponential, jittered)
	RetryCap       time.Duration // largest retry delay
	SendTimeout    time.Duration // one WeChat API call
	Retention      time.Duration // how long final records are kept
	ConfirmTimeout time.Duration // how long a sent message waits for its callback
	CallbackHold   time.Duration // how long a callback for an unknown msgid is kept
	// CallbackWindow is how far a callback's timestamp may be from this
	// server's clock, either way; its nonce is remembered that long. At least
	// MinCallbackWindow.
	CallbackWindow time.Duration
	// OrphanAfter is how long a record may stay without a task before the
	// worker's sweep ends it as canceled: its request was never acknowledged
	// (see tasks.SweepOrphans). At least MinOrphanAfter.
	OrphanAfter       time.Duration
	TaskCheckInterval time.Duration // worker's poll interval when the queues are empty
	ShutdownTimeout   time.Duration // how long SIGTERM waits for in-flight sends
	IdempotencyWindow time.Duration // how long an Idempotency-Key's response is kept
	// UIWritable lets the web UI (/ui) act on tasks (run, delete, archive);
	// false (the default) makes it read-only.
	UIWritable bool
	// Pprof serves Go's profiler at /debug/pprof/ on the worker's admin address
	// (keep that address private).
	Pprof bool
	// APIRate and APIBurst limit /v1 requests per API key (per client address
	// without keys), cluster-wide; 0 = no limit.
	APIRate  int
	APIBurst int
	// Events puts every message's state changes on the event stream
	// (GET /v1/events): the transition scripts append them to their shard's
	// outbox and the workers forward them. false = only messages with a
	// status_url emit events.
	Events bool
	// EventsMaxLen is about how many events the stream keeps for clients that
	// resume (older ones are trimmed).
	EventsMaxLen int
	// Webhook delivery (see config/webhook.go).
	WebhookWindow       time.Duration // how long a webhook is retried before it is dead
	WebhookRetryBase    time.Duration // first retry delay (exponential, full jitter)
	WebhookRetryCap     time.Duration // largest retry delay
	WebhookConcurrency  int           // webhook POSTs in flight per worker
	WebhookPerEndpoint  int           // of those, at most this many to one receiver (scheme://host:port)
	WebhookAllowPrivate bool          // let webhooks target loopback/private addresses (off: SSRF guard)
	// RelayTimeout bounds a relayed callback, from its arrival to the
	// upstream's reply read; past it WeChat is answered "success".
	RelayTimeout time.Duration
	// CallbackInbox answers a delivery result after one append to the durable
	// inbox and applies it in the workers; false = store it before answering.
	CallbackInbox bool
	// InboxApply runs the inbox applier in this worker (false: a worker that
	// sends only; some worker must apply).
	InboxApply bool
	LogLevel   string // debug, info, warn, error
	LogFormat  string // json, text

	fromFile uint64 // bit i: knobs[i] was set by the file and not by the environment
	// index is built by Load and shared read-only by copies. A pointer also keeps fmt
	// from printing the apps it holds: fmt cannot redact secrets in unexported fields.
	index *appIndex
}

// Defaults returns the configuration with every default set and no apps.
func Defaults() Config {
	return Config{
		HTTPAddr:           "127.0.0.1:8080",
		AdminAddr:          "127.0.0.1:9090",
		Concurrency:        20,
		MaxAttempts:        10,
		RetryBase:          time.Second,
		RetryCap:           10 * time.Minute,
		SendTimeout:        10 * time.Second,
		Retention:          7 * 24 * time.Hour,
		ConfirmTimeout:     time.Hour,
		CallbackHold:       time.Hour,
		CallbackWindow:     5 * time.Minute,
		OrphanAfter:        10 * time.Minute,
		TaskCheckInterval:  10 * time.Millisecond,
		ShutdownTimeout:    10 * time.Second,
		IdempotencyWindow:  24 * time.Hour,
		APIRate:            500,
		APIBurst:           1000,
		Events:             true,
		EventsMaxLen:       100000,
		WebhookWindow:      24 * time.Hour,
		WebhookRetryBase:   time.Second,
		WebhookRetryCap:    time.Hour,
		WebhookConcurrency: 32,
		WebhookPerEndpoint: 16,
		RelayTimeout:       4500 * time.Millisecond,
		CallbackInbox:      true,
		InboxApply:         true,
		LogLevel:           "info",
		LogFormat:          "auto",
	}
}

// Load returns Defaults overridden by the file named by WXPUSH_CONFIG (if set), then
// by the environment, validated. On error it returns every problem found, joined.
func Load(getenv func(string) string) (Config, error) {
	c := Defaults()
	var errs []error
	if path := strings.TrimSpace(getenv("WXPUSH_CONFIG")); path != "" {
		errs = append(errs, c.applyFile(path, getenv)...)
	}
	errs = append(errs, c.applyEnv(getenv)...)
	for i := range c.Apps {
		if r := &c.Apps[i].RateLimit; r.PerSecond > 0 && r.Burst == 0 && !math.IsInf(r.PerSecond, 0) {
			r.Burst = max(1, int(math.Ceil(r.PerSecond)))
		}
	}
	c.index = newAppIndex(c.Apps)
	errs = append(errs, c.Validate())
	return c, errors.Join(errs...)
}

// appIndex finds an app by name in O(1). It remembers the slice it was built for, so
// a Config whose Apps was replaced after Load is detected and scanned instead.
type appIndex struct {
	apps []App
	pos  map[string]int
}

func newAppIndex(apps []App) *appIndex {
	pos := make(map[string]int, len(apps))
	for i := len(apps) - 1; i >= 0; i-- { // the first of duplicate names wins, as in a scan
		pos[apps[i].Name] = i
	}
	return &appIndex{apps: apps, pos: pos}
}

func (ix *appIndex) covers(apps []App) bool {
	return ix != nil && len(apps) == len(ix.apps) && (len(apps) == 0 || &apps[0] == &ix.apps[0])
}

// App returns the app named name.
func (c Config) App(name string) (App, bool) {
	if c.index.covers(c.Apps) {
		i, ok := c.index.pos[name]
		if !ok {
			return App{}, false
		}
		if c.Apps[i].Name == name {
			return c.Apps[i], true
		}
	}
	for _, a := range c.Apps {
		if a.Name == name {
			return a, true
		}
	}
	return App{}, false
}

// AppNames lists the configured apps (metric label initialisation).
func (c Config) AppNames() []string {
	names := make([]string, len(c.Apps))
	for i, a := range c.Apps {
		names[i] = a.Name
	}
	return names
}
