package wechat_test

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/wechat"
)

func TestCheckTimestamp(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	ts := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	tests := []struct {
		name      string
		timestamp string
		ok        bool
	}{
		{name: "now", timestamp: ts(0), ok: true},
		{name: "window edge, past", timestamp: ts(-5 * time.Minute), ok: true},
		{name: "window edge, future", timestamp: ts(5 * time.Minute), ok: true},
		{name: "a second too old", timestamp: ts(-5*time.Minute - time.Second)},
		{name: "a second too far ahead", timestamp: ts(5*time.Minute + time.Second)},
		{name: "2014", timestamp: "1395658920"},
		{name: "not a number", timestamp: "soon"},
		{name: "empty", timestamp: ""},
		{name: "fraction", timestamp: "1800000000.5"},
		{name: "huge", timestamp: "9223372036854775807"},
		{name: "huge negative", timestamp: "-9223372036854775808"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := wechat.CheckTimestamp(tt.timestamp, now, wechat.DefaultCallbackWindow)
			if tt.ok != (err == nil) {
				t.Fatalf("CheckTimestamp(%q) = %v, want ok %v", tt.timestamp, err, tt.ok)
			}
			if err != nil && !errors.Is(err, wechat.ErrStaleTimestamp) {
				t.Errorf("error %v does not wrap ErrStaleTimestamp", err)
			}
		})
	}
}

// TestNonceStore: the first use of a timestamp and nonce is fresh, the same
// body again is WeChat's retry, another body a replay; the memory is per app
// and expires.
func TestNonceStore(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	n := wechat.NewNonceStore(rdb)
	ctx := t.Context()
	remember := func(app, nonce, body string, want wechat.NonceUse) {
		t.Helper()
		got, err := n.Remember(ctx, app, "1800000000", nonce, []byte(body), time.Minute)
		if err != nil || got != want {
			t.Fatalf("Remember(%s, %s, %q) = %v, %v; want %v", app, nonce, body, got, err, want)
		}
	}
	remember("shop", "n1", "<xml>a</xml>", wechat.NonceFresh)
	remember("shop", "n1", "<xml>a</xml>", wechat.NonceRetry)
	remember("shop", "n1", "<xml>b</xml>", wechat.NonceReplayed)
	remember("shop", "n2", "<xml>b</xml>", wechat.NonceFresh)
	remember("news", "n1", "<xml>b</xml>", wechat.NonceFresh)

	keys, err := rdb.Keys(ctx, "wxpush:{inbox}:nonce:*").Result()
	if err != nil || len(keys) != 3 {
		t.Fatalf("keys %v, %v; want one per app, timestamp and nonce (3)", keys, err)
	}
	for _, k := range keys {
		ttl, err := rdb.PTTL(ctx, k).Result()
		if err != nil || ttl <= 0 || ttl > time.Minute {
			t.Errorf("%s expires in %v (%v), want within the minute given", k, ttl, err)
		}
	}
	srv.Kill(t)
	if _, err := n.Remember(ctx, "shop", "1800000000", "n3", []byte("x"), time.Minute); err == nil {
		t.Error("Remember with Redis down = nil error")
	}
}

// FuzzCheckTimestamp: any query text is refused or lies within the window,
// and nothing panics.
func FuzzCheckTimestamp(f *testing.F) {
	for _, s := range []string{"1800000000", "1395658920", "", "-1", "+1800000000", "1e9", "9223372036854775807", "-9223372036854775808"} {
		f.Add(s)
	}
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, ts string) {
		if err := wechat.CheckTimestamp(ts, now, time.Minute); err != nil {
			if !errors.Is(err, wechat.ErrStaleTimestamp) {
				t.Fatalf("error %v does not wrap ErrStaleTimestamp", err)
			}
			return
		}
		n, err := strconv.ParseInt(ts, 10, 64)
		if err != nil || n < now.Unix()-60 || n > now.Unix()+60 {
			t.Fatalf("CheckTimestamp accepted %q", ts)
		}
	})
}
