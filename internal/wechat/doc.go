// Package wechat is wxpush's client for the WeChat Official Account API: access
// tokens shared through Redis, template message sends, typed errors with a delivery
// class, and the callback signature, envelope, replay guard (timestamp window and
// nonce memory in Redis) and event parsing.
//
// It never logs and never puts an access token, app secret or request URL (which
// carries the token) into an error. A Client and a TokenStore are safe for
// concurrent use by many goroutines; a TokenStore coordinates with every other
// process that shares its Redis so that one app has one token refresher at a time.
package wechat
