package cli

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/webhook"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestWebhooksListen: the receiver prints a verified webhook's body as it
// came, answers 204, and refuses a bad signature with 401 and prints nothing.
func TestWebhooksListen(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr lockedBuffer
	secret := "listen-test-secret-0123"
	done := make(chan int)
	go func() {
		done <- Run(ctx, []string{"webhooks", "listen", "-addr", "127.0.0.1:0", "-secret-env", "HOOK_SECRET"},
			func(k string) string { return map[string]string{"HOOK_SECRET": secret}[k] }, strings.NewReader(""), &stdout, &stderr)
	}()
	var base string
	deadline := time.Now().Add(10 * time.Second)
	for base == "" {
		if time.Now().After(deadline) {
			t.Fatalf("no listening line; stderr %q", stderr.String())
		}
		if _, rest, ok := strings.Cut(stderr.String(), "listening on "); ok {
			base = strings.TrimSpace(strings.SplitN(rest, "\n", 2)[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
	body := []byte(`{"event_id":"1-0","id":"M","app":"shop","state":"delivered","seq":2}`)
	post := func(sig string) int {
		req, _ := http.NewRequest(http.MethodPost, base+"/hook", bytes.NewReader(body))
		req.Header.Set(webhook.SignatureHeader, sig)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := post(webhook.Sign([]byte(secret), time.Now(), body)); c != http.StatusNoContent {
		t.Errorf("signed POST: %d, want 204", c)
	}
	if c := post(webhook.Sign([]byte("another-secret-entirely"), time.Now(), body)); c != http.StatusUnauthorized {
		t.Errorf("wrongly signed POST: %d, want 401", c)
	}
	if c := post(webhook.Sign([]byte(secret), time.Now().Add(-time.Hour), body)); c != http.StatusUnauthorized {
		t.Errorf("stale POST: %d, want 401", c)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d; stderr %q", code, stderr.String())
	}
	if got := stdout.String(); got != string(body)+"\n" {
		t.Errorf("stdout = %q, want the one verified body", got)
	}
	if strings.Contains(stderr.String(), secret) {
		t.Error("stderr shows the secret")
	}
}
