// Package faults is wxpush's fault-injection suite: integration tests that run
// the real cmd/enqueuer and cmd/worker binaries (built once per test binary run)
// against a private redis-server with the append-only file on (appendfsync
// always) and the WeChat simulator served from the test process, inject one
// fault per test, and then check the invariants of ../../../shared/design.md:
//
//   - every message the API acknowledged (2xx with an id) reaches a final state,
//     polled through GET /v1/messages/{id} with a deadline, and the right one
//     (delivered for a healthy simulator; unconfirmed only for a message whose
//     result callback the enqueuer never acknowledged);
//   - no user is pushed one logical message twice: the simulator's Pushed
//     count (what the user saw) is at most one per (openid, client_msg_id) and
//     per logical item (each item has its own openid, so a message re-created
//     under a new id by a replayed request is caught too). A repeat send that
//     WeChat de-duplicated by client_msg_id (Accepted > 1, Pushed = 1) is
//     legitimate after a crash between WeChat's reply and the state write; it
//     is reported as a figure, and is a failure only where no crash happened.
//
// The cases, one test each: workers SIGKILLed repeatedly under load; Redis
// killed and restarted under load; a WeChat outage (HTTP 500, errcode -1,
// hangs past the client timeout); slow WeChat replies past the client timeout;
// the access token revoked under load across three workers; the enqueuer
// SIGKILLed while batches are in flight (at random, and once at the worst
// moment: after the batch is committed, before its idempotent response is
// stored); SIGTERM of a worker under load; status webhooks through kills of
// the receiver, a worker, the enqueuer and Redis; inbox appliers SIGKILLed
// mid-batch. Each logs its figures (messages
// checked, faults injected, longest recovery, repeats and duplicates) on a line
// starting with FIGURES.
//
// Timing notes that shape the cases:
//
//   - asynq (v0.26) re-runs the tasks of a SIGKILLed worker only through lease
//     recovery: a lease lasts 30 s (rdb.LeaseDuration) and is extended every
//     5 s by the heartbeater, the recoverer only takes tasks whose lease
//     expired at least 30 s ago (a clock-skew allowance), and it runs when a
//     server starts and then once a minute. A killed worker's tasks therefore
//     become recoverable 55–60 s after the kill and are re-run within 2 min at
//     worst. The kill test waits for the 60 s and then starts one more worker
//     (whose recoverer runs at start-up, as a supervisor restarting a crashed
//     worker would), so it needs about 70 s instead of up to 130 s.
//   - an Idempotency-Key claim lives 30 s (idempotency lease): a retry of a
//     request whose enqueuer died gets 409 idempotency_in_progress until then.
//   - WeChat (and the simulator) tries a result callback three times at once;
//     callbacks that arrive while Redis or the enqueuer is down are lost, and
//     those messages settle unconfirmed after WXPUSH_CONFIRM_TIMEOUT (set to
//     10 s where that happens).
//
// The suite is skipped unless WXPUSH_FAULTS=1, so that go test ./... stays
// fast; make test-faults runs it. It needs redis-server and the go tool on PATH.
package faults
