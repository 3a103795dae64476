package wechat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultBaseURL is the real WeChat API host.
const DefaultBaseURL = "https://api.weixin.qq.com"

// API names used in errors and metric labels.
const (
	apiToken        = "token"
	apiStableToken  = "stable_token"
	apiTemplateSend = "template/send"
	apiSubscribe    = "subscribe/bizsend"
)

// maxReplyBytes bounds a WeChat reply; real ones are a few hundred bytes.
const maxReplyBytes = 1 << 20

// Client calls the WeChat API. It holds no credentials: callers pass the token or
// secret per call, so one Client serves every app.
type Client struct {
	base    string
	http    *http.Client
	observe func(api string, d time.Duration, err error)
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithHTTPClient sets the HTTP client (timeouts, connection pool). The default has
// a 10 s timeout and a keep-alive pool sized for concurrent senders.
func WithHTTPClient(hc *http.Client) ClientOption { return func(c *Client) { c.http = hc } }

// WithObserver sets a function called after every API call with its duration and
// error (nil on success); wxpush uses it for the API duration histogram.
func WithObserver(f func(api string, d time.Duration, err error)) ClientOption {
	return func(c *Client) { c.observe = f }
}

// NewClient returns a client for the API at baseURL (DefaultBaseURL when empty).
func NewClient(baseURL string, opts ...ClientOption) *Client {
	if baseURL == "" {
		baseURL = DefaultBaseURL
	}
	c := &Client{
		base: strings.TrimRight(baseURL, "/"),
		http: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				Proxy:               http.ProxyFromEnvironment,
				MaxIdleConns:        256,
				MaxIdleConnsPerHost: 128,
				IdleConnTimeout:     90 * time.Second,
				TLSHandshakeTimeout: 5 * time.Second,
			},
		},
		observe: func(string, time.Duration, error) {},
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Token is an access token and the time it stops working.
type Token struct {
	Value     string
	ExpiresAt time.Time
}

// String keeps the token out of logs.
func (t Token) String() string { return "token(expires " + t.ExpiresAt.Format(time.RFC3339) + ")" }

type tokenReply struct {
	replyStatus
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
}

// FetchToken gets a new access token from /cgi-bin/token. Every call invalidates the
// app's previous token after a grace period: use a TokenStore, never call this per send.
func (c *Client) FetchToken(ctx context.Context, appID, secret string) (Token, error) {
	q := url.Values{"grant_type": {"client_credential"}, "appid": {appID}, "secret": {secret}}
	var reply tokenReply
	start := time.Now()
	if err := c.call(ctx, apiToken, http.MethodGet, "/cgi-bin/token?"+q.Encode(), nil, &reply); err != nil {
		return Token{}, err
	}
	return reply.token(start), nil
}

// FetchStableToken gets a token from /cgi-bin/stable_token, which returns the same
// token to every caller while it is valid. force asks for a new one (20 a day).
func (c *Client) FetchStableToken(ctx context.Context, appID, secret string, force bool) (Token, error) {
	body := map[string]any{"grant_type": "client_credential", "appid": appID, "secret": secret, "force_refresh": force}
	var reply tokenReply
	start := time.Now()
	if err := c.call(ctx, apiStableToken, http.MethodPost, "/cgi-bin/stable_token", body, &reply); err != nil {
		return Token{}, err
	}
	return reply.token(start), nil
}

func (r *tokenReply) validate() error {
	if r.AccessToken == "" || r.ExpiresIn <= 0 {
		return errors.New("reply without access_token or expires_in")
	}
	return nil
}

// token counts the lifetime from when we asked, not from when the answer arrived.
func (r *tokenReply) token(start time.Time) Token {
	return Token{Value: r.AccessToken, ExpiresAt: start.Add(time.Duration(r.ExpiresIn) * time.Second)}
}

// TemplateMessage is the body of a template send (wechat-protocol.md §2).
type TemplateMessage struct {
	ToUser      string              `json:"touser"`
	TemplateID  string              `json:"template_id"`
	URL         string              `json:"url,omitempty"`
	MiniProgram *MiniProgram        `json:"miniprogram,omitempty"`
	Data        map[string]DataItem `json:"data"`
	// ClientMsgID makes WeChat drop a repeat of the same message to the same user
	// for about 10 minutes; wxpush sets it to the message id on every attempt.
	ClientMsgID string `json:"client_msg_id,omitempty"`
	Color       string `json:"color,omitempty"`
	TopColor    string `json:"topcolor,omitempty"`
}

// MiniProgram opens a mini program page on tap; it wins over URL.
type MiniProgram struct {
	AppID    string `json:"appid"`
	PagePath string `json:"pagepath,omitempty"`
}

// DataItem is one {{key.DATA}} value.
type DataItem struct {
	Value string `json:"value"`
	Color string `json:"color,omitempty"`
}

type sendReply struct {
	replyStatus
	MsgID json.Number `json:"msgid"`
	id    int64
}

func (r *sendReply) validate() error {
	if r.MsgID == "" {
		return nil
	}
	id, err := strconv.ParseInt(r.MsgID.String(), 10, 64)
	if err != nil || id <= 0 {
		return errors.New("reply has a msgid that is not a positive 64-bit integer")
	}
	r.id = id
	return nil
}

// SendTemplate sends a template message and returns WeChat's msgid, a 64-bit
// integer that is never passed through float64. A success without a msgid (what
// WeChat answers to a de-duplicated repeat is not documented) returns 0: the
// message was accepted, but its result callback cannot be matched.
func (c *Client) SendTemplate(ctx context.Context, accessToken string, msg *TemplateMessage) (int64, error) {
	var reply sendReply
	path := "/cgi-bin/message/template/send?access_token=" + url.QueryEscape(accessToken)
	if err := c.call(ctx, apiTemplateSend, http.MethodPost, path, msg, &reply); err != nil {
		return 0, err
	}
	return reply.id, nil
}

// SubscribeMessage is the body of a subscribe message send (bizsend,
// wechat-protocol.md §6): values only, no colours, and no client_msg_id.
type SubscribeMessage struct {
	ToUser      string                    `json:"touser"`
	TemplateID  string                    `json:"template_id"`
	Page        string                    `json:"page,omitempty"`
	MiniProgram *MiniProgram              `json:"miniprogram,omitempty"`
	Data        map[string]SubscribeValue `json:"data"`
}

// SubscribeValue is one data value of a subscribe message.
type SubscribeValue struct {
	Value string `json:"value"`
}

// SendSubscribe sends a subscribe message. Whether WeChat's reply carries a
// msgid is not documented: without one it returns 0, and the message cannot be
// matched to its result event.
func (c *Client) SendSubscribe(ctx context.Context, accessToken string, msg *SubscribeMessage) (int64, error) {
	var reply sendReply
	path := "/cgi-bin/message/subscribe/bizsend?access_token=" + url.QueryEscape(accessToken)
	if err := c.call(ctx, apiSubscribe, http.MethodPost, path, msg, &reply); err != nil {
		return 0, err
	}
	return reply.id, nil
}

// replyStatus is the errcode/errmsg pair every WeChat reply may carry.
type replyStatus struct {
	ErrCode int    `json:"errcode"`
	ErrMsg  string `json:"errmsg"`
}

func (r *replyStatus) status() *replyStatus { return r }

// reply is a decoded WeChat reply: its errcode, and a check of the rest once
// errcode is 0.
type reply interface {
	status() *replyStatus
	validate() error
}

// call performs one API call. Errors never contain the URL: it carries the access
// token or the app secret.
func (c *Client) call(ctx context.Context, api, method, path string, in any, out reply) (err error) {
	start := time.Now()
	defer func() { c.observe(api, time.Since(start), err) }()

	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("wechat: %s: encode request: %w", api, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return &TransportError{API: api, Err: errors.New("bad request URL")}
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &TransportError{API: api, Err: stripURL(err)}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return &TransportError{API: api, Err: stripURL(err)}
	}
	if resp.StatusCode != http.StatusOK {
		return &TransportError{API: api, StatusCode: resp.StatusCode, Err: errors.New(resp.Status)}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(out); err != nil {
		return &TransportError{API: api, Err: fmt.Errorf("decode reply: %w", err)}
	}
	if st := out.status(); st.ErrCode != 0 {
		return &APIError{API: api, Code: st.ErrCode, Msg: st.ErrMsg}
	}
	if err := out.validate(); err != nil {
		return &TransportError{API: api, Err: err}
	}
	return nil
}

// stripURL drops the request URL from a net/http error so the token in its query
// cannot leak through the error text.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return fmt.Errorf("%s: timeout: %w", ue.Op, context.DeadlineExceeded)
		}
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}
