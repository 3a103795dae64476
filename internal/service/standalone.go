package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/wxpush/wxpush/internal/config"
	"github.com/wxpush/wxpush/internal/secret"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

// runStandalone runs everything in one process: miniredis (nothing persists), the
// API and callback, a worker and, unless WECHAT_API_BASE is set, the simulator.
func runStandalone(ctx context.Context, cfg config.Config, log *slog.Logger, stdout io.Writer) error {
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return fmt.Errorf("standalone: start embedded redis: %w", err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	apiLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on WXPUSH_HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	adminLn, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("listen on WXPUSH_ADMIN_ADDR %s: %w", cfg.AdminAddr, err)
	}
	apiURL := "http://" + apiLn.Addr().String()

	g, gctx := errgroup.WithContext(ctx)
	if len(cfg.Apps) == 0 {
		cfg.Apps = []config.App{{
			Name: config.DefaultApp, AppID: "wxsim" + randomHex(6),
			Secret: secret.Value(randomHex(16)), Token: secret.Value(randomHex(8)), ValidateTemplates: true,
		}}
	}
	simNote := "WeChat API: " + cfg.WeChatAPIBase
	if cfg.WeChatAPIBase == "" {
		sim, simURL, err := startSimulator(gctx, g, cfg, apiURL, log)
		if err != nil {
			apiLn.Close()
			adminLn.Close()
			return err
		}
		defer sim.Close()
		cfg.WeChatAPIBase = simURL
		simNote = "WeChat simulator: " + simURL
	}

	p := newParts(cfg, log, rdb)
	defer p.close()
	srv, err := p.apiServer()
	if err != nil {
		apiLn.Close()
		adminLn.Close()
		return err
	}
	context.AfterFunc(gctx, srv.CloseStreams)
	g.Go(func() error { return serveHTTP(gctx, apiLn, srv.Handler(), log) })
	g.Go(func() error { return serveHTTP(gctx, adminLn, p.adminHandler(), log) })
	g.Go(func() error { return p.runWorker(gctx) })

	fmt.Fprintf(stdout, `wxpush standalone: embedded Redis (in memory, nothing persists), API, callback and worker in one process.
  API:      %[1]s   (metrics: %[1]s/metrics)
  admin:    http://%[2]s/metrics
  %[3]s

Send the sample message:
  curl -s -X POST %[1]s/v1/messages -H 'Content-Type: application/json' -d '%[4]s'
Then follow it:
  curl -s %[1]s/v1/messages/<id>

`, apiURL, adminLn.Addr(), simNote, sampleMessage)
	log.Info("standalone started", "api", apiURL, "admin", adminLn.Addr().String())
	return g.Wait()
}

const sampleMessage = `{"touser":"OPENID","template_id":"` + wechatsim.SampleTemplateID + `","url":"http://weixin.qq.com/download","topcolor":"#FF0000","data":{"User":{"value":"黄先生","color":"#173177"},"Date":{"value":"06月07日 19时24分","color":"#173177"},"CardNumber":{"value":"0426","color":"#173177"},"Type":{"value":"消费","color":"#173177"},"Money":{"value":"人民币260.00元","color":"#173177"},"DeadTime":{"value":"06月07日19时24分","color":"#173177"},"Left":{"value":"6504.09","color":"#173177"}}}`

// startSimulator serves the WeChat simulator on a loopback port, pushing result
// callbacks to this process's callback path of each app.
func startSimulator(ctx context.Context, g *errgroup.Group, cfg config.Config, apiURL string, log *slog.Logger) (*wechatsim.Server, string, error) {
	simCfg := wechatsim.Config{CallbackDelay: 200 * time.Millisecond, Logger: log.With("component", "wechat-sim")}
	for _, a := range cfg.Apps {
		simCfg.Apps = append(simCfg.Apps, wechatsim.App{
			AppID: a.AppID, Secret: a.Secret.Reveal(), Token: a.Token.Reveal(),
			// With an AES key the receiver takes only sealed callbacks.
			AESKey:      a.AESKey.Reveal(),
			CallbackURL: apiURL + "/wechat/callback/" + a.Name,
		})
		simCfg.Templates = append(simCfg.Templates, wechatsim.SampleTemplate(a.AppID))
	}
	sim, err := wechatsim.New(simCfg)
	if err != nil {
		return nil, "", fmt.Errorf("standalone: simulator: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		sim.Close()
		return nil, "", fmt.Errorf("standalone: simulator listen: %w", err)
	}
	g.Go(func() error { return serveHTTP(ctx, ln, http.Handler(sim), log) })
	return sim, "http://" + ln.Addr().String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
