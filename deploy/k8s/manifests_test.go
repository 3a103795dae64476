// Package k8s holds wxpush's Kubernetes manifests (a kustomize base and overlays)
// and the tests that keep them honest: every YAML document under this directory is
// decoded strictly into the Kubernetes API types, so a misspelt field fails here
// instead of being dropped by the API server, and the wiring between the objects
// and wxpush itself (selectors, ports, probes, environment names, configuration
// values) is checked. The package has no code; the API types are a test-only
// dependency.
package k8s

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/wxpush/wxpush/internal/config"
)

// kustomization is the part of kustomize's Kustomization these manifests use.
// Decoding is strict: a field outside it fails, and is added here once checked.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	Resources  []string `json:"resources,omitempty"`
	Components []string `json:"components,omitempty"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
	Patches []struct {
		Path   string `json:"path,omitempty"`
		Patch  string `json:"patch,omitempty"`
		Target *struct {
			Group   string `json:"group,omitempty"`
			Version string `json:"version,omitempty"`
			Kind    string `json:"kind,omitempty"`
			Name    string `json:"name,omitempty"`
		} `json:"target,omitempty"`
	} `json:"patches,omitempty"`
}

// scaledObject is the part of KEDA's ScaledObject (keda.sh/v1alpha1, a CRD whose Go
// types would pull in KEDA) that these manifests use.
type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion,omitempty"`
			Kind       string `json:"kind,omitempty"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		PollingInterval *int32 `json:"pollingInterval,omitempty"`
		CooldownPeriod  *int32 `json:"cooldownPeriod,omitempty"`
		MinReplicaCount *int32 `json:"minReplicaCount,omitempty"`
		MaxReplicaCount *int32 `json:"maxReplicaCount,omitempty"`
		Advanced        *struct {
			HorizontalPodAutoscalerConfig *struct {
				Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
			} `json:"horizontalPodAutoscalerConfig,omitempty"`
		} `json:"advanced,omitempty"`
		Triggers []struct {
			Type       string            `json:"type"`
			MetricType string            `json:"metricType,omitempty"`
			Metadata   map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

// prometheusTriggerKeys are the metadata keys of KEDA's prometheus scaler.
var prometheusTriggerKeys = []string{
	"serverAddress", "query", "threshold", "activationThreshold", "namespace",
	"customHeaders", "ignoreNullValues", "unsafeSsl", "queryParameters", "authModes",
}

// doc is one decoded YAML document.
type doc struct {
	file string // relative to this directory
	idx  int    // position in its file
	kind string // apiVersion + "/" + kind
	obj  any
	// patch: the file is a kustomize patch (partial object, may hold $patch).
	patch bool
}

func (d doc) String() string { return fmt.Sprintf("%s#%d (%s)", d.file, d.idx, d.kind) }

// newObject returns the Go type a document of this apiVersion and kind decodes into.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "v1/Namespace":
		return &corev1.Namespace{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "autoscaling/v2/HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, true
	case "keda.sh/v1alpha1/ScaledObject":
		return &scaledObject{}, true
	}
	return nil, false
}

// tree is everything under this directory: kustomizations by directory, and every
// other document.
type tree struct {
	kustomizations map[string]*kustomization // by directory
	docs           []doc
	yamlFiles      []string
}

// loadTree walks this directory, decoding every YAML file strictly. Errors are
// reported on t; the tree holds what decoded.
func loadTree(t *testing.T) *tree {
	t.Helper()
	tr := &tree{kustomizations: map[string]*kustomization{}}
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			return err
		}
		p = filepath.ToSlash(p)
		tr.yamlFiles = append(tr.yamlFiles, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if path.Base(p) == "kustomization.yaml" || path.Base(p) == "kustomization.yml" {
			var k kustomization
			if err := yaml.UnmarshalStrict(data, &k); err != nil {
				t.Errorf("%s: %v", p, err)
				return nil
			}
			if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
				t.Errorf("%s: apiVersion/kind %s/%s, want kustomize.config.k8s.io/v1beta1/Kustomization", p, k.APIVersion, k.Kind)
			}
			tr.kustomizations[path.Dir(p)] = &k
			return nil
		}
		docs, err := decodeDocuments(p, data)
		if err != nil {
			t.Errorf("%v", err)
		}
		tr.docs = append(tr.docs, docs...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.docs) == 0 || len(tr.kustomizations) == 0 {
		t.Fatalf("found %d documents and %d kustomizations under deploy/k8s; want some of each", len(tr.docs), len(tr.kustomizations))
	}
	// Mark patches, which are partial objects.
	for dir, k := range tr.kustomizations {
		for _, p := range k.Patches {
			if p.Path == "" {
				continue
			}
			file := path.Join(dir, p.Path)
			for i := range tr.docs {
				if tr.docs[i].file == file {
					tr.docs[i].patch = true
				}
			}
		}
	}
	return tr
}

// decodeDocuments splits a file into its YAML documents and decodes each strictly
// into its API type.
func decodeDocuments(file string, data []byte) ([]doc, error) {
	var docs []doc
	var errs []error
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for idx := 0; ; idx++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return docs, fmt.Errorf("%s: %w", file, err)
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue
		}
		d, err := decodeDocument(file, idx, raw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		docs = append(docs, d)
	}
	if len(docs) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("%s: no YAML document", file))
	}
	return docs, errors.Join(errs...)
}

func stripComments(b []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
			out = append(out, '\n')
		}
	}
	return out
}

// decodeDocument decodes one document strictly: duplicate keys, fields the API
// type does not have and fields in the wrong case are errors. A top-level $patch (kustomize's strategic
// merge directive) is allowed and removed first.
func decodeDocument(file string, idx int, raw []byte) (doc, error) {
	where := fmt.Sprintf("%s#%d", file, idx)
	j, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		return doc{}, fmt.Errorf("%s: %w", where, err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(j, &top); err != nil {
		return doc{}, fmt.Errorf("%s: not a mapping: %w", where, err)
	}
	if p, ok := top["$patch"]; ok {
		var v string
		if err := json.Unmarshal(p, &v); err != nil || (v != "delete" && v != "replace" && v != "merge") {
			return doc{}, fmt.Errorf("%s: $patch %s, want delete, replace or merge", where, p)
		}
		delete(top, "$patch")
		if j, err = json.Marshal(top); err != nil {
			return doc{}, err
		}
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(j, &tm); err != nil {
		return doc{}, fmt.Errorf("%s: %w", where, err)
	}
	obj, ok := newObject(tm.APIVersion, tm.Kind)
	if !ok {
		return doc{}, fmt.Errorf("%s: apiVersion %q kind %q is not one this test knows: add its Go type to newObject", where, tm.APIVersion, tm.Kind)
	}
	// The API server's own decoder: case-sensitive field names, and unknown or
	// duplicate fields reported with their path.
	strictErrs, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowUnknownFields, kjson.DisallowDuplicateFields)
	if err == nil {
		err = errors.Join(strictErrs...)
	}
	if err != nil {
		return doc{}, fmt.Errorf("%s (%s/%s): %w", where, tm.APIVersion, tm.Kind, err)
	}
	return doc{file: file, idx: idx, kind: tm.APIVersion + "/" + tm.Kind, obj: obj}, nil
}

// docsOf returns the whole objects (not patches) of type T.
func docsOf[T any](tr *tree) []T {
	var out []T
	for _, d := range tr.docs {
		if o, ok := d.obj.(T); ok && !d.patch {
			out = append(out, o)
		}
	}
	return out
}

func TestManifestsDecodeStrictly(t *testing.T) {
	tr := loadTree(t)
	for _, d := range tr.docs {
		m := objectMeta(d.obj)
		if m.Name == "" {
			t.Errorf("%s: metadata.name is empty", d)
		}
		if !d.patch && m.Labels["app.kubernetes.io/name"] != "wxpush" {
			t.Errorf("%s: label app.kubernetes.io/name = %q, want wxpush", d, m.Labels["app.kubernetes.io/name"])
		}
	}
}

// TestStrictDecodingCatchesTypos makes sure the decoder above really is strict:
// a misspelt field, a duplicate key and a bad quantity each fail.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{name: "misspelt field", want: `unknown field "spec.template.spec.containers[0].imagePullPolcy"`, yaml: `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: x, image: x, imagePullPolcy: Always}]
`},
		{name: "duplicate key", want: "already set in map", yaml: `
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
data: {A: "1", A: "2"}
`},
		{name: "field in the wrong case", want: `unknown field "spec.Replicas"`, yaml: `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  Replicas: 2
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: x, image: x}]
`},
		{name: "bad quantity", want: "quantities must match", yaml: `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: x, image: x, resources: {limits: {memory: 256 MiB}}}]
