package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestValueNeverPrints(t *testing.T) {
	const text = "s3cr3t-app-secret"
	v := Value(text)
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("x", "secret", v)
	js, err := json.Marshal(struct{ S Value }{v})
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{
		"%v": fmt.Sprintf("%v", v),
		//lint:ignore S1025 the test is about what the %s verb prints
		"%s":   fmt.Sprintf("%s", v),
		"%#v":  fmt.Sprintf("%#v", v),
		"%+v":  fmt.Sprintf("%+v", struct{ S Value }{v}),
		"json": string(js),
		"slog": logged.String(),
	}
	for name, out := range outputs {
		if strings.Contains(out, text) {
			t.Errorf("%s printed the secret: %q", name, out)
		}
		if !strings.Contains(out, redacted) {
			t.Errorf("%s = %q, want it to say %q", name, out, redacted)
		}
	}
	if v.Reveal() != text {
		t.Errorf("Reveal() = %q, want the secret", v.Reveal())
	}
}
