package wechat_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/wxpush/wxpush/internal/wechat"
)

// TestClassOf pins the error table of wechat-protocol.md §3: every code a sender
// must treat differently lands in its class.
func TestClassOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		code int
		want wechat.Class
	}{
		{name: "-1 system busy", code: -1, want: wechat.ClassTransient},
		{name: "40001 token invalid", code: 40001, want: wechat.ClassToken},
		{name: "40014 token not latest", code: 40014, want: wechat.ClassToken},
		{name: "42001 token expired", code: 42001, want: wechat.ClassToken},
		{name: "45011 per-minute limit", code: 45011, want: wechat.ClassThrottled},
		{name: "45009 daily quota", code: 45009, want: wechat.ClassQuota},
		{name: "40003 invalid openid", code: 40003, want: wechat.ClassPermanent},
		{name: "43004 not following", code: 43004, want: wechat.ClassPermanent},
		{name: "43019 blacklisted", code: 43019, want: wechat.ClassPermanent},
		{name: "43101 user refused", code: 43101, want: wechat.ClassPermanent},
		{name: "40036 bad template id size", code: 40036, want: wechat.ClassPermanent},
		{name: "40037 bad template id", code: 40037, want: wechat.ClassPermanent},
		{name: "47001 data format", code: 47001, want: wechat.ClassPermanent},
		{name: "47003 argument invalid", code: 47003, want: wechat.ClassPermanent},
		{name: "48001 api not authorised", code: 48001, want: wechat.ClassConfig},
		{name: "40013 invalid appid", code: 40013, want: wechat.ClassConfig},
		{name: "40125 invalid secret", code: 40125, want: wechat.ClassConfig},
		{name: "40164 ip not whitelisted", code: 40164, want: wechat.ClassConfig},
		{name: "40243 secret frozen", code: 40243, want: wechat.ClassConfig},
		{name: "50002 account restricted", code: 50002, want: wechat.ClassConfig},
		{name: "unknown code is transient", code: 99999, want: wechat.ClassTransient},
		{name: "unknown negative code is transient", code: -42, want: wechat.ClassTransient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := wechat.ClassOf(tt.code); got != tt.want {
				t.Errorf("ClassOf(%d) = %v, want %v", tt.code, got, tt.want)
			}
			// A send error carries the same class as its bare code.
			apiErr := &wechat.APIError{API: "template/send", Code: tt.code, Msg: "x rid: 1"}
			if got := apiErr.Class(); got != tt.want {
				t.Errorf("(&APIError{API: template/send, Code: %d}).Class() = %v, want %v", tt.code, got, tt.want)
			}
		})
	}
}

// TestAPIErrorClassDependsOnAPI checks that a token error from the token
// endpoints themselves is a configuration error (a wrong secret), never a
// signal to refresh the token, which would loop on a small daily quota.
func TestAPIErrorClassDependsOnAPI(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		api  string
		code int
		want wechat.Class
	}{
		{name: "40001 from token is config", api: "token", code: 40001, want: wechat.ClassConfig},
		{name: "40001 from stable_token is config", api: "stable_token", code: 40001, want: wechat.ClassConfig},
		{name: "40001 from template/send is token", api: "template/send", code: 40001, want: wechat.ClassToken},
		{name: "42001 from template/send is token", api: "template/send", code: 42001, want: wechat.ClassToken},
		{name: "40125 from token is config", api: "token", code: 40125, want: wechat.ClassConfig},
		{name: "-1 from token is transient", api: "token", code: -1, want: wechat.ClassTransient},
		{name: "45009 from template/send is quota", api: "template/send", code: 45009, want: wechat.ClassQuota},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := &wechat.APIError{API: tt.api, Code: tt.code, Msg: "m rid: 1"}
			if got := err.Class(); got != tt.want {
				t.Errorf("Class() = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestTokenEndpoint40001IsConfig drives the same rule through the Client, so it
// does not depend on how the Client names its APIs.
func TestTokenEndpoint40001IsConfig(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, `{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest rid: 65f0a1b2-1"}`)
	}))
	t.Cleanup(srv.Close)
	c := wechat.NewClient(srv.URL)
	ctx := context.Background()

	tests := []struct {
		name string
		call func() error
	}{
		{name: "FetchToken", call: func() error { _, err := c.FetchToken(ctx, "wxapp", "secret"); return err }},
		{name: "FetchStableToken", call: func() error { _, err := c.FetchStableToken(ctx, "wxapp", "secret", false); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.call()
			var apiErr *wechat.APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v (%T), want *APIError", err, err)
			}
			if apiErr.Code != 40001 {
				t.Errorf("Code = %d, want 40001", apiErr.Code)
			}
			if got := apiErr.Class(); got != wechat.ClassConfig {
				t.Errorf("Class() = %v, want %v", got, wechat.ClassConfig)
			}
			if got := wechat.ClassOfError(err); got != wechat.ClassConfig {
				t.Errorf("ClassOfError = %v, want %v", got, wechat.ClassConfig)
			}
		})
	}
	// The same reply to a send is a token error.
	_, err := c.SendTemplate(ctx, "tok", &wechat.TemplateMessage{ToUser: "o", TemplateID: "t", Data: map[string]wechat.DataItem{"k": {Value: "v"}}})
	if got := wechat.ClassOfError(err); got != wechat.ClassToken {
		t.Errorf("SendTemplate 40001: ClassOfError = %v, want %v", got, wechat.ClassToken)
	}
}

