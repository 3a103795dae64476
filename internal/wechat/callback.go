package wechat

import (
	"bytes"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Signature returns hex(sha1(concat(sort(parts)))) — WeChat's callback signature.
// For plain callbacks parts are token, timestamp, nonce; for encrypted ones also
// the Encrypt field (the result is then msg_signature). WeChat sorts the parts
// lexicographically as byte strings and joins them with no separator, so the
// order of the arguments does not matter. parts is not modified.
func Signature(parts ...string) string {
	sorted := slices.Clone(parts)
	slices.Sort(sorted)
	h := sha1.New()
	for _, p := range sorted {
		h.Write([]byte(p)) // a hash.Hash never returns an error
	}
	return hex.EncodeToString(h.Sum(nil))
}

// VerifySignature reports whether sig equals Signature(parts...), comparing in
// constant time (crypto/subtle) so that the expected signature cannot be
// learned byte by byte from response timing. WeChat sends lowercase hex; any
// other spelling does not match.
func VerifySignature(sig string, parts ...string) bool {
	return subtle.ConstantTimeCompare([]byte(sig), []byte(Signature(parts...))) == 1
}

// Event is a callback event pushed by WeChat. The field names are WeChat's XML
// element names, which are case-sensitive.
type Event struct {
	ToUserName string `xml:"ToUserName"`
	// FromUserName is the recipient's openid.
	FromUserName string `xml:"FromUserName"`
	CreateTime   int64  `xml:"CreateTime"`
	MsgType      string `xml:"MsgType"`
	Event        string `xml:"Event"`
	// MsgID is TEMPLATESENDJOBFINISH's <MsgID> (capital ID; ordinary messages
	// carry <MsgId>, which is a different element and is not read). It equals
	// the msgid returned by the send and is kept as a canonical decimal string,
	// never a float64, which would round ids above 2^53.
	MsgID string `xml:"MsgID"`
	// Status is the raw Status text, e.g. "failed: system failed"; classify it
	// with ParseDeliveryStatus.
	Status string `xml:"Status"`
	// Encrypt is the base64 ciphertext present in compatible and safe modes.
	Encrypt string `xml:"Encrypt"`
	// SubscribeSent lists the results of subscribe_msg_sent_event (one event
	// may carry several).
	SubscribeSent []SubscribeResult `xml:"SubscribeMsgSentEvent>List"`
}

// SubscribeResult is one subscribe message's delivery result.
type SubscribeResult struct {
	TemplateID  string `xml:"TemplateId"`
	MsgID       string `xml:"MsgID"` // canonical decimal, like Event.MsgID
	ErrorCode   int    `xml:"ErrorCode"`
	ErrorStatus string `xml:"ErrorStatus"`
}

// Subscribe message events (wechat-protocol.md §6).
const (
	EventSubscribeMsgSent   = "subscribe_msg_sent_event"
	EventSubscribeMsgPopup  = "subscribe_msg_popup_event"
	EventSubscribeMsgChange = "subscribe_msg_change_event"
)

// SubscribeDelivery classifies a subscribe result: ErrorCode 0 is success,
// 43101 means the user refused (no subscription), anything else a failure.
func (r SubscribeResult) SubscribeDelivery() DeliveryStatus {
	switch r.ErrorCode {
	case 0:
		return DeliverySuccess
	case 43101:
		return DeliveryUserBlock
	}
	return DeliverySystemFailed
}

// EventTemplateSendJobFinish is the Event of a template message delivery result.
const EventTemplateSendJobFinish = "TEMPLATESENDJOBFINISH"

// ErrMalformedEvent is wrapped by every ParseEvent error. A receiver answers it
// with 400 and changes no state.
var ErrMalformedEvent = errors.New("wechat: malformed callback event")

// ParseEvent parses a callback body. It rejects malformed XML (including
// entities other than XML's five and a DOCTYPE), a root element other than
// <xml>, anything but comments, processing instructions and whitespace around
// the root, and for Event == TEMPLATESENDJOBFINISH a missing or non-decimal
// MsgID or missing Status. Errors wrap ErrMalformedEvent. The caller bounds the
// body size.
func ParseEvent(body []byte) (*Event, error) {
	ev, ok := fastEvent(body)
	if !ok {
		decoded, err := decodeEvent(body)
		if err != nil {
			return nil, err
		}
		ev = *decoded
	}
	return checkEvent(&ev)
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformedEvent, fmt.Sprintf(format, args...))
}

