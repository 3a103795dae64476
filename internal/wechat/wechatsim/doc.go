// Package wechatsim is a faithful, in-process simulator of the WeChat
// Official Account API that wxpush talks to: access tokens (plain and stable),
// template sends with WeChat's error codes and client_msg_id de-duplication,
// subscribe message bizsends, the private template list, and signed
// TEMPLATESENDJOBFINISH and subscribe_msg_sent_event callbacks pushed back to
// the receiver, and user messages and events pushed to an account's server URL
// with the reply read back (PushMessage), as WeChat delivers them. It exists because the real API host is unreachable from
// our machines, so every test and the standalone mode run against it. It never
// talks to the real WeChat, never writes anywhere but to the configured
// callback URLs, and keeps no package-level state. A *Server is safe for
// concurrent use; Close stops callback pushing and waits for every goroutine
// the server started.
package wechatsim
