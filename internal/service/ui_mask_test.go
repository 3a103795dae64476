package service

import (
	"strings"
	"testing"
)

// TestMaskPayloadChunk: the UI masks the openids of every message a batch's
// chunk task carries, not only a delivery task's own.
func TestMaskPayloadChunk(t *testing.T) {
	const a, b = "oia2TjuEGTNoeX76QEjQNrcURxG8", "oib3TjuEGTNoeX76QEjQNrcURxG9"
	payload := `{"id":"fanout-X.0","q":"normal","app":"default","items":[{"id":"Y1","to":"` + a + `"},{"id":"Y2","to":"` + b + `"}]}`
	got := maskPayload("message:chunk", []byte(payload))
	if strings.Contains(got, a) || strings.Contains(got, b) || !strings.Contains(got, "oia2****G8") || !strings.Contains(got, "oib3****G9") {
		t.Errorf("masked chunk payload = %s, want both openids masked", got)
	}
}
