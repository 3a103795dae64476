package service

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/wxpush/wxpush/internal/api"
	"github.com/wxpush/wxpush/internal/config"
)

// watchReload reloads the apps on SIGHUP until ctx ends. srv, when not nil, is
// the enqueuer's API, whose apps (callback tokens and keys) are replaced too.
func (p *parts) watchReload(ctx context.Context, getenv Env, srv *api.Server) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			p.reload(getenv, srv)
		}
	}
}

// reload reads the configuration again and swaps in its apps. Only apps change
// (added, removed, new secrets, tokens, keys, limits); an invalid configuration
// is refused and the running one kept. Per-app state lives in Redis, so an app's
// queued messages wait for it to come back if it was removed.
func (p *parts) reload(getenv Env, srv *api.Server) {
	cfg, err := config.Load(getenv)
	if err != nil {
		p.log.Error("configuration reload refused; the running configuration stays", "err", err)
		return
	}
	var apps []api.App
	if srv != nil {
		if apps, err = apiApps(&cfg); err != nil {
			p.log.Error("configuration reload refused; the running configuration stays", "err", err)
			return
		}
	}
	before := p.current().AppNames()
	p.apps.Store(&cfg)
	if srv != nil {
		srv.SetApps(apps)
	}
	after := cfg.AppNames()
	p.log.Info("configuration reloaded", "apps", len(after), "added", missing(after, before), "removed", missing(before, after))
	releaseParseMemory(len(cfg.Apps))
}

// missing lists the names of a that are not in b.
func missing(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, n := range b {
		in[n] = true
	}
	var out []string
	for _, n := range a {
		if !in[n] {
			out = append(out, n)
		}
	}
	return out
}

// manyApps is the app count from which a configuration file is large enough
// that its parse garbage is worth returning to the OS at once.
const manyApps = 100

// releaseParseMemory hands the memory a large configuration file took to parse
// back to the OS at once, rather than over the next minutes: with 10,000 apps
// the YAML tree is tens of MiB of garbage, which would otherwise stay in the
// process's resident set.
func releaseParseMemory(apps int) {
	if apps > manyApps {
		debug.FreeOSMemory()
	}
}
