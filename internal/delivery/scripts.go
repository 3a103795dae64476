package delivery

import "github.com/redis/go-redis/v9"

// luaPrelude is shared by every transition script. Times are Unix milliseconds
// passed in by the caller, so tests can drive the clock. settle() is the one place
// a message becomes final: it also releases the app's backlog slot and starts the
// retention clock.
const luaPrelude = `
local final = {delivered=true, user_blocked=true, wechat_failed=true, rejected=true,
  dead=true, expired=true, canceled=true, unconfirmed=true}
-- History entries live in fields h1..hN (hn counts them), each a short JSON
-- object, so that a delivered message's record keeps only small values.
local function hist(rec, entry)
  local n = redis.call("HINCRBY", rec, "hn", 1)
  redis.call("HSET", rec, "h" .. n, entry)
end
-- The backlog hash counts each app's unfinished messages (field app) and how many
-- are in each non-final state (field app|state), for admission control and the
-- cluster-wide gauges.
local function count(backlog, app, state, by)
  if not state or final[state] then return end
  local f = app .. "|" .. state
  if redis.call("HINCRBY", backlog, f, by) <= 0 then redis.call("HDEL", backlog, f) end
end
local function move(backlog, app, from, to)
  if from == to then return end
  count(backlog, app, from, -1)
  count(backlog, app, to, 1)
end
-- emit appends a state change to the shard's outbox stream (the transactional
-- outbox of status webhooks and GET /v1/events, see delivery/events.go), when
-- the record wants events: a status_url (u) or the event stream (ev). Without
-- either it costs one HMGET. seq (es) numbers a message's events in order. The
-- outbox shares the backlog's hash tag, so it is in the script's slot.
local function emit(rec, backlog, app, from, to, now)
  local f = redis.call("HMGET", rec, "u", "ev", "n", "m", "ec", "em")
  if not f[1] and not f[2] then return end
  local seq = redis.call("HINCRBY", rec, "es", 1)
  redis.call("XADD", string.sub(backlog, 1, -8) .. "outbox", "*",
    "id", string.match(rec, ":msg:(.*)$"), "a", app, "s", to, "p", from or "",
    "q", seq, "n", f[3] or "0", "m", f[4] or "", "ec", f[5] or "", "em", f[6] or "",
    "u", f[1] or "", "t", now)
end
local function settle(rec, backlog, app, from, to, now, retention)
  redis.call("HSET", rec, "s", to, "tf", now)
  redis.call("HDEL", rec, "fl")
  if redis.call("HINCRBY", backlog, app, -1) <= 0 then redis.call("HDEL", backlog, app) end
  count(backlog, app, from, -1)
  redis.call("PEXPIRE", rec, retention)
  emit(rec, backlog, app, from, to, now)
end
-- settleBody ends a settled record's keeping of its send body: the body goes,
-- unless the message may be requeued (dead) or shows why it was refused
-- (rejected), when it stays as long as the record.
local keepBody = {dead=true, rejected=true}
local function settleBody(body, to, retention)
  if keepBody[to] then
    redis.call("PEXPIRE", body, retention)
  else
    redis.call("DEL", body)
  end
end
`

// createScript writes a new record and its send body unless the id exists or
// the app's backlog is full, and lists the record as not yet owned by a task
// (see Store.Owned).
//
// The same id again is a retry of the request with its Idempotency-Key. When
// the record exists and is still listed, the retry is about to enqueue its
// task: the listing is renewed (now, and the retry's fanout or chunk, unless
// an attempt has begun or the message was handed to a task of its own), so
// that the orphan sweep does not end it meanwhile. A record the sweep has ended
// (canceled, field "or") is revived: the retry is accepted after all; it keeps
// its creation time and history, and takes the retry's fields.
// KEYS: rec, backlog, body, unowned. ARGV: app, max backlog (0 = none), body,
// id, now ms, fanout id ("" for none), "a", app, "s", state, field, value, ...
// Returns "created", "revived", "exists" or "full".
var createScript = redis.NewScript(claimChunk + `
local old = redis.call("HMGET", KEYS[1], "s", "or", "c", "n", "fo")
if old[1] and (old[1] ~= "canceled" or old[2] ~= "1") then
  if redis.call("ZSCORE", KEYS[4], ARGV[4]) then
    redis.call("ZADD", KEYS[4], ARGV[5], ARGV[4])
    -- The retry's owner claims the message as a chunk would: not one an
    -- attempt has touched or a chunk has handed off (claimChunk).
    if ARGV[6] ~= "" then claim(KEYS[1], ARGV[6], old[5], old[4]) end
  end
  return "exists"
end
local max = tonumber(ARGV[2])
if max > 0 and (tonumber(redis.call("HGET", KEYS[2], ARGV[1])) or 0) >= max then return "full" end
if old[1] then
  -- Revived: fields of the first request the retry does not set must go.
  redis.call("HDEL", KEYS[1], "or", "tf", "fo", "k", "sa", "ea")
end
redis.call("HSET", KEYS[1], unpack(ARGV, 7))
redis.call("SET", KEYS[3], ARGV[3])
redis.call("HINCRBY", KEYS[2], ARGV[1], 1)
redis.call("HINCRBY", KEYS[2], ARGV[1] .. "|" .. ARGV[10], 1) -- ARGV[10] is the state
redis.call("ZADD", KEYS[4], ARGV[5], ARGV[4])
if not old[1] then return "created" end
redis.call("HSET", KEYS[1], "c", old[3])
redis.call("PERSIST", KEYS[1])
local n = redis.call("HINCRBY", KEYS[1], "hn", 1)
redis.call("HSET", KEYS[1], "h" .. n, cjson.encode({t=tonumber(ARGV[5]), e="revived", s=ARGV[10], n="its request was retried"}))
return "revived"`)

