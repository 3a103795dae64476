package wechatsim

import (
	"encoding/json"
	"net/http"
	"regexp"
	"sort"
	"time"
	"unicode/utf8"
)

type sendRequest struct {
	ToUser      string `json:"touser"`
	TemplateID  string `json:"template_id"`
	URL         string `json:"url"`
	MiniProgram *struct {
		AppID    string `json:"appid"`
		PagePath string `json:"pagepath"`
	} `json:"miniprogram"`
	Data        map[string]json.RawMessage `json:"data"`
	Color       string                     `json:"color"`
	TopColor    string                     `json:"topcolor"`
	ClientMsgID string                     `json:"client_msg_id"`
}

type dataValue struct {
	Value *string `json:"value"`
	// Color is a pointer so that a subscribe send, which takes values only,
	// can tell a color given from none.
	Color *string `json:"color"`
}

type sendBody struct {
	ErrCode int    `json:"errcode"`
	ErrMsg  string `json:"errmsg"`
	MsgID   int64  `json:"msgid"`
}

// dedupKey includes the app because openids are per app.
type dedupKey struct {
	appID, openID, clientMsgID string
}

type recentEntry struct {
	key dedupKey
	at  time.Time
}

// event is one result callback to push: a TEMPLATESENDJOBFINISH, or a
// subscribe_msg_sent_event when sub is set.
type event struct {
	appID  string
	openID string
	msgID  int64
	// status is the TEMPLATESENDJOBFINISH Status.
	status  string
	sub     *subscribeResult
	copies  int
	created time.Time
}

func (s *Server) handleSend(r *http.Request) reply {
	s.mu.Lock()
	s.stats.sendRequests++
	a, rep, ok := s.authorize(r.URL.Query().Get("access_token"))
	s.mu.Unlock()
	if !ok {
		return rep
	}
	var req sendRequest
	if err := decodeJSON(r, &req); err != nil {
		return apiError(47001, "data format error")
	}
	if req.ToUser != "" {
		s.mu.Lock()
		s.pair(req.ToUser, req.ClientMsgID).Requests++
		s.mu.Unlock()
	}
	if rep, ok := checkMessage(a, req.ToUser, req.TemplateID, req.Data, false); !ok {
		return rep
	}

	s.mu.Lock()
	now := s.now()
	outcome := decide(s.rules, req.ToUser)
	var msgID int64
	var ev *event
	if outcome.accepted() {
		msgID, ev = s.accept(a.AppID, &req, outcome, now)
	}
	if outcome.accepted() && outcome != OutcomeReplyLost {
		s.pair(req.ToUser, req.ClientMsgID).Accepted++
		s.stats.accepted++
	}
	s.mu.Unlock()
	s.log.Debug("wechatsim: send", "app", a.AppID, "touser", req.ToUser, "client_msg_id", req.ClientMsgID, "outcome", outcome, "msgid", msgID)
	s.schedule(ev, outcome)
	return s.outcomeReply(r, outcome, msgID)
}

// schedule starts pushing ev, if any, as outcome says: in the background
// after the callback delay, or for OutcomeCallbackFirst right now.
func (s *Server) schedule(ev *event, outcome Outcome) {
	if ev == nil {
		return
	}
	if outcome == OutcomeCallbackFirst {
		// The callback, retries included, completes before the sender
		// learns the msgid: the race receivers must survive.
		if s.reserve() {
			s.push(*ev, 0)
		}
	} else if s.reserve() {
		go s.push(*ev, s.callbackDelay)
	}
}

// outcomeReply is the API reply of a valid send with outcome; msgID is the
// message's, for the outcomes answered errcode 0.
func (s *Server) outcomeReply(r *http.Request, outcome Outcome, msgID int64) reply {
	switch outcome {
	case OutcomeSystemBusy:
		return apiError(-1, "system error")
	case OutcomeNotFollowing:
		return apiError(43004, "require subscribe")
	case OutcomeUserRefused:
		return apiError(43101, "user refuse to accept the msg")
	case OutcomeFrequencyLimit:
		return apiError(45011, "api minute-quota reach limit  mustslower  retry next minute")
	case OutcomeDailyQuota:
		return apiError(45009, "reach max api daily quota limit")
	case OutcomeTokenInvalid:
		return apiError(40001, "invalid credential, access_token is invalid or not latest")
	case OutcomeHTTP500, OutcomeReplyLost:
		return reply{status: http.StatusInternalServerError}
	case OutcomeHang:
		s.hang(r.Context())
		return reply{abort: true}
	}
	return reply{body: sendBody{ErrCode: 0, ErrMsg: "ok", MsgID: msgID}}
}