`},
		{name: "misspelt ScaledObject field", want: `unknown field "spec.maxReplicas"`, yaml: `
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: x}
spec: {scaleTargetRef: {name: x}, maxReplicas: 3, triggers: []}
`},
		{name: "unknown kind", want: "is not one this test knows", yaml: `
apiVersion: v1
kind: Pod
metadata: {name: x}
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeDocuments("test.yaml", []byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("decode = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func objectMeta(obj any) metav1.ObjectMeta {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.ObjectMeta
	case *corev1.Service:
		return o.ObjectMeta
	case *corev1.ConfigMap:
		return o.ObjectMeta
	case *corev1.Secret:
		return o.ObjectMeta
	case *corev1.Namespace:
		return o.ObjectMeta
	case *policyv1.PodDisruptionBudget:
		return o.ObjectMeta
	case *autoscalingv2.HorizontalPodAutoscaler:
		return o.ObjectMeta
	case *scaledObject:
		return o.ObjectMeta
	}
	panic(fmt.Sprintf("objectMeta: unhandled %T", obj))
}

// TestKustomizationsAreComplete checks that every file a kustomization names
// exists, and that every YAML file belongs to the kustomization of its directory.
func TestKustomizationsAreComplete(t *testing.T) {
	tr := loadTree(t)
	listed := map[string]bool{}
	for dir, k := range tr.kustomizations {
		refs := append([]string{}, k.Resources...)
		refs = append(refs, k.Components...)
		for _, p := range k.Patches {
			if p.Path != "" {
				refs = append(refs, p.Path)
			} else if p.Patch == "" {
				t.Errorf("%s/kustomization.yaml: a patch with neither path nor patch", dir)
			}
		}
		for _, ref := range refs {
			target := path.Join(dir, ref)
			fi, err := os.Stat(target)
			switch {
			case err != nil:
				t.Errorf("%s/kustomization.yaml lists %s: %v", dir, ref, err)
			case fi.IsDir():
				if tr.kustomizations[target] == nil {
					t.Errorf("%s/kustomization.yaml lists directory %s, which has no kustomization.yaml", dir, ref)
				}
			default:
				listed[target] = true
			}
		}
		if k.Namespace != "" {
			if !slices.ContainsFunc(docsOf[*corev1.Namespace](tr), func(n *corev1.Namespace) bool { return n.Name == k.Namespace }) {
				t.Errorf("%s/kustomization.yaml: namespace %q is not created by any manifest", dir, k.Namespace)
			}
		}
	}
	for _, f := range tr.yamlFiles {
		base := path.Base(f)
		if base == "kustomization.yaml" || base == "kustomization.yml" {
			continue
		}
		if tr.kustomizations[path.Dir(f)] == nil {
			t.Errorf("%s: its directory has no kustomization.yaml", f)
		} else if !listed[f] {
			t.Errorf("%s: not listed in %s/kustomization.yaml (resources or patches)", f, path.Dir(f))
		}
	}
}

