package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wxpush/wxpush/client"
	"github.com/wxpush/wxpush/internal/webhook"
)

// A vector computed outside Go (Python's hmac module):
// hmac.new(secret, b"1796620000." + body, sha256).hexdigest().
const (
	vecSecret = "whsec_test_0123456789"
	vecBody   = `{"event_id":"1796619932724-0","id":"01MSG","state":"delivered"}`
	vecHeader = "t=1796620000,v1=4cb314578596f2875f658d395b791e3b2597f6d5c5a99d16468b2edae9ddcf9c"
)

func TestVerifyWebhook(t *testing.T) {
	at := time.Unix(1796620000, 0)
	if got := webhook.Sign([]byte(vecSecret), at, []byte(vecBody)); got != vecHeader {
		t.Fatalf("webhook.Sign = %s, want the vector %s", got, vecHeader)
	}
	secret, body := []byte(vecSecret), []byte(vecBody)
	if err := client.VerifyWebhook(secret, vecHeader, body, 5*time.Minute, at.Add(time.Minute)); err != nil {
		t.Fatalf("the vector: %v", err)
	}
	// Rotation: a second v1 with the old secret's signature.
	rotated := vecHeader + ",v1=" + strings.Repeat("00", 32)
	if err := client.VerifyWebhook(secret, rotated, body, 0, time.Time{}); err != nil {
		t.Errorf("two v1 signatures: %v", err)
	}
	for _, c := range []struct {
		name   string
		secret string
		header string
		body   string
		now    time.Time
		want   error
	}{
		{"other body", vecSecret, vecHeader, vecBody + " ", at, client.ErrWebhookSignature},
		{"other secret", "whsec_other", vecHeader, vecBody, at, client.ErrWebhookSignature},
		{"other time", vecSecret, strings.Replace(vecHeader, "t=1796620000", "t=1796620001", 1), vecBody, at, client.ErrWebhookSignature},
		{"too old", vecSecret, vecHeader, vecBody, at.Add(6 * time.Minute), client.ErrWebhookTooOld},
		{"from the future", vecSecret, vecHeader, vecBody, at.Add(-6 * time.Minute), client.ErrWebhookTooOld},
		{"empty", vecSecret, "", vecBody, at, client.ErrWebhookFormat},
		{"no v1", vecSecret, "t=1796620000", vecBody, at, client.ErrWebhookFormat},
		{"no t", vecSecret, "v1=" + strings.Repeat("ab", 32), vecBody, at, client.ErrWebhookFormat},
		{"short v1", vecSecret, "t=1796620000,v1=abcd", vecBody, at, client.ErrWebhookFormat},
		{"not hex", vecSecret, "t=1796620000,v1=" + strings.Repeat("zz", 32), vecBody, at, client.ErrWebhookFormat},
	} {
		if err := client.VerifyWebhook([]byte(c.secret), c.header, []byte(c.body), 5*time.Minute, c.now); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

func TestDeadWebhooksAndReplay(t *testing.T) {
	var got []string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.RequestURI())
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodGet:
			fmt.Fprint(w, `{"total":3,"events":[{"event":{"event_id":"1-0","id":"01MSG","app":"shop","state":"dead",
				"previous":"retrying","seq":2,"attempts":5,"wechat_msgid":"","last_error":{"errcode":-1,"errmsg":"system error"},
				"at":"2026-12-07T05:00:00.000Z"},"url":"https://hooks.example.com/wx","last_error":"status 500","attempts":17,
				"died_at":"2026-12-08T05:00:00Z"}],"next_offset":2}`)
		case strings.Contains(r.URL.Path, "/1-0/"):
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprint(w, `{"event_id":"1-0","status":"replaying"}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"error":{"code":"not_found","message":"no dead webhook","field":"event_id"}}`)
		}
	}))
	defer ts.Close()
	cl, err := client.New(ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, err := cl.DeadWebhooks(ctx, "shop", 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if p.Total != 3 || p.NextOffset != 2 || len(p.Events) != 1 || p.Events[0].Event.State != client.StateDead ||
		p.Events[0].Event.LastError == nil || p.Events[0].Attempts != 17 || p.Events[0].Event.Seq != 2 {
		t.Errorf("page = %+v", p)
	}
	if err := cl.ReplayWebhook(ctx, "1-0"); err != nil {
		t.Errorf("replay: %v", err)
	}
	var e *client.Error
	if err := cl.ReplayWebhook(ctx, "2-0"); !errors.As(err, &e) || e.Code != "not_found" || e.HTTPStatus != 404 {
		t.Errorf("replay of an absent event: %v", err)
	}
	want := []string{"GET /v1/webhooks/dead?app=shop&limit=1&offset=1", "POST /v1/webhooks/dead/1-0/replay", "POST /v1/webhooks/dead/2-0/replay"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
