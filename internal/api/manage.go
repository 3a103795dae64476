package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/wxpush/wxpush/internal/delivery"
)

// handleCancel cancels a message WeChat has not accepted. While an attempt is in
// flight the answer is 409 with Retry-After: that attempt decides, ask again.
func (s *Server) handleCancel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	tr, err := s.messages.Cancel(r.Context(), id)
	switch {
	case errors.Is(err, delivery.ErrNotFound):
		writeError(w, notFound(id))
	case errors.Is(err, delivery.ErrInFlight):
		w.Header().Set("Retry-After", "1")
		writeError(w, &apiError{Status: http.StatusConflict, Code: "in_flight", Field: "id",
			Message: "a send attempt is in flight; retry the cancel in a moment"})
	case err != nil:
		s.log.Error("could not cancel", "msg_id", id, "err", err)
		writeError(w, errStorage)
	case !tr.Changed && tr.State != delivery.StateCanceled:
		writeError(w, &apiError{Status: http.StatusConflict, Code: "not_cancelable", Field: "id",
			Message: fmt.Sprintf("message is %s: only queued, scheduled or retrying messages can be canceled", tr.State)})
	default:
		if tr.Changed {
			s.metrics.Finished.WithLabelValues(tr.App, string(delivery.StateCanceled)).Inc()
			s.log.Info("message canceled", "msg_id", id, "app", tr.App)
		}
		writeJSON(w, http.StatusOK, acceptedResponse{ID: id, State: delivery.StateCanceled})
	}
}

type listResponse struct {
	Messages   []*delivery.Message `json:"messages"`
	Total      int64               `json:"total"`
	NextOffset *int                `json:"next_offset,omitempty"`
}

// handleList lists dead messages of an app, newest first, by offset.
func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("state") != string(delivery.StateDead) {
		writeError(w, badField("state", "unsupported_state", "only state=dead can be listed"))
		return
	}
	app := q.Get("app")
	if app == "" {
		app = s.defaultApp
	}
	if !s.hasApp(app) {
		writeError(w, badField("app", "unknown_app", fmt.Sprintf("app %q is not configured", app)))
		return
	}
	limit, offset, e := pageParams(q)
	if e != nil {
		writeError(w, e)
		return
	}
	page, err := s.messages.ListDead(r.Context(), app, offset, limit)
	if err != nil {
		s.log.Error("could not list dead messages", "app", app, "err", err)
		writeError(w, errStorage)
		return
	}
	resp := listResponse{Messages: page.Messages, Total: page.Total}
	if page.Next > 0 {
		resp.NextOffset = &page.Next
	}
	s.respond(w, http.StatusOK, resp)
}

// pageParams reads a list's page: limit (default 50, 1 to 500) and offset.
func pageParams(q url.Values) (limit, offset int, e *apiError) {
	if limit, e = intParam(q.Get("limit"), "limit", 50, 1, 500); e != nil {
		return 0, 0, e
	}
	offset, e = intParam(q.Get("offset"), "offset", 0, 0, 1<<30)
	return limit, offset, e
}

func intParam(v, field string, def, lo, hi int) (int, *apiError) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, badField(field, "invalid_"+field, fmt.Sprintf("%s must be an integer from %d to %d", field, lo, hi))
	}
	return n, nil
}

// handleRetry requeues a dead message with its id (and client_msg_id). A
// message one of whose attempts may have reached WeChat without its reply
// (delivery.PossibleDuplicate) is refused with 409 possible_duplicate unless
// the caller passes force=true: past WeChat's ~10-minute client_msg_id
// de-duplication, sending it again may deliver it twice.
func (s *Server) handleRetry(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	// Anything but a true value is no: the refusal says what to pass.
	if force, _ := strconv.ParseBool(r.URL.Query().Get("force")); !force {
		m, err := s.messages.Get(r.Context(), id)
		switch {
		case err != nil && !errors.Is(err, delivery.ErrNotFound):
			s.log.Error("could not read the message to retry", "msg_id", id, "err", err)
			writeError(w, errStorage)
			return
		case err == nil && m.State == delivery.StateDead && delivery.PossibleDuplicate(m):
			writeError(w, &apiError{Status: http.StatusConflict, Code: "possible_duplicate", Field: "id",
				Message: "an attempt may have reached WeChat without its reply, and WeChat's result never matched it: " +
					"a retry may deliver the message twice; pass force=true to retry anyway"})
			return
		}
	}
	err := s.submit.Requeue(r.Context(), id)
	switch {
	case errors.Is(err, delivery.ErrNotFound):
		writeError(w, notFound(id))
	case errors.Is(err, delivery.ErrNotDead):
		writeError(w, &apiError{Status: http.StatusConflict, Code: "not_dead", Field: "id",
			Message: "only dead messages can be retried"})
	case err != nil:
		s.log.Error("could not requeue", "msg_id", id, "err", err)
		writeError(w, errStorage)
	default:
		s.log.Info("dead message requeued", "msg_id", id)
		writeJSON(w, http.StatusAccepted, acceptedResponse{ID: id, State: delivery.StateQueued})
	}
}

type resumeResponse struct {
	App     string `json:"app"`
	Resumed bool   `json:"resumed"` // the app was parked
	Woken   int    `json:"woken"`   // waiting messages moved forward
}

// handleResume lifts an app's quota park (after the quota was cleared) and
// wakes its waiting messages.
func (s *Server) handleResume(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("app")
	if !s.hasApp(app) {
		writeError(w, &apiError{Status: http.StatusNotFound, Code: "unknown_app", Field: "app",
			Message: fmt.Sprintf("app %q is not configured", app)})
		return
	}
	was, err := s.messages.Resume(r.Context(), app)
	if err != nil {
		s.log.Error("could not resume app", "app", app, "err", err)
		writeError(w, errStorage)
		return
	}
	woken, err := s.submit.WakeApp(r.Context(), app)
	if err != nil {
		s.log.Warn("app resumed, but waking its messages failed; they run at the quota reset", "app", app, "err", err)
	}
	s.log.Info("app resumed", "app", app, "was_parked", was, "woken", woken)
	writeJSON(w, http.StatusOK, resumeResponse{App: app, Resumed: was, Woken: woken})
}

func notFound(id string) *apiError {
	return &apiError{Status: http.StatusNotFound, Code: "not_found", Field: "id",
		Message: fmt.Sprintf("no message %q (never accepted, or past its retention)", id)}
}

// handleTemplates lists an app's templates (from the shared cache).
func (s *Server) handleTemplates(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("app")
	if !s.hasApp(app) {
		writeError(w, &apiError{Status: http.StatusNotFound, Code: "unknown_app", Field: "app",
			Message: fmt.Sprintf("app %q is not configured", app)})
		return
	}
	if s.templates == nil {
		writeError(w, &apiError{Status: http.StatusNotFound, Code: "unsupported", Message: "template listing is not enabled on this server"})
		return
	}
	list, err := s.templates.List(r.Context(), app)
	if err != nil {
		s.log.Warn("could not list templates", "app", app, "err", err)
		writeError(w, &apiError{Status: http.StatusServiceUnavailable, Code: "templates_unavailable",
			Message: "the template list could not be fetched from WeChat; retry later"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"app": app, "templates": list})
}