// wxpushEnvNames are the environment variables wxpush's configuration reads,
// collected from the string literals of internal/config so that a renamed or
// misspelt variable fails here.
func wxpushEnvNames(t *testing.T) map[string]bool {
	t.Helper()
	re := regexp.MustCompile(`^(REDIS_URL|WECHAT_[A-Z0-9_]+|WXPUSH_[A-Z0-9_]+)$`)
	dir := filepath.Join("..", "..", "internal", "config")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	fset := token.NewFileSet()
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && re.MatchString(s) {
					names[s] = true
				}
			}
			return true
		})
	}
	for _, must := range []string{"REDIS_URL", "WECHAT_APP_ID", "WXPUSH_HTTP_ADDR", "WXPUSH_ADMIN_ADDR", "WXPUSH_API_KEYS"} {
		if !names[must] {
			t.Fatalf("found %d variable names in %s, but not %s: has the configuration moved?", len(names), dir, must)
		}
	}
	return names
}

// process is what a container runs, by its command's binary.
type process struct {
	addrVar string // the listen-address variable whose port the probes use
}

var processes = map[string]process{
	"enqueuer": {addrVar: "WXPUSH_HTTP_ADDR"},
	"worker":   {addrVar: "WXPUSH_ADMIN_ADDR"},
}

