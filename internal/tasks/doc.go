// Package tasks defines wxpush's asynq task (TypeDeliver), how a message is
// submitted (a record in the delivery store plus a task), and the handler that
// delivers it: check the stored state, get the shared token, send, settle or retry.
//
// The handler never sends a message whose stored state is sent or final, and every
// attempt carries the message id as client_msg_id, so WeChat drops a repeat after
// a crash between its reply and our write. Throttling (45011, 45009) reschedules
// without spending the retry budget: IsFailure reports false for it. The handler is
// safe for concurrent use by asynq's worker goroutines.
package tasks
