package redisconn_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/redisconn"
	"github.com/wxpush/wxpush/internal/redistest"
)

// open connects to s through redisconn.Open, as a process does, optionally as an
// ACL user.
func open(t *testing.T, s *redistest.Server, userinfo string) redis.UniversalClient {
	t.Helper()
	url := s.URL()
	if userinfo != "" {
		url = "redis://" + userinfo + "@" + s.Addr() + "/0"
	}
	c, err := redisconn.Open(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// addUser creates an ACL user on s with the given rules (after "on >password ~*").
func addUser(t *testing.T, s *redistest.Server, user, password string, rules ...string) {
	t.Helper()
	args := []any{"ACL", "SETUSER", user, "on", ">" + password, "~*"}
	for _, r := range rules {
		args = append(args, r)
	}
	if err := s.Client(t).Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER %s: %v", user, err)
	}
}

func TestCheckUnsafeEvictionPolicy(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{"allkeys-lru", "volatile-ttl", "allkeys-random"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			s := redistest.Start(t, redistest.WithAppendOnly(), redistest.WithArgs("--maxmemory-policy", policy))
			warnings, err := redisconn.Check(context.Background(), open(t, s, ""))
			var unsafe *redisconn.UnsafeConfigError
			if !errors.As(err, &unsafe) {
				t.Fatalf("Check = %v, %v; want an *UnsafeConfigError", warnings, err)
			}
			if unsafe.Setting != "maxmemory-policy" || unsafe.Value != policy {
				t.Errorf("UnsafeConfigError = %+v, want setting maxmemory-policy, value %s", unsafe, policy)
			}
			for _, want := range []string{"maxmemory-policy", policy, "lost message", "CONFIG SET maxmemory-policy noeviction"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestCheckWarnings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts []redistest.Option
		want []string // one substring per expected warning, in order; nil = no warnings
	}{
		{name: "noeviction and appendonly", opts: []redistest.Option{redistest.WithAppendOnly()}},
		{name: "rdb snapshots only", opts: []redistest.Option{redistest.WithArgs("--save", "3600 1")}},
		{name: "no persistence", want: []string{"a restart loses every queued message"}},
		{name: "appendfsync no",
			opts: []redistest.Option{redistest.WithAppendOnly(), redistest.WithArgs("--appendfsync", "no")},
			want: []string{"appendfsync"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := redistest.Start(t, tt.opts...)
			warnings, err := redisconn.Check(context.Background(), open(t, s, ""))
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if len(warnings) != len(tt.want) {
				t.Fatalf("warnings = %q, want %d matching %q", warnings, len(tt.want), tt.want)
			}
			for i, want := range tt.want {
				if !strings.Contains(warnings[i], want) {
					t.Errorf("warning %q does not mention %q", warnings[i], want)
				}
			}
		})
	}
}

// TestCheckWithoutConfigPermission: managed Redis often forbids CONFIG. Check
// then must not fail the process; it says what it could not verify, and still
// refuses an eviction policy that INFO reveals.
func TestCheckWithoutConfigPermission(t *testing.T) {
	t.Parallel()
	const password = "limited-user-pw-7f3a"
	tests := []struct {
		name       string
		policy     string
		rules      []string
		unverified string // settings the warning must name
		unsafe     bool
	}{
		{name: "no CONFIG", policy: "noeviction", rules: []string{"+@all", "-config"}, unverified: "save"},
		{name: "no CONFIG nor INFO", policy: "noeviction", rules: []string{"+@all", "-config", "-info"},
			unverified: "maxmemory-policy,appendonly"},
		{name: "no CONFIG, eviction on", policy: "allkeys-lru", rules: []string{"+@all", "-config"}, unsafe: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := redistest.Start(t, redistest.WithArgs("--maxmemory-policy", tt.policy))
			addUser(t, s, "limited", password, tt.rules...)
			warnings, err := redisconn.Check(context.Background(), open(t, s, "limited:"+password))
			if tt.unsafe {
				var unsafe *redisconn.UnsafeConfigError
				if !errors.As(err, &unsafe) || unsafe.Value != tt.policy {
					t.Fatalf("Check = %v, %v; want an *UnsafeConfigError for %s", warnings, err, tt.policy)
				}
				if strings.Contains(err.Error(), password) {
					t.Errorf("error %q contains the password from REDIS_URL", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Check without CONFIG permission = %v, want no error", err)
			}
			if len(warnings) != 1 || !strings.Contains(warnings[0], "could not verify") ||
				!strings.HasPrefix(warnings[0], tt.unverified+":") {
				t.Fatalf("warnings = %q, want one \"could not verify\" warning about %s", warnings, tt.unverified)
			}
			if strings.Contains(warnings[0], password) {
				t.Errorf("warning %q contains the password from REDIS_URL", warnings[0])
			}
		})
	}
}

// TestCheckErrorHidesPassword: the refusal names the setting, never the URL.
func TestCheckErrorHidesPassword(t *testing.T) {
	t.Parallel()
	const password = "full-user-pw-91c2"
	s := redistest.Start(t, redistest.WithArgs("--maxmemory-policy", "allkeys-lru"))
	addUser(t, s, "app", password, "+@all")
	_, err := redisconn.Check(context.Background(), open(t, s, "app:"+password))
	if err == nil || strings.Contains(err.Error(), password) {
		t.Fatalf("Check = %v, want an error without the password", err)
	}
}

func TestCheckCanceled(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := redisconn.Check(ctx, open(t, s, "")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Check with a canceled context = %v, want context.Canceled", err)
	}
}

// TestStartupCheckLogsSetting: each warning is logged at WARN with the setting
// it is about, so that an operator can grep for it.
func TestStartupCheckLogsSetting(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, redistest.WithAppendOnly(), redistest.WithArgs("--appendfsync", "no"))
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	if err := redisconn.StartupCheck(context.Background(), open(t, s, ""), log); err != nil {
		t.Fatal(err)
	}
	var line struct{ Level, Setting, Warning string }
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("log %q: %v", buf.String(), err)
	}
	if line.Level != "WARN" || line.Setting != "appendfsync" || !strings.Contains(line.Warning, "appendfsync") {
		t.Errorf("logged %q, want one WARN line with setting appendfsync", buf.String())
	}
}