func TestAPIErrorRID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		msg  string
		want string
	}{
		{name: "typical errmsg", msg: "invalid openid rid: 6523a8f1-1c2d3e4f-5a6b7c8d", want: "6523a8f1-1c2d3e4f-5a6b7c8d"},
		{name: "errmsg with spaces before rid", msg: "api minute-quota reach limit  mustslower  retry next minute rid: abc123", want: "abc123"},
		{name: "trailing whitespace trimmed", msg: "system error rid: abc123 \n", want: "abc123"},
		{name: "no rid", msg: "invalid openid", want: ""},
		{name: "empty errmsg", msg: "", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := &wechat.APIError{API: "template/send", Code: 40003, Msg: tt.msg}
			if got := e.RID(); got != tt.want {
				t.Errorf("RID() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAPIErrorError(t *testing.T) {
	t.Parallel()
	e := &wechat.APIError{API: "template/send", Code: 47003, Msg: "argument invalid! data.thing1.value invalid rid: r1"}
	got := e.Error()
	for _, want := range []string{"template/send", "47003", "data.thing1.value invalid", "rid: r1"} {
		if !strings.Contains(got, want) {
			t.Errorf("Error() = %q, want it to contain %q", got, want)
		}
	}
}

func TestTransportError(t *testing.T) {
	t.Parallel()
	cause := errors.New("connection reset by peer")
	tests := []struct {
		name    string
		err     *wechat.TransportError
		contain []string
	}{
		{name: "http status", err: &wechat.TransportError{API: "template/send", StatusCode: 502, Err: errors.New("502 Bad Gateway")}, contain: []string{"template/send", "502"}},
		{name: "no response", err: &wechat.TransportError{API: "token", Err: cause}, contain: []string{"token", "connection reset by peer"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, want := range tt.contain {
				if got := tt.err.Error(); !strings.Contains(got, want) {
					t.Errorf("Error() = %q, want it to contain %q", got, want)
				}
			}
			if !errors.Is(tt.err, tt.err.Err) {
				t.Errorf("errors.Is(err, err.Err) = false: Unwrap does not expose the cause")
			}
		})
	}
}

func TestClassOfError(t *testing.T) {
	t.Parallel()
	tokenErr := &wechat.APIError{API: "template/send", Code: 40001, Msg: "invalid credential rid: r"}
	quotaErr := &wechat.APIError{API: "template/send", Code: 45009, Msg: "reach max api daily quota limit rid: r"}
	permErr := &wechat.APIError{API: "template/send", Code: 43004, Msg: "require subscribe rid: r"}
	configErr := &wechat.APIError{API: "token", Code: 40001, Msg: "invalid credential rid: r"}
	transport := &wechat.TransportError{API: "template/send", StatusCode: 500, Err: errors.New("500 Internal Server Error")}
	tests := []struct {
		name string
		err  error
		want wechat.Class
	}{
		{name: "bare APIError", err: tokenErr, want: wechat.ClassToken},
		{name: "wrapped token APIError", err: fmt.Errorf("x: %w", tokenErr), want: wechat.ClassToken},
		{name: "wrapped quota APIError", err: fmt.Errorf("x: %w", quotaErr), want: wechat.ClassQuota},
		{name: "twice wrapped permanent APIError", err: fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", permErr)), want: wechat.ClassPermanent},
		{name: "wrapped 40001 from the token API", err: fmt.Errorf("x: %w", configErr), want: wechat.ClassConfig},
		{name: "joined with another error", err: errors.Join(errors.New("other"), quotaErr), want: wechat.ClassQuota},
		{name: "TransportError", err: transport, want: wechat.ClassTransient},
		{name: "wrapped TransportError", err: fmt.Errorf("x: %w", transport), want: wechat.ClassTransient},
		{name: "plain error", err: errors.New("boom"), want: wechat.ClassTransient},
		{name: "context deadline", err: context.DeadlineExceeded, want: wechat.ClassTransient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := wechat.ClassOfError(tt.err); got != tt.want {
				t.Errorf("ClassOfError(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestClassString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		class wechat.Class
		want  string
	}{
		{name: "transient", class: wechat.ClassTransient, want: "transient"},
		{name: "token", class: wechat.ClassToken, want: "token"},
		{name: "permanent", class: wechat.ClassPermanent, want: "permanent"},
		{name: "throttled", class: wechat.ClassThrottled, want: "throttled"},
		{name: "quota", class: wechat.ClassQuota, want: "quota"},
		{name: "config", class: wechat.ClassConfig, want: "config"},
		{name: "zero value", class: wechat.Class(0), want: "unknown"},
		{name: "out of range", class: wechat.Class(99), want: "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.class.String(); got != tt.want {
				t.Errorf("Class(%d).String() = %q, want %q", int(tt.class), got, tt.want)
			}
		})
	}
}

// TestClasses checks that Classes (used to initialise metric labels) lists every
// class once, each with its own name.
func TestClasses(t *testing.T) {
	t.Parallel()
	got := wechat.Classes()
	want := []wechat.Class{wechat.ClassTransient, wechat.ClassToken, wechat.ClassPermanent, wechat.ClassThrottled, wechat.ClassQuota, wechat.ClassConfig}
	if len(got) != len(want) {
		t.Fatalf("Classes() = %v, want %d classes", got, len(want))
	}
	names := map[string]bool{}
	for _, c := range want {
		if !slices.Contains(got, c) {
			t.Errorf("Classes() lacks %v", c)
		}
	}
	for _, c := range got {
		n := c.String()
		if n == "unknown" || names[n] {
			t.Errorf("Classes() has %d named %q: want a distinct known name", int(c), n)
		}
		names[n] = true
	}
}
