package idempotency

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/redistest"
)

func TestReplayMismatchAndRace(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := New(srv.Client(t), time.Hour)
	ctx := context.Background()
	h1, h2 := Hash("POST", "/v1/messages", []byte(`{"a":1}`)), Hash("POST", "/v1/messages", []byte(`{"a":2}`))
	if Hash("POST", "/v1/messages/batch", []byte(`{"a":1}`)) == h1 {
		t.Fatal("hash ignores the path")
	}

	// Ten concurrent first requests: exactly one runs.
	var wg sync.WaitGroup
	claims := make(chan *Claim, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, c, err := s.Begin(ctx, "k", "key-1", h1)
			if c != nil {
				claims <- c
			} else if !errors.Is(err, ErrInProgress) {
				t.Errorf("concurrent Begin: %v", err)
			}
		}()
	}
	wg.Wait()
	close(claims)
	var won []*Claim
	for c := range claims {
		won = append(won, c)
	}
	if len(won) != 1 {
		t.Fatalf("%d requests claimed the key, want 1", len(won))
	}
	if err := s.Complete(ctx, won[0], Response{Status: 202, Body: []byte(`{"id":"X"}` + "\n")}); err != nil {
		t.Fatal(err)
	}
	resp, c, err := s.Begin(ctx, "k", "key-1", h1)
	if err != nil || c != nil || resp == nil || resp.Status != 202 || string(resp.Body) != `{"id":"X"}`+"\n" {
		t.Fatalf("replay = %+v, %v, %v; want the stored 202 body", resp, c, err)
	}
	if _, _, err := s.Begin(ctx, "k", "key-1", h2); !errors.Is(err, ErrMismatch) {
		t.Errorf("same key, other body: %v, want ErrMismatch", err)
	}
	if _, c, _ := s.Begin(ctx, "other-scope", "key-1", h2); c == nil {
		t.Error("keys are not scoped")
	}

	// An aborted claim frees the key.
	_, c2, _ := s.Begin(ctx, "k", "key-2", h1)
	if err := s.Abort(ctx, c2); err != nil {
		t.Fatal(err)
	}
	if _, c3, err := s.Begin(ctx, "k", "key-2", h1); c3 == nil || err != nil {
		t.Errorf("after Abort the key is still held: %v", err)
	}
}

// TestAbortReleasesOnlyItsOwnClaim: a release that comes late (its lease
// lapsed and another request claimed the key meanwhile) leaves the newer
// claim in place, so two requests with one key still cannot both run.
func TestAbortReleasesOnlyItsOwnClaim(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	s := New(rdb, time.Hour)
	ctx := context.Background()
	h := Hash("POST", "/v1/messages", []byte(`{"a":1}`))
	_, stale, err := s.Begin(ctx, "k", "key-1", h)
	if err != nil || stale == nil {
		t.Fatalf("first Begin = %v, %v", stale, err)
	}
	rdb.Del(ctx, redisKey("k", "key-1")) // the lease lapses
	_, fresh, err := s.Begin(ctx, "k", "key-1", h)
	if err != nil || fresh == nil {
		t.Fatalf("Begin after the lease lapsed = %v, %v", fresh, err)
	}
	if err := s.Abort(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if _, c, err := s.Begin(ctx, "k", "key-1", h); c != nil || !errors.Is(err, ErrInProgress) {
		t.Fatalf("after a stale Abort: claim %v, %v; want ErrInProgress (the newer claim stands)", c, err)
	}
	if err := s.Abort(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	if _, c, err := s.Begin(ctx, "k", "key-1", h); c == nil || err != nil {
		t.Errorf("after its own Abort the key is still held: %v", err)
	}
}
