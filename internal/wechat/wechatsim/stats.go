package wechatsim

import (
	"maps"
	"sort"
)

// Stats is a snapshot of what the simulator saw and did.
type Stats struct {
	// TokenFetches counts, by appid, /cgi-bin/token and stable_token calls
	// that issued or returned a token.
	TokenFetches map[string]int `json:"token_fetches"`
	// SendRequests counts every template send request, valid or not.
	SendRequests int `json:"send_requests"`
	// Accepted counts sends answered errcode 0, de-duplicated repeats included.
	Accepted int `json:"accepted"`
	// Pushed counts template messages the users actually got.
	Pushed int `json:"pushed"`
	// SubscribeRequests counts every subscribe bizsend request, valid or not;
	// SubscribeAccepted those answered errcode 0. Subscribe sends count in
	// none of the template fields above, nor in Pair.
	SubscribeRequests int `json:"subscribe_requests"`
	SubscribeAccepted int `json:"subscribe_accepted"`
	// CallbacksPushed counts callback events (template and subscribe) the
	// receiver acknowledged (2xx) within three tries; CallbacksFailed those it
	// never did.
	CallbacksPushed int `json:"callbacks_pushed"`
	CallbacksFailed int `json:"callbacks_failed"`
	// CallbackAttempts counts callback HTTP requests, retries included.
	CallbackAttempts int `json:"callback_attempts"`
	// Duplicates lists the (openid, client_msg_id) pairs accepted more than
	// once, sorted. Pairs without a client_msg_id are left out: sends
	// without one are distinct messages by definition.
	Duplicates []PairKey `json:"duplicates"`
}

// PairKey names the sends of one client_msg_id to one user.
type PairKey struct {
	OpenID      string `json:"openid"`
	ClientMsgID string `json:"client_msg_id"`
}

// PairStats counts the sends of one PairKey.
type PairStats struct {
	Requests int `json:"requests"` // valid or not
	Accepted int `json:"accepted"` // answered errcode 0
	Pushed   int `json:"pushed"`   // times the user actually got it
}

type counters struct {
	tokenFetches     map[string]int
	sendRequests     int
	accepted         int
	pushed           int
	callbacksPushed  int
	callbacksFailed  int
	callbackAttempts int

	subscribeRequests int
	subscribeAccepted int
	// subscribeSends counts accepted bizsends by openid.
	subscribeSends map[string]int
}

// Stats returns a snapshot.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		TokenFetches:     maps.Clone(s.stats.tokenFetches),
		SendRequests:     s.stats.sendRequests,
		Accepted:         s.stats.accepted,
		Pushed:           s.stats.pushed,
		CallbacksPushed:  s.stats.callbacksPushed,
		CallbacksFailed:  s.stats.callbacksFailed,
		CallbackAttempts: s.stats.callbackAttempts,
		Duplicates:       []PairKey{},

		SubscribeRequests: s.stats.subscribeRequests,
		SubscribeAccepted: s.stats.subscribeAccepted,
	}
	for key, p := range s.pairs {
		if key.ClientMsgID != "" && p.Accepted > 1 {
			st.Duplicates = append(st.Duplicates, key)
		}
	}
	sort.Slice(st.Duplicates, func(i, j int) bool {
		a, b := st.Duplicates[i], st.Duplicates[j]
		if a.OpenID != b.OpenID {
			return a.OpenID < b.OpenID
		}
		return a.ClientMsgID < b.ClientMsgID
	})
	return st
}

// Pair returns the counts of one (openid, client_msg_id); sends without a
// client_msg_id are counted under "".
func (s *Server) Pair(openID, clientMsgID string) PairStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.pairs[PairKey{OpenID: openID, ClientMsgID: clientMsgID}]; ok {
		return *p
	}
	return PairStats{}
}

// SubscribeSends returns how many subscribe bizsends to openID were answered
// errcode 0. Each is a distinct message: bizsend has no de-duplication.
func (s *Server) SubscribeSends(openID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.subscribeSends[openID]
}

// pair returns the live counts of a pair, creating them. The caller holds s.mu.
func (s *Server) pair(openID, clientMsgID string) *PairStats {
	key := PairKey{OpenID: openID, ClientMsgID: clientMsgID}
	p, ok := s.pairs[key]
	if !ok {
		p = &PairStats{}
		s.pairs[key] = p
	}
	return p
}
