package service_test

import (
	"context"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/service"
	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

// TestManyApps: apps from a WXPUSH_CONFIG file each have their own credentials,
// token, callback path and token; a message names its app.
func TestManyApps(t *testing.T) {
	t.Parallel()
	redis := redistest.Start(t)
	apiAddr := servicetest.FreeAddr(t)
	api := "http://" + apiAddr
	sim, err := wechatsim.New(wechatsim.Config{
		Apps: []wechatsim.App{
			{AppID: "wxshop0000000001", Secret: "shop-secret", Token: "shopToken1", CallbackURL: api + "/wechat/callback/shop"},
			{AppID: "wxnews0000000002", Secret: "news-secret", Token: "newsToken2", CallbackURL: api + "/wechat/callback/news",
				AESKey: "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	simSrv := httptest.NewServer(sim)
	t.Cleanup(func() { simSrv.Close(); sim.Close() })
	cfg := filepath.Join(t.TempDir(), "wxpush.yaml")
	yaml := `apps:
  - name: shop
    appid: wxshop0000000001
    secret: shop-secret
    token: shopToken1
    validate_templates: false
  - name: news
    appid: wxnews0000000002
    secret_env: NEWS_SECRET
    token: newsToken2
    aes_key: abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
    validate_templates: false
tuning:
  retry_base: 100ms
`
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"REDIS_URL": redis.URL(), "WECHAT_API_BASE": simSrv.URL, "WXPUSH_CONFIG": cfg,
		"NEWS_SECRET": "news-secret", "WXPUSH_HTTP_ADDR": apiAddr, "WXPUSH_ADMIN_ADDR": servicetest.FreeAddr(t)}
	servicetest.Run(t, "enqueuer", service.RunEnqueuer, env)
	servicetest.Run(t, "worker", service.RunWorker, env)
	servicetest.WaitHTTP(t, api+"/healthz")

	ids := map[string]string{}
	for _, app := range []string{"shop", "news", "shop"} {
		body := `{"app":"` + app + `","touser":"u_` + app + `","template_id":"T1","data":{"k":{"value":"v"}}}`
		ids[servicetest.PostMessage(t, api, body)] = app
	}
	for id, app := range ids {
		if m := servicetest.WaitFinal(t, api, id, 20*time.Second); m.State != "delivered" {
			t.Errorf("%s message %s = %+v, want delivered", app, id, m)
		}
	}
	st := sim.Stats()
	if st.TokenFetches["wxshop0000000001"] != 1 || st.TokenFetches["wxnews0000000002"] != 1 {
		t.Errorf("token fetches = %v, want one per app", st.TokenFetches)
	}
	code, body := servicetest.Do(t, "POST", api+"/v1/messages", `{"app":"default","touser":"u","template_id":"T1","data":{"k":{"value":"v"}}}`)
	if code != 400 || !strings.Contains(body, `"field":"app"`) {
		t.Errorf("message for an unconfigured app = %d %s, want 400 naming app", code, body)
	}
}

// TestBadConfigFileRefusesToStart: an invalid app in WXPUSH_CONFIG stops the
// process with the field named, before it touches Redis.
func TestBadConfigFileRefusesToStart(t *testing.T) {
	t.Parallel()
	cfg := filepath.Join(t.TempDir(), "wxpush.yaml")
	os.WriteFile(cfg, []byte("apps:\n  - name: shop\n    appid: wx1\n    secret: s\n    token: tok123\n    aes_key: tooshort\n"), 0o600)
	for name, run := range map[string]func(context.Context, service.Env, io.Writer, io.Writer) error{
		"enqueuer": service.RunEnqueuer, "worker": service.RunWorker,
	} {
		err := run(context.Background(), func(k string) string {
			return map[string]string{"WXPUSH_CONFIG": cfg, "REDIS_URL": "redis://127.0.0.1:1/0"}[k]
		}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "apps[0].aes_key") || strings.Contains(err.Error(), "tooshort") {
			t.Errorf("%s with a bad config = %v, want an error naming apps[0].aes_key without the key", name, err)
		}
	}
}
