package wechat

import (
	"bytes"
	"strconv"
	"strings"
	"unicode/utf8"
)

// fastEvent reads the one shape WeChat's events take: <xml>, then elements
// that each hold a single CDATA section or plain text, then </xml>, with
// whitespace between. It runs in one pass, several times faster than
// encoding/xml, on the path every callback takes. Anything else — a
// declaration, attributes, nesting, entities, comments, a carriage return, a
// control character, a repeated element, a CreateTime that is not a number —
// returns ok false, and ParseEvent hands the body to encoding/xml, which
// decides. Where it returns ok, the event equals what encoding/xml decodes
// (FuzzFastEvent checks that).
func fastEvent(body []byte) (ev Event, ok bool) {
	rest := bytes.TrimLeft(body, " \t\n")
	rest, ok = bytes.CutPrefix(rest, []byte("<xml>"))
	if !ok {
		return Event{}, false
	}
	var seen []string
	for {
		rest = bytes.TrimLeft(rest, " \t\n")
		if tail, end := bytes.CutPrefix(rest, []byte("</xml>")); end {
			if len(bytes.TrimLeft(tail, " \t\n")) != 0 {
				return Event{}, false
			}
			return ev, true
		}
		var name, text string
		if name, text, rest, ok = fastElement(rest); !ok {
			return Event{}, false
		}
		for _, s := range seen {
			if s == name {
				return Event{}, false
			}
		}
		seen = append(seen, name)
		switch name {
		case "ToUserName":
			ev.ToUserName = text
		case "FromUserName":
			ev.FromUserName = text
		case "CreateTime":
			// As encoding/xml: empty is 0, anything else must be a number
			// once trimmed.
			if text != "" {
				n, err := strconv.ParseInt(strings.TrimSpace(text), 10, 64)
				if err != nil {
					return Event{}, false
				}
				ev.CreateTime = n
			}
		case "MsgType":
			ev.MsgType = text
		case "Event":
			ev.Event = text
		case "MsgID":
			ev.MsgID = text
		case "Status":
			ev.Status = text
		case "Encrypt":
			ev.Encrypt = text
		case "SubscribeMsgSentEvent":
			return Event{}, false // nested results: encoding/xml reads them
		}
	}
}

// fastElement reads <Name>content</Name> from the start of b, where content is
// one CDATA section or text without markup; ok is false for anything else.
func fastElement(b []byte) (name, text string, rest []byte, ok bool) {
	if len(b) < 2 || b[0] != '<' {
		return "", "", nil, false
	}
	end := bytes.IndexByte(b, '>')
	if end < 0 {
		return "", "", nil, false
	}
	name = string(b[1:end])
	if !fastName(name) {
		return "", "", nil, false
	}
	b = b[end+1:]
	var content []byte
	if inner, isCDATA := bytes.CutPrefix(b, []byte("<![CDATA[")); isCDATA {
		stop := bytes.Index(inner, []byte("]]>"))
		if stop < 0 {
			return "", "", nil, false
		}
		content, b = inner[:stop], inner[stop+3:]
	} else {
		stop := bytes.IndexByte(b, '<')
		if stop < 0 {
			return "", "", nil, false
		}
		content, b = b[:stop], b[stop:]
		if bytes.IndexByte(content, '&') >= 0 || bytes.Contains(content, []byte("]]>")) {
			return "", "", nil, false
		}
	}
	if !fastText(content) {
		return "", "", nil, false
	}
	closing := "</" + name + ">"
	if !bytes.HasPrefix(b, []byte(closing)) {
		return "", "", nil, false
	}
	return name, string(content), b[len(closing):], true
}

// fastName accepts the element names WeChat uses: ASCII letters, digits and
// '_', starting with a letter (no namespace prefix, no attribute).
func fastName(s string) bool {
	if s == "" || !('a' <= s[0] && s[0] <= 'z' || 'A' <= s[0] && s[0] <= 'Z') {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// fastText accepts UTF-8 text that needs no normalisation: no carriage return
// (XML turns \r\n into \n) and no character XML forbids.
func fastText(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		switch {
		case r == '\t' || r == '\n':
		case r < 0x20, r == 0xFFFE, r == 0xFFFF, 0xD800 <= r && r <= 0xDFFF:
			return false
		}
	}
	return true
}
