package k8s

// The Compose file and the Dockerfile sit one directory up; they are checked here
// too, beside the manifests, so that one `go test ./deploy/...` covers every
// deployment file this machine cannot run (it has no Docker engine).

import (
	"bytes"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/wxpush/wxpush/internal/config"
)

// composeFile is the part of the Compose specification docker-compose.yml uses.
// Decoding is strict (KnownFields): a misspelt key fails; add a field here when
// the file starts using it.
type composeFile struct {
	Name               string `yaml:"name"`
	XWxpushImage       any    `yaml:"x-wxpush-image"`
	XWxpushEnv         any    `yaml:"x-wxpush-env"`
	XWxpushHealthcheck any    `yaml:"x-wxpush-healthcheck"`
	Configs            map[string]struct {
		Content string `yaml:"content"`
		File    string `yaml:"file"`
	} `yaml:"configs"`
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Configs     []struct {
		Source string `yaml:"source"`
		Target string `yaml:"target"`
	} `yaml:"configs"`
	Volumes     []string  `yaml:"volumes"`
	Ports       []string  `yaml:"ports"`
	DependsOn   yaml.Node `yaml:"depends_on"`
	Healthcheck *struct {
		Test        []string `yaml:"test"`
		Interval    string   `yaml:"interval"`
		Timeout     string   `yaml:"timeout"`
		StartPeriod string   `yaml:"start_period"`
		Retries     int      `yaml:"retries"`
		Disable     bool     `yaml:"disable"`
	} `yaml:"healthcheck"`
	Deploy *struct {
		Replicas int `yaml:"replicas"`
	} `yaml:"deploy"`
	Restart         string   `yaml:"restart"`
	ReadOnly        bool     `yaml:"read_only"`
	SecurityOpt     []string `yaml:"security_opt"`
	CapDrop         []string `yaml:"cap_drop"`
	StopGracePeriod string   `yaml:"stop_grace_period"`
}

// dependsOn lists the services s depends on, from either Compose form.
func (s composeService) dependsOn() []string {
	var out []string
	switch s.DependsOn.Kind {
	case yaml.SequenceNode:
		for _, n := range s.DependsOn.Content {
			out = append(out, n.Value)
		}
	case yaml.MappingNode:
		for i := 0; i < len(s.DependsOn.Content); i += 2 {
			out = append(out, s.DependsOn.Content[i].Value)
		}
	}
	return out
}

const deployDir = ".."

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(deployDir, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return cf
}

// simEnvNames are the variables wechat-sim reads, from its source.
func simEnvNames(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "..", "cmd", "wechat-sim", "run.go"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`"(WXSIM_[A-Z_]+)"`).FindAllSubmatch(src, -1) {
		names[string(m[1])] = true
	}
	if !names["WXSIM_CALLBACK_URL"] {
		t.Fatal("no WXSIM_CALLBACK_URL in cmd/wechat-sim/run.go: has the simulator's configuration moved?")
	}
	return names
}

