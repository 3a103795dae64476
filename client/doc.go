// Package client is the Go client of the wxpush HTTP API: it enqueues WeChat
// template and subscribe messages (Send, SendBatch), reads their life cycle
// (Status) and does the operator's chores (Cancel, Dead, Retry, Resume,
// Templates), with typed requests and responses that mirror the API's JSON.
//
// A Client is immutable after New and safe for concurrent use; every call
// takes a context and never outlives it. Answers that mean "not now" (429,
// 502, 503, 504, a 409 in_flight or idempotency_in_progress) and transport
// errors are retried, by default 3 times with full-jitter exponential backoff
// from 200 ms, waiting Retry-After when the server sends one and giving up at
// once when that wait would outlast the context's deadline. Send and SendBatch
// always carry an Idempotency-Key, the same on every retry, so that a retry
// after a lost answer never enqueues a message twice.
//
// API errors are *Error values (errors.As) that name the offending field. The
// API key is sent as a bearer token and never appears in String, %v or errors.
package client