// deleteScript undoes a create whose task could not be enqueued. A record
// that is final meanwhile (canceled as never acknowledged) has released its
// backlog slot already. KEYS: rec, backlog, body, unowned. ARGV: id.
var deleteScript = redis.NewScript(luaPrelude + `
local v = redis.call("HMGET", KEYS[1], "a", "s")
local app = v[1]
redis.call("ZREM", KEYS[4], ARGV[1])
if not app then return 0 end
redis.call("DEL", KEYS[1], KEYS[3])
if final[v[2]] then return 1 end
if redis.call("HINCRBY", KEYS[2], app, -1) <= 0 then redis.call("HDEL", KEYS[2], app) end
count(KEYS[2], app, v[2], -1)
return 1`)

// orphanScript ends a record that no task owns and none will: its request was
// never acknowledged (the enqueuer died, or lost Redis, between writing the
// record and enqueueing its task). It must still be listed as unowned since
// before the cut-off (a retry renews the listing), and be unsent with no
// attempt; it is settled canceled and marked ("or") so that a retry of its
// request revives it (see createScript).
// KEYS: rec, backlog, body, unowned. ARGV: id, now, history entry, retention, cut-off ms.
// Returns {state, "changed"|"", app}, or {} when it is gone, owned or renewed meanwhile.
var orphanScript = redis.NewScript(luaPrelude + `
local listed = tonumber(redis.call("ZSCORE", KEYS[4], ARGV[1]))
if not listed or listed > tonumber(ARGV[5]) then return {} end
redis.call("ZREM", KEYS[4], ARGV[1])
local v = redis.call("HMGET", KEYS[1], "s", "a", "n")
local st, app = v[1], v[2]
if not st then return {} end
if (st ~= "queued" and st ~= "scheduled") or tonumber(v[3] or "0") > 0 then return {st, "", app} end
settle(KEYS[1], KEYS[2], app, st, "canceled", ARGV[2], ARGV[4])
redis.call("HSET", KEYS[1], "or", "1")
hist(KEYS[1], ARGV[3])
settleBody(KEYS[3], "canceled", ARGV[4])
return {"canceled", "changed", app}`)

// beginScript starts a send attempt: it refuses a message that is sent or final,
// settles one past its expiry as expired, defers one whose app is parked, and
// otherwise counts the attempt and marks it in flight (so a cancel cannot race it).
// A batch chunk (owner, not "") begins only a message it owns (claimChunk).
// A task that begins a message (or expires it) owns it: the record leaves the
// unowned list here, so that a submission need not spend a round trip on
// Store.Owned (the orphan sweep treats a record with attempts as owned).
// KEYS: rec, backlog, parked, body, unowned. ARGV: now, expiry history entry,
// retention, in-flight deadline, owner.
// Returns {state, app, body, attempts, kind} to proceed; {state, app} to stop;
// {"expired", app, "changed"} when it expired the message; {"parked", app, until};
// {state, app, "owner", "other"|"handed"} when the chunk does not hold it;
// {} when missing.
var beginScript = redis.NewScript(luaPrelude + claimChunk + `
local v = redis.call("HMGET", KEYS[1], "s", "a", "ea", "k", "fo", "n")
local st, app = v[1], v[2]
if not st then return {} end
if final[st] or st == "sent" then return {st, app} end
if ARGV[5] ~= "" then
  local owns = claim(KEYS[1], ARGV[5], v[5], v[6])
  if owns ~= "mine" then return {st, app, "owner", owns} end
end
local now = tonumber(ARGV[1])
local exp = tonumber(v[3])
local id = string.match(KEYS[1], ":msg:(.+)$")
if exp and exp > 0 and now >= exp then
  redis.call("ZREM", KEYS[5], id)
  settle(KEYS[1], KEYS[2], app, st, "expired", ARGV[1], ARGV[3])
  hist(KEYS[1], ARGV[2])
  settleBody(KEYS[4], "expired", ARGV[3])
  return {"expired", app, "changed"}
end
local parked = tonumber(redis.call("ZSCORE", KEYS[3], app))
if parked and parked > now then return {"parked", app, tostring(parked)} end
redis.call("ZREM", KEYS[5], id)
local n = redis.call("HINCRBY", KEYS[1], "n", 1)
redis.call("HSET", KEYS[1], "fl", ARGV[4])
return {st, app, redis.call("GET", KEYS[4]) or "", n, v[4] or ""}`)

