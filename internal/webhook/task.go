package webhook

import (
	"encoding/json"
	"fmt"
)

// TypeDeliver is the asynq task type of one webhook delivery; its task id is
// the event id, so a repeated forward enqueues nothing new.
const TypeDeliver = "webhook:deliver"

// payload is a delivery task's payload.
type payload struct {
	Event Event  `json:"event"`
	URL   string `json:"url"`
	App   string `json:"app"`
}

func decodePayload(b []byte) (payload, error) {
	var p payload
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("webhook: decode task payload: %w", err)
	}
	return p, nil
}

func encodePayload(p payload) ([]byte, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("webhook: encode task payload: %w", err)
	}
	return b, nil
}