func TestCompose(t *testing.T) {
	cf := loadCompose(t)
	wxNames := wxpushEnvNames(t)
	simNames := simEnvNames(t)
	svc := func(name string) composeService {
		t.Helper()
		s, ok := cf.Services[name]
		if !ok {
			t.Fatalf("no service %q", name)
		}
		return s
	}
	for _, name := range []string{"redis", "wechat-sim", "enqueuer", "worker", "prometheus", "grafana"} {
		svc(name)
	}
	for name, s := range cf.Services {
		for _, dep := range s.dependsOn() {
			if _, ok := cf.Services[dep]; !ok {
				t.Errorf("%s depends on %q, which is not a service", name, dep)
			}
		}
		if s.Build != nil {
			if _, err := os.Stat(filepath.Join(deployDir, s.Build.Context, s.Build.Dockerfile)); err != nil {
				t.Errorf("%s: build: %v", name, err)
			}
			if s.Image == "" {
				t.Errorf("%s: build without image: name the image so the services share it", name)
			}
		}
		// Bind mounts (relative sources) must point at files in the repository.
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join(deployDir, src)); err != nil {
					t.Errorf("%s: volume %s: %v", name, v, err)
				}
			} else if _, ok := cf.Volumes[src]; !ok {
				t.Errorf("%s: volume %s: %q is not a declared volume", name, v, src)
			}
		}
	}

	redis := svc("redis")
	cmd := strings.Join(redis.Command, " ")
	if !strings.HasPrefix(redis.Image, "redis:7") || !strings.Contains(cmd, "--appendonly yes") || !strings.Contains(cmd, "--maxmemory-policy noeviction") {
		t.Errorf("redis: image %q command %q, want redis:7 with --appendonly yes --maxmemory-policy noeviction", redis.Image, cmd)
	}
	if !slices.ContainsFunc(redis.Volumes, func(v string) bool { return strings.HasSuffix(v, ":/data") }) {
		t.Errorf("redis: no volume on /data: the AOF would not outlive the container")
	}

	listens := map[string]string{} // binary → port it listens on
	for _, name := range []string{"enqueuer", "worker"} {
		t.Run(name, func(t *testing.T) {
			s := svc(name)
			if !slices.Equal(s.Command, []string{name}) {
				t.Errorf("command %q, want [%s]", s.Command, name)
			}
			env := s.Environment
			for k := range env {
				if !wxNames[k] {
					t.Errorf("environment variable %s is not one wxpush reads", k)
				}
			}
			if _, err := config.Load(containerEnv(t, cf, s)); err != nil {
				t.Errorf("wxpush rejects this configuration: %v", err)
			}
			addrVar := processes[name].addrVar
			host, port, err := net.SplitHostPort(env[addrVar])
			if err != nil || host != "0.0.0.0" {
				t.Errorf("%s = %q, want 0.0.0.0:<port>: the default is loopback only", addrVar, env[addrVar])
			}
			listens[name] = port
			checkServiceURL(t, "REDIS_URL", env["REDIS_URL"], "redis", cf)
			checkServiceURL(t, "WECHAT_API_BASE", env["WECHAT_API_BASE"], "wechat-sim", cf)
			if !slices.Contains(s.dependsOn(), "redis") {
				t.Error("does not depend on redis")
			}
			want := []string{"CMD", "/usr/local/bin/" + name, "-healthcheck"}
			if s.Healthcheck == nil || !slices.Equal(s.Healthcheck.Test, want) {
				t.Errorf("healthcheck %+v, want test %q", s.Healthcheck, want)
			}
		})
	}
	if w := svc("worker"); w.Deploy == nil || w.Deploy.Replicas < 2 {
		t.Error("worker: want deploy.replicas ≥ 2")
	}

	sim := svc("wechat-sim")
	app := svc("enqueuer").Environment
	for k := range sim.Environment {
		if !simNames[k] {
			t.Errorf("wechat-sim: environment variable %s is not one wechat-sim reads", k)
		}
	}
	for simVar, appVar := range map[string]string{"WXSIM_APP_ID": "WECHAT_APP_ID", "WXSIM_APP_SECRET": "WECHAT_APP_SECRET", "WXSIM_TOKEN": "WECHAT_TOKEN"} {
		if sim.Environment[simVar] == "" || sim.Environment[simVar] != app[appVar] {
			t.Errorf("wechat-sim %s = %q, but the app's %s = %q", simVar, sim.Environment[simVar], appVar, app[appVar])
		}
	}
	if want := "http://enqueuer:" + listens["enqueuer"] + "/wechat/callback/default"; sim.Environment["WXSIM_CALLBACK_URL"] != want {
		t.Errorf("wechat-sim WXSIM_CALLBACK_URL = %q, want %q", sim.Environment["WXSIM_CALLBACK_URL"], want)
	}
	if _, port, _ := net.SplitHostPort(sim.Environment["WXSIM_ADDR"]); port == "" || !strings.HasSuffix(app["WECHAT_API_BASE"], ":"+port) {
		t.Errorf("wechat-sim listens on %q but WECHAT_API_BASE is %q", sim.Environment["WXSIM_ADDR"], app["WECHAT_API_BASE"])
	}
	// The image's HEALTHCHECK is the worker's: any other binary must set or disable its own.
	if sim.Healthcheck == nil || (!sim.Healthcheck.Disable && len(sim.Healthcheck.Test) == 0) {
		t.Error("wechat-sim: set or disable the healthcheck (the image's default checks the worker)")
	}

	prom := svc("prometheus")
	for _, f := range []string{"./prometheus/prometheus.yml:", "./prometheus/alerts.yml:"} {
		if !slices.ContainsFunc(prom.Volumes, func(v string) bool { return strings.HasPrefix(v, f) }) {
			t.Errorf("prometheus: %s is not mounted", strings.TrimSuffix(f, ":"))
		}
	}
	graf := svc("grafana")
	mounts := map[string]string{} // source → target
	for _, v := range graf.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 {
			mounts[parts[0]] = parts[1]
		}
	}
	if mounts["./grafana/provisioning"] != "/etc/grafana/provisioning" {
		t.Errorf("grafana: ./grafana/provisioning mounted on %q, want /etc/grafana/provisioning", mounts["./grafana/provisioning"])
	}
	// The dashboard must land where the provisioned provider looks for it.
	dashboard := mounts["./grafana/wxpush.json"]
	var providerPaths []string
	files, _ := filepath.Glob(filepath.Join(deployDir, "grafana", "provisioning", "dashboards", "*.y*ml"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var prov struct {
			Providers []struct {
				Options struct {
					Path string `yaml:"path"`
				} `yaml:"options"`
			} `yaml:"providers"`
		}
		if err := yaml.Unmarshal(data, &prov); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		for _, p := range prov.Providers {
			providerPaths = append(providerPaths, p.Options.Path)
		}
	}
	if dashboard == "" || !slices.ContainsFunc(providerPaths, func(p string) bool { return strings.HasPrefix(dashboard, strings.TrimSuffix(p, "/")+"/") }) {
		t.Errorf("grafana: wxpush.json mounted on %q, outside every provisioned dashboard path %q", dashboard, providerPaths)
	}
}

