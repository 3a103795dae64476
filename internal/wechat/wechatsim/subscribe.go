package wechatsim

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Subscribe messages (订阅通知) are the successor to template messages. They
// share the token checks, rules, msgids and callback machinery of template
// sends, with three differences: data items carry values only, there is no
// client_msg_id and so no de-duplication, and the result event is a
// subscribe_msg_sent_event.

type subscribeRequest struct {
	ToUser      string `json:"touser"`
	TemplateID  string `json:"template_id"`
	Page        string `json:"page"`
	MiniProgram *struct {
		AppID    string `json:"appid"`
		PagePath string `json:"pagepath"`
	} `json:"miniprogram"`
	Data map[string]json.RawMessage `json:"data"`
}

// subscribeResult is the List entry of a subscribe_msg_sent_event.
type subscribeResult struct {
	templateID  string
	errorCode   int
	errorStatus string
}

// subscribeResult returns the ErrorCode and ErrorStatus of the result event
// of an accepted subscribe send and how many times it is pushed; zero copies
// means no event.
func (o Outcome) subscribeResult() (code int, status string, copies int) {
	switch o {
	case OutcomeSuccess, OutcomeCallbackFirst, OutcomeReplyLost:
		return 0, "success", 1
	case OutcomeDuplicateCallback:
		return 0, "success", 2
	case OutcomeUserBlock:
		return 43101, "failed:user refuse", 1
	case OutcomeSystemFailed:
		return 10004, "failed:system failed", 1
	}
	return 0, "", 0
}

func (s *Server) handleSubscribeSend(r *http.Request) reply {
	s.mu.Lock()
	s.stats.subscribeRequests++
	a, rep, ok := s.authorize(r.URL.Query().Get("access_token"))
	s.mu.Unlock()
	if !ok {
		return rep
	}
	var req subscribeRequest
	if err := decodeJSON(r, &req); err != nil {
		return apiError(47001, "data format error")
	}
	if rep, ok := checkMessage(a, req.ToUser, req.TemplateID, req.Data, true); !ok {
		return rep
	}

	s.mu.Lock()
	outcome := decide(s.rules, req.ToUser)
	var msgID int64
	var ev *event
	if outcome.accepted() {
		// Every accepted bizsend is a new message: the API has no
		// client_msg_id, so a retried send reaches the user twice.
		s.nextMsgID++
		msgID = s.nextMsgID
		if code, status, copies := outcome.subscribeResult(); copies > 0 {
			ev = &event{
				appID:   a.AppID,
				openID:  req.ToUser,
				msgID:   msgID,
				sub:     &subscribeResult{templateID: req.TemplateID, errorCode: code, errorStatus: status},
				copies:  copies,
				created: s.now(),
			}
		}
	}
	if outcome.accepted() && outcome != OutcomeReplyLost {
		s.stats.subscribeAccepted++
		s.stats.subscribeSends[req.ToUser]++
	}
	s.mu.Unlock()
	s.log.Debug("wechatsim: subscribe send", "app", a.AppID, "touser", req.ToUser, "template_id", req.TemplateID, "outcome", outcome, "msgid", msgID)
	s.schedule(ev, outcome)
	return s.outcomeReply(r, outcome, msgID)
}

// subscribeEventXML renders a subscribe_msg_sent_event with its one List
// entry. Unlike TEMPLATESENDJOBFINISH, MsgID and ErrorCode are CDATA too.
func subscribeEventXML(originalID string, ev event) string {
	return "<xml>\n" +
		"<ToUserName>" + cdata(originalID) + "</ToUserName>\n" +
		"<FromUserName>" + cdata(ev.openID) + "</FromUserName>\n" +
		"<CreateTime>" + strconv.FormatInt(ev.created.Unix(), 10) + "</CreateTime>\n" +
		"<MsgType>" + cdata("event") + "</MsgType>\n" +
		"<Event>" + cdata("subscribe_msg_sent_event") + "</Event>\n" +
		"<SubscribeMsgSentEvent>\n" +
		"<List>\n" +
		"<TemplateId>" + cdata(ev.sub.templateID) + "</TemplateId>\n" +
		"<MsgID>" + cdata(strconv.FormatInt(ev.msgID, 10)) + "</MsgID>\n" +
		"<ErrorCode>" + cdata(strconv.Itoa(ev.sub.errorCode)) + "</ErrorCode>\n" +
		"<ErrorStatus>" + cdata(ev.sub.errorStatus) + "</ErrorStatus>\n" +
		"</List>\n" +
		"</SubscribeMsgSentEvent>\n" +
		"</xml>"
}
