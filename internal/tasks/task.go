package tasks

import (
	"encoding/json"
	"fmt"

	"github.com/hibiken/asynq"
)

// TypeDeliver is the task that sends one message.
const TypeDeliver = "message:deliver"

// Queues by priority, with asynq's weighted round robin: high gets 6 of every 10
// polls when all three have work.
const (
	QueueHigh   = "high"
	QueueNormal = "normal"
	QueueLow    = "low"
)

// QueueWeights is the asynq Queues configuration.
var QueueWeights = map[string]int{QueueHigh: 6, QueueNormal: 3, QueueLow: 1}

// QueueFor maps an API priority ("", high, normal, low) to its queue.
func QueueFor(priority string) (string, bool) {
	switch priority {
	case "", "normal":
		return QueueNormal, true
	case "high":
		return QueueHigh, true
	case "low":
		return QueueLow, true
	}
	return "", false
}

// DeliverPayload is the task payload: the id, and what the rate limits need
// before the record is read; the record holds the message.
type DeliverPayload struct {
	ID  string `json:"id"`
	App string `json:"app"`
	To  string `json:"to,omitempty"` // the recipient's openid, for the per-recipient limit
}

// NewDeliverTask returns the task for message id. The asynq task id is the message
// id, so enqueueing one message twice is refused by asynq.
func NewDeliverTask(id, app, to string, opts ...asynq.Option) *asynq.Task {
	b, _ := json.Marshal(DeliverPayload{ID: id, App: app, To: to}) // strings cannot fail
	return asynq.NewTask(TypeDeliver, b, append([]asynq.Option{asynq.TaskID(id)}, opts...)...)
}

func parseDeliverPayload(b []byte) (DeliverPayload, error) {
	var p DeliverPayload
	if err := json.Unmarshal(b, &p); err != nil || p.ID == "" {
		return p, fmt.Errorf("tasks: bad %s payload: %w", TypeDeliver, asynq.SkipRetry)
	}
	return p, nil
}
