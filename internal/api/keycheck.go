package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// checkKeys refuses what encoding/json lets through silently in b, a JSON value
// it has already accepted: a key given twice in one object (the later one would
// win) and invalid UTF-8 in a string (it would become U+FFFD). Objects are
// checked down to depth levels (1: b's own keys only; a negative depth: all).
// The error names the key's path, prefixed with prefix.
//
// It is one pass over the bytes with no allocation unless a key is escaped:
// every request goes through it. Given invalid JSON it returns nil or an error
// for what it saw first, never panics; the decoder reports the syntax.
func checkKeys(b []byte, prefix string, depth int) *apiError {
	w := keyWalker{b: b, checkUTF8: !utf8.Valid(b)}
	w.value(depth)
	if w.code == "" {
		return nil
	}
	field := prefix
	for i := len(w.path) - 1; i >= 0; i-- {
		if p := w.path[i]; p.index >= 0 {
			field += fmt.Sprintf("[%d]", p.index)
		} else {
			field = join(field, p.key)
		}
	}
	field = strings.ToValidUTF8(field, "\uFFFD")
	if w.code == "duplicate_key" {
		return badField(field, w.code, fmt.Sprintf("%s is given twice", field))
	}
	return badField(field, w.code, field+" is not valid UTF-8")
}

// keyWalker is checkKeys' cursor. On an error it stops, and the path to the bad
// key or string is collected innermost first as the walk unwinds.
type keyWalker struct {
	b         []byte
	i         int
	checkUTF8 bool // b is not all valid UTF-8: find the string that is not
	code      string
	path      []step
}

// step is one step of a path: an object's key, or an array's index (else -1).
type step struct {
	key   string
	index int
}

func (w *keyWalker) skipSpace() {
	for w.i < len(w.b) {
		switch w.b[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return
		}
	}
}

// value walks one value; depth is how many object levels to check from here
// (0: none, not even its strings).
func (w *keyWalker) value(depth int) {
	w.skipSpace()
	if w.i >= len(w.b) {
		return
	}
	switch w.b[w.i] {
	case '{':
		w.object(depth)
	case '[':
		w.array(depth)
	case '"':
		if raw := w.str(); depth != 0 && w.checkUTF8 && !utf8.Valid(raw) {
			w.code = "invalid_utf8"
		}
	default: // a number, true, false or null
		for w.i < len(w.b) && !isDelim(w.b[w.i]) {
			w.i++
		}
	}
}

func isDelim(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', ',', ']', '}':
		return true
	}
	return false
}

// str moves past one string and returns it raw, quotes included.
func (w *keyWalker) str() []byte {
	start := w.i
	for w.i++; w.i < len(w.b); w.i++ {
		switch w.b[w.i] {
		case '\\':
			w.i++ // the escaped byte; \uXXXX's digits need no care
		case '"':
			w.i++
			return w.b[start:w.i]
		}
	}
	return w.b[start:]
}

// below is the depth of an object's values: one level less, except that none
// stays none and all stays all.
func below(depth int) int {
	if depth > 0 {
		return depth - 1
	}
	return depth
}

// scanned is how many keys of an object are compared pairwise; past it they
// go in a map, so that a hostile object of thousands of keys stays linear.
const scanned = 16

func (w *keyWalker) object(depth int) {
	w.i++ // {
	var few [scanned][]byte
	var many map[string]bool
	for n := 0; ; n++ {
		w.skipSpace()
		if w.i >= len(w.b) || w.b[w.i] == '}' {
			w.i++
			return
		}
		if w.b[w.i] != '"' {
			return // invalid JSON
		}
		raw := w.str()
		key := keyOf(raw)
		switch {
		case depth == 0:
		case w.checkUTF8 && !utf8.Valid(raw):
			w.code = "invalid_utf8"
		case n < scanned:
			for _, k := range few[:n] {
				if bytes.Equal(k, key) {
					w.code = "duplicate_key"
				}
			}
			few[n] = key
		default:
			if many == nil {
				many = make(map[string]bool, 2*scanned)
				for _, k := range few {
					many[string(k)] = true
				}
			}
			if many[string(key)] {
				w.code = "duplicate_key"
			}
			many[string(key)] = true
		}
		if w.code != "" {
			w.path = append(w.path, step{key: string(key), index: -1})
			return
		}
		w.skipSpace()
		if w.i >= len(w.b) || w.b[w.i] != ':' {
			return
		}
		w.i++
		w.value(below(depth))
		if w.code != "" {
			w.path = append(w.path, step{key: string(key), index: -1})
			return
		}
		w.skipSpace()
		if w.i < len(w.b) && w.b[w.i] == ',' {
			w.i++
		}
	}
}

func (w *keyWalker) array(depth int) {
	w.i++ // [
	for n := 0; ; n++ {
		w.skipSpace()
		if w.i >= len(w.b) || w.b[w.i] == ']' {
			w.i++
			return
		}
		start := w.i
		w.value(depth)
		if w.code != "" {
			w.path = append(w.path, step{index: n})
			return
		}
		w.skipSpace()
		if w.i < len(w.b) && w.b[w.i] == ',' {
			w.i++
		}
		if w.i == start {
			return // no progress: invalid JSON
		}
	}
}

// keyOf is the key a raw JSON string spells: as is, or unescaped when it holds
// an escape ("\u0074ouser" is touser, and a duplicate of it).
func keyOf(raw []byte) []byte {
	inner := raw[1:max(1, len(raw)-1)]
	if bytes.IndexByte(inner, '\\') < 0 {
		return inner
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return inner
	}
	return []byte(s)
}
