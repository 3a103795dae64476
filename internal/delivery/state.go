package delivery

// State is a message's place in its life cycle. The strings are part of the API
// and of metric labels.
type State string

// Non-final states.
const (
	StateQueued    State = "queued"
	StateScheduled State = "scheduled"
	StateRetrying  State = "retrying"
	StateSent      State = "sent"
)

// Final states: once reached, a message never changes state again.
const (
	StateDelivered    State = "delivered"
	StateUserBlocked  State = "user_blocked"
	StateWeChatFailed State = "wechat_failed"
	StateRejected     State = "rejected"
	StateDead         State = "dead"
	StateExpired      State = "expired"
	StateCanceled     State = "canceled"
	StateUnconfirmed  State = "unconfirmed"
)

// FinalStates lists every final state in a stable order.
func FinalStates() []State {
	return []State{StateDelivered, StateUserBlocked, StateWeChatFailed, StateRejected,
		StateDead, StateExpired, StateCanceled, StateUnconfirmed}
}

// Final reports whether s is a final state.
func (s State) Final() bool {
	switch s {
	case StateDelivered, StateUserBlocked, StateWeChatFailed, StateRejected,
		StateDead, StateExpired, StateCanceled, StateUnconfirmed:
		return true
	}
	return false
}
