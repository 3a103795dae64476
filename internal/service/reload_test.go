package service_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/service"
	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

const reloadApp = `  - name: %s
    appid: %s
    secret: %s-secret
    token: %sToken1
    validate_templates: false
`

// TestConfigReload: SIGHUP adds and removes apps without a restart, in the
// enqueuer (API and callback path) and in the worker (credentials).
func TestConfigReload(t *testing.T) {
	redis := redistest.Start(t)
	apiAddr := servicetest.FreeAddr(t)
	api := "http://" + apiAddr
	sim, err := wechatsim.New(wechatsim.Config{Apps: []wechatsim.App{
		{AppID: "wxshop0000000001", Secret: "shop-secret", Token: "shopToken1", CallbackURL: api + "/wechat/callback/shop"},
		{AppID: "wxnews0000000002", Secret: "news-secret", Token: "newsToken1", CallbackURL: api + "/wechat/callback/news"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	simSrv := httptest.NewServer(sim)
	t.Cleanup(func() { simSrv.Close(); sim.Close() })
	cfg := filepath.Join(t.TempDir(), "wxpush.yaml")
	write := func(apps ...string) {
		y := "apps:\n"
		for _, a := range apps {
			id := map[string]string{"shop": "wxshop0000000001", "news": "wxnews0000000002"}[a]
			y += strings.NewReplacer("%s-secret", a+"-secret", "%sToken1", a+"Token1").Replace(
				strings.Replace(strings.Replace(reloadApp, "%s", a, 1), "%s", id, 1))
		}
		if err := os.WriteFile(cfg, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("shop")
	env := map[string]string{"REDIS_URL": redis.URL(), "WECHAT_API_BASE": simSrv.URL, "WXPUSH_CONFIG": cfg,
		"WXPUSH_HTTP_ADDR": apiAddr, "WXPUSH_ADMIN_ADDR": servicetest.FreeAddr(t)}
	enqueuerLogs := servicetest.Run(t, "enqueuer", service.RunEnqueuer, env)
	servicetest.Run(t, "worker", service.RunWorker, env)
	servicetest.WaitHTTP(t, api+"/healthz")

	news := `{"app":"news","touser":"reader","template_id":"T1","data":{"k":{"value":"v"}}}`
	if code, _ := servicetest.Do(t, http.MethodPost, api+"/v1/messages", news); code != http.StatusBadRequest {
		t.Fatalf("message for an unknown app = %d, want 400", code)
	}
	// Hold SIGHUP ourselves too, so that it can never take the default action
	// (exit) in this test binary.
	hold := make(chan os.Signal, 1)
	signal.Notify(hold, syscall.SIGHUP)
	defer signal.Stop(hold)
	write("shop", "news")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	var id string
	for {
		code, body := servicetest.Do(t, http.MethodPost, api+"/v1/messages", news)
		if code == http.StatusAccepted {
			id = body[strings.Index(body, `"id":"`)+6:]
			id = id[:strings.Index(id, `"`)]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("app news still refused after SIGHUP: %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if m := servicetest.WaitFinal(t, api, id, 20*time.Second); m.State != "delivered" {
		t.Errorf("message of the added app = %+v, want delivered (worker credentials and callback token reloaded)", m)
	}

	write("news")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	shop := `{"app":"shop","touser":"buyer","template_id":"T1","data":{"k":{"value":"v"}}}`
	for {
		if code, _ := servicetest.Do(t, http.MethodPost, api+"/v1/messages", shop); code == http.StatusBadRequest {
			break
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("removed app shop still accepted after SIGHUP")
		}
		time.Sleep(20 * time.Millisecond)
	}

	os.WriteFile(cfg, []byte("apps:\n  - name: Bad Name\n"), 0o600)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	for !strings.Contains(enqueuerLogs(), "configuration reload refused") {
		if time.Now().After(deadline.Add(20 * time.Second)) {
			t.Fatal("the invalid configuration was not reported")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _ := servicetest.Do(t, http.MethodPost, api+"/v1/messages", news); code != http.StatusAccepted {
		t.Errorf("after an invalid reload the running apps changed: news = %d", code)
	}
}
