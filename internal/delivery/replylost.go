package delivery

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Lost replies.
//
// WeChat may accept a send whose reply never reaches the worker (a timeout, a
// reset connection, a 5xx from a proxy). The worker then cannot store the
// msgid, later attempts may fail, and the message can end dead or rejected
// while WeChat delivered it and pushed a result callback for a msgid wxpush
// does not know. WeChat's callback carries the recipient (FromUserName) and
// the event's CreateTime besides the msgid, and that is what matches the two:
//
//   - the worker reports such an attempt (MarkAmbiguous): the message becomes
//     a suspect for its openid, with the start of its first such attempt,
//     listed per app (rlz, at most Config.MaxSuspects, each for
//     Config.SuspectTTL after its latest such attempt);
//   - a result for an unknown msgid that names an openid with a suspect whose
//     attempt began no later than CreateTime + Config.ReplyLostSkew settles
//     the oldest such suspect from that result, and stores the msgid;
//   - a result held before the worker reported the attempt (the callback came
//     while the reply was still on its way) is found by MarkAmbiguous itself,
//     the oldest held for that openid with CreateTime no earlier than the
//     attempt's start less the skew; the attempt's outcome is then the
//     result's, and a later dead or rejected never comes.
//
// A message settled this way that was already final (dead, rejected,
// expired, canceled) takes WeChat's result: WeChat's own evidence that it
// reached the user outweighs our guess that it did not. It leaves the dead
// list, its history says why, and an event goes out; wxpush_messages_finished_total
// counted it once already, when it first became final, and is not counted
// again (the callback's outcome is CallbackCorrected); its backlog slot was
// released then too. A message not yet final is settled as any callback
// settles one (CallbackApplied, counted in finished_total then).
//
// What this cannot tell apart is documented in docs/reply-lost.md: two
// such messages to one openid in the same window, or a callback of another
// sender on the same account for that openid.

// Defaults of the lost-reply Config fields.
const (
	DefaultMaxSuspects   = 10000
	DefaultSuspectTTL    = time.Hour
	DefaultReplyLostSkew = 30 * time.Second
)

// EventPossiblySent is the history event of an attempt whose reply was lost:
// WeChat may have accepted it. A dead message with one may reach its user
// twice if it is requeued (PossibleDuplicate).
const EventPossiblySent = "possibly sent"

// PossibleDuplicate reports whether m had an attempt that may have reached
// WeChat without its reply (MarkAmbiguous) and was not settled by WeChat's
// result since: sending it again may deliver it twice, once WeChat's
// client_msg_id de-duplication (about 10 minutes) is over.
func PossibleDuplicate(m *Message) bool {
	if m == nil || m.WeChatMsgID != "" {
		return false
	}
	for _, e := range m.History {
		if e.Event == EventPossiblySent {
			return true
		}
	}
	return false
}

// luaReplyLost is the lost-reply Lua, after luaPrelude and luaHeld.
const luaReplyLost = `
-- The states a message whose reply was lost may be in when WeChat's result
-- turns up: waiting for another attempt, or settled without it.
local lostFrom = {queued=true, scheduled=true, retrying=true, dead=true, rejected=true, expired=true, canceled=true}
local function dropSuspect(prefix, app, id, openid)
  redis.call("ZREM", prefix .. "rl:" .. app .. ":" .. openid, id)
  redis.call("ZREM", prefix .. "rlz:" .. app, id .. " " .. openid)
end
-- trimSuspects drops app's suspects past the ttl (a bounded number per
-- call), then the oldest beyond max. A member of rlz is "<id> <openid>".
local function trimSuspects(prefix, app, now, ttl, max)
  local z = prefix .. "rlz:" .. app
  local function drop(m)
    local sep = string.find(m, " ", 1, true)
    if sep then
      redis.call("ZREM", prefix .. "rl:" .. app .. ":" .. string.sub(m, sep + 1), string.sub(m, 1, sep - 1))
    end
    redis.call("ZREM", z, m)
  end
  for _, m in ipairs(redis.call("ZRANGEBYSCORE", z, "-inf", "(" .. (now - ttl), "LIMIT", 0, 100)) do drop(m) end
  local over = redis.call("ZCARD", z) - max
  if over <= 0 then return end
  for _, m in ipairs(redis.call("ZRANGE", z, 0, over - 1)) do drop(m) end
end
-- settleLost settles message id of app from WeChat's result (to, raw) for
-- msgid, and stores the msgid. It returns the state the message was in, or
-- nil when that is not one of lostFrom (it was sent, or settled by a result).
local function settleLost(prefix, app, id, msgid, to, raw, now, retention, hold)
  local rec = prefix .. "msg:" .. id
  local st = redis.call("HGET", rec, "s")
  if not st or not lostFrom[st] then return nil end
  local backlog = prefix .. "backlog"
  redis.call("HSET", rec, "m", msgid, "w", raw)
  local note = "the reply to an attempt was lost; matched by openid and time"
  if final[st] then
    -- WeChat's evidence corrects a final state. The backlog released the
    -- message's slot when it became final; it leaves the dead list.
    redis.call("HSET", rec, "s", to, "tf", now)
    redis.call("PEXPIRE", rec, retention)
    redis.call("ZREM", prefix .. "dead:" .. app, id)
    emit(rec, backlog, app, st, to, now)
    note = note .. "; it was " .. st
  else
    settle(rec, backlog, app, st, to, now, retention)
  end
  hist(rec, cjson.encode({t = tonumber(now), e = "callback", s = to, st = raw, n = note}))
  settleBody(prefix .. "body:" .. id, to, retention)
  -- As after any callback: the index only catches WeChat's repeats.
  redis.call("SET", prefix .. "wxid:" .. app .. ":" .. msgid, id, "PX", hold)
  local ao = redis.call("HGET", rec, "ao")
  if ao then dropSuspect(prefix, app, id, ao) end
  return st
end
-- matchSuspect settles, from a result for msgid that no message is stored
-- under, the oldest suspect to openid whose attempt began no later than
-- ct + skew and that is within the ttl. Returns the callback's reply, or nil.
local function matchSuspect(prefix, app, openid, msgid, to, raw, ct, now, ttl, skew, retention, hold)
  local rl, rlz = prefix .. "rl:" .. app .. ":" .. openid, prefix .. "rlz:" .. app
  for _, id in ipairs(redis.call("ZRANGEBYSCORE", rl, "-inf", ct + skew, "LIMIT", 0, 20)) do
    local seen = tonumber(redis.call("ZSCORE", rlz, id .. " " .. openid))
    if seen and now - seen <= ttl then
      local from = settleLost(prefix, app, id, msgid, to, raw, now, retention, hold)
      if from then
        if final[from] then return {"corrected", id, app, to} end
        return {"applied", id, app, to}
      end
    end
    dropSuspect(prefix, app, id, openid)
  end
  return nil
end
`

