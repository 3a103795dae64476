package config

import (
	"strings"
	"testing"
)

func defaultAppEnv(extra map[string]string) map[string]string {
	m := map[string]string{"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "tok123"}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

func TestWebhookSettingsFromEnv(t *testing.T) {
	c, err := Load(env(defaultAppEnv(map[string]string{
		"WXPUSH_STATUS_URL":     "https://hooks.example.com/wx",
		"WXPUSH_WEBHOOK_SECRET": "0123456789abcdef0123",
		"WXPUSH_WEBHOOK_STATES": "delivered, dead",
		"WXPUSH_WEBHOOK_WINDOW": "2h",
	})))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := c.App(DefaultApp)
	if a.StatusURL != "https://hooks.example.com/wx" || a.WebhookSecret.Reveal() != "0123456789abcdef0123" || c.WebhookWindow.Hours() != 2 {
		t.Fatalf("app = %+v, window %s", a, c.WebhookWindow)
	}
	if !a.WantsWebhook("dead") || a.WantsWebhook("sent") {
		t.Errorf("WantsWebhook with states [delivered dead]: dead %v, sent %v", a.WantsWebhook("dead"), a.WantsWebhook("sent"))
	}
	if !(App{}).WantsWebhook("sent") || (App{}).WantsWebhook("queued") {
		t.Error("default states: sent and the final states only")
	}
}

func TestWebhookSettingsRefused(t *testing.T) {
	for name, tc := range map[string]struct {
		vars map[string]string
		want string
	}{
		"private status_url": {map[string]string{"WXPUSH_STATUS_URL": "http://10.0.0.8/hook", "WXPUSH_WEBHOOK_SECRET": "0123456789abcdef"},
			"WXPUSH_STATUS_URL: private, loopback or link-local address refused"},
		"not http": {map[string]string{"WXPUSH_STATUS_URL": "file:///etc/passwd", "WXPUSH_WEBHOOK_SECRET": "0123456789abcdef"},
			"WXPUSH_STATUS_URL: must be an http or https URL"},
		"no secret":    {map[string]string{"WXPUSH_STATUS_URL": "https://hooks.example.com/"}, "WXPUSH_WEBHOOK_SECRET: required when WXPUSH_STATUS_URL is set"},
		"short secret": {map[string]string{"WXPUSH_WEBHOOK_SECRET": "short"}, "WXPUSH_WEBHOOK_SECRET: 5 characters is too short"},
		"bad state":    {map[string]string{"WXPUSH_WEBHOOK_STATES": "sent,queued"}, `WXPUSH_WEBHOOK_STATES: "queued" is not a state`},
		"bad window":   {map[string]string{"WXPUSH_WEBHOOK_WINDOW": "0s"}, "WXPUSH_WEBHOOK_WINDOW: 0s must be positive"},
		"bad limit":    {map[string]string{"WXPUSH_WEBHOOK_PER_ENDPOINT": "0"}, "WXPUSH_WEBHOOK_PER_ENDPOINT: 0 must be at least 1"},
	} {
		_, err := Load(env(defaultAppEnv(tc.vars)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "0123456789abcdef") {
			t.Errorf("%s: the error quotes the secret: %v", name, err)
		}
	}
	_, err := Load(env(defaultAppEnv(map[string]string{"WXPUSH_STATUS_URL": "http://127.0.0.1:9/hook",
		"WXPUSH_WEBHOOK_SECRET": "0123456789abcdef", "WXPUSH_WEBHOOK_ALLOW_PRIVATE": "true"})))
	if err != nil {
		t.Errorf("WXPUSH_WEBHOOK_ALLOW_PRIVATE=true: %v", err)
	}
}
