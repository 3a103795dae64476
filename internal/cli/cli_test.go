package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wxpush/wxpush/internal/servicetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

// result is one run of the command.
type result struct {
	code           int
	stdout, stderr string
}

// wxpush runs the command against api with stdin, as the process would.
func wxpush(t *testing.T, api, stdin string, args ...string) result {
	t.Helper()
	return wxpushEnv(t, map[string]string{"WXPUSH_SERVER": api}, stdin, args...)
}

func wxpushEnv(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), args, func(k string) string { return env[k] }, strings.NewReader(stdin), &out, &errb)
	return result{code, out.String(), errb.String()}
}

const validJSON = `{"touser":"%s","template_id":"T1","data":{"thing1":{"value":"order shipped"}}}`

// Message ids are 26 characters of Crockford base32: ULIDs, or, for a request
// with an Idempotency-Key (the CLI always sends one), derived from the key.
var idState = regexp.MustCompile(`^([0-9A-HJKMNP-TV-Z]{26}) (queued|scheduled)\n$`)

// waitState polls `wxpush -json status ID` until the message is in want.
func waitState(t *testing.T, api, id, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var s struct{ State string }
	for time.Now().Before(deadline) {
		r := wxpush(t, api, "", "-json", "status", id)
		if r.code != 0 {
			t.Fatalf("status %s = %d %s", id, r.code, r.stderr)
		}
		if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
			t.Fatalf("status -json: %v\n%s", err, r.stdout)
		}
		if s.State == want {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("message %s still %s, want %s", id, s.State, want)
}

func enqueued(t *testing.T, c *servicetest.Cluster) float64 {
	t.Helper()
	return servicetest.SumSeries(t, c.Scrape[:1], `wxpush_messages_enqueued_total{app="default"}`)
}

func TestSend(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Workers: 1})
	tests := []struct {
		name   string
		stdin  string
		args   []string
		code   int
		stdout string // a regexp; "" = the id and state line
		stderr string // a substring
	}{
		{"flags", "", []string{"send", "-to", "cli_1", "-template", "T1", "-data", "thing1=order shipped", "-priority", "high", "-ttl", "10m"}, 0, "", ""},
		{"JSON argument", "", []string{"send", fmt.Sprintf(validJSON, "cli_2")}, 0, "", ""},
		{"JSON from stdin with -", fmt.Sprintf(validJSON, "cli_3"), []string{"send", "-"}, 0, "", ""},
		{"piped JSON", fmt.Sprintf(validJSON, "cli_4"), []string{"send"}, 0, "", ""},
		{"flags override JSON", "", []string{"send", "-to", "cli_5", "-data", "thing1=v2", fmt.Sprintf(validJSON, "someone_else")}, 0, "", ""},
		{"scheduled in an hour", "", []string{"send", "-to", "cli_6", "-template", "T1", "-data", "thing1=later", "-send-at", "+1h"}, 0, `^[0-9A-HJKMNP-TV-Z]{26} scheduled\n$`, ""},
		{"JSON output", "", []string{"-json", "send", "-to", "cli_7", "-template", "T1", "-data", "thing1=x"}, 0, `(?s)^\{\n  "id": "[0-9A-HJKMNP-TV-Z]{26}",\n  "state": "queued"\n\}\n$`, ""},
		{"no -to", "", []string{"send", "-template", "T1", "-data", "thing1=x"}, 2, `^$`, "wxpush: -to: required"},
		{"no -data", "", []string{"send", "-to", "u", "-template", "T1"}, 2, `^$`, "wxpush: -data: required"},
		{"-data without =", "", []string{"send", "-to", "u", "-template", "T1", "-data", "thing1"}, 2, `^$`, `invalid value "thing1" for flag -data: want key=value`},
		{"bad -send-at", "", []string{"send", "-to", "u", "-template", "T1", "-data", "k=v", "-send-at", "tomorrow"}, 2, `^$`, "want an RFC 3339 time"},
		{"nothing to send", "", []string{"send"}, 2, `^$`, "wxpush: send: the message body is empty"},
		{"two arguments", "", []string{"send", "{}", "{}"}, 2, `^$`, "wxpush: send: give one JSON message"},
		{"invalid JSON", "", []string{"send", `{"touser":`}, 2, `^$`, "wxpush: message: invalid JSON"},
		{"misspelt field", "", []string{"send", `{"tousr":"u","template_id":"T1","data":{"thing1":{"value":"v"}}}`}, 2, `^$`, `wxpush: message: tousr: unknown field "tousr"`},
		{"unknown template", "", []string{"send", "-to", "u", "-template", "T9", "-data", "thing1=x"}, 1, `^$`, "wxpush: template_id: "},
		{"value too long", "", []string{"send", "-to", "u", "-template", "T1", "-data", "thing1=" + strings.Repeat("长", 21)}, 1, `^$`, "wxpush: data.thing1.value: "},
		{"bad server URL", "", []string{"-server", "localhost:1", "send", "-to", "u", "-template", "T1", "-data", "k=v"}, 2, `^$`, "wxpush: -server: "},
		{"unknown flag", "", []string{"send", "-too", "u"}, 2, `^$`, "wxpush: send: flag provided but not defined: -too"},
		{"unknown command", "", []string{"sned"}, 2, `^$`, "wxpush: sned: unknown command"},
	}
	accepted := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := wxpush(t, c.API, tt.stdin, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", r.code, r.stderr, tt.code, tt.stderr)
			}
			if tt.stdout == "" {
				m := idState.FindStringSubmatch(r.stdout)
				if m == nil {
					t.Fatalf("stdout %q, want an id and its state", r.stdout)
				}
				waitState(t, c.API, m[1], "delivered")
			} else if !regexp.MustCompile(tt.stdout).MatchString(r.stdout) {
				t.Errorf("stdout %q, want %s", r.stdout, tt.stdout)
			}
			if tt.code == 0 {
				accepted++
			}
			if tt.code != 0 && strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
				t.Errorf("error is not one line: %q", r.stderr)
			}
		})
	}
	if got := enqueued(t, c); got != float64(accepted) {
		t.Errorf("enqueued %v messages, want %d: refused commands must send nothing", got, accepted)
	}
}

