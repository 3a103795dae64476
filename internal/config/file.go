package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/wxpush/wxpush/internal/secret"
)

// fileConfig is the WXPUSH_CONFIG document. Tuning stays a node so each key is
// checked against knobs (one schema for env and file) with its line.
type fileConfig struct {
	Apps   []fileApp `yaml:"apps"`
	Tuning yaml.Node `yaml:"tuning"`
}

type fileApp struct {
	Name              string       `yaml:"name"`
	AppID             string       `yaml:"appid"`
	Secret            secret.Value `yaml:"secret"`
	SecretEnv         located      `yaml:"secret_env"`
	Token             secret.Value `yaml:"token"`
	TokenEnv          located      `yaml:"token_env"`
	AESKey            secret.Value `yaml:"aes_key"`
	AESKeyEnv         located      `yaml:"aes_key_env"`
	PreviousToken     secret.Value `yaml:"previous_token"`
	PreviousTokenEnv  located      `yaml:"previous_token_env"`
	PreviousAESKey    secret.Value `yaml:"previous_aes_key"`
	PreviousAESKeyEnv located      `yaml:"previous_aes_key_env"`
	CallbackCompat    bool         `yaml:"callback_compat"`
	StableToken       bool         `yaml:"stable_token"`
	RateLimit         struct {
		PerSecond float64 `yaml:"per_second"`
		Burst     int     `yaml:"burst"`
	} `yaml:"rate_limit"`
	RecipientLimit struct {
		Max    int     `yaml:"max"`
		Window located `yaml:"window"`
	} `yaml:"recipient_limit"`
	MaxBacklog        int          `yaml:"max_backlog"`
	ValidateTemplates *bool        `yaml:"validate_templates"` // nil = true
	StatusURL         string       `yaml:"status_url"`
	WebhookSecret     secret.Value `yaml:"webhook_secret"`
	WebhookSecretEnv  located      `yaml:"webhook_secret_env"`
	WebhookStates     []string     `yaml:"webhook_states"`
	UpstreamURL       string       `yaml:"upstream_url"`
	RelayAll          bool         `yaml:"relay_all"`
	RelayVerify       bool         `yaml:"relay_verify"`
}

// located is a scalar kept as text with its line, for values checked after decoding
// (durations, variable names) so their errors can still point at the line.
type located struct {
	text string
	line int
}

func (l *located) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: must be a single value", n.Line)}}
	}
	l.text, l.line = n.Value, n.Line
	return nil
}

// applyFile reads the file at path over c: its apps, then its tuning.
func (c *Config) applyFile(path string, getenv func(string) string) []error {
	data, err := os.ReadFile(path)
	if err != nil {
		return []error{fmt.Errorf("WXPUSH_CONFIG: %w", err)}
	}
	fc, errs := decodeFile(path, data)
	if fc == nil {
		return errs
	}
	at := func(line int) string { return fmt.Sprintf("WXPUSH_CONFIG %s:%d: ", path, line) }

	c.Apps = make([]App, 0, len(fc.Apps))
	for i, fa := range fc.Apps {
		a, appErrs := fa.app(fmt.Sprintf("apps[%d].", i), at, getenv)
		c.Apps = append(c.Apps, a)
		errs = append(errs, appErrs...)
	}

	t := &fc.Tuning
	if t.Kind == yaml.AliasNode {
		t = t.Alias
	}
	switch {
	case t.Kind == 0 || t.ShortTag() == "!!null":
	case t.Kind != yaml.MappingNode:
		errs = append(errs, fmt.Errorf("%stuning: must be a mapping of tuning keys", at(t.Line)))
	default:
		seen := map[string]int{}
		for j := 0; j+1 < len(t.Content); j += 2 {
			key, val := t.Content[j], t.Content[j+1]
			field := "tuning." + key.Value
			if line, dup := seen[key.Value]; dup {
				errs = append(errs, fmt.Errorf("%s%s: defined twice (first at line %d)", at(key.Line), field, line))
				continue
			}
			seen[key.Value] = key.Line
			i, ok := knobIndex[key.Value]
			if !ok {
				errs = append(errs, fmt.Errorf("%s%s: unknown key (tuning keys: %s)", at(key.Line), field, tuningKeys()))
				continue
			}
			if val.Kind == yaml.AliasNode {
				val = val.Alias
			}
			if val.Kind != yaml.ScalarNode {
				errs = append(errs, fmt.Errorf("%s%s: must be a single value", at(val.Line), field))
				continue
			}
			if val.ShortTag() == "!!null" || val.Value == "" {
				continue
			}
			c.fromFile |= 1 << i
			if err := knobs[i].set(c, field, val.Value); err != nil {
				errs = append(errs, fmt.Errorf("%s%w", at(val.Line), err))
			}
		}
	}
	return errs
}