// claimChunk decides whether a batch's chunk task owns a message. A record
// names its owner in field "fo" (delivery.ChunkID). An idempotent retry of the
// batch puts the same messages in chunks of its own and renames the records
// it finds untouched (createScript); either chunk may then run first, or only
// one of them. So a chunk owns a message its record names, and claims one
// that no attempt has touched (no "n") and no chunk has handed to a delivery
// task of its own (an owner ending in "!"). claim returns "mine", "handed"
// (this chunk handed it off) or "other"; fo and n are the record's fields.
const claimChunk = `
local function claim(rec, owner, fo, n)
  fo = fo or ""
  if fo == owner then return "mine" end
  if fo == owner .. "!" then return "handed" end
  if n or string.sub(fo, -1) == "!" then return "other" end
  redis.call("HSET", rec, "fo", owner)
  return "mine"
end
`

// handOffScript hands a message from its batch chunk to a delivery task of
// its own: the record's owner becomes owner.."!", which the chunk, should it
// run again, reads as "make sure that task exists" (see claimChunk).
// KEYS: rec. ARGV: owner. Returns 1 when marked (or marked already), 0 when
// the record is gone or another chunk owns it.
var handOffScript = redis.NewScript(claimChunk + `
local v = redis.call("HMGET", KEYS[1], "s", "fo", "n")
if not v[1] then return 0 end
local owns = claim(KEYS[1], ARGV[1], v[2], v[3])
if owns == "other" then return 0 end
redis.call("HSET", KEYS[1], "fo", ARGV[1] .. "!")
return 1`)

// sentScript records WeChat's acceptance: state sent, the msgid and its index, and
// the confirmation deadline. A callback held for this msgid is applied at once,
// if it was held within the hold and names this message's recipient (held.go);
// either way it is forgotten. A message accepted at last is no longer a
// suspect of a lost reply (replylost.go).
// KEYS: rec, index, held, sentz, backlog, body.
// ARGV: id, msgid, now, history entry, index ttl, confirm deadline, retention,
// index ttl once settled.
// Returns {state, "changed"|"", app, created ms}.
var sentScript = redis.NewScript(luaPrelude + luaHeld + luaReplyLost + `
local v = redis.call("HMGET", KEYS[1], "s", "a", "c")
local st, app = v[1], v[2]
if not st then return {} end
redis.call("HDEL", KEYS[1], "fl")
if final[st] or st == "sent" then
  -- Settled meanwhile: keep the final state, but keep what WeChat said.
  redis.call("HSET", KEYS[1], "m", ARGV[2])
  hist(KEYS[1], ARGV[4])
  return {st, "", app}
end
redis.call("HSET", KEYS[1], "s", "sent", "ts", ARGV[3])
move(KEYS[5], app, st, "sent")
hist(KEYS[1], ARGV[4])
local held = nil
local prefix = string.sub(KEYS[5], 1, -8)
-- msgid 0: WeChat accepted without saying which msgid; no callback can match.
if ARGV[2] ~= "0" then
  redis.call("HSET", KEYS[1], "m", ARGV[2])
  redis.call("SET", KEYS[2], ARGV[1], "PX", ARGV[5])
  local hv = redis.call("GET", KEYS[3])
  if hv then
    held = decodeHeld(hv)
    dropHeld(prefix, app, ARGV[2])
    if held and not (heldFresh(held, tonumber(ARGV[3]), tonumber(ARGV[8])) and heldFor(held, KEYS[6])) then
      held = nil
    end
  end
end
local ao = redis.call("HGET", KEYS[1], "ao")
if ao then dropSuspect(prefix, app, ARGV[1], ao) end
emit(KEYS[1], KEYS[5], app, st, "sent", ARGV[3])
if held then
  local to, raw = held.s, held.w or ""
  settle(KEYS[1], KEYS[5], app, "sent", to, ARGV[3], ARGV[7])
  redis.call("HSET", KEYS[1], "w", raw)
  hist(KEYS[1], cjson.encode({t = tonumber(ARGV[3]), e = "callback", s = to, n = "held"}))
  settleBody(KEYS[6], to, ARGV[7])
  redis.call("PEXPIRE", KEYS[2], ARGV[8])
  return {to, "changed", app, v[3]}
end
redis.call("ZADD", KEYS[4], ARGV[6], ARGV[1])
return {"sent", "changed", app, v[3]}`)

