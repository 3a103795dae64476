// Package secret holds credentials (app secrets, API keys, AES keys) in a type that
// refuses to print itself. fmt, log/slog, encoding/json and %#v all render a Value as
// "[redacted]", so a secret that reaches a log line, an error or a response by mistake
// still does not leak. Only Reveal returns the text, and only code that sends it to
// WeChat or compares it should call it.
package secret

import "log/slog"

// Value is a secret string. The zero value is the empty secret.
type Value string

const redacted = "[redacted]"

// Reveal returns the secret text.
func (v Value) Reveal() string { return string(v) }

// IsZero reports whether the secret is empty.
func (v Value) IsZero() bool { return v == "" }

// String implements fmt.Stringer without revealing the value.
func (v Value) String() string {
	if v == "" {
		return ""
	}
	return redacted
}

// GoString keeps %#v from printing the value.
func (v Value) GoString() string { return v.String() }

// LogValue keeps log/slog from printing the value.
func (v Value) LogValue() slog.Value { return slog.StringValue(v.String()) }

// MarshalJSON keeps encoding/json from printing the value.
func (v Value) MarshalJSON() ([]byte, error) { return []byte(`"` + v.String() + `"`), nil }

// MarshalText keeps text encoders (YAML, env dumps) from printing the value.
func (v Value) MarshalText() ([]byte, error) { return []byte(v.String()), nil }
