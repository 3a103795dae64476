package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sync/errgroup"

	"github.com/wxpush/wxpush/internal/redisconn"
)

// Env is how a process reads its environment (os.Getenv, or a map in tests).
type Env func(string) string

// RunEnqueuer runs the enqueuer until ctx is done: the producer API, the WeChat
// callback receiver, /metrics and health on WXPUSH_HTTP_ADDR.
func RunEnqueuer(ctx context.Context, getenv Env, stdout, stderr io.Writer) error {
	cfg, log, err := loadConfig(getenv, stderr)
	if err != nil {
		return err
	}
	if cfg.RedisURL == "" {
		return errors.New("REDIS_URL is required for the enqueuer; for an all-in-one process run the worker without REDIS_URL (standalone mode)")
	}
	if len(cfg.Apps) == 0 {
		return errors.New("no app configured: set WECHAT_APP_ID, WECHAT_APP_SECRET and WECHAT_TOKEN")
	}
	rdb, err := redisconn.Open(cfg.RedisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	p := newParts(cfg, log, rdb)
	defer p.close()
	// The enqueuer starts without Redis (it answers 503 until Redis is back), so
	// Redis is checked only when it answers now.
	if err := redisconn.Ping(ctx, rdb); err != nil {
		log.Warn("redis configuration check skipped: redis unreachable at startup", "err", err)
	} else if err := redisconn.StartupCheck(ctx, rdb, log); err != nil {
		return fmt.Errorf("REDIS_URL: %w", err)
	} else if err := p.store.CheckLayout(ctx); err != nil {
		return err
	}
	p.loadScripts(ctx)
	srv, err := p.apiServer()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on WXPUSH_HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	fmt.Fprintf(stdout, "wxpush enqueuer listening on http://%s\n", ln.Addr())
	log.Info("enqueuer started", "addr", ln.Addr().String(), "apps", cfg.AppNames())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { p.watchReload(gctx, getenv, srv); return nil })
	context.AfterFunc(gctx, srv.CloseStreams)
	g.Go(func() error { return serveHTTP(gctx, ln, srv.Handler(), log) })
	return g.Wait()
}

// RunWorker runs a worker until ctx is done. Without REDIS_URL it runs standalone
// mode instead: embedded Redis, the enqueuer's API and, unless WECHAT_API_BASE is
// set, the WeChat simulator, all in this process.
func RunWorker(ctx context.Context, getenv Env, stdout, stderr io.Writer) error {
	cfg, log, err := loadConfig(getenv, stderr)
	if err != nil {
		return err
	}
	if cfg.RedisURL == "" {
		return runStandalone(ctx, cfg, log, stdout)
	}
	if len(cfg.Apps) == 0 {
		return errors.New("no app configured: set WECHAT_APP_ID, WECHAT_APP_SECRET and WECHAT_TOKEN")
	}
	rdb, err := redisconn.Open(cfg.RedisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if err := redisconn.Ping(ctx, rdb); err != nil {
		return fmt.Errorf("REDIS_URL: %w", err)
	}
	if err := redisconn.StartupCheck(ctx, rdb, log); err != nil {
		return fmt.Errorf("REDIS_URL: %w", err)
	}
	p := newParts(cfg, log, rdb)
	defer p.close()
	if err := p.store.CheckLayout(ctx); err != nil {
		return err
	}
	p.loadScripts(ctx)
	admin, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("listen on WXPUSH_ADMIN_ADDR %s: %w", cfg.AdminAddr, err)
	}
	fmt.Fprintf(stdout, "wxpush worker running; metrics on http://%s/metrics\n", admin.Addr())
	log.Info("worker started", "admin_addr", admin.Addr().String(), "apps", cfg.AppNames(), "concurrency", cfg.Concurrency)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveHTTP(gctx, admin, p.adminHandler(), log) })
	g.Go(func() error { return p.runWorker(gctx) })
	g.Go(func() error { p.watchReload(gctx, getenv, nil); return nil })
	return g.Wait()
}