// callbackScript applies a TEMPLATESENDJOBFINISH result. Unknown msgids are held
// for a while: the sender may not have stored the msgid yet (held.go bounds
// them), unless the result matches a message whose reply was lost
// (replylost.go).
// The script reads the index itself and builds the record's and body's keys
// from the id it names and the shard's tag (ARGV[8]): they share the index's
// hash tag, so on Redis Cluster they are in the slot the declared keys route
// the script to, and the callback costs one round trip.
// KEYS: index, held, sentz, backlog, heldz. ARGV: state, raw status, now, hold ttl,
// retention, history entry, history entry of a late result (with the raw
// status, which the record's w field does not hold then), the shard's key
// prefix ("wxpush:{S}:"), app, msgid, max held, openid ("" = unknown), the
// event's CreateTime ms, suspect ttl, skew.
// Returns {outcome, id, app, state, sent ms (when applied), evicted (when held)}.
var callbackScript = redis.NewScript(luaPrelude + luaHeld + luaReplyLost + `
local id = redis.call("GET", KEYS[1])
if not id then
  if redis.call("EXISTS", KEYS[2]) == 1 then return {"duplicate"} end
  local now, hold, openid, ct = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[12], tonumber(ARGV[13])
  if openid ~= "" then
    local r = matchSuspect(ARGV[8], ARGV[9], openid, ARGV[10], ARGV[1], ARGV[2], ct, now,
      tonumber(ARGV[14]), tonumber(ARGV[15]), ARGV[5], hold)
    if r then return r end
  end
  redis.call("SET", KEYS[2], cjson.encode({s = ARGV[1], w = ARGV[2], t = now, o = openid, c = ct}), "PX", ARGV[4])
  redis.call("ZADD", KEYS[5], now, ARGV[10])
  if openid ~= "" then
    local ho = ARGV[8] .. "heldo:" .. ARGV[9] .. ":" .. openid
    redis.call("ZADD", ho, ct, ARGV[10])
    redis.call("PEXPIRE", ho, ARGV[4])
  end
  return {"held", "", "", "", "", trimHeld(ARGV[8], ARGV[9], now, hold, tonumber(ARGV[11]))}
end
local rec, body = ARGV[8] .. "msg:" .. id, ARGV[8] .. "body:" .. id
local v = redis.call("HMGET", rec, "s", "a", "w", "ts")
local st, app = v[1], v[2]
if not st then return {"unknown", id} end
if st == "sent" then
  settle(rec, KEYS[4], app, "sent", ARGV[1], ARGV[3], ARGV[5])
  redis.call("HSET", rec, "w", ARGV[2])
  hist(rec, ARGV[6])
  redis.call("ZREM", KEYS[3], id)
  settleBody(body, ARGV[1], ARGV[5])
  -- Once settled, the index only catches WeChat's repeats of this callback,
  -- which come within minutes: keep it for the hold, not the whole retention.
  redis.call("PEXPIRE", KEYS[1], ARGV[4])
  return {"applied", id, app, ARGV[1], v[4]}
end
if st == "unconfirmed" and not v[3] then
  -- The result came after we gave up waiting: keep it in the record, but a final
  -- state is final.
  redis.call("HSET", rec, "w", ARGV[2])
  hist(rec, ARGV[7])
  return {"late", id, app, st}
end
return {"duplicate", id, app or "", st}`)

// retryScript records a failed attempt that will be retried.
// KEYS: rec, backlog. ARGV: history entry, errcode, errmsg.
var retryScript = redis.NewScript(luaPrelude + `
local v = redis.call("HMGET", KEYS[1], "s", "a")
local st = v[1]
if not st then return "" end
redis.call("HDEL", KEYS[1], "fl")
if final[st] or st == "sent" then return st end
move(KEYS[2], v[2], st, "retrying")
redis.call("HSET", KEYS[1], "s", "retrying", "ec", ARGV[2], "em", ARGV[3])
hist(KEYS[1], ARGV[1])
return "retrying"`)

