package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

const (
	defaultAddr          = "127.0.0.1:8081"
	defaultAppID         = "wxsim0000000001"
	defaultSecret        = "wxsim-secret"
	defaultToken         = "wxsim-token"
	defaultCallbackDelay = 200 * time.Millisecond
	shutdownTimeout      = 10 * time.Second
)

const usage = `usage: wechat-sim

Serves a WeChat Official Account API simulator. Configuration is by environment:

  WXSIM_ADDR            listen address (default 127.0.0.1:8081; port 0 picks one)
  WXSIM_APP_ID          the simulated account's appid (default wxsim0000000001)
  WXSIM_APP_SECRET      its secret (default wxsim-secret)
  WXSIM_TOKEN           the callback token that signs pushed events (default wxsim-token)
  WXSIM_CALLBACK_URL    where result events go (default none; POST /sim/callback_url sets it later)
  WXSIM_CALLBACK_DELAY  wait before each result event, a Go duration (default 200ms)
  WXSIM_RULES           outcome rules, e.g. "block_*=user_block, busy_1=system_busy:3"
  WXSIM_LATENCY         added to every API reply, a Go duration (default 0)
`

// config is what the environment selects.
type config struct {
	addr string
	sim  wechatsim.Config
}

func loadConfig(getenv func(string) string) (config, error) {
	app := wechatsim.App{
		AppID:       envOr(getenv, "WXSIM_APP_ID", defaultAppID),
		Secret:      envOr(getenv, "WXSIM_APP_SECRET", defaultSecret),
		Token:       envOr(getenv, "WXSIM_TOKEN", defaultToken),
		CallbackURL: getenv("WXSIM_CALLBACK_URL"),
	}
	cfg := config{addr: envOr(getenv, "WXSIM_ADDR", defaultAddr)}
	cfg.sim.Apps = []wechatsim.App{app}
	var err error
	if cfg.sim.CallbackDelay, err = envDuration(getenv, "WXSIM_CALLBACK_DELAY", defaultCallbackDelay); err != nil {
		return config{}, err
	}
	if cfg.sim.Latency, err = envDuration(getenv, "WXSIM_LATENCY", 0); err != nil {
		return config{}, err
	}
	if cfg.sim.Rules, err = wechatsim.ParseRules(getenv("WXSIM_RULES")); err != nil {
		return config{}, fmt.Errorf("WXSIM_RULES: %w", err)
	}
	// The seed's sample message works out of the box, with template checks on.
	for _, a := range cfg.sim.Apps {
		cfg.sim.Templates = append(cfg.sim.Templates, wechatsim.SampleTemplate(a.AppID))
	}
	return cfg, nil
}

func envOr(getenv func(string) string, key, fallback string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return fallback
}

func envDuration(getenv func(string) string, key string, fallback time.Duration) (time.Duration, error) {
	v := getenv(key)
	if v == "" {
		return fallback, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a Go duration", key, v)
	}
	return d, nil
}

// run serves the simulator until ctx ends, then shuts down gracefully.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("wechat-sim", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() { fmt.Fprint(stdout, usage) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: configuration is by environment (see -h)", fs.Args())
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stdout, nil))
	cfg.sim.Logger = log
	sim, err := wechatsim.New(cfg.sim)
	if err != nil {
		return err
	}
	defer sim.Close()

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("WXSIM_ADDR: %w", err)
	}
	srv := &http.Server{
		Handler:           sim,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		// Room for the configured latency on top of an ordinary reply.
		WriteTimeout: 30*time.Second + cfg.sim.Latency,
		IdleTimeout:  2 * time.Minute,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	fmt.Fprintf(stdout, "wechat-sim listening on http://%s (appid %s)\n", ln.Addr(), cfg.sim.Apps[0].AppID)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// Closing the simulator first ends hanging replies and callback pushes,
	// which Shutdown would otherwise wait on.
	sim.Close()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	<-served
	return nil
}
