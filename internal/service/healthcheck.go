package service

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/wxpush/wxpush/internal/config"
)

// healthCheckTimeout bounds one health check: a container runtime runs it every
// few seconds, and a server that cannot answer /healthz this fast is not healthy.
const healthCheckTimeout = 2 * time.Second

// HealthCheckFlag is the argument that makes enqueuer and worker probe their own
// /healthz instead of serving. It exists because the container image has no shell
// or curl: the Dockerfile's HEALTHCHECK and Compose run the binary itself.
const HealthCheckFlag = "-healthcheck"

// Process is a wxpush server binary, which decides the address HealthCheckMain probes.
type Process int

const (
	// Enqueuer listens on WXPUSH_HTTP_ADDR.
	Enqueuer Process = iota
	// Worker listens on WXPUSH_ADMIN_ADDR.
	Worker
)

func (p Process) String() string {
	if p == Worker {
		return "worker"
	}
	return "enqueuer"
}

// HealthCheck GETs url and returns nil if it answers 200 OK within two seconds.
func HealthCheck(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, healthCheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	// No proxy (an HTTP_PROXY in the container's environment must not see a
	// loopback probe) and no idle connection left behind by a one-shot process.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: GET %s: %s", url, resp.Status)
	}
	return nil
}

// HealthCheckMain is what `enqueuer -healthcheck` and `worker -healthcheck` run: it
// probes the process's own /healthz on the address its configuration gives
// (environment over WXPUSH_CONFIG over the default) and returns the exit code, 0
// when healthy, else 1 after one line on stderr saying why.
func HealthCheckMain(ctx context.Context, p Process, getenv Env, stderr io.Writer) int {
	url, err := healthURL(p, getenv)
	if err == nil {
		err = HealthCheck(ctx, url)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", p, err)
		return 1
	}
	return 0
}

// healthURL is the /healthz URL of process p as configured.
func healthURL(p Process, getenv Env) (string, error) {
	// Only the listen address matters here. A configuration that fails validation
	// still yields it (Load returns every field it could read), and a process with
	// such a configuration has exited, so the probe fails anyway, by being refused.
	cfg, _ := config.Load(getenv)
	key, addr := "WXPUSH_HTTP_ADDR", cfg.HTTPAddr
	if p == Worker {
		key, addr = "WXPUSH_ADMIN_ADDR", cfg.AdminAddr
	}
	target, err := dialAddr(addr)
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	return "http://" + target + "/healthz", nil
}

// dialAddr turns a listen address into one to connect to: a wildcard host
// (":8080", "0.0.0.0:8080", "[::]:8080") is reached on loopback.
func dialAddr(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", err
	}
	if port == "" || port == "0" {
		return "", fmt.Errorf("%q has no fixed port to probe", listen)
	}
	switch ip := net.ParseIP(host); {
	case host == "" || (ip != nil && ip.Equal(net.IPv4zero)):
		host = "127.0.0.1"
	case ip != nil && ip.Equal(net.IPv6unspecified):
		host = "::1"
	}
	return net.JoinHostPort(host, port), nil
}
