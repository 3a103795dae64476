package logging

import (
	"bytes"
	"strings"
	"testing"
)

func TestMaskOpenID(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"typical openid", "oia2TjuEGTNoeX76QEjQNrcURxG8", "oia2****G8"},
		{"short", "abc", "***"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MaskOpenID(tt.in); got != tt.want {
				t.Errorf("MaskOpenID(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestNewFormat(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, "info", "auto").Info("hello", "k", "v")
	if !strings.HasPrefix(buf.String(), "{") {
		t.Errorf("auto on a non-terminal wrote %q, want JSON", buf.String())
	}
	buf.Reset()
	New(&buf, "info", "text").Info("hello", "k", "v")
	if !strings.Contains(buf.String(), "k=v") {
		t.Errorf("text wrote %q", buf.String())
	}
	buf.Reset()
	New(&buf, "warn", "json").Info("hidden")
	if buf.Len() != 0 {
		t.Errorf("an info line passed a warn level: %q", buf.String())
	}
}
