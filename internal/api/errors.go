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

// writeJSON answers status with v as JSON. v is encoded before anything is
// written, so that a value that cannot be (a time past year 9999 read back from
// Redis) is a 500 internal error with its JSON body, never a 200 with an empty
// body. It returns that encoding error; (*Server).respond logs it.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		err = fmt.Errorf("api: encode %T response: %w", v, err)
		status, b = errInternal.Status, errInternalBody
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
	return err
}

// respond is writeJSON for a response built from stored data: when it cannot
// be encoded the client gets a 500 and the log says why.
func (s *Server) respond(w http.ResponseWriter, status int, v any) {
	if err := writeJSON(w, status, v); err != nil {
		s.log.Error("could not encode the response; answered 500", "status", status, "err", err)
	}
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.Status == http.StatusServiceUnavailable || e.Status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "5")
	}
	writeJSON(w, e.Status, map[string]*apiError{"error": e})
}

var errStorage = &apiError{Status: http.StatusServiceUnavailable, Code: "storage_unavailable",
	Message: "the message store (Redis) is unreachable; nothing was accepted, retry later"}

// errInternal answers a response that could not be encoded.
var errInternal = &apiError{Status: http.StatusInternalServerError, Code: "internal",
	Message: "the server could not encode its response"}

var errInternalBody, _ = json.Marshal(map[string]*apiError{"error": errInternal})
