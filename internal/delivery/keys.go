package delivery

import (
	"hash/fnv"
	"strings"
)

// Key layout, Redis Cluster safe.
//
// Every key a transition script touches carries the same hash tag: the shard of
// the message's app, one of 32 Crockford base32 characters. A message id starts
// with its app's shard character, so a record is found from its id alone and
// shares its slot with the app's backlog counters, its msgid index, its held
// callbacks and its dead list. On Redis Cluster the 32 shards spread an
// installation's records over the masters; one app's messages stay on one.
//
//	wxpush:{S}:msg:<id>             HASH  the record
//	wxpush:{S}:body:<id>            STRING its WeChat send body, until it is final (dead and rejected keep it for the retention)
//	wxpush:{S}:backlog              HASH  app → unfinished messages; app|state → by state
//	wxpush:{S}:sent                 ZSET  id → confirmation deadline (ms)
//	wxpush:{S}:unowned              ZSET  id → created (ms), until its delivery task (or batch fanout) exists
//	wxpush:{S}:parked               ZSET  app → parked until (ms)
//	wxpush:{S}:dead:<app>           ZSET  id → when it died (ms)
//	wxpush:{S}:wxid:<app>:<msgid>   STRING WeChat msgid → id (msgids are unique per account)
//	wxpush:{S}:held:<app>:<msgid>   STRING a result callback that came before its msgid was stored (JSON, see held.go)
//	wxpush:{S}:heldz:<app>          ZSET  msgid → when held (ms): bounds the app's held results (Config.MaxHeld)
//	wxpush:{S}:heldo:<app>:<openid> ZSET  msgid → the held result's CreateTime (ms), to match a lost reply (replylost.go)
//	wxpush:{S}:rl:<app>:<openid>    ZSET  id → start of its first attempt whose reply was lost (ms)
//	wxpush:{S}:rlz:<app>            ZSET  "<id> <openid>" → its latest such attempt (ms): bounds and expires them
//
// A record's fields have one- or two-letter names, so that a settled record
// (without its send body) fits Redis's compact listpack encoding in few bytes:
//
//	a app          s state        q asynq queue
//	c created ms   sa send_at ms  ea expire_at ms  k kind ("subscribe"; absent: template)
//	n attempts     fl attempt in flight until (ms)
//	fo the batch's fanout task id  or canceled as never acknowledged ("1")
//	ts sent ms     tf final ms    m WeChat msgid   w WeChat's result status
//	ec, em         last errcode and errmsg
//	at, ao         first attempt whose reply was lost (ms) and the recipient's openid (replylost.go)
//	hn, h1…hN      history entries after "enqueued" (which c and sa imply), short JSON
const (
	// Shards is how many hash tags wxpush's message keys are spread over.
	Shards       = 32
	sweepLockKey = "wxpush:sweep:lock"
)

// shardAlphabet is Crockford's base32, the alphabet of message ids.
const shardAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// Shard is app's shard character: the first character of its messages' ids.
func Shard(app string) byte {
	h := fnv.New32a()
	h.Write([]byte(app)) // a hash.Hash never fails to write
	return shardAlphabet[h.Sum32()%Shards]
}

// IDFor turns a 26-character id (a ULID, or one derived from an Idempotency-Key)
// into the id of a message of app: its first character becomes app's shard.
func IDFor(app, id string) string {
	if id == "" {
		return id
	}
	return string(Shard(app)) + id[1:]
}

func tag(shard byte) string { return "wxpush:{" + string(shard) + "}:" }

func recordKey(id string) string { return tag(shardOf(id)) + "msg:" + id }

// bodyKey holds the send body apart from the record: a body is longer than the
// 64 bytes up to which Redis stores a hash compactly, so inside the record it
// would cost every field of the record a full hash-table entry.
func bodyKey(id string) string { return tag(shardOf(id)) + "body:" + id }

func backlogKey(shard byte) string { return tag(shard) + "backlog" }
func sentKey(shard byte) string    { return tag(shard) + "sent" }
func parkedKey(shard byte) string  { return tag(shard) + "parked" }
func unownedKey(shard byte) string { return tag(shard) + "unowned" }

func indexKey(app, msgID string) string { return tag(Shard(app)) + "wxid:" + app + ":" + msgID }
func heldKey(app, msgID string) string  { return tag(Shard(app)) + "held:" + app + ":" + msgID }
func deadKey(app string) string         { return tag(Shard(app)) + "dead:" + app }

// heldIndexKey and suspectIndexKey are an app's lists of held results and of
// messages whose reply was lost; the per-openid keys beside them are built by
// the scripts from the shard's tag (see held.go and replylost.go).
func heldIndexKey(app string) string    { return tag(Shard(app)) + "heldz:" + app }
func suspectIndexKey(app string) string { return tag(Shard(app)) + "rlz:" + app }
func heldByUserKey(app, openID string) string {
	return tag(Shard(app)) + "heldo:" + app + ":" + openID
}
func suspectKey(app, openID string) string { return tag(Shard(app)) + "rl:" + app + ":" + openID }

// shardOf is the shard of message id; validID has checked it.
func shardOf(id string) byte {
	if id == "" {
		return '0'
	}
	return id[0]
}

// validID reports whether id can name a record: it starts with a shard
// character and holds no brace, so its keys have the shard as hash tag. Any
// other id names no message (and on Redis Cluster would spread a script's keys
// over several slots).
func validID(id string) bool {
	return id != "" && strings.IndexByte(shardAlphabet, id[0]) >= 0 && !strings.ContainsAny(id, "{}")
}

// allShards lists every shard character.
func allShards() []byte { return []byte(shardAlphabet) }

// RecordKeyPattern matches every record key, for SCAN (tools and tests; on
// Redis Cluster, SCAN each master).
const RecordKeyPattern = "wxpush:{?}:msg:*"

// RecordKey is the Redis key of message id's record (tools and tests).
func RecordKey(id string) string { return recordKey(id) }

// IDOfRecordKey is the message id of a record key.
func IDOfRecordKey(key string) string {
	_, id, _ := strings.Cut(key, "}:msg:")
	return id
}
