package wechatsim

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		spec    string
		want    []Rule
		wantErr string // substring; "" = no error
	}{
		{name: "empty", spec: "", want: nil},
		{name: "blank items", spec: " , ,", want: nil},
		{
			name: "brief example",
			spec: "block_*=user_block, busy_1=system_busy:3, *=success",
			want: []Rule{
				{OpenID: "block_*", Outcome: OutcomeUserBlock},
				{OpenID: "busy_1", Outcome: OutcomeSystemBusy, Times: 3},
				{OpenID: "*", Outcome: OutcomeSuccess},
			},
		},
		{name: "rate", spec: "flaky=http_500@0.1", want: []Rule{{OpenID: "flaky", Outcome: OutcomeHTTP500, Rate: 0.1}}},
		{name: "times and rate", spec: "x = hang:2@0.5", want: []Rule{{OpenID: "x", Outcome: OutcomeHang, Times: 2, Rate: 0.5}}},
		{name: "rate then times", spec: "x=hang@0.5:2", want: []Rule{{OpenID: "x", Outcome: OutcomeHang, Times: 2, Rate: 0.5}}},
		{name: "empty openid matches all", spec: "=daily_quota", want: []Rule{{Outcome: OutcomeDailyQuota}}},
		{name: "missing equals", spec: "a=success, busy_1", wantErr: `rule 2 "busy_1": missing "="`},
		{name: "unknown outcome", spec: "a=explode", wantErr: `rule 1 "a=explode": unknown outcome "explode"`},
		{name: "zero times", spec: "a=success:0", wantErr: `times "0" is not a positive integer`},
		{name: "bad times", spec: "a=success:x", wantErr: `rule 1 "a=success:x": times "x"`},
		{name: "rate too big", spec: "a=success@1.5", wantErr: `rate "1.5" is not a number in (0,1]`},
		{name: "rate not a number", spec: "a=success@often", wantErr: `rate "often"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseRules(tt.spec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseRules = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRulesMatchingAndTimes(t *testing.T) {
	t.Parallel()
	rules, err := ParseRules("busy_*=system_busy:2, vip=not_following, *=success")
	if err != nil {
		t.Fatal(err)
	}
	b := setup(t, Config{Rules: rules})
	tok := b.token(t)
	steps := []struct {
		name   string
		openID string
		code   int64
	}{
		{name: "prefix rule, first time", openID: "busy_1", code: -1},
		{name: "prefix rule, other user", openID: "busy_2", code: -1},
		{name: "prefix rule used up", openID: "busy_1", code: 0},
		{name: "exact rule", openID: "vip", code: 43004},
		{name: "exact rule is exact", openID: "vip2", code: 0},
		{name: "exact rule has no limit", openID: "vip", code: 43004},
	}
	for _, st := range steps {
		wantAPIError(t, b.send(t, tok, sendBodyFor(st.openID, "")), st.code)
	}

	// SetRules starts the counts afresh.
	if err := b.sim.SetRules(rules); err != nil {
		t.Fatal(err)
	}
	wantAPIError(t, b.send(t, tok, sendBodyFor("busy_1", "")), -1)
	if err := b.sim.SetRules([]Rule{{Outcome: "explode"}}); err == nil || !strings.Contains(err.Error(), "Rules[0]") {
		t.Errorf("SetRules with a bad outcome: err = %v, want one naming Rules[0]", err)
	}
}

func TestRuleRate(t *testing.T) {
	t.Parallel()
	rules := newRuleStates([]Rule{{OpenID: "*", Outcome: OutcomeSystemBusy, Rate: 0.5}})
	const n = 2000
	busy := 0
	for range n {
		if decide(rules, "o1") == OutcomeSystemBusy {
			busy++
		}
	}
	// Binomial(2000, 0.5) lies within ±200 of 1000 except with negligible odds.
	if busy < 800 || busy > 1200 {
		t.Errorf("rate 0.5 applied %d times in %d", busy, n)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	good := App{AppID: "wx1", Secret: "s", Token: "t"}
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "no apps", cfg: Config{}, wantErr: "Apps: at least one"},
		{name: "empty appid", cfg: Config{Apps: []App{{Secret: "s", Token: "t"}}}, wantErr: "Apps[0].AppID"},
		{name: "duplicate appid", cfg: Config{Apps: []App{good, good}}, wantErr: `Apps[1].AppID: "wx1" appears twice`},
		{name: "empty secret", cfg: Config{Apps: []App{{AppID: "wx1", Token: "t"}}}, wantErr: "Apps[0].Secret"},
		{name: "empty token", cfg: Config{Apps: []App{{AppID: "wx1", Secret: "s"}}}, wantErr: "Apps[0].Token"},
		{name: "relative callback", cfg: Config{Apps: []App{{AppID: "wx1", Secret: "s", Token: "t", CallbackURL: "/cb"}}}, wantErr: "Apps[0].CallbackURL"},
		{name: "template of unknown app", cfg: Config{Apps: []App{good}, Templates: []Template{{AppID: "wx2", TemplateID: "t"}}}, wantErr: "Templates[0].AppID"},
		{name: "template without id", cfg: Config{Apps: []App{good}, Templates: []Template{{AppID: "wx1"}}}, wantErr: "Templates[0].TemplateID"},
		{name: "negative latency", cfg: Config{Apps: []App{good}, Latency: -1}, wantErr: "Latency"},
		{name: "tiny ttl", cfg: Config{Apps: []App{good}, TokenTTL: 1}, wantErr: "TokenTTL"},
		{name: "negative msgid base", cfg: Config{Apps: []App{good}, MsgIDBase: -1}, wantErr: "MsgIDBase"},
		{name: "bad rule", cfg: Config{Apps: []App{good}, Rules: []Rule{{Outcome: OutcomeSuccess}, {Outcome: OutcomeHang, Rate: 2}}}, wantErr: "Rules[1]: Rate"},
		{name: "valid", cfg: Config{Apps: []App{good}, Rules: []Rule{{Outcome: OutcomeSuccess}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestMsgIDBase(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{MsgIDBase: 41})
	if got := b.send(t, b.token(t), sendBodyFor("o1", "")).str("msgid"); got != "42" {
		t.Errorf("first msgid = %s, want 42", got)
	}
}

func FuzzParseRules(f *testing.F) {
	for _, seed := range []string{"", "block_*=user_block, busy_1=system_busy:3, *=success", "x=hang:2@0.5", "a=", "=:@", "a=success@1e-9"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		rules, err := ParseRules(spec)
		if err != nil {
			return
		}
		if err := validateRules(rules); err != nil {
			t.Errorf("ParseRules(%q) returned rules that fail validation: %v", spec, err)
		}
	})
}
