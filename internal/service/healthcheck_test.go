package service

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wxpush/wxpush/internal/config"
	"github.com/wxpush/wxpush/internal/testport"
)

func TestHealthCheck(t *testing.T) {
	t.Parallel()
	serve := func(status int) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/healthz" {
				http.NotFound(w, r)
				return
			}
			w.WriteHeader(status)
		}))
		t.Cleanup(srv.Close)
		return srv.URL + "/healthz"
	}
	tests := []struct {
		name    string
		url     string
		wantErr string
	}{
		{name: "healthy", url: serve(http.StatusOK)},
		{name: "unavailable", url: serve(http.StatusServiceUnavailable), wantErr: "503 Service Unavailable"},
		{name: "refused", url: "http://" + closedAddr(t) + "/healthz", wantErr: "refused"},
		{name: "bad url", url: "http://[::1", wantErr: "healthcheck:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := HealthCheck(context.Background(), tt.url)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("HealthCheck(%s) = %v, want nil", tt.url, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("HealthCheck(%s) = %v, want an error containing %q", tt.url, err, tt.wantErr)
			}
		})
	}
}

func TestHealthCheckHonoursContext(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := HealthCheck(ctx, srv.URL+"/healthz"); err == nil {
		t.Fatal("HealthCheck with a canceled context = nil, want an error")
	}
}

func TestHealthCheckDialAddr(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, listen, want, wantErr string
	}{
		{name: "ipv4 wildcard", listen: "0.0.0.0:8080", want: "127.0.0.1:8080"},
		{name: "empty host", listen: ":9090", want: "127.0.0.1:9090"},
		{name: "ipv6 wildcard", listen: "[::]:9090", want: "[::1]:9090"},
		{name: "loopback kept", listen: "127.0.0.1:8080", want: "127.0.0.1:8080"},
		{name: "ipv6 loopback kept", listen: "[::1]:8080", want: "[::1]:8080"},
		{name: "pod address kept", listen: "10.1.2.3:9090", want: "10.1.2.3:9090"},
		{name: "hostname kept", listen: "localhost:8080", want: "localhost:8080"},
		{name: "no port", listen: "0.0.0.0", wantErr: "missing port"},
		{name: "port zero", listen: "127.0.0.1:0", wantErr: "no fixed port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := dialAddr(tt.listen)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("dialAddr(%q) = %q, %v; want an error containing %q", tt.listen, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("dialAddr(%q) = %q, %v; want %q", tt.listen, got, err, tt.want)
			}
		})
	}
}

func TestHealthCheckMain(t *testing.T) {
	t.Parallel()
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(healthy.Close)
	up := healthy.Listener.Addr().(*net.TCPAddr)
	wildcardUp := ":" + strings.TrimPrefix(up.String(), "127.0.0.1:") // as a container sets it
	down := closedAddr(t)

	tests := []struct {
		name       string
		process    Process
		env        map[string]string
		wantCode   int
		wantStderr string
	}{
		{name: "enqueuer healthy", process: Enqueuer, env: map[string]string{"WXPUSH_HTTP_ADDR": up.String(), "WXPUSH_ADMIN_ADDR": down}},
		{name: "worker healthy", process: Worker, env: map[string]string{"WXPUSH_HTTP_ADDR": down, "WXPUSH_ADMIN_ADDR": up.String()}},
		{name: "wildcard address probed on loopback", process: Worker, env: map[string]string{"WXPUSH_ADMIN_ADDR": wildcardUp}},
		{name: "enqueuer down", process: Enqueuer, env: map[string]string{"WXPUSH_HTTP_ADDR": down, "WXPUSH_ADMIN_ADDR": up.String()},
			wantCode: 1, wantStderr: "enqueuer: healthcheck:"},
		{name: "worker down", process: Worker, env: map[string]string{"WXPUSH_HTTP_ADDR": up.String(), "WXPUSH_ADMIN_ADDR": down},
			wantCode: 1, wantStderr: "worker: healthcheck:"},
		{name: "address without port", process: Worker, env: map[string]string{"WXPUSH_ADMIN_ADDR": "0.0.0.0"},
			wantCode: 1, wantStderr: "worker: WXPUSH_ADMIN_ADDR: address 0.0.0.0: missing port"},
		{name: "invalid configuration still probes", process: Enqueuer,
			env:      map[string]string{"WXPUSH_HTTP_ADDR": up.String(), "WXPUSH_CONCURRENCY": "many"},
			wantCode: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stderr bytes.Buffer
			code := HealthCheckMain(context.Background(), tt.process, func(k string) string { return tt.env[k] }, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit code %d, want %d (stderr %q)", code, tt.wantCode, stderr.String())
			}
			out := stderr.String()
			if tt.wantCode == 0 {
				if out != "" {
					t.Fatalf("stderr %q, want nothing", out)
				}
				return
			}
			if !strings.HasPrefix(out, tt.wantStderr) || strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
				t.Fatalf("stderr %q, want one line starting %q", out, tt.wantStderr)
			}
		})
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	return testport.Addr(t)
}

// TestPprofOnlyWhenEnabled: the profiler is on the admin listener only when
// WXPUSH_PPROF asks for it.
func TestPprofOnlyWhenEnabled(t *testing.T) {
	t.Parallel()
	for _, on := range []bool{false, true} {
		p := &parts{cfg: config.Config{Pprof: on}, reg: prometheus.NewRegistry()}
		rec := httptest.NewRecorder()
		p.adminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/pprof/", nil))
		want := http.StatusNotFound
		if on {
			want = http.StatusOK
		}
		if rec.Code != want || (on && !strings.Contains(rec.Body.String(), "goroutine")) {
			t.Errorf("pprof %v: GET /debug/pprof/ = %d, want %d with the profile index", on, rec.Code, want)
		}
	}
}
