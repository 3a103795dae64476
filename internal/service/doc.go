// Package service assembles wxpush's processes from the other packages: the
// enqueuer (HTTP API and callback), the worker (asynq server, unconfirmed sweeper,
// admin HTTP) and standalone mode (both, on an embedded Redis and the built-in
// WeChat simulator). It owns wiring and lifecycles only — no delivery logic — so
// cmd/ stays a few lines and every process can be started and stopped by a test.
package service
