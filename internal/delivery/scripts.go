package delivery

import "github.com/redis/go-redis/v9"

// luaPrelude is shared by every transition script. Times are Unix milliseconds
// passed in by the caller, so tests can drive the clock.
const luaPrelude = `
local final = {delivered=true, user_blocked=true, wechat_failed=true, rejected=true,
  dead=true, expired=true, canceled=true, unconfirmed=true}
local function hist(rec, entry)
  local h = redis.call("HGET", rec, "hist")
  if h and h ~= "" then h = h .. "\n" .. entry else h = entry end
  redis.call("HSET", rec, "hist", h)
end
`

// createScript writes a new record unless the id exists.
// KEYS: rec. ARGV: field, value, ...
var createScript = redis.NewScript(`
if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
redis.call("HSET", KEYS[1], unpack(ARGV))
return 1`)

// beginScript starts a send attempt: it refuses a message that is sent or final,
// settles one past its expiry as expired, and otherwise counts the attempt.
// KEYS: rec. ARGV: now, expiry history entry, retention.
// Returns {state, app, body, attempts} to proceed; {state, app} to stop;
// {"expired", app, "changed"} when it expired the message; {} when missing.
var beginScript = redis.NewScript(luaPrelude + `
local v = redis.call("HMGET", KEYS[1], "state", "app", "body", "expire_ms")
local st = v[1]
if not st then return {} end
if final[st] or st == "sent" then return {st, v[2]} end
local exp = tonumber(v[4])
if exp and exp > 0 and tonumber(ARGV[1]) >= exp then
  redis.call("HSET", KEYS[1], "state", "expired", "finished_ms", ARGV[1])
  hist(KEYS[1], ARGV[2])
  redis.call("PEXPIRE", KEYS[1], ARGV[3])
  return {"expired", v[2], "changed"}
end
local n = redis.call("HINCRBY", KEYS[1], "attempts", 1)
return {st, v[2], v[3], n}`)

// sentScript records WeChat's acceptance: state sent, the msgid and its index, and
// the confirmation deadline. A callback held for this msgid is applied at once.
// KEYS: rec, index, held, sentz.
// ARGV: id, msgid, now, history entry, index ttl, confirm deadline, retention.
// Returns {state, "changed"|"", app}.
var sentScript = redis.NewScript(luaPrelude + `
local v = redis.call("HMGET", KEYS[1], "state", "app")
local st = v[1]
if not st then return {} end
if final[st] or st == "sent" then
  -- Settled meanwhile (e.g. canceled during the attempt): keep the final state,
  -- but keep what WeChat said for the record.
  redis.call("HSET", KEYS[1], "msgid", ARGV[2])
  hist(KEYS[1], ARGV[4])
  return {st, "", v[2]}
end
redis.call("HSET", KEYS[1], "state", "sent", "msgid", ARGV[2], "sent_ms", ARGV[3])
hist(KEYS[1], ARGV[4])
redis.call("SET", KEYS[2], ARGV[1], "PX", ARGV[5])
local held = redis.call("GET", KEYS[3])
if held then
  local sep = string.find(held, "|", 1, true)
  local to, raw = string.sub(held, 1, sep - 1), string.sub(held, sep + 1)
  redis.call("HSET", KEYS[1], "state", to, "finished_ms", ARGV[3], "wx_status", raw)
  hist(KEYS[1], cjson.encode({at = tonumber(ARGV[3]), event = "callback", state = to, status = raw, note = "held until the msgid was stored"}))
  redis.call("DEL", KEYS[3])
  redis.call("PEXPIRE", KEYS[1], ARGV[7])
  return {to, "changed", v[2]}
end
redis.call("ZADD", KEYS[4], ARGV[6], ARGV[1])
return {"sent", "changed", v[2]}`)

// callbackScript applies a TEMPLATESENDJOBFINISH result. Unknown msgids are held
// for a while: the sender may not have stored the msgid yet.
// KEYS: index, held, sentz. ARGV: state, raw status, now, hold ttl, retention,
// history entry, record key prefix.
// Returns {outcome, id, app, state}.
var callbackScript = redis.NewScript(luaPrelude + `
local id = redis.call("GET", KEYS[1])
if not id then
  if redis.call("EXISTS", KEYS[2]) == 1 then return {"duplicate"} end
  redis.call("SET", KEYS[2], ARGV[1] .. "|" .. ARGV[2], "PX", ARGV[4])
  return {"held"}
end
-- The record key is derived from the index value, so this script is not Redis
-- Cluster safe; the index and the record share no hash slot.
local rec = ARGV[7] .. id .. "}"
local v = redis.call("HMGET", rec, "state", "app", "wx_status")
local st = v[1]
if not st then return {"unknown", id} end
if st == "sent" then
  redis.call("HSET", rec, "state", ARGV[1], "finished_ms", ARGV[3], "wx_status", ARGV[2])
  hist(rec, ARGV[6])
  redis.call("ZREM", KEYS[3], id)
  redis.call("PEXPIRE", rec, ARGV[5])
  return {"applied", id, v[2], ARGV[1]}
end
if st == "unconfirmed" and not v[3] then
  -- The result came after we gave up waiting: keep it in the record, but a final
  -- state is final.
  redis.call("HSET", rec, "wx_status", ARGV[2])
  hist(rec, ARGV[6])
  return {"late", id, v[2], st}
end
return {"duplicate", id, v[2] or "", st}`)

// retryScript records a failed attempt that will be retried.
// KEYS: rec. ARGV: history entry, errcode, errmsg.
var retryScript = redis.NewScript(luaPrelude + `
local st = redis.call("HGET", KEYS[1], "state")
if not st then return "" end
if final[st] or st == "sent" then return st end
redis.call("HSET", KEYS[1], "state", "retrying", "err_code", ARGV[2], "err_msg", ARGV[3])
hist(KEYS[1], ARGV[1])
return "retrying"`)

// finishScript settles a message in a final state. mode "unsent" requires a state
// before sent (rejected, dead, expired, canceled); mode "sent" requires sent
// (unconfirmed).
// KEYS: rec, sentz. ARGV: state, now, history entry, errcode, errmsg, retention, id, mode.
// Returns {state, "changed"|"", app}.
var finishScript = redis.NewScript(luaPrelude + `
local v = redis.call("HMGET", KEYS[1], "state", "app")
local st = v[1]
if not st then
  redis.call("ZREM", KEYS[2], ARGV[7])
  return {}
end
if final[st] then return {st, "", v[2]} end
if (ARGV[8] == "sent") ~= (st == "sent") then return {st, "", v[2]} end
redis.call("HSET", KEYS[1], "state", ARGV[1], "finished_ms", ARGV[2])
if ARGV[4] ~= "" then redis.call("HSET", KEYS[1], "err_code", ARGV[4], "err_msg", ARGV[5]) end
hist(KEYS[1], ARGV[3])
redis.call("ZREM", KEYS[2], ARGV[7])
redis.call("PEXPIRE", KEYS[1], ARGV[6])
return {ARGV[1], "changed", v[2]}`)