// TestDeployments checks each Deployment's pod: security, probes, resources,
// the environment (names wxpush reads, values its configuration accepts) and that
// the process listens beyond loopback on the port its probes use.
func TestDeployments(t *testing.T) {
	tr := loadTree(t)
	names := wxpushEnvNames(t)
	configMaps := mergedData(tr, func(d doc) (string, map[string]string, bool) {
		cm, ok := d.obj.(*corev1.ConfigMap)
		if !ok {
			return "", nil, false
		}
		return cm.Name, cm.Data, true
	})
	secrets := mergedData(tr, func(d doc) (string, map[string]string, bool) {
		s, ok := d.obj.(*corev1.Secret)
		if !ok {
			return "", nil, false
		}
		data := map[string]string{}
		for k, v := range s.StringData {
			data[k] = v
		}
		for k, v := range s.Data {
			data[k] = string(v)
		}
		return s.Name, data, true
	})

	deployments := docsOf[*appsv1.Deployment](tr)
	seen := map[string]bool{}
	for _, dep := range deployments {
		t.Run(dep.Name, func(t *testing.T) {
			sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
			if err != nil || sel.Empty() || !sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
				t.Errorf("selector %v does not match the pod template's labels %v (%v)", dep.Spec.Selector, dep.Spec.Template.Labels, err)
			}
			pod := dep.Spec.Template.Spec
			if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
				t.Error("pod securityContext.runAsNonRoot is not true")
			} else if psc.RunAsUser == nil || *psc.RunAsUser == 0 {
				t.Error("pod securityContext.runAsUser is not a non-zero uid (the image's user must be verifiable)")
			}
			if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
				t.Error("enableServiceLinks is not false: Service variables would join wxpush's environment")
			}
			if pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds < 15 {
				t.Error("terminationGracePeriodSeconds is under 15 s: WXPUSH_SHUTDOWN_TIMEOUT (10 s) needs room")
			}
			if len(pod.Containers) != 1 {
				t.Fatalf("%d containers, want 1", len(pod.Containers))
			}
			c := pod.Containers[0]
			checkContainerSecurity(t, c)
			checkResources(t, c)
			if len(c.Command) != 1 || !strings.HasPrefix(c.Command[0], "/usr/local/bin/") {
				t.Fatalf("command %q, want one of the image's binaries, /usr/local/bin/<name>", c.Command)
			}
			bin := path.Base(c.Command[0])
			proc, ok := processes[bin]
			if !ok {
				t.Fatalf("command %q runs no wxpush server (want enqueuer or worker)", c.Command)
			}
			seen[bin] = true

			env := map[string]string{}
			for _, ef := range c.EnvFrom {
				var src map[string]string
				var found bool
				switch {
				case ef.ConfigMapRef != nil:
					src, found = configMaps[ef.ConfigMapRef.Name]
				case ef.SecretRef != nil:
					src, found = secrets[ef.SecretRef.Name]
				}
				if !found {
					t.Errorf("envFrom %+v names no ConfigMap or Secret under deploy/k8s", ef)
				}
				if ef.Prefix != "" {
					t.Errorf("envFrom prefix %q would rename wxpush's variables", ef.Prefix)
				}
				for k, v := range src {
					env[k] = v
				}
			}
			for _, e := range c.Env {
				if e.ValueFrom != nil {
					t.Errorf("env %s: valueFrom is not checked by this test; use a value or envFrom", e.Name)
				}
				env[e.Name] = e.Value
			}
			for k := range env {
				if !names[k] {
					t.Errorf("environment variable %s is not one wxpush reads (see internal/config)", k)
				}
			}
			if _, err := config.Load(func(k string) string { return env[k] }); err != nil {
				t.Errorf("wxpush rejects this environment: %v", err)
			}
			if env["REDIS_URL"] == "" {
				t.Error("REDIS_URL is empty: the worker would run standalone mode")
			}

			// The process listens where its probes and ports point, beyond loopback.
			host, port, err := net.SplitHostPort(env[proc.addrVar])
			if err != nil {
				t.Fatalf("%s = %q: %v (the default listens on loopback only)", proc.addrVar, env[proc.addrVar], err)
			}
			if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
				t.Errorf("%s = %q: kubelet probes and Services cannot reach it; listen on 0.0.0.0", proc.addrVar, env[proc.addrVar])
			}
			ports := map[string]int32{}
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
				if strconv.Itoa(int(p.ContainerPort)) != port {
					t.Errorf("containerPort %s=%d, but %s listens on %s", p.Name, p.ContainerPort, proc.addrVar, port)
				}
			}
			checkProbe(t, "liveness", c.LivenessProbe, "/healthz", ports)
			checkProbe(t, "readiness", c.ReadinessProbe, "/readyz", ports)
		})
	}
	for bin := range processes {
		if !seen[bin] {
			t.Errorf("no Deployment runs %s", bin)
		}
	}
}

