package config

import (
	"strings"
	"testing"
	"time"
)

func TestRelaySettingsFromEnv(t *testing.T) {
	c, err := Load(env(defaultAppEnv(map[string]string{
		"WECHAT_UPSTREAM_URL": "http://10.1.2.3:8000/wx?x=1", "WECHAT_RELAY_ALL": "true", "WECHAT_RELAY_VERIFY": "true",
		"WXPUSH_RELAY_TIMEOUT": "2s", "WXPUSH_CALLBACK_INBOX": "false", "WXPUSH_INBOX_APPLY": "false",
	})))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := c.App(DefaultApp)
	if a.UpstreamURL != "http://10.1.2.3:8000/wx?x=1" || !a.RelayAll || !a.RelayVerify {
		t.Errorf("app relay = %q all %v verify %v", a.UpstreamURL, a.RelayAll, a.RelayVerify)
	}
	if c.RelayTimeout != 2*time.Second || c.CallbackInbox || c.InboxApply {
		t.Errorf("relay timeout %s, inbox %v, apply %v", c.RelayTimeout, c.CallbackInbox, c.InboxApply)
	}
	d := Defaults()
	if d.RelayTimeout != 4500*time.Millisecond || !d.CallbackInbox || !d.InboxApply {
		t.Errorf("defaults: relay timeout %s, inbox %v, apply %v", d.RelayTimeout, d.CallbackInbox, d.InboxApply)
	}
}

func TestRelaySettingsRefused(t *testing.T) {
	for name, tc := range map[string]struct {
		vars map[string]string
		want string
	}{
		"scheme":         {map[string]string{"WECHAT_UPSTREAM_URL": "ftp://10.0.0.1/"}, `WECHAT_UPSTREAM_URL: scheme must be http or https (got "ftp")`},
		"no host":        {map[string]string{"WECHAT_UPSTREAM_URL": "http:///wx"}, "WECHAT_UPSTREAM_URL: no host"},
		"credentials":    {map[string]string{"WECHAT_UPSTREAM_URL": "http://u:hunter2-pass@10.0.0.1/"}, "WECHAT_UPSTREAM_URL: must not carry credentials"},
		"fragment":       {map[string]string{"WECHAT_UPSTREAM_URL": "http://10.0.0.1/#x"}, "WECHAT_UPSTREAM_URL: must not have a fragment"},
		"all, no url":    {map[string]string{"WECHAT_RELAY_ALL": "true"}, "WECHAT_RELAY_ALL: needs WECHAT_UPSTREAM_URL"},
		"verify, no url": {map[string]string{"WECHAT_RELAY_VERIFY": "true"}, "WECHAT_RELAY_VERIFY: needs WECHAT_UPSTREAM_URL"},
		"not a bool":     {map[string]string{"WECHAT_RELAY_ALL": "yes please"}, `WECHAT_RELAY_ALL: "yes please" is not true or false`},
		"timeout 5s":     {map[string]string{"WXPUSH_RELAY_TIMEOUT": "5s"}, "WXPUSH_RELAY_TIMEOUT: 5s must be positive and at most 4.8s"},
		"timeout 0":      {map[string]string{"WXPUSH_RELAY_TIMEOUT": "0s"}, "WXPUSH_RELAY_TIMEOUT: 0s must be positive"},
	} {
		_, err := Load(env(defaultAppEnv(tc.vars)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error quotes the upstream's password: %v", name, err)
		}
	}
}
