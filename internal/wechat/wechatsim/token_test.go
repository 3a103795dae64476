package wechatsim

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

func TestTokenErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	tests := []struct {
		name  string
		query string
		code  int64
	}{
		{name: "bad grant_type", query: "grant_type=password&appid=" + testAppID + "&secret=" + testSecret, code: 40002},
		{name: "missing grant_type", query: "appid=" + testAppID + "&secret=" + testSecret, code: 40002},
		{name: "missing appid", query: "grant_type=client_credential&secret=" + testSecret, code: 41002},
		{name: "missing secret", query: "grant_type=client_credential&appid=" + testAppID, code: 41004},
		{name: "unknown appid", query: "grant_type=client_credential&appid=wxnobody&secret=" + testSecret, code: 40013},
		{name: "wrong secret", query: "grant_type=client_credential&appid=" + testAppID + "&secret=nope", code: 40125},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantAPIError(t, b.call(t, http.MethodGet, "/cgi-bin/token?"+tt.query, ""), tt.code)
		})
	}
	if got := b.sim.Stats().TokenFetches[testAppID]; got != 0 {
		t.Errorf("TokenFetches = %d after failed fetches, want 0", got)
	}
}

func TestTokenIssue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ttl  time.Duration
		want string
	}{
		{name: "default ttl", want: "7200"},
		{name: "configured ttl", ttl: 90 * time.Second, want: "90"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{TokenTTL: tt.ttl})
			res := b.call(t, http.MethodGet, "/cgi-bin/token?grant_type=client_credential&appid="+testAppID+"&secret="+testSecret, "")
			if got := res.str("expires_in"); got != tt.want {
				t.Errorf("expires_in = %s, want %s", got, tt.want)
			}
			if tok := res.str("access_token"); len(tok) < 64 {
				t.Errorf("token %q is shorter than 64 characters", tok)
			}
			if res.fields["errcode"] != nil {
				t.Errorf("success carries an errcode: %s", res.raw)
			}
			if got := b.sim.Stats().TokenFetches[testAppID]; got != 1 {
				t.Errorf("TokenFetches = %d, want 1", got)
			}
		})
	}
}

// tokenCode is the errcode an API call with tok gets (0 = it works).
func (b *bundle) tokenCode(t *testing.T, tok string) int64 {
	t.Helper()
	return b.call(t, http.MethodGet, "/cgi-bin/template/get_all_private_template?access_token="+tok, "").errcode()
}

func TestTokenInvalidationAndGrace(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{TokenTTL: time.Hour})
	t1 := b.token(t)
	t2 := b.token(t)
	if t1 == t2 {
		t.Fatal("a new fetch returned the same token")
	}
	for name, tok := range map[string]string{"t1": t1, "t2": t2} {
		if code := b.tokenCode(t, tok); code != 0 {
			t.Errorf("%s right after the refresh: errcode %d, want 0", name, code)
		}
	}
	b.clock.Advance(5*time.Minute - time.Second)
	if code := b.tokenCode(t, t1); code != 0 {
		t.Errorf("t1 inside its grace: errcode %d, want 0", code)
	}
	b.clock.Advance(time.Second)
	if code := b.tokenCode(t, t1); code != 40001 {
		t.Errorf("t1 after its grace: errcode %d, want 40001", code)
	}
	if code := b.tokenCode(t, t2); code != 0 {
		t.Errorf("t2: errcode %d, want 0", code)
	}

	// Two more fetches: the token two back dies at once.
	t3 := b.token(t)
	t4 := b.token(t)
	for _, tc := range []struct {
		name string
		tok  string
		want int64
	}{{"t2", t2, 40001}, {"t3", t3, 0}, {"t4", t4, 0}} {
		if code := b.tokenCode(t, tc.tok); code != tc.want {
			t.Errorf("%s after two newer fetches: errcode %d, want %d", tc.name, code, tc.want)
		}
	}

	b.clock.Advance(time.Hour)
	if code := b.tokenCode(t, t4); code != 42001 {
		t.Errorf("t4 after its expires_in: errcode %d, want 42001", code)
	}
	if got := b.sim.Stats().TokenFetches[testAppID]; got != 4 {
		t.Errorf("TokenFetches = %d, want 4", got)
	}
}

