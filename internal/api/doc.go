// Package api is the enqueuer's HTTP surface: the producer API (/v1/messages), the
// WeChat callback receiver (/wechat/callback/{app}), and /metrics, /healthz and
// /readyz.
//
// Bad input gets a 4xx with {"error":{"code","message","field"}} and changes
// nothing; an unreachable Redis gets a 503 with Retry-After, never a 500. The
// callback path checks the signature, the timestamp window and the event, then
// makes two Redis round trips (the nonce memory, then every result of the
// event in one pipeline) and answers at once, well inside WeChat's 5-second
// window. Handlers are safe for concurrent use and hold no state of their own.
package api