func writeFile(t *testing.T, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "messages.jsonl")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSendFile(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Workers: 1})
	later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	many := make([]string, 2500)
	for i := range many {
		many[i] = fmt.Sprintf(`{"touser":"many_%d","template_id":"T1","data":{"thing1":{"value":"v"}},"send_at":%q}`, i, later)
	}
	tests := []struct {
		name         string
		lines        []string // written to a file; nil = args name the file
		args         []string
		stdin        string
		code         int
		stdout       []string // substrings
		stderr       string
		wantEnqueued int
	}{
		{"line 2 rejected by the server",
			[]string{fmt.Sprintf(validJSON, "file_1"), `{"touser":"file_2","template_id":"T9","data":{"thing1":{"value":"v"}}}`, fmt.Sprintf(validJSON, "file_3")},
			nil, "", 1, []string{": 3 messages: 2 accepted, 1 rejected\n", "\nline 2: template_id: "}, "", 2},
		{"blank lines keep their numbers",
			[]string{"", fmt.Sprintf(validJSON, "file_4"), "  ", `{"touser":"","template_id":"T1","data":{"thing1":{"value":"v"}}}`},
			nil, "", 1, []string{": 2 messages: 1 accepted, 1 rejected\n", "\nline 4: touser: "}, "", 1},
		{"line 2 is not JSON: nothing sent",
			[]string{fmt.Sprintf(validJSON, "file_5"), `{"touser":"file_6",`, fmt.Sprintf(validJSON, "file_7")},
			nil, "", 2, nil, "wxpush: line 2: invalid JSON", 0},
		{"line 3 misspells a field: nothing sent",
			[]string{fmt.Sprintf(validJSON, "file_8"), fmt.Sprintf(validJSON, "file_9"), `{"touser":"x","template":"T1"}`},
			nil, "", 2, nil, "wxpush: line 3: template: unknown field", 0},
		{"flags override every line",
			[]string{fmt.Sprintf(validJSON, "file_10"), `{"touser":"file_11","template_id":"T9","data":{"thing1":{"value":"v"}}}`},
			[]string{"-template", "T1", "-priority", "low"}, "", 0, []string{": 2 messages: 2 accepted, 0 rejected\n"}, "", 2},
		{"2,500 lines", many, nil, "", 0, []string{": 2500 messages: 2500 accepted, 0 rejected\n"}, "", 2500},
		{"from stdin", nil, []string{"-file", "-"}, fmt.Sprintf(validJSON, "file_12") + "\n", 0, []string{"-: 1 messages: 1 accepted, 0 rejected\n"}, "", 1},
		{"missing file", nil, []string{"-file", "/nonexistent/messages.jsonl"}, "", 2, nil, "wxpush: -file: open /nonexistent/messages.jsonl: no such file or directory", 0},
		{"empty file", []string{"", ""}, nil, "", 2, nil, "wxpush: -file: no messages", 0},
		{"file and message", []string{fmt.Sprintf(validJSON, "file_13")}, []string{"{}"}, "", 2, nil, "wxpush: -file: give a file or a message, not both", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"send"}
			if tt.lines != nil {
				args = append(args, "--file", writeFile(t, tt.lines...))
			}
			args = append(args, tt.args...)
			before := enqueued(t, c)
			r := wxpush(t, c.API, tt.stdin, args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q\nstdout %s", r.code, r.stderr, tt.code, tt.stderr, r.stdout)
			}
			for _, s := range tt.stdout {
				if !strings.Contains(r.stdout, s) {
					t.Errorf("stdout %q, want %q in it", r.stdout, s)
				}
			}
			if tt.stderr == "" && r.stderr != "" {
				t.Errorf("stderr %q; a non-terminal gets no progress line", r.stderr)
			}
			if got := enqueued(t, c) - before; got != float64(tt.wantEnqueued) {
				t.Errorf("enqueued %v messages, want %d", got, tt.wantEnqueued)
			}
		})
	}

	t.Run("JSON summary", func(t *testing.T) {
		path := writeFile(t, fmt.Sprintf(validJSON, "json_1"), `{"touser":"json_2","template_id":"T9","data":{"thing1":{"value":"v"}}}`)
		r := wxpush(t, c.API, "", "send", "-json", "-file", path)
		var sum fileSummary
		if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil || r.code != 1 {
			t.Fatalf("exit %d, %v: %s", r.code, err, r.stdout)
		}
		if sum.Messages != 2 || sum.Accepted != 1 || sum.Rejected != 1 || len(sum.Results) != 2 ||
			sum.Results[0].Line != 1 || sum.Results[0].ID == "" || sum.Results[1].Line != 2 ||
			sum.Results[1].Error == nil || sum.Results[1].Error.Field != "template_id" {
			t.Fatalf("summary = %+v", sum)
		}
		waitState(t, c.API, sum.Results[0].ID, "delivered")
	})
}

