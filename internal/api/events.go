package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/webhook"
)

// EventStream is what GET /v1/events needs of the Redis holding
// webhook.EventsStream; redis.UniversalClient provides it. Every open stream
// holds one connection in an XREAD BLOCK, so production gives it a client of
// its own whose pool is at least MaxEventStreams.
type EventStream interface {
	XRead(ctx context.Context, a *redis.XReadArgs) *redis.XStreamSliceCmd
	XRangeN(ctx context.Context, stream, start, stop string, count int64) *redis.XMessageSliceCmd
	XRevRangeN(ctx context.Context, stream, start, stop string, count int64) *redis.XMessageSliceCmd
}

// EventsMetrics are the event stream's metrics.
type EventsMetrics struct {
	Clients prometheus.Gauge
}

// NewEventsMetrics registers the event stream's metrics with reg.
func NewEventsMetrics(reg prometheus.Registerer) *EventsMetrics {
	m := &EventsMetrics{Clients: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "wxpush_events_stream_clients",
		Help: "Open GET /v1/events streams.",
	})}
	reg.MustRegister(m.Clients)
	return m
}

// Event stream defaults.
const (
	DefaultMaxEventStreams = 256
	DefaultEventsKeepalive = 15 * time.Second
	// eventsRetry is the reconnect delay hinted to clients (retry:, ms).
	eventsRetry = 3000
	// eventsBatch bounds the entries one XREAD returns.
	eventsBatch = 100
)

// eventSlots bounds the concurrent streams.
type eventSlots chan struct{}

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	apps, e := s.eventApps(q["app"])
	if e != nil {
		writeError(w, e)
		return
	}
	last := r.Header.Get("Last-Event-ID")
	field := "Last-Event-ID"
	if last == "" {
		last, field = q.Get("last_event_id"), "last_event_id"
	}
	if last != "" && !validStreamID(last) {
		writeError(w, badField(field, "invalid_"+strings.ToLower(strings.ReplaceAll(field, "-", "_")),
			"an event id is <ms>-<seq>, as sent in the stream's id: lines"))
		return
	}
	if s.events == nil {
		writeError(w, &apiError{Status: http.StatusNotFound, Code: "not_configured",
			Message: "the event stream is not configured on this enqueuer"})
		return
	}
	select {
	case s.eventSlots <- struct{}{}:
		defer func() { <-s.eventSlots }()
	default:
		writeError(w, &apiError{Status: http.StatusServiceUnavailable, Code: "too_many_streams",
			Message: fmt.Sprintf("%d event streams are open, the most this enqueuer serves; retry later", cap(s.eventSlots))})
		return
	}
	// A stream ends with its client or when the server closes its streams
	// (CloseStreams, at shutdown: a graceful shutdown waits for handlers).
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.streams, cancel)()
	gap := false
	if last == "" {
		// Start at now: the id of the newest entry, so nothing appended
		// between this read and the first XREAD is missed.
		msgs, err := s.events.XRevRangeN(ctx, webhook.EventsStream, "+", "-", 1).Result()
		if err != nil {
			s.log.Error("could not read the event stream", "err", err)
			writeError(w, errStorage)
			return
		}
		last = "0-0"
		if len(msgs) == 1 {
			last = msgs[0].ID
		}
	} else {
		msgs, err := s.events.XRangeN(ctx, webhook.EventsStream, "-", "+", 1).Result()
		if err != nil {
			s.log.Error("could not read the event stream", "err", err)
			writeError(w, errStorage)
			return
		}
		if len(msgs) == 1 && streamIDLess(last, msgs[0].ID) && !streamIDNext(last, msgs[0].ID) {
			gap, last = true, "0-0"
		}
	}
	if s.eventsMetrics != nil {
		s.eventsMetrics.Clients.Inc()
		defer s.eventsMetrics.Clients.Dec()
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "retry: %d\n\n", eventsRetry)
	if gap {
		// The entries after the client's id were trimmed away.
		fmt.Fprintf(&buf, "event: gap\ndata: {\"last_event_id\":%q}\n\n", r.Header.Get("Last-Event-ID")+q.Get("last_event_id"))
	}
	if !s.flushEvents(rc, w, &buf) {
		return
	}
	wrote := time.Now()
	for {
		// A blocked XREAD does not end with its context: block in short
		// slices, so a closed stream lets its connection go within one.
		res, err := s.events.XRead(ctx, &redis.XReadArgs{Streams: []string{webhook.EventsStream, last},
			Count: eventsBatch, Block: min(s.eventsKeepalive, eventsPoll)}).Result()
		if ctx.Err() != nil {
			return
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			s.log.Warn("event stream read failed; closing the stream", "err", err)
			return
		}
		n := 0
		for _, st := range res {
			for _, m := range st.Messages {
				last = m.ID
				data, ok := eventData(m, apps)
				if !ok {
					continue
				}
				fmt.Fprintf(&buf, "id: %s\nevent: status\ndata: %s\n\n", m.ID, data)
				n++
			}
		}
		if n == 0 && time.Since(wrote) >= s.eventsKeepalive {
			buf.WriteString(": keepalive\n\n")
		}
		if buf.Len() > 0 {
			if !s.flushEvents(rc, w, &buf) {
				return
			}
			wrote = time.Now()
		}
	}
}