// containerEnv is the service's environment as wxpush would read it, with paths
// of the Compose configs mounted into the container mapped to copies on disk.
func containerEnv(t *testing.T, cf composeFile, s composeService) func(string) string {
	t.Helper()
	files := map[string]string{} // target in the container → file here
	for _, c := range s.Configs {
		cfg, ok := cf.Configs[c.Source]
		if !ok {
			t.Errorf("config %q is not declared under configs", c.Source)
			continue
		}
		switch {
		case cfg.Content != "":
			f := filepath.Join(t.TempDir(), filepath.Base(c.Target))
			if err := os.WriteFile(f, []byte(cfg.Content), 0o600); err != nil {
				t.Fatal(err)
			}
			files[c.Target] = f
		case cfg.File != "":
			files[c.Target] = filepath.Join(deployDir, cfg.File)
		}
	}
	return func(k string) string {
		v := s.Environment[k]
		if f, ok := files[v]; ok {
			return f
		}
		return v
	}
}

// checkServiceURL checks that raw is a URL whose host is Compose service want.
func checkServiceURL(t *testing.T, name, raw, want string, cf composeFile) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.Hostname() != want {
		t.Errorf("%s = %q, want a URL on service %s", name, raw, want)
		return
	}
	if _, ok := cf.Services[u.Hostname()]; !ok {
		t.Errorf("%s = %q: no service %q", name, raw, u.Hostname())
	}
}

// TestDockerfile checks what the other deployment files assume of the image:
// static binaries of every command they run in /usr/local/bin, a numeric non-root
// user (Kubernetes' runAsNonRoot checks it), health checks by the binaries' flag.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(deployDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, drop comments.
	var lines []string
	var cur strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		lines = append(lines, cur.String())
		cur.Reset()
	}
	has := func(re string) bool {
		t.Helper()
		r := regexp.MustCompile(re)
		return slices.ContainsFunc(lines, r.MatchString)
	}
	for _, c := range []struct{ re, what string }{
		{`^FROM .*golang:\$\{GO_VERSION\}|^FROM .*golang:1\.26`, "a golang:1.26 build stage"},
		{`^RUN .*CGO_ENABLED=0 .*go build -trimpath -ldflags="-s -w"`, "a static, trimmed build"},
		{`^FROM gcr\.io/distroless/static-debian12:nonroot AS runtime$`, "a distroless runtime stage"},
		{`^COPY --from=build /out/ /usr/local/bin/$`, "binaries copied to /usr/local/bin"},
		{`^USER [1-9][0-9]*:[1-9][0-9]*$`, "a numeric non-root USER"},
		{`^HEALTHCHECK .*CMD \["/usr/local/bin/enqueuer", "-healthcheck"\]$`, "the enqueuer's HEALTHCHECK"},
		{`^HEALTHCHECK .*CMD \["/usr/local/bin/worker", "-healthcheck"\]$`, "the worker's HEALTHCHECK"},
	} {
		if !has(c.re) {
			t.Errorf("Dockerfile: missing %s (/%s/)", c.what, c.re)
		}
	}
	// The last stage is the default image: the worker.
	var lastFrom, lastCmd string
	for _, l := range lines {
		if strings.HasPrefix(l, "FROM ") {
			lastFrom, lastCmd = l, ""
		}
		if strings.HasPrefix(l, "CMD ") {
			lastCmd = l
		}
	}
	if lastFrom != "FROM runtime AS worker" || lastCmd != `CMD ["worker"]` {
		t.Errorf("last stage %q with %q, want the worker as the default target", lastFrom, lastCmd)
	}
	// Every binary the manifests and Compose run is built.
	build := lines[slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "go build") })]
	for _, bin := range []string{"enqueuer", "worker", "wechat-sim"} {
		if !strings.Contains(build, "./cmd/"+bin) {
			t.Errorf("Dockerfile: go build does not build ./cmd/%s", bin)
		}
		if _, err := os.Stat(filepath.Join("..", "..", "cmd", bin)); err != nil {
			t.Errorf("cmd/%s: %v", bin, err)
		}
	}
	// The build stage copies every directory of the module the binaries import.
	out, err := exec.Command("go", "list", "-deps", "-f",
		`{{if .Module}}{{if eq .Module.Path "github.com/wxpush/wxpush"}}{{.ImportPath}}{{end}}{{end}}`,
		"github.com/wxpush/wxpush/cmd/enqueuer", "github.com/wxpush/wxpush/cmd/worker", "github.com/wxpush/wxpush/cmd/wechat-sim").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		dir, _, _ := strings.Cut(strings.TrimPrefix(pkg, "github.com/wxpush/wxpush/"), "/")
		if !has(`^COPY ` + dir + `/ ` + dir + `/$`) {
			t.Errorf("Dockerfile: the binaries import %s, but %s/ is not copied into the build stage", pkg, dir)
		}
	}
}
