package delivery

// Held results.
//
// A result callback for a msgid that is not stored is held, because the
// worker may not have stored it yet (WeChat can push the callback before the
// send's reply arrives). Anyone who can post a callback that passes the
// signature check can create held results, and a held result decides the
// state of the message that later gets its msgid. So held results are bounded
// three ways:
//
//   - per app: the app's held msgids are listed by when they were held
//     (heldz), and beyond Config.MaxHeld the oldest are evicted, each eviction
//     reported to Config.OnHeldEvicted;
//   - in time: a held result is applied only within Config.CallbackHold of
//     when it was held, by the caller's clock, whatever its key's TTL says;
//   - by recipient: a held result that names an openid (FromUserName) is
//     applied only to a message to that openid; WeChat's msgid names one
//     recipient, so another result is not WeChat's for this msgid.
//
// A held value is JSON {s: final state, w: WeChat's Status, t: held at (ms),
// o: openid, c: the event's CreateTime (ms)}; a value of a version before it,
// "state|status", is still read (without time or openid: its TTL bounds it).
// Held results that name an openid are also listed per openid (heldo), for
// the lost-reply match (replylost.go).

// DefaultMaxHeld is Config.MaxHeld's default.
const DefaultMaxHeld = 10000

// luaHeld is the held results' Lua, after luaPrelude. prefix is the shard's
// key prefix ("wxpush:{S}:"): every key of an app shares its hash tag.
const luaHeld = `
local function decodeHeld(v)
  if string.sub(v, 1, 1) == "{" then
    local ok, h = pcall(cjson.decode, v)
    if ok and type(h) == "table" and h.s then return h end
    return nil
  end
  local sep = string.find(v, "|", 1, true)
  if not sep then return nil end
  return {s = string.sub(v, 1, sep - 1), w = string.sub(v, sep + 1)}
end
-- dropHeld forgets app's held result for msgid, wherever it is listed.
local function dropHeld(prefix, app, msgid)
  local k = prefix .. "held:" .. app .. ":" .. msgid
  local v = redis.call("GET", k)
  if v then
    local h = decodeHeld(v)
    if h and type(h.o) == "string" and h.o ~= "" then
      redis.call("ZREM", prefix .. "heldo:" .. app .. ":" .. h.o, msgid)
    end
    redis.call("DEL", k)
  end
  redis.call("ZREM", prefix .. "heldz:" .. app, msgid)
end
-- trimHeld drops app's held results past the hold (a bounded number per
-- call), then the oldest beyond max, and returns how many max evicted.
local function trimHeld(prefix, app, now, hold, max)
  local z = prefix .. "heldz:" .. app
  for _, m in ipairs(redis.call("ZRANGEBYSCORE", z, "-inf", "(" .. (now - hold), "LIMIT", 0, 100)) do
    dropHeld(prefix, app, m)
  end
  local over = redis.call("ZCARD", z) - max
  if over <= 0 then return 0 end
  for _, m in ipairs(redis.call("ZRANGE", z, 0, over - 1)) do dropHeld(prefix, app, m) end
  return over
end
-- heldFresh: held no longer than the hold ago (a value without a time is
-- bounded by its key's TTL alone).
local function heldFresh(h, now, hold)
  return not h.t or now - tonumber(h.t) <= hold
end
-- heldFor: the held result may be WeChat's for the message whose send body
-- is in key body: it names no openid, or the body's touser.
local function heldFor(h, body)
  if type(h.o) ~= "string" or h.o == "" then return true end
  local b = redis.call("GET", body)
  if not b then return true end
  local ok, m = pcall(cjson.decode, b)
  if not ok or type(m) ~= "table" or type(m.touser) ~= "string" then return true end
  return m.touser == h.o
end
`