func (b *bundle) stableToken(t *testing.T, force bool) apiResult {
	t.Helper()
	body := fmt.Sprintf(`{"grant_type":"client_credential","appid":%q,"secret":%q,"force_refresh":%t}`, testAppID, testSecret, force)
	return b.call(t, http.MethodPost, "/cgi-bin/stable_token", body)
}

func TestStableToken(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	first := b.stableToken(t, false)
	s1 := first.str("access_token")
	if len(s1) < 64 || first.str("expires_in") != "7200" {
		t.Fatalf("first stable token: %s", first.raw)
	}

	b.clock.Advance(time.Hour)
	again := b.stableToken(t, false)
	if again.str("access_token") != s1 || again.str("expires_in") != "3600" {
		t.Errorf("normal mode an hour later = %s, want the same token with 3600 left", again.raw)
	}

	// Plain tokens are independent: fetching two does not touch the stable one.
	plain := b.token(t)
	b.token(t)
	b.clock.Advance(6 * time.Minute)
	if code := b.tokenCode(t, s1); code != 0 {
		t.Errorf("stable token after plain fetches: errcode %d, want 0", code)
	}
	if code := b.tokenCode(t, plain); code != 40001 {
		t.Errorf("superseded plain token: errcode %d, want 40001", code)
	}

	forced := b.stableToken(t, true)
	s2 := forced.str("access_token")
	if s2 == s1 || forced.str("expires_in") != "7200" {
		t.Fatalf("force_refresh = %s, want a new token", forced.raw)
	}
	if code := b.tokenCode(t, s1); code != 0 {
		t.Errorf("old stable token in its grace: errcode %d, want 0", code)
	}
	b.clock.Advance(5 * time.Minute)
	if code := b.tokenCode(t, s1); code != 40001 {
		t.Errorf("old stable token after force_refresh and grace: errcode %d, want 40001", code)
	}

	// Within the last five minutes normal mode renews, and the old token
	// keeps its remaining minutes.
	b.clock.Advance(7200*time.Second - 5*time.Minute - 5*time.Minute)
	renewed := b.stableToken(t, false)
	s3 := renewed.str("access_token")
	if s3 == s2 {
		t.Fatalf("normal mode with 5 minutes left returned the old token")
	}
	if code := b.tokenCode(t, s2); code != 0 {
		t.Errorf("renewed-away stable token before its expiry: errcode %d, want 0", code)
	}
	b.clock.Advance(5 * time.Minute)
	if code := b.tokenCode(t, s2); code != 42001 {
		t.Errorf("renewed-away stable token after its expiry: errcode %d, want 42001", code)
	}
	if got := b.sim.Stats().TokenFetches[testAppID]; got != 6 {
		t.Errorf("TokenFetches = %d, want 6 (4 stable + 2 plain)", got)
	}
}

func TestStableTokenErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	tests := []struct {
		name string
		body string
		code int64
	}{
		{name: "not json", body: "grant_type=client_credential", code: 47001},
		{name: "bad grant_type", body: `{"grant_type":"x","appid":"` + testAppID + `","secret":"` + testSecret + `"}`, code: 40002},
		{name: "unknown appid", body: `{"grant_type":"client_credential","appid":"wxnobody","secret":"s"}`, code: 40013},
		{name: "wrong secret", body: `{"grant_type":"client_credential","appid":"` + testAppID + `","secret":"nope"}`, code: 40125},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantAPIError(t, b.call(t, http.MethodPost, "/cgi-bin/stable_token", tt.body), tt.code)
		})
	}
}

func TestRevoke(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	plain := b.token(t)
	stable := b.stableToken(t, false).str("access_token")
	b.sim.Revoke(testAppID)
	b.sim.Revoke("wxnobody") // unknown apps are ignored
	for name, tok := range map[string]string{"plain": plain, "stable": stable} {
		if code := b.tokenCode(t, tok); code != 40001 {
			t.Errorf("%s token after Revoke: errcode %d, want 40001", name, code)
		}
	}
	if code := b.tokenCode(t, b.token(t)); code != 0 {
		t.Errorf("fresh token after Revoke: errcode %d, want 0", code)
	}
	if again := b.stableToken(t, false).str("access_token"); again == stable {
		t.Error("stable_token after Revoke returned the revoked token")
	}
}
