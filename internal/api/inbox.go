package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/wxpush/wxpush/internal/inbox"
)

// ParkedEvents lists and replays the callback inbox's parked events;
// *inbox.ParkedEvents provides it.
type ParkedEvents interface {
	List(ctx context.Context, limit int) ([]inbox.Parked, int64, error)
	Replay(ctx context.Context, id string) error
}

var _ ParkedEvents = (*inbox.ParkedEvents)(nil)

type parkedEvent struct {
	ID         string    `json:"id"`
	App        string    `json:"app"`
	Event      string    `json:"event"`
	Reason     string    `json:"reason"`
	ReceivedAt time.Time `json:"received_at"`
	XML        string    `json:"xml"`
}

type parkedResponse struct {
	Total  int64         `json:"total"`
	Events []parkedEvent `json:"events"`
}

var errInboxOff = &apiError{Status: http.StatusNotFound, Code: "not_configured",
	Message: "the callback inbox is not configured on this enqueuer"}

// handleParked lists the parked callback events, oldest first.
func (s *Server) handleParked(w http.ResponseWriter, r *http.Request) {
	if s.parked == nil {
		writeError(w, errInboxOff)
		return
	}
	limit, e := intParam(r.URL.Query().Get("limit"), "limit", 50, 1, 500)
	if e != nil {
		writeError(w, e)
		return
	}
	list, total, err := s.parked.List(r.Context(), limit)
	if err != nil {
		s.log.Error("could not list parked callback events", "err", err)
		writeError(w, errStorage)
		return
	}
	resp := parkedResponse{Total: total, Events: make([]parkedEvent, len(list))}
	for i, p := range list {
		resp.Events[i] = parkedEvent{ID: p.ID, App: p.App, Event: p.Event, Reason: p.Reason, ReceivedAt: p.Received.UTC(), XML: p.XML}
	}
	s.respond(w, http.StatusOK, resp)
}

// handleReplayParked puts a parked event back into the inbox.
func (s *Server) handleReplayParked(w http.ResponseWriter, r *http.Request) {
	if s.parked == nil {
		writeError(w, errInboxOff)
		return
	}
	id := r.PathValue("id")
	if !validStreamID(id) {
		writeError(w, badField("id", "invalid_id", "a parked event id is <ms>-<seq>"))
		return
	}
	err := s.parked.Replay(r.Context(), id)
	switch {
	case errors.Is(err, inbox.ErrNotParked):
		writeError(w, &apiError{Status: http.StatusNotFound, Code: "not_found", Field: "id",
			Message: fmt.Sprintf("no parked event %q (never parked, or replayed already)", id)})
	case err != nil:
		s.log.Error("could not replay a parked callback event", "id", id, "err", err)
		writeError(w, errStorage)
	default:
		s.log.Info("parked callback event put back into the inbox", "id", id)
		s.respond(w, http.StatusAccepted, map[string]string{"id": id, "status": "replaying"})
	}
}
