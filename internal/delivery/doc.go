// Package delivery owns each message's record in Redis and its life cycle:
// queued/scheduled → (retrying) → sent → delivered | user_blocked | wechat_failed,
// or rejected, dead, expired, canceled, unconfirmed.
//
// Every transition is one Lua script, so it is atomic against concurrent workers,
// callbacks and sweepers: a final state is never left, and a callback that arrives
// before the worker stored the msgid is held and applied by the transition that
// stores it. The store never talks to WeChat and never decides retries; callers
// tell it what happened. A Store is safe for concurrent use.
package delivery
