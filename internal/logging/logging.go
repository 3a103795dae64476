// Package logging builds wxpush's log/slog logger and holds the masking rules for
// personal data in logs. Openids are never logged whole; secrets are held in
// secret.Value, which prints itself redacted.
package logging

import (
	"io"
	"log/slog"
	"os"
	"strings"
)

// New returns a logger writing JSON (format "json") or text lines ("text"; "auto"
// picks text when w is a terminal, JSON otherwise) at level ("debug", "info",
// "warn", "error"; anything else means info).
func New(w io.Writer, level, format string) *slog.Logger {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: l}
	if format == "auto" && isTerminal(w) {
		format = "text"
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// MaskOpenID keeps the first 4 and last 2 characters of an openid, enough to tell
// two users apart in a log without identifying them.
func MaskOpenID(openID string) string {
	r := []rune(openID)
	if len(r) <= 8 {
		return strings.Repeat("*", len(r))
	}
	return string(r[:4]) + "****" + string(r[len(r)-2:])
}

// Discard is a logger that drops everything (tests).
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// isTerminal reports whether w is a character device (a terminal), where people
// read the lines, rather than a file or pipe, where programs do.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
