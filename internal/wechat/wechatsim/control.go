package wechatsim

import (
	"encoding/json"
	"io"
	"net/http"
)

// The /sim/ endpoints let tests that run the simulator in another process
// steer and observe it. They are not part of the WeChat API and get no latency.

func (s *Server) handleSimStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, s.Stats())
}

func (s *Server) handleSimPair(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	writeJSON(w, s.Pair(q.Get("openid"), q.Get("client_msg_id")))
}

// handleSimRules takes a ParseRules spec as the whole body; an empty body
// clears the rules.
func (s *Server) handleSimRules(w http.ResponseWriter, r *http.Request) {
	spec, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rules, err := ParseRules(string(spec))
	if err == nil {
		err = s.SetRules(rules)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleSimRevoke(w http.ResponseWriter, r *http.Request) {
	appID := r.URL.Query().Get("appid")
	if !s.knows(appID) {
		http.Error(w, "unknown appid "+appID, http.StatusNotFound)
		return
	}
	s.Revoke(appID)
	w.WriteHeader(http.StatusNoContent)
}

// handleSimCallbackURL sets ?appid='s callback to ?url=, for receivers whose
// port is only known after the simulator started.
func (s *Server) handleSimCallbackURL(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !s.knows(q.Get("appid")) {
		http.Error(w, "unknown appid "+q.Get("appid"), http.StatusNotFound)
		return
	}
	if err := s.SetCallbackURL(q.Get("appid"), q.Get("url")); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) knows(appID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.apps[appID]
	return ok
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}
