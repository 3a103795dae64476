package config

import (
	"strings"
	"testing"
	"time"
)

// TestCallbackSettings: the callback window and the compatible-mode switch
// of the default app, from the environment.
func TestCallbackSettings(t *testing.T) {
	t.Parallel()
	app := map[string]string{"WECHAT_APP_ID": "wx123", "WECHAT_APP_SECRET": "the-secret", "WECHAT_TOKEN": "tok123",
		"WECHAT_AES_KEY": strings.Repeat("a", 43)}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range app {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name   string
		env    map[string]string
		window time.Duration
		compat bool
		err    string
	}{
		{name: "defaults", env: with(), window: 5 * time.Minute},
		{name: "compatible mode", env: with("WECHAT_CALLBACK_COMPAT", "true"), window: 5 * time.Minute, compat: true},
		{name: "window", env: with("WXPUSH_CALLBACK_WINDOW", "90s"), window: 90 * time.Second},
		{name: "compat not a boolean", env: with("WECHAT_CALLBACK_COMPAT", "sometimes"), err: `WECHAT_CALLBACK_COMPAT: "sometimes" is not true or false`},
		{name: "window too short", env: with("WXPUSH_CALLBACK_WINDOW", "10s"), err: "WXPUSH_CALLBACK_WINDOW: 10s must be at least 30s"},
		{name: "window not a duration", env: with("WXPUSH_CALLBACK_WINDOW", "5"), err: `WXPUSH_CALLBACK_WINDOW: "5" is not a duration`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(env(tt.env))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Load = %v, want an error containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			a, _ := c.App(DefaultApp)
			if c.CallbackWindow != tt.window || a.CallbackCompat != tt.compat {
				t.Errorf("window %v compat %v, want %v %v", c.CallbackWindow, a.CallbackCompat, tt.window, tt.compat)
			}
		})
	}
}