// TestSendFileResume: when a batch fails as a whole, the command stops, says
// which lines were not sent and how to resume; resuming sends nothing twice.
func TestSendFileResume(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Workers: 1})
	later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	lines := make([]string, 1500)
	for i := range lines {
		lines[i] = fmt.Sprintf(`{"touser":"resume_%d","template_id":"T1","data":{"thing1":{"value":"v"}},"send_at":%q}`, i, later)
	}
	path := writeFile(t, lines...)
	// A gateway that passes the first batch and answers 503 to every later one.
	var mu sync.Mutex
	batches := 0
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		batches++
		n := batches
		mu.Unlock()
		if n > 1 {
			w.Header().Set("Retry-After", "0")
			http.Error(w, "upstream unavailable", http.StatusServiceUnavailable)
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, c.API+r.URL.RequestURI(), r.Body)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(gw.Close)

	r := wxpush(t, gw.URL, "", "send", "-file", path)
	if r.code != 1 || !strings.Contains(r.stdout, ": 1500 messages: 1000 accepted, 0 rejected, 500 not sent\n") ||
		!strings.Contains(r.stderr, "wxpush: stopped after 1000 of 1500 messages; from line 1001 on nothing was sent: ") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	key := regexp.MustCompile(`-idempotency-key (\S+)`).FindStringSubmatch(r.stderr)
	if key == nil {
		t.Fatalf("stderr names no key to resume with: %s", r.stderr)
	}
	r = wxpush(t, c.API, "", "send", "-file", path, "-idempotency-key", key[1])
	if r.code != 0 || !strings.Contains(r.stdout, ": 1500 messages: 1500 accepted, 0 rejected\n") {
		t.Fatalf("resume: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if got := enqueued(t, c); got != 1500 {
		t.Errorf("enqueued %v messages, want 1500 (the first batch replayed, not resent)", got)
	}
}