// mergedData merges the data of ConfigMaps or Secrets by name, in walk order
// (base before overlays), so an overlay's patch overrides the base like kustomize.
func mergedData(tr *tree, get func(doc) (string, map[string]string, bool)) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, d := range tr.docs {
		name, data, ok := get(d)
		if !ok {
			continue
		}
		if out[name] == nil {
			out[name] = map[string]string{}
		}
		for k, v := range data {
			out[name][k] = v
		}
	}
	return out
}

func checkContainerSecurity(t *testing.T, c corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Error("container has no securityContext")
		return
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem is not true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("capabilities %+v, want drop [ALL] and no add", sc.Capabilities)
	}
}

func checkResources(t *testing.T, c corev1.Container) {
	t.Helper()
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := c.Resources.Requests[r]
		lim, hasLim := c.Resources.Limits[r]
		if !hasReq || !hasLim {
			t.Errorf("%s: request and limit must both be set", r)
			continue
		}
		if req.Cmp(lim) > 0 {
			t.Errorf("%s: request %s above limit %s", r, req.String(), lim.String())
		}
	}
	// A worker peaked at ~32 MiB RSS under load (BENCH.md): the request covers it.
	if m := c.Resources.Requests[corev1.ResourceMemory]; m.Value() < 48<<20 {
		t.Errorf("memory request %s is under the measured ~32 MiB peak plus headroom", m.String())
	}
}

