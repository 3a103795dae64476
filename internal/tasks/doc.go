// Package tasks defines wxpush's asynq tasks (TypeDeliver, TypeFanout,
// TypeChunk), how messages are submitted (a record in the delivery store plus a
// task), and the handler that delivers one: rate limits, check the stored
// state, get the shared token, send, then settle or retry. A batch's chunk
// task does the same for up to ChunkSize messages at once, with one Redis
// round trip for their attempts and one for WeChat's answers, and hands a
// message it cannot finish to a TypeDeliver task of its own.
//
// The handler never sends a message whose stored state is sent or final, and
// every attempt carries the message id as client_msg_id, so WeChat drops a
// repeat after a crash between its reply and our write.
//
// Throttling is not failure. A rate-limit wait of up to 2 s happens in the
// handler (the worker slot would only wait elsewhere); a longer one, a 45011
// (next minute) or a parked app (45009, until 00:00 Asia/Shanghai or a resume)
// returns a retryAfter error: RetryDelayFunc schedules the task for exactly that
// time and IsFailure reports false, so asynq does not count it against the
// message's retry budget. Real failures back off exponentially with full jitter
// until the budget is spent, then the message is dead. The handler is safe for
// concurrent use by asynq's worker goroutines.
package tasks