// eventsPoll is the longest a stream's read blocks in Redis.
const eventsPoll = time.Second

// CloseStreams ends every open event stream (and any opened later): call it
// when the server shuts down, since a graceful shutdown waits for handlers and
// a stream's handler runs until its client leaves.
func (s *Server) CloseStreams() { s.closeStreams() }

// flushEvents writes buf with a fresh write deadline (the server's
// WriteTimeout would end a long stream) and flushes it.
func (s *Server) flushEvents(rc *http.ResponseController, w http.ResponseWriter, buf *bytes.Buffer) bool {
	_ = rc.SetWriteDeadline(time.Now().Add(s.eventsKeepalive + 30*time.Second))
	_, err := w.Write(buf.Bytes())
	buf.Reset()
	if err != nil {
		return false
	}
	return rc.Flush() == nil
}

// eventApps parses ?app= (repeatable or comma separated); nil = every app.
func (s *Server) eventApps(vals []string) (map[string]bool, *apiError) {
	var apps map[string]bool
	for _, v := range vals {
		for a := range strings.SplitSeq(v, ",") {
			a = strings.TrimSpace(a)
			if a == "" {
				continue
			}
			if !s.hasApp(a) {
				return nil, badField("app", "unknown_app", fmt.Sprintf("app %q is not configured", a))
			}
			if apps == nil {
				apps = map[string]bool{}
			}
			apps[a] = true
		}
	}
	return apps, nil
}

// eventData returns the entry's Event JSON on one line, if its app passes.
func eventData(m redis.XMessage, apps map[string]bool) ([]byte, bool) {
	raw, _ := m.Values["e"].(string)
	var ev struct {
		App string `json:"app"`
	}
	if json.Unmarshal([]byte(raw), &ev) != nil {
		return nil, false
	}
	if apps != nil && !apps[ev.App] {
		return nil, false
	}
	var b bytes.Buffer
	if json.Compact(&b, []byte(raw)) != nil {
		return nil, false
	}
	return b.Bytes(), true
}

func validStreamID(id string) bool {
	_, _, ok := parseStreamID(id)
	return ok
}

func parseStreamID(id string) (ms, seq uint64, ok bool) {
	a, b, found := strings.Cut(id, "-")
	ms, err := strconv.ParseUint(a, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	if found {
		if seq, err = strconv.ParseUint(b, 10, 64); err != nil {
			return 0, 0, false
		}
	}
	return ms, seq, true
}

// streamIDLess reports a < b; both valid.
func streamIDLess(a, b string) bool {
	am, as, _ := parseStreamID(a)
	bm, bs, _ := parseStreamID(b)
	return am < bm || (am == bm && as < bs)
}

// streamIDNext reports whether b directly follows a within one millisecond,
// so nothing between them can have been trimmed. Otherwise a gap is
// reported: it may be one the client never missed (a duplicate warning,
// never a silent loss).
func streamIDNext(a, b string) bool {
	am, as, _ := parseStreamID(a)
	bm, bs, _ := parseStreamID(b)
	return am == bm && as+1 == bs
}
