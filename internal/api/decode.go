package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// This file and keycheck.go are the strict JSON layer every request body goes
// through, one object level at a time, each named by its field path so that an
// error says where it is (data.Money.value, messages[3].touser). A new request
// field is a field of the request struct: its name becomes known from the tag.

// decodeStrict decodes one JSON object into v. Keys must be spelled exactly as
// v's json tags (encoding/json alone would accept "TOUSER" for "touser"); unknown
// keys and trailing data are refused. Error fields are prefixed with prefix.
// Duplicate keys and invalid UTF-8, which encoding/json lets through silently,
// are checkKeys' business: run it on the whole request once.
func decodeStrict(b []byte, v any, prefix string) *apiError {
	var keys map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&keys); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field == "" {
			what := "the body"
			if prefix != "" {
				what = prefix
			}
			return badField(prefix, "invalid_type", fmt.Sprintf("%s must be a JSON object, not %s", what, typeErr.Value))
		}
		return jsonError(err, prefix)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badField(prefix, "invalid_json", "unexpected data after the JSON object")
	}
	if keys == nil {
		return badField(prefix, "invalid_type", "expected a JSON object, not null")
	}
	known := jsonFields(v)
	for k := range keys {
		if !known[k] {
			f := join(prefix, k)
			return badField(f, "unknown_field", fmt.Sprintf("unknown field %q (names are case-sensitive)", f))
		}
	}
	if err := json.Unmarshal(b, v); err != nil {
		return jsonError(err, prefix)
	}
	return nil
}

// jsonFields returns the json names of a struct's fields.
func jsonFields(v any) map[string]bool {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	out := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out[name] = true
		}
	}
	return out
}

func join(prefix, f string) string {
	switch {
	case prefix == "":
		return f
	case f == "":
		return prefix
	}
	return prefix + "." + f
}

func jsonError(err error, prefix string) *apiError {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return badField(join(prefix, typeErr.Field), "invalid_type", fmt.Sprintf("%s must be %s, not %s", join(prefix, typeErr.Field), jsonKind(typeErr.Type.Kind().String()), typeErr.Value))
	case errors.As(err, &syntaxErr):
		return badField(prefix, "invalid_json", fmt.Sprintf("invalid JSON at byte %d: %v", syntaxErr.Offset, err))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return badField(join(prefix, f), "unknown_field", fmt.Sprintf("unknown field %q", join(prefix, f)))
	case errors.Is(err, io.EOF):
		return badField(prefix, "invalid_json", "empty body: expected a JSON object")
	}
	return badField(prefix, "invalid_json", "invalid JSON: "+err.Error())
}

func jsonKind(k string) string {
	switch k {
	case "map", "struct", "ptr":
		return "an object"
	case "slice":
		return "an array"
	}
	return "a " + k
}
