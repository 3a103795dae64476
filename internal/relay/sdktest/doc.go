// Package sdktest checks wxpush's upstream relay against a WeChat SDK handler
// that no one here wrote: silenceper/wechat's Official Account server, as a
// company would already run it behind its callback URL. It is a module of its
// own so that the SDK and its dependencies stay out of wxpush's go.mod; the
// replace directive builds it against the working tree. It holds tests only,
// and they talk to nothing but loopback servers they start.
package sdktest
