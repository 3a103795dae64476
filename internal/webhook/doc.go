// Package webhook delivers producers' status webhooks: it forwards the state
// changes the delivery scripts append to the per-shard outbox streams into the
// global event stream (EventsStream) and, for messages with a status_url, into
// asynq tasks on the "webhooks" queue, which it POSTs signed (Sign), in
// per-message order, with exponential backoff and full jitter, behind a
// per-endpoint concurrency limit, a circuit breaker and an SSRF guard.
//
// It never loses an event: the outbox entry is acknowledged only after the
// global stream entry and the task exist, so a crash repeats a step (the
// event id stays the same) and a receiver may see a duplicate, never a gap.
// The asynq archive of the "webhooks" queue is the dead-letter list
// (DeadLetters). It never logs a payload, a secret or an openid. Every type
// here is safe for concurrent use.
package webhook
