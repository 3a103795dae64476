package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"
	"unicode"

	"github.com/oklog/ulid/v2"

	"github.com/wxpush/wxpush/internal/idempotency"
)

// idempotent makes a POST safe to retry with an Idempotency-Key header: the first
// request runs, repeats within the window get its response back (with
// Idempotent-Replayed: true), the same key with another body is a 409. Responses
// that say "try again" (429, 5xx) are not stored, and their key is released
// before they are sent, so a retry runs for real.
func (s *Server) idempotent(limit int64, next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		if key == "" {
			next(w, r)
			return
		}
		if e := checkIdempotencyKey(key); e != nil {
			writeError(w, e)
			return
		}
		if s.idem == nil {
			writeError(w, &apiError{Status: http.StatusBadRequest, Code: "unsupported", Field: "Idempotency-Key",
				Message: "idempotency keys are not enabled on this server"})
			return
		}
		body, e := readBody(w, r, limit)
		if e != nil {
			writeError(w, e)
			return
		}
		hash := idempotency.Hash(r.Method, r.URL.Path, body)
		replay, claim, err := s.idem.Begin(r.Context(), caller(r), key, hash)
		switch {
		case errors.Is(err, idempotency.ErrMismatch):
			writeError(w, &apiError{Status: http.StatusConflict, Code: "idempotency_key_reused", Field: "Idempotency-Key",
				Message: "this Idempotency-Key was used with a different request"})
			return
		case errors.Is(err, idempotency.ErrInProgress):
			w.Header().Set("Retry-After", "1")
			writeError(w, &apiError{Status: http.StatusConflict, Code: "idempotency_in_progress", Field: "Idempotency-Key",
				Message: "a request with this Idempotency-Key is still running"})
			return
		case err != nil:
			s.log.Error("idempotency store unavailable", "err", err)
			writeError(w, errStorage)
			return
		case replay != nil:
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.Header().Set("Idempotent-Replayed", "true")
			w.WriteHeader(replay.Status)
			_, _ = w.Write(replay.Body)
			return
		}
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		r.Body = io.NopCloser(bytes.NewReader(body))
		// Message ids derive from the key: if this process dies after storing the
		// messages but before storing the response, the retry that runs once the
		// claim lapses finds the same ids already stored instead of creating a
		// second copy of each message.
		r = r.WithContext(context.WithValue(r.Context(), idSeedKey{}, caller(r)+"\x00"+key+"\x00"+hash))
		next(rec, r)
		// The client may be gone by now (its own timeout): the outcome must be
		// recorded anyway, or a retry would run the request a second time.
		ctx := context.WithoutCancel(r.Context())
		if retryable(rec.status) {
			// Nothing was accepted: the key is released before the answer goes
			// out, so that the client's retry runs at once instead of meeting
			// idempotency_in_progress until the lease lapses.
			s.release(ctx, claim)
			rec.flush()
			return
		}
		if err := s.idem.Complete(ctx, claim, idempotency.Response{Status: rec.status, Body: rec.body.Bytes()}); err != nil {
			s.log.Warn("could not store idempotent response; a retry will conflict until the key lease ends", "err", err)
		}
	})
}

// releaseTimeout bounds how long a "try again" answer waits for its
// Idempotency-Key to be released.
const releaseTimeout = 3 * time.Second

// release frees the claim of a request that accepted nothing. Such answers
// mostly come from a Redis that failed a moment ago (a stall, a failover), so
// a failed release is tried again for a short while; should Redis stay away,
// the key is free once its lease lapses.
func (s *Server) release(ctx context.Context, claim *idempotency.Claim) {
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	wait := 20 * time.Millisecond
	for {
		err := s.idem.Abort(ctx, claim)
		if err == nil {
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			s.log.Warn("could not release idempotency key; a retry will conflict until the key lease ends", "err", err)
			return
		case <-t.C:
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// retryable reports whether a status says "try again" (429, 5xx): nothing
// was accepted, and the response is not kept.
func retryable(status int) bool {
	return status == http.StatusTooManyRequests || status >= 500
}

func checkIdempotencyKey(key string) *apiError {
	if len(key) > idempotency.MaxKeyLength {
		return badField("Idempotency-Key", "invalid_idempotency_key", "Idempotency-Key is longer than 255 bytes")
	}
	for _, c := range key {
		if c > unicode.MaxASCII || !unicode.IsPrint(c) {
			return badField("Idempotency-Key", "invalid_idempotency_key", "Idempotency-Key must be printable ASCII")
		}
	}
	return nil
}

// recorder passes a response through and keeps a copy; a "try again"
// response (retryable) it holds back until flush.
type recorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	body        bytes.Buffer
}

func (r *recorder) WriteHeader(status int) {
	if r.wroteHeader {
		return
	}
	r.status, r.wroteHeader = status, true
	if !retryable(status) {
		r.ResponseWriter.WriteHeader(status)
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if !r.wroteHeader {
		r.WriteHeader(http.StatusOK)
	}
	r.body.Write(b)
	if retryable(r.status) {
		return len(b), nil
	}
	return r.ResponseWriter.Write(b)
}

// flush sends a held-back response.
func (r *recorder) flush() {
	if !retryable(r.status) {
		return
	}
	r.ResponseWriter.WriteHeader(r.status)
	_, _ = r.ResponseWriter.Write(r.body.Bytes())
}

// idSeedKey keys the seed of deterministic message ids in a request context.
type idSeedKey struct{}

// messageID returns the id of the index-th message of a request: derived from
// the request's idempotency seed when it has one, else a fresh ULID.
func messageID(ctx context.Context, index int) string {
	seed, ok := ctx.Value(idSeedKey{}).(string)
	if !ok {
		return ulid.Make().String()
	}
	sum := sha256.Sum256([]byte(seed + "\x00" + strconv.Itoa(index)))
	return idEncoding.EncodeToString(sum[:16])
}

// idEncoding spells derived ids like ULIDs: 26 characters of Crockford base32.
var idEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)
