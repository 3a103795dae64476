package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// ParkedCallback is a delivery-result callback the inbox's appliers set
// aside: unreadable, or failing to apply (GET /v1/inbox/parked).
type ParkedCallback struct {
	ID         string    `json:"id"`
	App        string    `json:"app"`
	Event      string    `json:"event"`
	Reason     string    `json:"reason"`
	ReceivedAt time.Time `json:"received_at"`
	XML        string    `json:"xml"` // the event as received (decrypted in safe mode)
}

// ParkedCallbacks are the oldest parked callbacks and how many there are.
type ParkedCallbacks struct {
	Total  int              `json:"total"`
	Events []ParkedCallback `json:"events"`
}

// ParkedCallbacks lists up to limit parked callbacks, oldest first; limit 0
// means the server's default (50).
func (c *Client) ParkedCallbacks(ctx context.Context, limit int) (ParkedCallbacks, error) {
	path := "/v1/inbox/parked"
	if limit != 0 {
		path += "?limit=" + strconv.Itoa(limit)
	}
	var p ParkedCallbacks
	err := c.do(ctx, call{method: http.MethodGet, path: path}, &p)
	return p, err
}

// ReplayParkedCallback puts a parked callback back into the inbox, to be
// applied again (POST /v1/inbox/parked/{id}/replay). One that is not parked
// (or was replayed already) is an *Error with Code "not_found".
func (c *Client) ReplayParkedCallback(ctx context.Context, id string) error {
	if id == "" {
		return localError("id", "required", "a parked event id is required")
	}
	return c.do(ctx, call{method: http.MethodPost, path: "/v1/inbox/parked/" + url.PathEscape(id) + "/replay"}, nil)
}