// decodeEvent reads any well-formed event with encoding/xml.
func decodeEvent(body []byte) (*Event, error) {
	// Strict (the default) rejects unknown entities such as the article's
	// "]]&g;" and mismatched tags; with no CharsetReader, a non-UTF-8 encoding
	// declaration is an error too.
	d := xml.NewDecoder(bytes.NewReader(body))
	d.Strict = true
	// next skips what XML allows around the root element (comments, processing
	// instructions such as <?xml ...?>, whitespace) and returns the next token.
	next := func() (xml.Token, error) {
		for {
			tok, err := d.Token()
			if err != nil {
				return nil, err
			}
			switch t := tok.(type) {
			case xml.Comment, xml.ProcInst:
				continue
			case xml.CharData:
				if len(bytes.Trim(t, " \t\r\n")) == 0 {
					continue
				}
			}
			return tok, nil
		}
	}

	tok, err := next()
	switch {
	case err == io.EOF:
		return nil, malformed("no root element")
	case err != nil:
		return nil, malformed("%v", err)
	}
	// A DOCTYPE (xml.Directive) lands here too: WeChat never sends one, and
	// refusing it keeps entity tricks out entirely.
	root, ok := tok.(xml.StartElement)
	if !ok {
		if _, ok := tok.(xml.Directive); ok {
			return nil, malformed("<!DOCTYPE> or other directive before the root element")
		}
		return nil, malformed("text before the root element")
	}
	if root.Name.Local != "xml" {
		return nil, malformed("root element <%s>, want <xml>", root.Name.Local)
	}
	if root.Name.Space != "" {
		return nil, malformed("root element <xml> in namespace %q, want no namespace", root.Name.Space)
	}
	var ev Event
	if err := d.DecodeElement(&ev, &root); err != nil {
		return nil, malformed("%v", err)
	}
	// A second document or stray text after </xml> means the body is not the
	// single document WeChat sends.
	if _, err := next(); err != io.EOF {
		if err != nil {
			return nil, malformed("after </xml>: %v", err)
		}
		return nil, malformed("content after </xml>")
	}
	return &ev, nil
}

// checkEvent normalises a decoded event and refuses what WeChat never sends.
func checkEvent(ev *Event) (*Event, error) {
	// WeChat wraps identifiers in CDATA with no padding, but a hand-formatted
	// body may put them on their own lines; an openid never contains spaces.
	for _, f := range []*string{&ev.ToUserName, &ev.FromUserName, &ev.MsgType, &ev.Event, &ev.MsgID} {
		*f = strings.TrimSpace(*f)
	}
	if ev.Event == EventTemplateSendJobFinish {
		if ev.MsgID == "" {
			return nil, malformed("%s without MsgID", ev.Event)
		}
		// ParseUint with base 10 takes digits only: no sign, exponent or
		// fraction ("1.5e9" is refused rather than rounded).
		id, err := strconv.ParseUint(ev.MsgID, 10, 64)
		if err != nil {
			return nil, malformed("%s MsgID %q is not a decimal id", ev.Event, ev.MsgID)
		}
		// Canonical form, so that "007" and the send's 7 de-duplicate together.
		ev.MsgID = strconv.FormatUint(id, 10)
		if strings.TrimSpace(ev.Status) == "" {
			return nil, malformed("%s without Status", ev.Event)
		}
	}
	if ev.Event == EventSubscribeMsgSent {
		if len(ev.SubscribeSent) == 0 {
			return nil, malformed("%s without results", ev.Event)
		}
		for i := range ev.SubscribeSent {
			r := &ev.SubscribeSent[i]
			id, err := strconv.ParseUint(strings.TrimSpace(r.MsgID), 10, 64)
			if err != nil {
				return nil, malformed("%s List[%d] MsgID %q is not a decimal id", ev.Event, i, r.MsgID)
			}
			r.MsgID = strconv.FormatUint(id, 10)
		}
	}
	return ev, nil
}

// DeliveryStatus classifies the Status of a TEMPLATESENDJOBFINISH event.
type DeliveryStatus int

const (
	// DeliveryUnknown: a Status this package does not recognise.
	DeliveryUnknown DeliveryStatus = iota
	// DeliverySuccess: WeChat delivered the message.
	DeliverySuccess
	// DeliveryUserBlock: the user refuses messages from this account.
	DeliveryUserBlock
	// DeliverySystemFailed: any other failure reported by WeChat.
	DeliverySystemFailed
)

// String returns "unknown", "success", "user_block" or "system_failed"; values
// outside the constants read as "unknown", so the result is a bounded label.
func (d DeliveryStatus) String() string {
	switch d {
	case DeliverySuccess:
		return "success"
	case DeliveryUserBlock:
		return "user_block"
	case DeliverySystemFailed:
		return "system_failed"
	default:
		return "unknown"
	}
}

// ParseDeliveryStatus classifies a TEMPLATESENDJOBFINISH Status: "success" →
// DeliverySuccess; a "failed" prefix with "user block" after the colon →
// DeliveryUserBlock, any other "failed" → DeliverySystemFailed; else
// DeliveryUnknown. WeChat documents "failed:user block" (no space) and
// "failed: system failed" (a space), and copies of the docs differ in spacing
// and case, so case, spaces, '_' and '-' are ignored when matching user block.
func ParseDeliveryStatus(raw string) DeliveryStatus {
	s := strings.ToLower(strings.TrimSpace(raw))
	if s == "success" {
		return DeliverySuccess
	}
	reason, ok := strings.CutPrefix(s, "failed")
	if !ok {
		return DeliveryUnknown
	}
	reason = strings.Map(func(r rune) rune {
		switch r {
		case ':', ' ', '\t', '_', '-':
			return -1
		}
		return r
	}, reason)
	if reason == "userblock" {
		return DeliveryUserBlock
	}
	return DeliverySystemFailed
}