func tuningKeys() string {
	keys := make([]string, len(knobs))
	for i, k := range knobs {
		keys[i] = k.key
	}
	return strings.Join(keys, ", ")
}

// app converts one file app; prefix is "apps[i]." and at formats a line's location.
func (fa fileApp) app(prefix string, at func(int) string, getenv func(string) string) (App, []error) {
	a := App{
		Name: fa.Name, AppID: fa.AppID, StableToken: fa.StableToken, CallbackCompat: fa.CallbackCompat,
		RateLimit:         RateLimit{PerSecond: fa.RateLimit.PerSecond, Burst: fa.RateLimit.Burst},
		RecipientLimit:    RecipientLimit{Max: fa.RecipientLimit.Max},
		MaxBacklog:        fa.MaxBacklog,
		ValidateTemplates: fa.ValidateTemplates == nil || *fa.ValidateTemplates,
		StatusURL:         fa.StatusURL,
		WebhookStates:     fa.WebhookStates,
		UpstreamURL:       fa.UpstreamURL,
		RelayAll:          fa.RelayAll,
		RelayVerify:       fa.RelayVerify,
		origin:            origin{file: true},
	}
	var errs []error
	secrets := []struct {
		key   string
		value secret.Value
		env   located
		dst   *secret.Value
	}{
		{"secret", fa.Secret, fa.SecretEnv, &a.Secret},
		{"token", fa.Token, fa.TokenEnv, &a.Token},
		{"aes_key", fa.AESKey, fa.AESKeyEnv, &a.AESKey},
		{"previous_token", fa.PreviousToken, fa.PreviousTokenEnv, &a.PreviousToken},
		{"previous_aes_key", fa.PreviousAESKey, fa.PreviousAESKeyEnv, &a.PreviousAESKey},
		{"webhook_secret", fa.WebhookSecret, fa.WebhookSecretEnv, &a.WebhookSecret},
	}
	for _, s := range secrets {
		*s.dst = s.value
		name := strings.TrimSpace(s.env.text)
		if name == "" {
			continue
		}
		field := prefix + s.key + "_env"
		switch v := strings.TrimSpace(getenv(name)); {
		case !s.value.IsZero():
			errs = append(errs, fmt.Errorf("%s%s: set together with %s; use one", at(s.env.line), field, s.key))
		case v == "":
			errs = append(errs, fmt.Errorf("%s%s: environment variable %s is empty", at(s.env.line), field, name))
		default:
			*s.dst = secret.Value(v)
		}
	}
	if w := fa.RecipientLimit.Window; w.text != "" {
		d, err := time.ParseDuration(w.text)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s%srecipient_limit.window: %q is not a duration (e.g. 1m, 1h, 24h)", at(w.line), prefix, w.text))
		}
		a.RecipientLimit.Window = d
	}
	return a, errs
}

// decodeFile decodes data strictly. It returns nil only if data is not YAML at all.
//
// yaml's own strict decode (KnownFields) is the gate, and it is all that runs for a
// good file. Its errors say only "line 7: field secrt not found in type …", so when it
// fails the document is decoded again by checkNode, which names the field path
// (apps[0].secrt) and never drops a broken list item, so apps[i] in later errors is
// still the file's i-th app.
func decodeFile(path string, data []byte) (*fileConfig, []error) {
	var fc fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(&fc)
	if errors.Is(err, io.EOF) { // empty file
		return &fc, nil
	}
	var extra struct{}
	if err == nil && !errors.Is(dec.Decode(&extra), io.EOF) {
		return &fc, []error{fmt.Errorf("WXPUSH_CONFIG %s: holds more than one YAML document", path)}
	}
	if err == nil {
		return &fc, nil
	}

	var root yaml.Node
	if perr := yaml.Unmarshal(data, &root); perr != nil {
		return nil, []error{fmt.Errorf("WXPUSH_CONFIG %s: not a YAML file: %w", path, perr)}
	}
	fc = fileConfig{}
	ch := checker{path: path}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	if doc.Kind != yaml.MappingNode {
		return nil, []error{fmt.Errorf("WXPUSH_CONFIG %s:%d: not a wxpush configuration: want a mapping with apps and tuning", path, doc.Line)}
	}
	ch.decode("", doc, reflect.ValueOf(&fc).Elem())
	if len(ch.errs) == 0 { // the two decoders disagree: at least say what yaml said
		ch.errs = append(ch.errs, fmt.Errorf("WXPUSH_CONFIG %s: %w", path, err))
	}
	return &fc, ch.errs
}

