package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/wxpush/wxpush/internal/delivery"
)

// MaxBatch is the most messages one batch request may carry.
const MaxBatch = 1000

// maxBatchBytes bounds a batch request body.
const maxBatchBytes = 8 << 20

type batchRequest struct {
	Messages []json.RawMessage `json:"messages"`
}

// batchResult is one item's outcome, at the item's index.
type batchResult struct {
	ID    string         `json:"id,omitempty"`
	State delivery.State `json:"state,omitempty"`
	Error *apiError      `json:"error,omitempty"`
}

type batchResponse struct {
	Accepted int           `json:"accepted"`
	Rejected int           `json:"rejected"`
	Results  []batchResult `json:"results"`
}

// handleBatch accepts up to MaxBatch messages. Each item is validated and
// accepted on its own; the valid ones are written in one pipelined round trip.
// A request that is malformed as a whole is refused whole. When Redis stores
// none of the valid items, the answer is a 503 for the whole batch: the
// invalid items' 400 details come back when the batch is retried.
func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request) {
	body, e := readBody(w, r, maxBatchBytes)
	if e != nil {
		writeError(w, e)
		return
	}
	var req batchRequest
	if e := decodeStrict(body, &req, ""); e != nil {
		writeError(w, e)
		return
	}
	// The batch's own keys; each item's are checked with the item.
	if e := checkKeys(body, "", 1); e != nil {
		writeError(w, e)
		return
	}
	switch {
	case len(req.Messages) == 0:
		writeError(w, badField("messages", "required", "messages must hold at least one message"))
		return
	case len(req.Messages) > MaxBatch:
		writeError(w, badField("messages", "too_many", fmt.Sprintf("a batch holds at most %d messages, got %d", MaxBatch, len(req.Messages))))
		return
	}
	now := s.now()
	resp := batchResponse{Results: make([]batchResult, len(req.Messages))}
	var valid []delivery.NewMessage
	var at []int // index of each valid message in the request
	sess := s.session()
	for i, raw := range req.Messages {
		m, e := s.parseMessage(r.Context(), raw, i, now, sess)
		if e != nil {
			resp.Results[i].Error = e.item(i)
			continue
		}
		valid = append(valid, m)
		at = append(at, i)
	}
	if len(valid) > 0 {
		created, err := s.submit.SubmitBatch(r.Context(), valid)
		if err != nil {
			s.log.Error("could not accept batch", "messages", len(valid), "err", err)
			writeError(w, errStorage)
			return
		}
		if unavailable(created) {
			// Redis refused every item for a reason of its own (loading,
			// read-only after a failover, no replicas): the batch as a whole
			// could not be stored, as when the pipeline fails outright.
			s.log.Error("could not accept batch", "messages", len(valid), "err", created[0].Err)
			writeError(w, errStorage)
			return
		}
		for j, c := range created {
			i, m := at[j], valid[j]
			if c.Err != nil {
				resp.Results[i].Error = s.submitError(m.App, c.Err).item(i)
				continue
			}
			resp.Results[i] = batchResult{ID: m.ID, State: c.State}
			s.metrics.Enqueued.WithLabelValues(m.App).Inc()
		}
	}
	for _, res := range resp.Results {
		if res.Error != nil {
			resp.Rejected++
		} else {
			resp.Accepted++
		}
	}
	s.log.Info("batch accepted", "accepted", resp.Accepted, "rejected", resp.Rejected)
	s.respond(w, http.StatusOK, resp)
}

// unavailable reports whether every item failed for want of storage: no item
// was stored, and none was refused for a reason of its own (a full backlog).
func unavailable(created []delivery.Created) bool {
	for _, c := range created {
		if c.Err == nil || errors.Is(c.Err, delivery.ErrBacklogFull) {
			return false
		}
	}
	return len(created) > 0
}