// finishScript settles a message in a final state. mode "unsent" requires a state
// before sent (rejected, dead, expired); "sent" requires sent (unconfirmed);
// "cancel" requires a state before sent and no attempt in flight.
// KEYS: rec, sentz, backlog, dead index of the app (used for "dead" only), body.
// ARGV: state, now, history entry, errcode, errmsg, retention, id, mode.
// Returns {state, "changed"|""|"inflight", app}.
var finishScript = redis.NewScript(luaPrelude + `
local v = redis.call("HMGET", KEYS[1], "s", "a", "fl")
local st, app = v[1], v[2]
if not st then
  redis.call("ZREM", KEYS[2], ARGV[7])
  return {}
end
if final[st] then return {st, "", app} end
if (ARGV[8] == "sent") ~= (st == "sent") then return {st, "", app} end
if ARGV[8] == "cancel" and tonumber(v[3] or "0") > tonumber(ARGV[2]) then
  return {st, "inflight", app}
end
-- The error first: settle's event carries it.
if ARGV[4] ~= "" then redis.call("HSET", KEYS[1], "ec", ARGV[4], "em", ARGV[5]) end
settle(KEYS[1], KEYS[3], app, st, ARGV[1], ARGV[2], ARGV[6])
hist(KEYS[1], ARGV[3])
redis.call("ZREM", KEYS[2], ARGV[7])
if ARGV[1] == "dead" then
  redis.call("ZADD", KEYS[4], ARGV[2], ARGV[7])
  redis.call("ZREMRANGEBYSCORE", KEYS[4], "-inf", tonumber(ARGV[2]) - tonumber(ARGV[6]))
end
settleBody(KEYS[5], ARGV[1], ARGV[6])
return {ARGV[1], "changed", app}`)

// requeueScript puts a dead message back in the queue with its id. The change
// is the claim of a retry: of concurrent ones exactly one makes it. The record
// is listed as unowned until its new task begins it, so that should the
// claimant die before it enqueues the task, the orphan sweep finds the record
// and returns it to dead (unrequeueScript) instead of leaving it queued for ever.
// KEYS: rec, backlog, dead index, body, unowned. ARGV: id, history entry, now.
// Returns {"requeued", app, queue}, or {state, app, queue} when not dead.
var requeueScript = redis.NewScript(luaPrelude + `
local v = redis.call("HMGET", KEYS[1], "s", "a", "q")
local st, app = v[1], v[2]
if not st then return {} end
if st ~= "dead" then return {st, app, v[3]} end
redis.call("HSET", KEYS[1], "s", "queued")
redis.call("HDEL", KEYS[1], "tf")
redis.call("PERSIST", KEYS[1])
redis.call("PERSIST", KEYS[4])
redis.call("HINCRBY", KEYS[2], app, 1)
count(KEYS[2], app, "queued", 1)
redis.call("ZREM", KEYS[3], ARGV[1])
redis.call("ZADD", KEYS[5], ARGV[3], ARGV[1])
hist(KEYS[1], ARGV[2])
return {"requeued", app, v[3]}`)

// unrequeueScript returns to dead a requeued message that no task owns: the
// retry that claimed it died before enqueueing its task. Like orphanScript it
// requires the listing since before the cut-off (a task that began the message
// has unlisted it), and a queued record with attempts (a requeued one; a new
// one without attempts is orphanScript's).
// KEYS: rec, backlog, body, unowned, dead index. ARGV: id, now, history entry,
// retention, cut-off ms.
// Returns {state, "changed"|"", app}, or {} when it is gone, owned or renewed meanwhile.
var unrequeueScript = redis.NewScript(luaPrelude + `
local listed = tonumber(redis.call("ZSCORE", KEYS[4], ARGV[1]))
if not listed or listed > tonumber(ARGV[5]) then return {} end
redis.call("ZREM", KEYS[4], ARGV[1])
local v = redis.call("HMGET", KEYS[1], "s", "a", "n")
local st, app = v[1], v[2]
if not st then return {} end
if st ~= "queued" or tonumber(v[3] or "0") == 0 then return {st, "", app} end
settle(KEYS[1], KEYS[2], app, st, "dead", ARGV[2], ARGV[4])
hist(KEYS[1], ARGV[3])
redis.call("ZADD", KEYS[5], ARGV[2], ARGV[1])
settleBody(KEYS[3], "dead", ARGV[4])
return {"dead", "changed", app}`)
