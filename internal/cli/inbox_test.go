package cli

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/inbox"
	"github.com/wxpush/wxpush/internal/logging"
	"github.com/wxpush/wxpush/internal/redistest"
)

func TestInboxCommands(t *testing.T) {
	t.Parallel()
	rdb := redistest.Start(t).Client(t)
	id := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: inbox.ParkedStream, Values: []any{"app", "default", "event", "TEMPLATESENDJOBFINISH",
		"xml", "<xml>", "at", time.Now().UnixMilli(), "reason", "gave_up: apply failed 5 times"}}).Val()
	ts := httptest.NewServer(api.New(api.Deps{Apps: []api.App{{Name: "default"}},
		Parked: inbox.NewParkedEvents(rdb), Logger: logging.New(io.Discard, "debug", "json")}).Handler())
	defer ts.Close()

	r := wxpush(t, ts.URL, "", "inbox", "parked")
	if r.code != 0 || !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "gave_up: apply failed 5 times") {
		t.Errorf("inbox parked: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r = wxpush(t, ts.URL, "", "inbox", "replay", id); r.code != 0 || r.stdout != id+" replaying\n" {
		t.Errorf("inbox replay: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if n := rdb.XLen(t.Context(), inbox.Stream).Val(); n != 1 {
		t.Errorf("the inbox holds %d events after the replay, want 1", n)
	}
	if r = wxpush(t, ts.URL, "", "inbox", "replay", id); r.code != 1 || !strings.Contains(r.stderr, "no parked event") {
		t.Errorf("replay again: exit %d %q", r.code, r.stderr)
	}
	if r = wxpush(t, ts.URL, "", "inbox", "parked"); r.code != 0 || !strings.Contains(r.stdout, "no parked callback events") {
		t.Errorf("after the replay: exit %d\n%s", r.code, r.stdout)
	}
	for _, args := range [][]string{{"inbox"}, {"inbox", "nope"}, {"inbox", "replay"}, {"inbox", "parked", "extra"}} {
		if r = wxpush(t, ts.URL, "", args...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage)", args, r.code)
		}
	}
	if r = wxpush(t, ts.URL, "", "inbox", "-h"); r.code != 0 || !strings.Contains(r.stdout, "usage: wxpush inbox <command>") {
		t.Errorf("inbox -h: exit %d %q", r.code, r.stdout)
	}
}
