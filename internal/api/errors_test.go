package api

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRespondUnencodable (issue 17.5): a value json.Marshal refuses is answered
// 500 internal with the JSON error body, and the cause is logged; nothing of
// the value's status or a partial body goes out.
func TestRespondUnencodable(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	s := New(Deps{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	rec := httptest.NewRecorder()
	s.respond(rec, http.StatusOK, map[string]float64{"ratio": math.NaN()})
	if rec.Code != http.StatusInternalServerError {
		t.Fatalf("status %d %q, want 500", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	var e struct{ Error apiError }
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code != "internal" || e.Error.Message == "" {
		t.Errorf("body %q (%v), want the internal error", rec.Body, err)
	}
	if !strings.Contains(logs.String(), "unsupported value: NaN") {
		t.Errorf("the cause is not logged: %s", logs.String())
	}

	rec = httptest.NewRecorder()
	if err := writeJSON(rec, http.StatusCreated, map[string]int{"n": 1}); err != nil || rec.Code != http.StatusCreated || rec.Body.String() != "{\"n\":1}\n" {
		t.Errorf("writeJSON of a good value = %d %q, %v", rec.Code, rec.Body, err)
	}
}