func checkProbe(t *testing.T, name string, p *corev1.Probe, wantPath string, ports map[string]int32) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s probe: want an httpGet on %s", name, wantPath)
		return
	}
	if p.HTTPGet.Path != wantPath {
		t.Errorf("%s probe path %q, want %q", name, p.HTTPGet.Path, wantPath)
	}
	if _, ok := ports[p.HTTPGet.Port.String()]; !ok {
		t.Errorf("%s probe port %q is not a named container port (%v)", name, p.HTTPGet.Port.String(), ports)
	}
}

// TestServicesPDBsAndAutoscalers checks that Services, PodDisruptionBudgets and
// autoscalers point at the Deployments and ports that exist.
func TestServicesPDBsAndAutoscalers(t *testing.T) {
	tr := loadTree(t)
	deployments := docsOf[*appsv1.Deployment](tr)
	byName := map[string]*appsv1.Deployment{}
	for _, d := range deployments {
		byName[d.Name] = d
	}
	// matching returns the Deployments whose pods a selector selects.
	matching := func(sel labels.Selector) []*appsv1.Deployment {
		var out []*appsv1.Deployment
		for _, d := range deployments {
			if !sel.Empty() && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				out = append(out, d)
			}
		}
		return out
	}

	for _, s := range docsOf[*corev1.Service](tr) {
		deps := matching(labels.SelectorFromSet(s.Spec.Selector))
		if len(deps) != 1 {
			t.Errorf("Service %s: selector %v matches %d Deployments, want 1", s.Name, s.Spec.Selector, len(deps))
			continue
		}
		ports := map[string]int32{}
		for _, p := range deps[0].Spec.Template.Spec.Containers[0].Ports {
			ports[p.Name] = p.ContainerPort
		}
		for _, p := range s.Spec.Ports {
			if _, ok := ports[p.TargetPort.String()]; !ok {
				t.Errorf("Service %s port %s: targetPort %q is not a named port of %s", s.Name, p.Name, p.TargetPort.String(), deps[0].Name)
			}
			if s.Annotations["prometheus.io/scrape"] == "true" && s.Annotations["prometheus.io/port"] != strconv.Itoa(int(p.Port)) {
				t.Errorf("Service %s: prometheus.io/port %q, want %d", s.Name, s.Annotations["prometheus.io/port"], p.Port)
			}
		}
	}
	for _, p := range docsOf[*policyv1.PodDisruptionBudget](tr) {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil || len(matching(sel)) != 1 {
			t.Errorf("PodDisruptionBudget %s: selector matches %d Deployments, want 1 (%v)", p.Name, len(matching(sel)), err)
		}
		if (p.Spec.MinAvailable == nil) == (p.Spec.MaxUnavailable == nil) {
			t.Errorf("PodDisruptionBudget %s: set exactly one of minAvailable and maxUnavailable", p.Name)
		}
	}

	sos := docsOf[*scaledObject](tr)
	if len(sos) == 0 {
		t.Error("no KEDA ScaledObject")
	}
	for _, so := range sos {
		ref := so.Spec.ScaleTargetRef
		if d := byName[ref.Name]; d == nil || (ref.Kind != "" && ref.Kind != "Deployment") {
			t.Errorf("ScaledObject %s: scaleTargetRef %+v is not a Deployment here", so.Name, ref)
		} else if d.Spec.Replicas != nil {
			t.Errorf("Deployment %s sets replicas, which every apply would reset under the autoscaler", d.Name)
		}
		if so.Spec.MinReplicaCount == nil || so.Spec.MaxReplicaCount == nil || *so.Spec.MinReplicaCount < 1 || *so.Spec.MinReplicaCount > *so.Spec.MaxReplicaCount {
			t.Errorf("ScaledObject %s: want 1 ≤ minReplicaCount ≤ maxReplicaCount", so.Name)
		}
		if len(so.Spec.Triggers) == 0 {
			t.Errorf("ScaledObject %s: no trigger", so.Name)
		}
		for _, tg := range so.Spec.Triggers {
			if tg.Type != "prometheus" {
				t.Errorf("ScaledObject %s: trigger type %q, want prometheus", so.Name, tg.Type)
				continue
			}
			if !slices.Contains([]string{"", "AverageValue", "Value"}, tg.MetricType) {
				t.Errorf("ScaledObject %s: metricType %q", so.Name, tg.MetricType)
			}
			var keys []string
			for k := range tg.Metadata {
				if !slices.Contains(prometheusTriggerKeys, k) {
					keys = append(keys, k)
				}
			}
			sort.Strings(keys)
			if len(keys) > 0 {
				t.Errorf("ScaledObject %s: prometheus trigger metadata %v unknown to KEDA's prometheus scaler", so.Name, keys)
			}
			if q := tg.Metadata["query"]; !strings.Contains(q, "wxpush_queue_latency_seconds") || !strings.HasPrefix(q, "max(") {
				t.Errorf("ScaledObject %s: query %q, want max(wxpush_queue_latency_seconds): a cluster-wide gauge, never summed", so.Name, q)
			}
			if _, err := strconv.ParseFloat(tg.Metadata["threshold"], 64); err != nil {
				t.Errorf("ScaledObject %s: threshold %q is not a number", so.Name, tg.Metadata["threshold"])
			}
			if tg.Metadata["serverAddress"] == "" {
				t.Errorf("ScaledObject %s: no serverAddress", so.Name)
			}
		}
	}
	for _, h := range docsOf[*autoscalingv2.HorizontalPodAutoscaler](tr) {
		if byName[h.Spec.ScaleTargetRef.Name] == nil || h.Spec.ScaleTargetRef.Kind != "Deployment" {
			t.Errorf("HorizontalPodAutoscaler %s: scaleTargetRef %+v is not a Deployment here", h.Name, h.Spec.ScaleTargetRef)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 1 || *h.Spec.MinReplicas > h.Spec.MaxReplicas {
			t.Errorf("HorizontalPodAutoscaler %s: want 1 ≤ minReplicas ≤ maxReplicas", h.Name)
		}
	}
}

