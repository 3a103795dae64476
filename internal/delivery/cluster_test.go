package delivery

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/redistest"
)

// TestStoreOnRedisCluster runs a message of every fate through the store on a
// real 3-master Redis Cluster: a script whose keys spanned slots would fail
// with CROSSSLOT, and one that touched an undeclared key on another node would
// fail too. Apps are picked so their shards live on different masters.
func TestStoreOnRedisCluster(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartCluster(t, 3)
	rdb := cluster.Client(t)
	ctx := context.Background()
	c := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	store := NewStore(rdb, Config{Retention: 48 * time.Hour, ConfirmTimeout: 10 * time.Minute, Now: c.Now})

	// The test's slot function agrees with the cluster, for every key kind.
	id0 := IDFor("shop", "01JZZZZZZZZZZZZZZZZZZZZZZZ")
	for _, k := range []string{recordKey(id0), backlogKey('Q'), sentKey('7'), parkedKey('0'), indexKey("shop", "1"),
		heldKey("news", "2"), deadKey("default"), "123456789", "no tag"} {
		got, err := rdb.ClusterKeySlot(ctx, k).Result()
		if err != nil || int(got) != slot(k) {
			t.Fatalf("CLUSTER KEYSLOT %s = %d, %v; slot() says %d", k, got, err, slot(k))
		}
	}
	// Three apps whose shards are on three different masters.
	apps := appsOnDistinctMasters(t, rdb, 3)

	var n int
	newID := func(app string) string {
		n++
		return IDFor(app, fmt.Sprintf("0%025d", n))
	}
	for _, app := range apps {
		delivered, held, dead, canceled, unconfirmed := newID(app), newID(app), newID(app), newID(app), newID(app)
		batch := []NewMessage{}
		for _, id := range []string{delivered, held, dead, canceled, unconfirmed} {
			batch = append(batch, NewMessage{ID: id, App: app, Queue: "normal", Body: []byte(`{"touser":"o"}`)})
		}
		res, err := store.CreateBatch(ctx, batch)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			if r.Err != nil {
				t.Fatalf("%s: CreateBatch item %d: %v", app, i, r.Err)
			}
		}
		if _, err := store.Create(ctx, NewMessage{ID: delivered, App: app, Body: []byte("{}")}); err != ErrExists {
			t.Fatalf("Create of an existing id = %v, want ErrExists", err)
		}

		// Sent, then its callback.
		mustBegin(t, store, delivered)
		if _, err := store.MarkSent(ctx, delivered, app, 100); err != nil {
			t.Fatal(err)
		}
		if r, err := store.ApplyCallback(ctx, app, "100", StateDelivered, "success"); err != nil || r.Outcome != CallbackApplied {
			t.Fatalf("%s: callback = %+v, %v; want applied", app, r, err)
		}
		// A callback before its msgid is stored: held, then applied by MarkSent.
		if r, err := store.ApplyCallback(ctx, app, "200", StateUserBlocked, "failed:user block"); err != nil || r.Outcome != CallbackHeld {
			t.Fatalf("%s: early callback = %+v, %v; want held", app, r, err)
		}
		mustBegin(t, store, held)
		if tr, err := store.MarkSent(ctx, held, app, 200); err != nil || tr.State != StateUserBlocked {
			t.Fatalf("%s: MarkSent after a held callback = %+v, %v", app, tr, err)
		}
		// Dead, listed, requeued.
		mustBegin(t, store, dead)
		if _, err := store.MarkRetrying(ctx, dead, ErrorInfo{Code: -1, Msg: "system error"}); err != nil {
			t.Fatal(err)
		}
		if tr, err := store.Finish(ctx, dead, app, StateDead, &ErrorInfo{Code: -1}); err != nil || tr.State != StateDead {
			t.Fatalf("Finish dead = %+v, %v", tr, err)
		}
		if page, err := store.ListDead(ctx, app, 0, 10); err != nil || page.Total != 1 || page.Messages[0].ID != dead {
			t.Fatalf("%s: ListDead = %+v, %v", app, page, err)
		}
		if _, err := store.Requeue(ctx, dead, app); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Cancel(ctx, canceled); err != nil {
			t.Fatal(err)
		}
		mustBegin(t, store, unconfirmed)
		if _, err := store.MarkSent(ctx, unconfirmed, app, 300); err != nil {
			t.Fatal(err)
		}
		if err := store.Park(ctx, app, c.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}

	parked, err := store.ParkedApps(ctx)
	if err != nil || len(parked) != len(apps) {
		t.Fatalf("ParkedApps = %v, %v; want the %d apps", parked, err, len(apps))
	}
	c.Advance(11 * time.Minute)
	settled, err := store.SweepUnconfirmed(ctx, 100)
	if err != nil || len(settled) != len(apps) {
		t.Fatalf("SweepUnconfirmed = %v, %v; want one per app", settled, err)
	}
	backlogs, err := store.Backlogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, app := range apps {
		// Left unfinished: the requeued message.
		if b := backlogs[app]; b.Total != 1 || b.ByState[StateQueued] != 1 {
			t.Errorf("%s backlog = %+v, want 1 queued", app, b)
		}
		if got, _ := store.Backlog(ctx, app); got != 1 {
			t.Errorf("Backlog(%s) = %d, want 1", app, got)
		}
	}
}

func mustBegin(t *testing.T, s *Store, id string) {
	t.Helper()
	if a, err := s.Begin(context.Background(), id); err != nil || !a.Proceed {
		t.Fatalf("Begin(%s) = %+v, %v", id, a, err)
	}
}

// appsOnDistinctMasters finds n app names whose shards are served by n
// different masters.
func appsOnDistinctMasters(t *testing.T, rdb *redis.ClusterClient, n int) []string {
	t.Helper()
	master := func(key string) string {
		m, err := rdb.MasterForKey(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		return m.Options().Addr
	}
	seen := map[string]bool{}
	var apps []string
	for i := 0; len(apps) < n && i < 10000; i++ {
		app := fmt.Sprintf("app%d", i)
		m := master(backlogKey(Shard(app)))
		if !seen[m] {
			seen[m] = true
			apps = append(apps, app)
		}
	}
	if len(apps) < n {
		t.Fatalf("found apps on %d masters, want %d", len(apps), n)
	}
	return apps
}