// ambiguousScript records an attempt whose reply was lost (see
// MarkAmbiguous). KEYS: rec, rl, rlz, heldo, backlog. ARGV: id, openid,
// attempt start ms, now, suspect ttl, max suspects, skew, hold, retention,
// history entry. Returns {state, "changed"|"", app}.
var ambiguousScript = redis.NewScript(luaPrelude + luaHeld + luaReplyLost + `
local v = redis.call("HMGET", KEYS[1], "s", "a", "at")
local st, app = v[1], v[2]
if not st then return {} end
if final[st] or st == "sent" then return {st, "", app} end
local prefix = string.sub(KEYS[5], 1, -8)
local now, start, skew, hold = tonumber(ARGV[4]), tonumber(ARGV[3]), tonumber(ARGV[7]), tonumber(ARGV[8])
local first = tonumber(v[3]) or start
if start < first then first = start end
redis.call("HSET", KEYS[1], "at", first)
if ARGV[2] ~= "" then redis.call("HSET", KEYS[1], "ao", ARGV[2]) end
hist(KEYS[1], ARGV[10])
-- Without the recipient nothing can match it; the mark still guards a requeue.
if ARGV[2] == "" then return {st, "", app} end
-- WeChat may have pushed the result while the reply was on its way.
for _, msgid in ipairs(redis.call("ZRANGEBYSCORE", KEYS[4], first - skew, "+inf", "LIMIT", 0, 20)) do
  local hv = redis.call("GET", prefix .. "held:" .. app .. ":" .. msgid)
  local h = hv and decodeHeld(hv)
  dropHeld(prefix, app, msgid)
  redis.call("ZREM", KEYS[4], msgid)
  if h and heldFresh(h, now, hold) then
    settleLost(prefix, app, ARGV[1], msgid, h.s, h.w, now, ARGV[9], hold)
    return {h.s, "changed", app}
  end
end
redis.call("ZADD", KEYS[2], "NX", first, ARGV[1])
redis.call("PEXPIRE", KEYS[2], ARGV[5])
redis.call("ZADD", KEYS[3], now, ARGV[1] .. " " .. ARGV[2])
trimSuspects(prefix, app, now, tonumber(ARGV[5]), tonumber(ARGV[6]))
return {st, "", app}`)

// MarkAmbiguous records that an attempt at message id of app to openID,
// begun at start, failed in a way that may hide WeChat's acceptance: its
// reply was lost. Call it before recording the failure (MarkRetrying or
// Finish). If WeChat's result for it is held already, the message is settled
// from it now (Transition.Changed, a final State) and the failure must not be
// recorded; otherwise the message waits as a suspect for that result (see
// the package's notes on lost replies) and is marked in its history, which
// PossibleDuplicate reads. An empty openID records the mark only.
func (s *Store) MarkAmbiguous(ctx context.Context, id, app, openID string, start time.Time) (Transition, error) {
	if !validID(id) {
		return Transition{}, ErrNotFound
	}
	now := s.cfg.Now()
	line := s.line(now, historyLine{Event: EventPossiblySent,
		Note: "no reply from WeChat (timeout, reset or HTTP error): it may have accepted the message"})
	res, err := ambiguousScript.Run(ctx, s.rdb,
		[]string{recordKey(id), suspectKey(app, openID), suspectIndexKey(app), heldByUserKey(app, openID), backlogKey(shardOf(id))},
		id, openID, start.UnixMilli(), now.UnixMilli(), s.cfg.SuspectTTL.Milliseconds(), s.cfg.MaxSuspects,
		s.cfg.ReplyLostSkew.Milliseconds(), s.cfg.CallbackHold.Milliseconds(), s.cfg.Retention.Milliseconds(), line).Slice()
	if err != nil {
		return Transition{}, fmt.Errorf("delivery: mark ambiguous: %w", err)
	}
	return transition(res)
}
