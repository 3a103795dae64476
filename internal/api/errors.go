package api

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// apiError is the body of every error response.
type apiError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

func (e *apiError) Error() string { return e.Message }

// item is e as the error of a batch's i-th item: a copy whose field is
// prefixed with messages[i]. Shared errors (errStorage) are never modified.
func (e *apiError) item(i int) *apiError {
	c := *e
	if c.Field == "" {
		c.Field = fmt.Sprintf("messages[%d]", i)
	} else {
		c.Field = fmt.Sprintf("messages[%d].%s", i, c.Field)
	}
	return &c
}

func badField(field, code, msg string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: code, Message: msg, Field: field}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.Status == http.StatusServiceUnavailable || e.Status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "5")
	}
	writeJSON(w, e.Status, map[string]*apiError{"error": e})
}

var errStorage = &apiError{Status: http.StatusServiceUnavailable, Code: "storage_unavailable",
	Message: "the message store (Redis) is unreachable; nothing was accepted, retry later"}