// accept records a message WeChat took and returns its msgid and the callback
// to push, nil for a de-duplicated repeat. The caller holds s.mu.
func (s *Server) accept(appID string, req *sendRequest, outcome Outcome, now time.Time) (int64, *event) {
	s.expireRecent(now)
	key := dedupKey{appID: appID, openID: req.ToUser, clientMsgID: req.ClientMsgID}
	if req.ClientMsgID != "" {
		if msgID, ok := s.recent[key]; ok {
			return msgID, nil
		}
	}
	s.nextMsgID++
	msgID := s.nextMsgID
	if req.ClientMsgID != "" {
		s.recent[key] = msgID
		s.recentOrder = append(s.recentOrder, recentEntry{key: key, at: now})
	}
	if outcome.delivered() {
		s.pair(req.ToUser, req.ClientMsgID).Pushed++
		s.stats.pushed++
	}
	status, copies := outcome.callback()
	if copies == 0 {
		return msgID, nil
	}
	return msgID, &event{appID: appID, openID: req.ToUser, msgID: msgID, status: status, copies: copies, created: now}
}

// expireRecent forgets pairs older than the de-duplication window. The
// caller holds s.mu.
func (s *Server) expireRecent(now time.Time) {
	n := 0
	for n < len(s.recentOrder) && now.Sub(s.recentOrder[n].at) >= dedupWindow {
		delete(s.recent, s.recentOrder[n].key)
		n++
	}
	if n > 0 {
		s.recentOrder = append(s.recentOrder[:0:0], s.recentOrder[n:]...)
	}
}

// checkMessage validates a template or subscribe send in WeChat's order of
// checks. valuesOnly (subscribe sends) refuses a color in a data item.
func checkMessage(a *app, toUser, templateID string, data map[string]json.RawMessage, valuesOnly bool) (reply, bool) {
	if toUser == "" {
		return apiError(40003, "invalid openid"), false
	}
	if templateID == "" {
		return apiError(40037, "invalid template_id"), false
	}
	tmpl, known := a.templates[templateID]
	if a.templates != nil && !known {
		return apiError(40037, "invalid template_id"), false
	}
	if len(data) == 0 {
		return apiError(47003, "argument invalid! data is empty"), false
	}
	values := make(map[string]string, len(data))
	for _, key := range sortedKeys(data) {
		var v dataValue
		if err := json.Unmarshal(data[key], &v); err != nil || (valuesOnly && v.Color != nil) {
			return apiError(47001, "data format error"), false
		}
		if v.Value == nil {
			return invalidData(key), false
		}
		values[key] = *v.Value
	}
	if a.templates == nil {
		return reply{}, true
	}
	want := placeholders(tmpl.Content)
	for _, key := range sortedKeys(values) {
		if !want[key] || !withinLimit(key, values[key]) {
			return invalidData(key), false
		}
	}
	for _, key := range sortedKeys(want) {
		if _, ok := values[key]; !ok {
			return invalidData(key), false
		}
	}
	return reply{}, true
}

func invalidData(key string) reply {
	return apiError(47003, "argument invalid! data."+key+".value invalid")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var placeholderRE = regexp.MustCompile(`\{\{\s*([A-Za-z0-9_]+)\.DATA\s*\}\}`)

// placeholders returns the keys of the {{key.DATA}} placeholders in content.
func placeholders(content string) map[string]bool {
	keys := make(map[string]bool)
	for _, m := range placeholderRE.FindAllStringSubmatch(content, -1) {
		keys[m[1]] = true
	}
	return keys
}

var categoryKeyRE = regexp.MustCompile(`^([a-z_]+?)([0-9]+)$`)

// categoryLimits are the value limits of category template keys (thing1,
// phone_number2, …), in characters; name and phrase count a Chinese
// character as two, which is how "10 Chinese or 20 letters" comes out.
var categoryLimits = map[string]int{
	"thing":            20,
	"character_string": 32,
	"phone_number":     17,
	"car_number":       8,
	"phrase":           10,
	"number":           32,
	"letter":           32,
	"symbol":           5,
	"name":             20,
}

func withinLimit(key, value string) bool {
	m := categoryKeyRE.FindStringSubmatch(key)
	if m == nil {
		return true
	}
	limit, ok := categoryLimits[m[1]]
	if !ok {
		return true
	}
	n := utf8.RuneCountInString(value)
	if m[1] == "name" || m[1] == "phrase" {
		n = 0
		for _, r := range value {
			n += min(utf8.RuneLen(r), 2)
		}
	}
	return n <= limit
}

type templateEntry struct {
	TemplateID      string `json:"template_id"`
	Title           string `json:"title"`
	PrimaryIndustry string `json:"primary_industry"`
	DeputyIndustry  string `json:"deputy_industry"`
	Content         string `json:"content"`
	Example         string `json:"example"`
}

type templateListBody struct {
	TemplateList []templateEntry `json:"template_list"`
}

func (s *Server) handleTemplates(r *http.Request) reply {
	s.mu.Lock()
	a, rep, ok := s.authorize(r.URL.Query().Get("access_token"))
	s.mu.Unlock()
	if !ok {
		return rep
	}
	list := make([]templateEntry, 0, len(a.templateList))
	for _, t := range a.templateList {
		list = append(list, templateEntry{
			TemplateID:      t.TemplateID,
			Title:           t.Title,
			PrimaryIndustry: t.PrimaryIndustry,
			DeputyIndustry:  t.DeputyIndustry,
			Content:         t.Content,
			Example:         t.Example,
		})
	}
	return reply{body: templateListBody{TemplateList: list}}
}
