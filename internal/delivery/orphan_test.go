package delivery

import (
	"errors"
	"github.com/redis/go-redis/v9"
	"slices"
	"testing"
	"time"
)

// unownedIDs lists the records listed as unowned, whatever their age.
func (b *bundle) unownedIDs(t *testing.T) []string {
	t.Helper()
	recs, err := b.store.Unowned(b.ctx, b.clock.Now().Add(time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestUnownedUntilOwned: a new record is listed as unowned, with its batch's
// fanout and its age, until Owned; a cut-off leaves younger records out.
func TestUnownedUntilOwned(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Yo1")
	b.clock.Advance(time.Minute)
	b.create(t, "Yo2", func(m *NewMessage) { m.Fanout = "fanout-Yo2" })
	if got := b.unownedIDs(t); !slices.Equal(got, []string{"Yo1", "Yo2"}) {
		t.Fatalf("unowned = %v, want both new records", got)
	}
	old, err := b.store.Unowned(b.ctx, b.clock.Now().Add(-30*time.Second), 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(old) != 1 || old[0] != (Unowned{ID: "Yo1", App: "default", State: StateQueued, Queue: "normal"}) {
		t.Errorf("unowned before the cut-off = %+v, want only Yo1, queued in normal, no fanout", old)
	}
	recs, _ := b.store.Unowned(b.ctx, b.clock.Now().Add(time.Second), 100)
	if len(recs) != 2 || recs[1].Fanout != "fanout-Yo2" && recs[0].Fanout != "fanout-Yo2" {
		t.Errorf("unowned = %+v, want Yo2 naming its fanout", recs)
	}
	if err := b.store.Owned(b.ctx, "Yo1", "Yo2"); err != nil {
		t.Fatal(err)
	}
	if got := b.unownedIDs(t); len(got) != 0 {
		t.Errorf("unowned after Owned = %v, want none", got)
	}
}

// TestCancelOrphan: an orphan is settled canceled, releasing its backlog slot
// and its body; one owned meanwhile, or attempted, is left alone.
func TestCancelOrphan(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Yorphan")
	b.create(t, "Yowned")
	b.create(t, "Ytried")
	if n := b.backlog(t, "default"); n != 3 {
		t.Fatalf("backlog = %d, want 3", n)
	}
	if err := b.store.Owned(b.ctx, "Yowned"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Begin(b.ctx, "Ytried"); err != nil {
		t.Fatal(err)
	}
	// A task that begins a message owns it: Begin unlists it, so that the
	// submission need not (Store.Owned).
	if _, err := b.rdb.ZScore(b.ctx, unownedKey(Shard("default")), "Ytried").Result(); err != redis.Nil {
		t.Fatalf("Ytried still listed as unowned after Begin (err %v)", err)
	}
	// Listed again (as by a record begun before Begin unlisted), the attempt
	// still keeps the sweep away.
	b.rdb.ZAdd(b.ctx, unownedKey(Shard("default")), redis.Z{Score: float64(b.clock.Now().UnixMilli()), Member: "Ytried"})

	tr, err := b.store.CancelOrphan(b.ctx, "Yorphan", b.clock.Now())
	if err != nil || !tr.Changed || tr.State != StateCanceled || tr.App != "default" {
		t.Fatalf("CancelOrphan(orphan) = %+v, %v, want changed to canceled", tr, err)
	}
	m, err := b.store.Get(b.ctx, "Yorphan")
	if err != nil {
		t.Fatal(err)
	}
	last := m.History[len(m.History)-1]
	if m.State != StateCanceled || m.FinishedAt == nil || last.State != StateCanceled || last.Note == "" {
		t.Errorf("orphan record = %+v (last event %+v), want canceled with a note saying why", m, last)
	}
	if n, _ := b.rdb.Exists(b.ctx, bodyKey("Yorphan")).Result(); n != 0 {
		t.Error("a canceled orphan kept its send body")
	}
	if ttl := b.ttl(t, recordKey("Yorphan")); ttl <= 0 {
		t.Errorf("canceled orphan's record TTL = %v, want the retention", ttl)
	}
	if n := b.backlog(t, "default"); n != 2 {
		t.Errorf("backlog after the orphan = %d, want 2", n)
	}

	if _, err := b.store.CancelOrphan(b.ctx, "Yowned", b.clock.Now()); !errors.Is(err, ErrNotFound) {
		t.Errorf("CancelOrphan(owned) = %v, want ErrNotFound (not listed)", err)
	}
	if tr, err := b.store.CancelOrphan(b.ctx, "Ytried", b.clock.Now()); err != nil || tr.Changed || tr.State != StateQueued {
		t.Errorf("CancelOrphan(attempted) = %+v, %v, want unchanged queued", tr, err)
	}
	for _, id := range []string{"Yowned", "Ytried"} {
		if got := b.state(t, id); got != StateQueued {
			t.Errorf("%s = %s, want queued", id, got)
		}
	}
	if got := b.unownedIDs(t); len(got) != 0 {
		t.Errorf("unowned = %v, want none left", got)
	}
	if _, err := b.store.CancelOrphan(b.ctx, "Ymissing", b.clock.Now()); !errors.Is(err, ErrNotFound) {
		t.Errorf("CancelOrphan(missing) = %v, want ErrNotFound", err)
	}
}

// TestRetryRevivesOrphan: the same id created again (a retry of the request
// with its Idempotency-Key) revives a canceled orphan with its body and
// creation time, while any other existing record still refuses it.
func TestRetryRevivesOrphan(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Yrev", func(m *NewMessage) {
		m.Body = []byte(`{"touser":"o-rev"}`)
		m.Fanout, m.Kind, m.ExpireAt = "fanout-first", "subscribe", b.clock.Now().Add(2*time.Hour)
	})
	created := b.clock.Now()
	b.clock.Advance(time.Hour)
	if _, err := b.store.CancelOrphan(b.ctx, "Yrev", b.clock.Now()); err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(time.Minute)
	state, err := b.store.Create(b.ctx, NewMessage{ID: "Yrev", App: "default", Queue: "normal", Body: []byte(`{"touser":"o-rev"}`)})
	if err != nil || state != StateQueued {
		t.Fatalf("Create(canceled orphan) = %s, %v, want queued, nil", state, err)
	}
	m, err := b.store.Get(b.ctx, "Yrev")
	if err != nil {
		t.Fatal(err)
	}
	last := m.History[len(m.History)-1]
	if m.State != StateQueued || m.FinishedAt != nil || !m.CreatedAt.Equal(created) || last.Event != "revived" {
		t.Errorf("revived record = %+v (last event %+v), want queued, not finished, created %v, last event revived", m, last, created)
	}
	if m.Kind != "template" || m.ExpireAt != nil {
		t.Errorf("revived record kept the first request's fields: kind %q, expire_at %v", m.Kind, m.ExpireAt)
	}
	if recs, _ := b.store.Unowned(b.ctx, b.clock.Now(), 10); len(recs) != 1 || recs[0].Fanout != "" {
		t.Errorf("revived record listed as %+v, want listed without the first request's fanout", recs)
	}
	if ttl := b.ttl(t, recordKey("Yrev")); ttl != -1 {
		t.Errorf("revived record TTL = %v, want none", ttl)
	}
	if n := b.backlog(t, "default"); n != 1 {
		t.Errorf("backlog = %d, want 1", n)
	}
	a, err := b.store.Begin(b.ctx, "Yrev")
	if err != nil || string(a.Body) != `{"touser":"o-rev"}` {
		t.Errorf("Begin(revived) = %+v, %v, want its body back", a, err)
	}
	// Only an orphan revives: a record canceled by the API does not.
	b.create(t, "Ycan")
	if _, err := b.store.Cancel(b.ctx, "Ycan"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Create(b.ctx, NewMessage{ID: "Ycan", App: "default", Body: []byte("{}")}); !errors.Is(err, ErrExists) {
		t.Errorf("Create(canceled by the API) = %v, want ErrExists", err)
	}
}

// TestDeleteAfterOrphanCancel: the undo of a create that the orphan sweep
// canceled first does not release the backlog slot twice.
func TestDeleteAfterOrphanCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Ykeep")
	b.create(t, "Yundo")
	if _, err := b.store.CancelOrphan(b.ctx, "Yundo", b.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if err := b.store.Delete(b.ctx, "Yundo"); err != nil {
		t.Fatal(err)
	}
	if n := b.backlog(t, "default"); n != 1 {
		t.Errorf("backlog = %d, want 1 (Ykeep)", n)
	}
	if _, err := b.store.Get(b.ctx, "Yundo"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(undone) = %v, want ErrNotFound", err)
	}
}

// TestRetryRenewsListing: a retry of a request whose record still waits for
// its task (Create answers ErrExists) renews the listing and names the
// retry's fanout, so a sweep that decided on the old listing cancels nothing
// while the retry enqueues; Postpone renews the same way.
func TestRetryRenewsListing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "Yretry", func(m *NewMessage) { m.Fanout = "fanout-1" })
	b.create(t, "Ywait", func(m *NewMessage) { m.Fanout = "fanout-w" })
	cutoff := b.clock.Now()
	b.clock.Advance(time.Hour)
	retry := NewMessage{ID: "Yretry", App: "default", Queue: "normal", Body: []byte("{}"), Fanout: "fanout-2"}
	if _, err := b.store.Create(b.ctx, retry); !errors.Is(err, ErrExists) {
		t.Fatalf("Create(retry) = %v, want ErrExists", err)
	}
	if err := b.store.Postpone(b.ctx, "Ywait", "Ynotlisted"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"Yretry", "Ywait"} {
		if _, err := b.store.CancelOrphan(b.ctx, id, cutoff); !errors.Is(err, ErrNotFound) {
			t.Errorf("CancelOrphan(%s) with the old cut-off = %v, want ErrNotFound (renewed)", id, err)
		}
		if got := b.state(t, id); got != StateQueued {
			t.Errorf("%s = %s, want queued", id, got)
		}
	}
	if old, _ := b.store.Unowned(b.ctx, cutoff, 10); len(old) != 0 {
		t.Errorf("listed before the old cut-off: %+v, want none", old)
	}
	recs, _ := b.store.Unowned(b.ctx, b.clock.Now(), 10)
	if len(recs) != 2 {
		t.Fatalf("listed = %+v, want both, renewed", recs)
	}
	for _, r := range recs {
		if r.ID == "Yretry" && r.Fanout != "fanout-2" {
			t.Errorf("retried record names fanout %q, want the retry's fanout-2", r.Fanout)
		}
	}
	if n, _ := b.rdb.ZScore(b.ctx, unownedKey('Y'), "Ynotlisted").Result(); n != 0 {
		t.Error("Postpone listed a record that was not listed")
	}
}

// TestRetryKeepsChunkOwner: an idempotent retry of a batch names its own
// chunk in the records it finds untouched; one a chunk has begun stays that
// chunk's, and one a chunk handed to a task of its own stays with that task.
func TestRetryKeepsChunkOwner(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first, retry := ChunkID("fanout-1", 0), ChunkID("fanout-2", 0)
	for _, id := range []string{"Yuntouched", "Ybegun", "Yhanded"} {
		b.create(t, id, func(m *NewMessage) { m.Fanout = first })
	}
	if _, errs, err := b.store.BeginMany(b.ctx, first, []string{"Ybegun"}); err != nil || errs[0] != nil {
		t.Fatal(err, errs)
	}
	if marked, err := b.store.HandOff(b.ctx, first, "Yhanded", "Ygone"); err != nil || len(marked) != 1 || marked[0] != "Yhanded" {
		t.Fatalf("HandOff = %v, %v, want the one that exists marked", marked, err)
	}
	for _, id := range []string{"Yuntouched", "Ybegun", "Yhanded"} {
		m := NewMessage{ID: id, App: "default", Queue: "normal", Body: []byte("{}"), Fanout: retry}
		if _, err := b.store.Create(b.ctx, m); !errors.Is(err, ErrExists) {
			t.Fatalf("Create(retry of %s) = %v, want ErrExists", id, err)
		}
	}
	recs, err := b.store.Unowned(b.ctx, b.clock.Now().Add(time.Hour), 10)
	if err != nil {
		t.Fatal(err)
	}
	// Ybegun's attempt unlisted it (Begin owns what it begins).
	want := map[string]string{"Yuntouched": retry, "Yhanded": first + "!"}
	for _, r := range recs {
		if r.ID == "Ybegun" {
			t.Error("Ybegun is still listed as unowned after its chunk began it")
		}
		if r.Fanout != want[r.ID] {
			t.Errorf("%s names %q after the retry, want %q", r.ID, r.Fanout, want[r.ID])
		}
		delete(want, r.ID)
	}
	if len(want) != 0 {
		t.Errorf("not listed: %v", want)
	}
	// The retry's chunk leaves the two it does not own alone, and may not
	// hand them off either.
	as, _, err := b.store.BeginMany(b.ctx, retry, []string{"Yuntouched", "Ybegun", "Yhanded"})
	if err != nil {
		t.Fatal(err)
	}
	if !as[0].Proceed || !as[1].Elsewhere || !as[2].Elsewhere {
		t.Errorf("the retry's chunk begins %+v, want only the untouched one", as)
	}
	if marked, err := b.store.HandOff(b.ctx, retry, "Ybegun", "Yhanded"); err != nil || len(marked) != 0 {
		t.Errorf("the retry's chunk handed off %v (%v), want none of another chunk's", marked, err)
	}
}

// TestChunkClaimsUntouched: when a retried batch's records name the retry's
// chunk, the first run's chunk may still run first (the retry's may never
// run): it claims the untouched message, and the retry's chunk then leaves it.
func TestChunkClaimsUntouched(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first, retry := ChunkID("fanout-1", 0), ChunkID("fanout-2", 0)
	b.create(t, "Ymsg", func(m *NewMessage) { m.Fanout = retry })
	as, _, err := b.store.BeginMany(b.ctx, first, []string{"Ymsg"})
	if err != nil || !as[0].Proceed {
		t.Fatalf("the first run's chunk: %+v, %v, want it to begin the untouched message", as, err)
	}
	as, _, err = b.store.BeginMany(b.ctx, retry, []string{"Ymsg"})
	if err != nil || !as[0].Elsewhere {
		t.Errorf("the retry's chunk after it: %+v, %v, want it left alone", as, err)
	}
}

// TestChunkCallsAfterScriptFlush: a Redis that restarted has no scripts
// cached; the pipelined calls of a chunk load them and run, and a bad id is
// that item's error alone.
func TestChunkCallsAfterScriptFlush(t *testing.T) {
	t.Parallel()
	b := setup(t)
	owner := ChunkID("fanout-f", 0)
	b.create(t, "Ya", func(m *NewMessage) { m.Fanout = owner })
	b.create(t, "Yb", func(m *NewMessage) { m.Fanout = owner })
	flush := func() {
		t.Helper()
		if err := b.rdb.ScriptFlush(b.ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	flush()
	as, errs, err := b.store.BeginMany(b.ctx, owner, []string{"Ya", "bad id"})
	if err != nil || !as[0].Proceed || errs[0] != nil || !errors.Is(errs[1], ErrNotFound) {
		t.Fatalf("BeginMany after a flush = %+v, %v, %v; want Ya begun and the bad id not found", as, errs, err)
	}
	flush()
	trs, errs, err := b.store.MarkSentMany(b.ctx, []Accepted{{ID: "Ya", App: "default", MsgID: 42}, {ID: "bad id", App: "default", MsgID: 43}})
	if err != nil || !trs[0].Changed || trs[0].State != StateSent || errs[0] != nil || !errors.Is(errs[1], ErrNotFound) {
		t.Fatalf("MarkSentMany after a flush = %+v, %v, %v; want Ya sent and the bad id not found", trs, errs, err)
	}
	flush()
	if marked, err := b.store.HandOff(b.ctx, owner, "Yb"); err != nil || len(marked) != 1 {
		t.Fatalf("HandOff after a flush = %v, %v; want Yb marked", marked, err)
	}
}