// checker decodes a yaml.Node tree into a value by reflection, like yaml's strict
// decode, collecting an error naming the field path and line for each mismatch.
type checker struct {
	path string
	errs []error
}

var (
	nodeType        = reflect.TypeFor[yaml.Node]()
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
)

func (ch *checker) fail(n *yaml.Node, field, format string, a ...any) {
	ch.errs = append(ch.errs, fmt.Errorf("WXPUSH_CONFIG %s:%d: %s: %s", ch.path, n.Line, field, fmt.Sprintf(format, a...)))
}

func (ch *checker) decode(field string, n *yaml.Node, v reflect.Value) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.ShortTag() == "!!null" {
		return
	}
	t := v.Type()
	switch {
	case t == nodeType:
		v.Set(reflect.ValueOf(*n))
		return
	case reflect.PointerTo(t).Implements(unmarshalerType):
		if err := n.Decode(v.Addr().Interface()); err != nil {
			ch.fail(n, field, "must be a single value")
		}
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		p := reflect.New(t.Elem())
		ch.decode(field, n, p.Elem())
		v.Set(p)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			ch.fail(n, field, "must be a mapping")
			return
		}
		ch.mapping(field, n, v, map[string]int{})
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			ch.fail(n, field, "must be a list")
			return
		}
		v.Set(reflect.MakeSlice(t, len(n.Content), len(n.Content)))
		for i, e := range n.Content {
			ch.decode(fmt.Sprintf("%s[%d]", field, i), e, v.Index(i))
		}
	default:
		if n.Kind != yaml.ScalarNode {
			ch.fail(n, field, "must be a single value")
			return
		}
		p := reflect.New(t)
		if err := n.Decode(p.Interface()); err != nil {
			switch t.Kind() {
			case reflect.Bool:
				ch.fail(n, field, "%q is not true or false", n.Value)
			case reflect.Float32, reflect.Float64:
				ch.fail(n, field, "%q is not a number", n.Value)
			default:
				ch.fail(n, field, "%q is not an integer", n.Value)
			}
			return
		}
		v.Set(p.Elem())
	}
}

// mapping decodes a mapping node into struct v; seen maps keys already set to their
// line, across merge keys (<<), whose values an explicit key overrides.
func (ch *checker) mapping(field string, n *yaml.Node, v reflect.Value, seen map[string]int) {
	fields := map[string]int{}
	for i := range v.NumField() {
		if tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ","); tag != "" {
			fields[tag] = i
		}
	}
	dot := func(key string) string {
		if field == "" {
			return key
		}
		return field + "." + key
	}
	var merges []*yaml.Node
	for j := 0; j+1 < len(n.Content); j += 2 {
		key, val := n.Content[j], n.Content[j+1]
		if key.Value == "<<" && key.ShortTag() == "!!merge" {
			merges = append(merges, val)
			continue
		}
		if line, dup := seen[key.Value]; dup {
			ch.fail(key, dot(key.Value), "defined twice (first at line %d)", line)
			continue
		}
		seen[key.Value] = key.Line
		i, ok := fields[key.Value]
		if !ok {
			ch.fail(key, dot(key.Value), "unknown key (valid here: %s)", sortedKeys(fields))
			continue
		}
		ch.decode(dot(key.Value), val, v.Field(i))
	}
	// Merged keys fill only what the mapping itself did not set.
	for _, m := range merges {
		for m.Kind == yaml.AliasNode {
			m = m.Alias
		}
		srcs := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			srcs = m.Content
		}
		for _, s := range srcs {
			for s.Kind == yaml.AliasNode {
				s = s.Alias
			}
			if s.Kind != yaml.MappingNode {
				ch.fail(s, field+"<<", "must be a mapping")
				continue
			}
			sub := &yaml.Node{Kind: yaml.MappingNode, Line: s.Line}
			for j := 0; j+1 < len(s.Content); j += 2 {
				if _, set := seen[s.Content[j].Value]; !set {
					sub.Content = append(sub.Content, s.Content[j], s.Content[j+1])
				}
			}
			got := map[string]int{}
			ch.mapping(field, sub, v, got)
			for k, line := range got {
				seen[k] = line
			}
		}
	}
}

func sortedKeys(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}
