package service

import (
	"encoding/json"
	"net/http"

	"github.com/hibiken/asynqmon"
	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/logging"
)

// sharedRedis hands asynqmon the process's Redis client instead of a second pool.
type sharedRedis struct{ c redis.UniversalClient }

func (s sharedRedis) MakeRedisClient() any { return s.c }

// uiHandler is asynqmon, the asynq web UI, under /ui: read-only unless
// WXPUSH_UI_WRITABLE, with task payloads shown with openids masked.
func (p *parts) uiHandler() http.Handler {
	return asynqmon.New(asynqmon.Options{
		RootPath:         "/ui",
		RedisConnOpt:     sharedRedis{p.rdb},
		ReadOnly:         !p.cfg.UIWritable,
		PayloadFormatter: asynqmon.PayloadFormatterFunc(maskPayload),
	})
}

// maskPayload renders a task payload for the UI with every openid masked.
func maskPayload(taskType string, payload []byte) string {
	var v any
	if json.Unmarshal(payload, &v) != nil {
		return "(not JSON)"
	}
	maskOpenIDs(v)
	b, _ := json.Marshal(v)
	return string(b)
}

// maskOpenIDs masks the "to" and "touser" fields anywhere in a decoded payload.
func maskOpenIDs(v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if s, ok := x.(string); ok && (k == "to" || k == "touser") {
				t[k] = logging.MaskOpenID(s)
				continue
			}
			maskOpenIDs(x)
		}
	case []any:
		for _, x := range t {
			maskOpenIDs(x)
		}
	}
}
