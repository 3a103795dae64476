package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/wxpush/wxpush/internal/webhook"
)

// DeadWebhooks lists and replays webhooks whose delivery gave up;
// *webhook.DeadLetters provides it.
type DeadWebhooks interface {
	List(ctx context.Context, app string, offset, limit int) (webhook.DeadPage, error)
	Replay(ctx context.Context, eventID string) error
}

type deadWebhook struct {
	Event     webhook.Event `json:"event"`
	URL       string        `json:"url"`
	LastError string        `json:"last_error"`
	Attempts  int           `json:"attempts"`
	DiedAt    time.Time     `json:"died_at"`
}

type deadWebhooksResponse struct {
	Total      int           `json:"total"`
	Events     []deadWebhook `json:"events"`
	NextOffset *int          `json:"next_offset,omitempty"`
}

var errWebhooksOff = &apiError{Status: http.StatusNotFound, Code: "not_configured",
	Message: "webhooks are not configured on this enqueuer"}

// handleDeadWebhooks lists dead webhooks, of one app (?app=) or all.
func (s *Server) handleDeadWebhooks(w http.ResponseWriter, r *http.Request) {
	if s.webhooks == nil {
		writeError(w, errWebhooksOff)
		return
	}
	q := r.URL.Query()
	app := q.Get("app")
	if app != "" && !s.hasApp(app) {
		writeError(w, badField("app", "unknown_app", fmt.Sprintf("app %q is not configured", app)))
		return
	}
	limit, offset, e := pageParams(q)
	if e != nil {
		writeError(w, e)
		return
	}
	page, err := s.webhooks.List(r.Context(), app, offset, limit)
	if err != nil {
		s.log.Error("could not list dead webhooks", "app", app, "err", err)
		writeError(w, errStorage)
		return
	}
	resp := deadWebhooksResponse{Total: page.Total, Events: make([]deadWebhook, 0, len(page.Events))}
	for _, d := range page.Events {
		resp.Events = append(resp.Events, deadWebhook{Event: d.Event, URL: redactURL(d.URL),
			LastError: d.LastError, Attempts: d.Attempts, DiedAt: d.DiedAt.UTC()})
	}
	if next := offset + len(page.Events); len(page.Events) > 0 && next < page.Total {
		resp.NextOffset = &next
	}
	writeJSON(w, http.StatusOK, resp)
}

// handleReplayWebhook sends a dead webhook again, with a fresh window.
func (s *Server) handleReplayWebhook(w http.ResponseWriter, r *http.Request) {
	if s.webhooks == nil {
		writeError(w, errWebhooksOff)
		return
	}
	id := r.PathValue("event_id")
	if !validStreamID(id) {
		writeError(w, badField("event_id", "invalid_event_id", "an event id is <ms>-<seq>"))
		return
	}
	err := s.webhooks.Replay(r.Context(), id)
	switch {
	case errors.Is(err, webhook.ErrNotFound):
		writeError(w, &apiError{Status: http.StatusNotFound, Code: "not_found", Field: "event_id",
			Message: fmt.Sprintf("no dead webhook %q (never dead, already replayed, or past the archive's retention)", id)})
	case err != nil:
		s.log.Error("could not replay a dead webhook", "event_id", id, "err", err)
		writeError(w, errStorage)
	default:
		writeJSON(w, http.StatusAccepted, map[string]string{"event_id": id, "status": "replaying"})
	}
}

// redactURL drops the userinfo, query and fragment of a receiver URL: they
// may carry credentials.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}