func TestOperatorCommands(t *testing.T) {
	t.Parallel()
	c := servicetest.Start(t, servicetest.Options{Workers: 1, Rules: "dead_*=system_busy:3, *=success",
		Env: map[string]string{"WXPUSH_MAX_ATTEMPTS": "3", "WXPUSH_RETRY_BASE": "10ms", "WXPUSH_RETRY_CAP": "20ms"}})
	send := func(t *testing.T, args ...string) string {
		t.Helper()
		r := wxpush(t, c.API, "", append([]string{"send", "-template", "T1", "-data", "thing1=v"}, args...)...)
		m := idState.FindStringSubmatch(r.stdout)
		if r.code != 0 || m == nil {
			t.Fatalf("send: exit %d %q %q", r.code, r.stdout, r.stderr)
		}
		return m[1]
	}
	dead := send(t, "-to", "dead_1")
	waitState(t, c.API, dead, "dead")
	scheduled := send(t, "-to", "later_1", "-send-at", "+1h")
	delivered := send(t, "-to", "ok_1")
	waitState(t, c.API, delivered, "delivered")

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string // regexps
		stderr string   // substring
	}{
		{"status", []string{"status", delivered}, 0, []string{`(?m)^state\s+delivered$`, `(?m)^wechat_msgid\s+\S+$`, `(?m)^finished_at\s+\d{4}-`, `(?m)^history:$`}, ""},
		{"status of a dead message", []string{"status", dead}, 0, []string{`(?m)^state\s+dead$`, `(?m)^attempts\s+3$`, `(?m)^last_error\s+-1 `}, ""},
		{"status without id", []string{"status"}, 2, nil, "wxpush: status: give one or more message IDs"},
		{"status of an unknown id", []string{"status", "01NOPE"}, 1, nil, `wxpush: id: no message "01NOPE"`},
		{"dead list", []string{"dead", "list", "-app", "default"}, 0, []string{`(?m)^` + dead + `\s+default\s+3\s+\d{4}-.*-1 `, `(?m)^1-1 of 1 dead messages of app default$`}, ""},
		{"dead list JSON", []string{"-json", "dead", "list"}, 0, []string{`"total": 1`, `"id": "` + dead + `"`}, ""},
		{"dead list, bad limit", []string{"dead", "list", "-limit", "9999"}, 1, nil, "wxpush: limit: limit must be an integer from 1 to 500"},
		{"dead without a command", []string{"dead"}, 2, nil, "usage: wxpush dead <command>"},
		{"dead retry of a live message", []string{"dead", "retry", delivered}, 1, nil, "wxpush: id: only dead messages can be retried"},
		{"cancel", []string{"cancel", scheduled}, 0, []string{`^` + scheduled + ` canceled\n$`}, ""},
		{"cancel a delivered message", []string{"cancel", delivered}, 1, nil, "wxpush: id: message is delivered"},
		{"resume", []string{"resume", "default"}, 0, []string{`^default: was not parked; 0 waiting messages woken\n$`}, ""},
		{"resume an unknown app", []string{"resume", "nope"}, 1, nil, `wxpush: app: app "nope" is not configured`},
		{"resume without app", []string{"resume"}, 2, nil, "wxpush: resume: want exactly one APP argument, got 0"},
		{"templates", []string{"templates", "default"}, 0, []string{`(?m)^TEMPLATE_ID\s+TITLE\s+KEYS$`, `(?m)^T1\s+发货通知\s+thing1$`}, ""},
		{"templates JSON", []string{"templates", "-json", "default"}, 0, []string{`"template_id": "T1"`, `"content": "\{\{thing1.DATA\}\}"`}, ""},
		{"dead retry", []string{"dead", "retry", dead}, 0, []string{`^` + dead + ` queued\n$`}, ""},
		{"dead retry, one of two unknown", []string{"dead", "retry", "01NOPE", delivered}, 1, nil, `wxpush: id: no message "01NOPE"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := wxpush(t, c.API, "", tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q\nstdout %s", r.code, r.stderr, tt.code, tt.stderr, r.stdout)
			}
			for _, re := range tt.stdout {
				if !regexp.MustCompile(re).MatchString(r.stdout) {
					t.Errorf("stdout does not match %s:\n%s", re, r.stdout)
				}
			}
		})
	}
	waitState(t, c.API, dead, "delivered") // requeued by "dead retry"
}

// TestHelp: -h on every command documents it on stdout and exits 0.
func TestHelp(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"top", []string{"-h"}, "usage: wxpush [-server URL]"},
		{"help command", []string{"help"}, "usage: wxpush [-server URL]"},
		{"help send", []string{"help", "send"}, "usage: wxpush send [flags] [JSON | -]"},
		{"dead group", []string{"dead", "-h"}, "usage: wxpush dead <command>"},
	}
	for _, c := range commands() {
		tests = append(tests, struct {
			name string
			args []string
			want string
		}{c.name, append(strings.Fields(c.name), "-h"), "usage: wxpush " + c.name + " "})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := wxpushEnv(t, map[string]string{"WXPUSH_API_KEY": "env-secret-key"}, "", append([]string{"-api-key", "flag-secret-key"}, tt.args...)...)
			if r.code != 0 || !strings.Contains(r.stdout, tt.want) || r.stderr != "" {
				t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
			}
			if strings.Contains(r.stdout, "secret-key") {
				t.Errorf("help shows the API key:\n%s", r.stdout)
			}
		})
	}
	if r := wxpush(t, "", ""); r.code != 2 || !strings.Contains(r.stderr, "usage: wxpush") {
		t.Errorf("no command: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestAPIKey: the key comes from -api-key or WXPUSH_API_KEY and is never printed.
func TestAPIKey(t *testing.T) {
	t.Parallel()
	const key = "cli-secret-key-0123456789"
	c := servicetest.Start(t, servicetest.Options{Workers: 1, Env: map[string]string{"WXPUSH_API_KEYS": key}})
	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
	}{
		{"key from the environment", map[string]string{"WXPUSH_SERVER": c.API, "WXPUSH_API_KEY": key}, nil, 0},
		{"key from the flag", map[string]string{"WXPUSH_SERVER": c.API}, []string{"-api-key", key}, 0},
		{"flag wins over the environment", map[string]string{"WXPUSH_SERVER": c.API, "WXPUSH_API_KEY": "wrong"}, []string{"-api-key", key}, 0},
		{"wrong key", map[string]string{"WXPUSH_SERVER": c.API, "WXPUSH_API_KEY": key + "x"}, nil, 1},
		{"no key", map[string]string{"WXPUSH_SERVER": c.API}, nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(tt.args, "send", "-to", "key_1", "-template", "T1", "-data", "thing1=v")
			r := wxpushEnv(t, tt.env, "", args...)
			if r.code != tt.code {
				t.Fatalf("exit %d, stderr %q; want %d", r.code, r.stderr, tt.code)
			}
			if tt.code != 0 && !strings.Contains(r.stderr, "wxpush: a valid API key is required") {
				t.Errorf("stderr %q", r.stderr)
			}
			if strings.Contains(r.stdout+r.stderr, key) {
				t.Errorf("output shows the key: %q %q", r.stdout, r.stderr)
			}
		})
	}
}

func TestProgress(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		on   bool
		want string
	}{
		{"terminal", true, "\r[" + strings.Repeat(" ", 30) + "] 0/2500 messages" +
			"\r[" + strings.Repeat("=", 12) + strings.Repeat(" ", 18) + "] 1000/2500 messages" +
			"\r[" + strings.Repeat("=", 30) + "] 2500/2500 messages\n"},
		{"not a terminal", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			p := &progress{w: &b, on: tt.on}
			for _, done := range []int{0, 1000, 2500} {
				p.update(done, 2500)
			}
			p.finish()
			if b.String() != tt.want {
				t.Errorf("progress wrote %q, want %q", b.String(), tt.want)
			}
		})
	}
}
