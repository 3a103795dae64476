package webhook

import "github.com/wxpush/wxpush/internal/delivery"

// wireEvent is Event with At as a millisecond RFC 3339 string, in the field
// order of the documented body.
type wireEvent struct {
	EventID     string              `json:"event_id"`
	ID          string              `json:"id"`
	App         string              `json:"app"`
	State       string              `json:"state"`
	Previous    string              `json:"previous"`
	Seq         int64               `json:"seq"`
	Attempts    int                 `json:"attempts"`
	WeChatMsgID string              `json:"wechat_msgid"`
	LastError   *delivery.ErrorInfo `json:"last_error"`
	At          string              `json:"at"`
}

const atLayout = "2006-01-02T15:04:05.000Z07:00"
