package service

import (
	"slices"
	"testing"

	"github.com/wxpush/wxpush/internal/config"
	"github.com/wxpush/wxpush/internal/delivery"
)

// The states config accepts for webhook_states are exactly those the
// delivery scripts emit events for: sent and the final states.
func TestWebhookStatesAreTheEmittedOnes(t *testing.T) {
	want := []string{string(delivery.StateSent)}
	for _, s := range delivery.FinalStates() {
		want = append(want, string(s))
	}
	if !slices.Equal(config.DefaultWebhookStates, want) {
		t.Errorf("config.DefaultWebhookStates = %v, want %v", config.DefaultWebhookStates, want)
	}
}