// TestKustomizeBuild renders every kustomization that has no parent (the
// overlays, and the base) with `kubectl kustomize` when kubectl is installed, and
// decodes the output strictly: patches apply, names resolve, the result is valid.
func TestKustomizeBuild(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not on PATH; the rendered output is not checked")
	}
	tr := loadTree(t)
	dirs := make([]string, 0, len(tr.kustomizations))
	for dir := range tr.kustomizations {
		dirs = append(dirs, dir)
	}
	sort.Strings(dirs)
	for _, dir := range dirs {
		t.Run(dir, func(t *testing.T) {
			out, err := exec.Command(kubectl, "kustomize", dir).Output()
			if err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					err = fmt.Errorf("%w: %s", err, ee.Stderr)
				}
				t.Fatalf("kubectl kustomize %s: %v", dir, err)
			}
			docs, err := decodeDocuments(dir+" (rendered)", out)
			if err != nil {
				t.Fatal(err)
			}
			kinds := map[string]int{}
			for _, d := range docs {
				kinds[d.kind]++
				if ns := tr.kustomizations[dir].Namespace; ns != "" && d.kind != "v1/Namespace" && objectMeta(d.obj).Namespace != ns {
					t.Errorf("%s: namespace %q, want %q", d, objectMeta(d.obj).Namespace, ns)
				}
			}
			if kinds["apps/v1/Deployment"] != 2 {
				t.Errorf("rendered %d Deployments, want 2 (enqueuer, worker)", kinds["apps/v1/Deployment"])
			}
			if n := kinds["keda.sh/v1alpha1/ScaledObject"] + kinds["autoscaling/v2/HorizontalPodAutoscaler"]; n != 1 {
				t.Errorf("rendered %d worker autoscalers (ScaledObject or HPA), want exactly 1", n)
			}
		})
	}
}
