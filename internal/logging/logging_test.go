package logging

import "testing"

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
