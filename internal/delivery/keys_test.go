package delivery

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// slot is Redis Cluster's hash slot of key: CRC16 (XMODEM) of its hash tag, or
// of the whole key when it has none, modulo 16384.
func slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

func TestSlot(t *testing.T) {
	// The specification's CRC16 check value; TestStoreOnRedisCluster compares
	// slot with CLUSTER KEYSLOT for every key the store uses.
	if got := slot("123456789"); got != 0x31C3 {
		t.Errorf("slot(123456789) = %d, want %d", got, 0x31C3)
	}
	if slot("{user1000}.following") != slot("{user1000}.followers") || slot("{user1000}.following") != slot("user1000") {
		t.Error("hash tags are not honoured")
	}
}

// slotCheck fails the test when a script names keys in more than one hash slot:
// Redis Cluster would refuse it with CROSSSLOT. Every store test runs with it.
// (That a script touches only keys it names is what TestStoreOnRedisCluster
// shows, with apps on three masters.)
type slotCheck struct{ t *testing.T }

func (slotCheck) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c slotCheck) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.check(cmd)
		return next(ctx, cmd)
	}
}

func (c slotCheck) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			c.check(cmd)
		}
		return next(ctx, cmds)
	}
}

func (c slotCheck) check(cmd redis.Cmder) {
	args := cmd.Args()
	name := strings.ToLower(fmt.Sprint(args[0]))
	if (name != "evalsha" && name != "eval") || len(args) < 3 {
		return
	}
	var n int
	fmt.Sscan(fmt.Sprint(args[2]), &n)
	slots := map[int][]string{}
	for _, k := range args[3 : 3+n] {
		key := fmt.Sprint(k)
		slots[slot(key)] = append(slots[slot(key)], key)
	}
	if len(slots) > 1 {
		c.t.Errorf("a script names keys in %d hash slots (CROSSSLOT on Redis Cluster): %v", len(slots), slots)
	}
}

func TestShard(t *testing.T) {
	if !strings.ContainsRune(shardAlphabet, rune(Shard("shop"))) || Shard("default") != 'Y' {
		t.Fatal("Shard is not the stable character of the id alphabet that ids already stored start with")
	}
	// Apps spread over the shards.
	seen := map[byte]bool{}
	for i := 0; i < 1000; i++ {
		seen[Shard(fmt.Sprintf("app%d", i))] = true
	}
	if len(seen) != Shards {
		t.Errorf("1000 apps use %d shards, want all %d", len(seen), Shards)
	}
	id := IDFor("shop", "01JZZZZZZZZZZZZZZZZZZZZZZZ")
	if len(id) != 26 || id[0] != Shard("shop") || id[1:] != "1JZZZZZZZZZZZZZZZZZZZZZZZ" {
		t.Errorf("IDFor = %q", id)
	}
	// A record, its app's backlog and sent set, its msgid index and held
	// callback, and the app's dead list share one slot.
	keys := []string{recordKey(id), backlogKey(shardOf(id)), sentKey(shardOf(id)), parkedKey(Shard("shop")),
		indexKey("shop", "42"), heldKey("shop", "42"), deadKey("shop")}
	for _, k := range keys {
		if slot(k) != slot(keys[0]) {
			t.Errorf("%s is in slot %d, the record in %d", k, slot(k), slot(keys[0]))
		}
	}
	if IDOfRecordKey(RecordKey(id)) != id {
		t.Errorf("IDOfRecordKey(RecordKey(%s)) = %s", id, IDOfRecordKey(RecordKey(id)))
	}
}

func TestCreateRefusesAnotherAppsShard(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := IDFor("shop", "01JZZZZZZZZZZZZZZZZZZZZZZZ")
	if _, err := b.store.Create(b.ctx, NewMessage{ID: id, App: "news", Body: []byte("{}")}); err != ErrWrongShard {
		t.Fatalf("Create with shop's id for app news = %v, want ErrWrongShard", err)
	}
	if n, _ := b.rdb.Exists(b.ctx, recordKey(id)).Result(); n != 0 {
		t.Error("a refused message was stored")
	}
}

// TestInvalidIDsNameNothing: an id that does not start with a shard character,
// or that holds a brace (which would change its keys' hash tag), is not found,
// without a storage error.
func TestInvalidIDsNameNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, id := range []string{"", "}x", "{Y}", "Y{a}", "yx", "-x"} {
		if _, err := b.store.Get(b.ctx, id); err != ErrNotFound {
			t.Errorf("Get(%q) = %v, want ErrNotFound", id, err)
		}
		if _, err := b.store.Cancel(b.ctx, id); err != ErrNotFound {
			t.Errorf("Cancel(%q) = %v, want ErrNotFound", id, err)
		}
		if _, err := b.store.Requeue(b.ctx, id, "default"); err != ErrNotFound {
			t.Errorf("Requeue(%q) = %v, want ErrNotFound", id, err)
		}
		if _, err := b.store.Create(b.ctx, NewMessage{ID: id, App: "default", Body: []byte("{}")}); err != ErrWrongShard {
			t.Errorf("Create(%q) = %v, want ErrWrongShard", id, err)
		}
	}
}

// TestSweepTakesShardsInTurn: a shard with many overdue messages does not hold
// back the others.
func TestSweepTakesShardsInTurn(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Shard 9 (app shop) comes before shard Y (app default) in the alphabet.
	for i := 0; i < 5; i++ {
		id := fmt.Sprintf("9busy%d", i)
		b.create(t, id, func(m *NewMessage) { m.App = "shop" })
		b.store.Begin(b.ctx, id)
		b.store.MarkSent(b.ctx, id, "shop", int64(100+i))
	}
	b.create(t, "Yquiet")
	b.store.Begin(b.ctx, "Yquiet")
	b.store.MarkSent(b.ctx, "Yquiet", "default", 200)
	b.clock.Advance(11 * time.Minute)
	settled, err := b.store.SweepUnconfirmed(b.ctx, 2)
	if err != nil || len(settled) != 2 {
		t.Fatalf("SweepUnconfirmed(2) = %v, %v", settled, err)
	}
	if settled[0].App == settled[1].App {
		t.Errorf("a sweep of 2 settled %v: both from one shard while the other waited", settled)
	}
}
