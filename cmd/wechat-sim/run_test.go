package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// syncBuffer is a bytes.Buffer that run may write while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func envFrom(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

var listenRE = regexp.MustCompile(`listening on (http://\S+)`)

func TestRunServesTokensAndStops(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	env := envFrom(map[string]string{
		"WXSIM_ADDR":       "127.0.0.1:0",
		"WXSIM_APP_ID":     "wxcmdtest",
		"WXSIM_APP_SECRET": "cmd-secret",
		"WXSIM_RULES":      "x=system_busy",
	})
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, env, &out) }()

	var base string
	deadline := time.Now().Add(10 * time.Second)
	for base == "" {
		if m := listenRE.FindStringSubmatch(out.String()); m != nil {
			base = m[1]
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v; output %q", err, out.String())
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no listen address printed; output %q", out.String())
		}
	}

	client := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	resp, err := client.Get(base + "/cgi-bin/token?grant_type=client_credential&appid=wxcmdtest&secret=cmd-secret")
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	err = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if err != nil || len(body.AccessToken) < 64 || body.ExpiresIn != 7200 {
		t.Fatalf("token reply %+v, err %v", body, err)
	}
	client.CloseIdleConnections()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not stop after the context ended")
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string
	}{
		{name: "bad delay", env: map[string]string{"WXSIM_CALLBACK_DELAY": "soon"}, wantErr: `WXSIM_CALLBACK_DELAY: "soon"`},
		{name: "bad latency", env: map[string]string{"WXSIM_LATENCY": "5"}, wantErr: "WXSIM_LATENCY"},
		{name: "bad rules", env: map[string]string{"WXSIM_RULES": "a=explode"}, wantErr: `WXSIM_RULES: wechatsim: rule 1 "a=explode"`},
		{name: "bad callback url", env: map[string]string{"WXSIM_CALLBACK_URL": "nowhere"}, wantErr: "Apps[0].CallbackURL"},
		{name: "bad address", env: map[string]string{"WXSIM_ADDR": "256.0.0.1:x"}, wantErr: "WXSIM_ADDR"},
		{name: "stray argument", args: []string{"serve"}, wantErr: "unexpected arguments"},
		{name: "unknown flag", args: []string{"-port=1"}, wantErr: "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out syncBuffer
			err := run(context.Background(), tt.args, envFrom(tt.env), &out)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestRunHelp(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	if err := run(context.Background(), []string{"-h"}, envFrom(nil), &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "WXSIM_CALLBACK_DELAY") {
		t.Errorf("help %q does not list the environment", out.String())
	}
}
