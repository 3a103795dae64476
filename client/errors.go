package client

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// Error is an answer of the API other than 2xx, from its
// {"error":{"code","message","field"}} body, or a message refused before any
// request was made. Branch on it with errors.As and Code.
type Error struct {
	// HTTPStatus is the response's status code; 0 for an item of a batch
	// (which the batch answers 200) and for input refused locally.
	HTTPStatus int `json:"-"`
	// Code is the API's machine-readable reason: "required", "unknown_template",
	// "backlog_full", "not_found", "not_cancelable", "unauthorized", …
	Code string `json:"code"`
	// Message is the API's sentence for a person.
	Message string `json:"message"`
	// Field names the offending input ("touser", "data.thing1.value",
	// "messages[1500].template_id", "id", "app"), or is "".
	Field string `json:"field,omitempty"`
}

// Error reads "wxpush: <field>: <message>", or "wxpush: <message>" without a field.
func (e *Error) Error() string {
	if e.Field == "" {
		return "wxpush: " + e.Message
	}
	return "wxpush: " + e.Field + ": " + e.Message
}

// retryable reports whether the request may succeed if sent again as it is.
func (e *Error) retryable() bool {
	switch e.HTTPStatus {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	case http.StatusConflict:
		// Both come with Retry-After: another try decides (an attempt in flight
		// settles, or the first request with this Idempotency-Key finishes).
		return e.Code == "in_flight" || e.Code == "idempotency_in_progress"
	}
	return false
}

// responseError builds the Error of a non-2xx response. A body that is not the
// API's envelope (a proxy's HTML page) still gives an Error, coded by status.
func responseError(resp *http.Response, body []byte) *Error {
	var env struct {
		Error *Error `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && env.Error != nil && env.Error.Message != "" {
		env.Error.HTTPStatus = resp.StatusCode
		return env.Error
	}
	snippet := strings.TrimSpace(string(body))
	if r := []rune(snippet); len(r) > 200 {
		snippet = string(r[:200]) + "…"
	}
	msg := fmt.Sprintf("unexpected response %s", resp.Status)
	if snippet != "" {
		msg += ": " + snippet
	}
	return &Error{HTTPStatus: resp.StatusCode, Code: fmt.Sprintf("http_%d", resp.StatusCode), Message: msg}
}
