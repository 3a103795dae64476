package wechat

import (
	"errors"
	"fmt"
	"strings"
)

// Class says what a sender should do about a failed WeChat call
// (wechat-protocol.md §3).
type Class int

const (
	// ClassTransient: retry with backoff (system busy, transport errors, unknown codes).
	ClassTransient Class = iota + 1
	// ClassToken: the access token is invalid, expired or not the latest; refresh
	// through the single refresher and retry once at once.
	ClassToken
	// ClassPermanent: this message can never be sent as it is (bad openid, user
	// does not follow, bad template or data).
	ClassPermanent
	// ClassThrottled: the per-minute frequency limit; retry after the next minute.
	ClassThrottled
	// ClassQuota: the daily quota is exhausted; wait for the reset.
	ClassQuota
	// ClassConfig: the app is misconfigured or not authorised; retrying cannot help
	// until an operator acts.
	ClassConfig
)

var classNames = map[Class]string{
	ClassTransient: "transient",
	ClassToken:     "token",
	ClassPermanent: "permanent",
	ClassThrottled: "throttled",
	ClassQuota:     "quota",
	ClassConfig:    "config",
}

// Classes lists every class, in a stable order (metric label initialisation).
func Classes() []Class {
	return []Class{ClassTransient, ClassToken, ClassPermanent, ClassThrottled, ClassQuota, ClassConfig}
}

func (c Class) String() string {
	if s, ok := classNames[c]; ok {
		return s
	}
	return "unknown"
}

// codeClasses is the error table of wechat-protocol.md §3. Codes not listed are
// transient: the retry budget bounds how often an unknown code is retried.
var codeClasses = map[int]Class{
	-1:    ClassTransient, // system busy
	40001: ClassToken,     // invalid credential / access_token
	40014: ClassToken,     // invalid access_token
	41001: ClassToken,     // access_token missing
	42001: ClassToken,     // access_token expired
	40002: ClassConfig,    // invalid grant_type
	40013: ClassConfig,    // invalid appid
	40125: ClassConfig,    // invalid appsecret
	40164: ClassConfig,    // caller IP not in the whitelist
	40243: ClassConfig,    // appsecret frozen
	48001: ClassConfig,    // API not authorised
	50002: ClassConfig,    // account restricted
	89501: ClassConfig,    // admin confirmation pending
	89503: ClassConfig,    // admin confirmation needed
	89506: ClassConfig,    // admin refused
	89507: ClassConfig,    // admin refused, wait an hour
	45011: ClassThrottled, // per-minute frequency limit
	45009: ClassQuota,     // daily quota exhausted
	40003: ClassPermanent, // invalid openid
	43004: ClassPermanent, // recipient does not follow the account
	43019: ClassPermanent, // recipient is blacklisted
	43101: ClassPermanent, // user refused this message
	40036: ClassPermanent, // invalid template_id size
	40037: ClassPermanent, // invalid template_id
	47001: ClassPermanent, // data format error
	47003: ClassPermanent, // argument invalid (errmsg names the field)
	41030: ClassPermanent, // invalid page (subscribe messages)
}

// ClassOf returns the class of a WeChat errcode.
func ClassOf(code int) Class {
	if c, ok := codeClasses[code]; ok {
		return c
	}
	return ClassTransient
}

// APIError is a non-zero errcode returned by WeChat.
type APIError struct {
	API  string // which call, e.g. "template/send"
	Code int
	Msg  string // WeChat's errmsg, including its " rid: …" request id
}

func (e *APIError) Error() string {
	return fmt.Sprintf("wechat: %s: errcode %d: %s", e.API, e.Code, e.Msg)
}

// Class returns what a sender should do about the error.
func (e *APIError) Class() Class {
	c := ClassOf(e.Code)
	// 40001 from the token endpoints themselves means a wrong secret: a
	// configuration error that a refresh loop would only make worse.
	if c == ClassToken && (e.API == apiToken || e.API == apiStableToken) {
		return ClassConfig
	}
	return c
}

// RID returns the request id WeChat appends to errmsg, or "".
func (e *APIError) RID() string {
	_, rid, ok := strings.Cut(e.Msg, "rid: ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(rid)
}

// TransportError is a call that got no usable WeChat reply: a connection error, a
// timeout, an HTTP status other than 200 or a body that is not WeChat JSON. The
// request may still have reached WeChat.
type TransportError struct {
	API        string
	StatusCode int // 0 when no HTTP response arrived
	Err        error
}

func (e *TransportError) Error() string {
	if e.StatusCode != 0 {
		return fmt.Sprintf("wechat: %s: http status %d", e.API, e.StatusCode)
	}
	return fmt.Sprintf("wechat: %s: %v", e.API, e.Err)
}

func (e *TransportError) Unwrap() error { return e.Err }

// ClassOfError returns the class of any error returned by this package; an error
// that is neither an *APIError nor a *TransportError is transient.
func ClassOfError(err error) Class {
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return apiErr.Class()
	}
	return ClassTransient
}
