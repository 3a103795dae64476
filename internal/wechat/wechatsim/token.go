package wechatsim

import (
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"time"
)

// token is one issued access token.
type token struct {
	appID string
	// expires is when its own expires_in runs out: after it, 42001.
	expires time.Time
	// deadline, when set, is when a superseded token stops working: after it,
	// 40001, as WeChat answers for a token that is "not latest".
	deadline time.Time
}

type tokenBody struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
}

func newTokenString() string {
	// Real tokens are well over 100 characters; 128 makes clients that
	// store them in short columns fail here rather than in production.
	b := make([]byte, 96)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *Server) handleToken(r *http.Request) reply {
	q := r.URL.Query()
	s.mu.Lock()
	defer s.mu.Unlock()
	a, rep, ok := s.credentials(q.Get("grant_type"), q.Get("appid"), q.Get("secret"))
	if !ok {
		return rep
	}
	now := s.now()
	// Only the newest and the one before it live; anything older dies now.
	if a.previous != "" {
		delete(s.tokens, a.previous)
		a.previous = ""
	}
	if old, ok := s.tokens[a.current]; ok {
		old.supersede(now)
		a.previous = a.current
	}
	a.current = s.issue(a.AppID, now)
	s.stats.tokenFetches[a.AppID]++
	return reply{body: tokenBody{AccessToken: a.current, ExpiresIn: int(s.tokenTTL / time.Second)}}
}

type stableTokenRequest struct {
	GrantType    string `json:"grant_type"`
	AppID        string `json:"appid"`
	Secret       string `json:"secret"`
	ForceRefresh bool   `json:"force_refresh"`
}

func (s *Server) handleStableToken(r *http.Request) reply {
	var req stableTokenRequest
	if err := decodeJSON(r, &req); err != nil {
		return apiError(47001, "data format error")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, rep, ok := s.credentials(req.GrantType, req.AppID, req.Secret)
	if !ok {
		return rep
	}
	now := s.now()
	s.stats.tokenFetches[a.AppID]++
	// Normal mode hands every caller the same token while it has more than
	// five minutes left, which is what lets many processes call it unlocked.
	if cur, ok := s.tokens[a.stable]; ok && !req.ForceRefresh && cur.deadline.IsZero() && cur.expires.Sub(now) > tokenGrace {
		return reply{body: tokenBody{AccessToken: a.stable, ExpiresIn: int(cur.expires.Sub(now) / time.Second)}}
	}
	if a.stablePrev != "" {
		delete(s.tokens, a.stablePrev)
		a.stablePrev = ""
	}
	if old, ok := s.tokens[a.stable]; ok {
		// A renewal leaves the old token its last minutes; a forced refresh
		// (for a leaked token) cuts it to the usual grace.
		if req.ForceRefresh {
			old.supersede(now)
		}
		a.stablePrev = a.stable
	}
	a.stable = s.issue(a.AppID, now)
	return reply{body: tokenBody{AccessToken: a.stable, ExpiresIn: int(s.tokenTTL / time.Second)}}
}

// credentials checks a token request. The caller holds s.mu.
func (s *Server) credentials(grantType, appID, secret string) (*app, reply, bool) {
	switch {
	case grantType != "client_credential":
		return nil, apiError(40002, "invalid grant_type"), false
	case appID == "":
		return nil, apiError(41002, "appid missing"), false
	case secret == "":
		return nil, apiError(41004, "appsecret missing"), false
	}
	a, ok := s.apps[appID]
	if !ok {
		return nil, apiError(40013, "invalid appid"), false
	}
	if secret != a.Secret {
		return nil, apiError(40125, "invalid appsecret"), false
	}
	return a, reply{}, true
}

// issue creates a token. The caller holds s.mu.
func (s *Server) issue(appID string, now time.Time) string {
	tok := newTokenString()
	s.tokens[tok] = &token{appID: appID, expires: now.Add(s.tokenTTL)}
	return tok
}

func (t *token) supersede(now time.Time) {
	deadline := now.Add(tokenGrace)
	if t.deadline.IsZero() || deadline.Before(t.deadline) {
		t.deadline = deadline
	}
}

// authorize resolves the access_token of an API call. The caller holds s.mu.
func (s *Server) authorize(accessToken string) (*app, reply, bool) {
	if accessToken == "" {
		return nil, apiError(41001, "access_token missing"), false
	}
	t, ok := s.tokens[accessToken]
	now := s.now()
	switch {
	case !ok, !t.deadline.IsZero() && !now.Before(t.deadline):
		return nil, apiError(40001, "invalid credential, access_token is invalid or not latest"), false
	case !now.Before(t.expires):
		return nil, apiError(42001, "access_token expired"), false
	}
	return s.apps[t.appID], reply{}, true
}

// Revoke invalidates every token of the app at once, plain and stable, as
// when another party refreshed or an operator reset the secret. Unknown apps
// are ignored.
func (s *Server) Revoke(appID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[appID]
	if !ok {
		return
	}
	for _, tok := range []*string{&a.current, &a.previous, &a.stable, &a.stablePrev} {
		delete(s.tokens, *tok)
		*tok = ""
	}
}
