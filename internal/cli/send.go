package cli

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/wxpush/wxpush/client"
)

// maxBodyBytes bounds a message body read from an argument, stdin or a line of
// a file; the server refuses more than 64 KiB anyway.
const maxBodyBytes = 1 << 20

var sendCommand = command{
	name:     "send",
	synopsis: "[flags] [JSON | -]\n       wxpush send -file messages.jsonl [flags]",
	summary:  "enqueue a message (flags or JSON), or a JSON-lines file of them",
	help: `
Enqueues one message and prints its id and state. The message comes from
flags (-to, -template and one -data key=value per template placeholder), or
is the API's JSON body given as the argument, read from stdin with "-", or
piped in with no argument. Flags given with a JSON body override its fields.

With -file, every non-blank line of the file ("-" = stdin) is one JSON
message. The whole file is checked first: a line that is not a valid message
stops the command (exit 2) before anything is sent. The messages are then
sent in batches of 1,000, with a progress line when stderr is a terminal;
the summary counts accepted and rejected messages and names the line and
error of each rejected one (exit 1 if any). Message flags override the same
field of every line. Each batch carries an idempotency key derived from
-idempotency-key (random if not given): if a run stops half-way, running the
same command with the key it prints resumes without sending anything twice.

examples:
  wxpush send -to OPENID -template T1 -data thing1="order shipped" -ttl 10m
  wxpush send '{"touser":"OPENID","template_id":"T1","data":{"thing1":{"value":"hi"}}}'
  wxpush send -app shop - < message.json
  wxpush send -file messages.jsonl`,
	flags: (*runner).sendFlags,
}

// messageFlags are the flags that set message fields.
type messageFlags struct {
	app, to, template, url, priority, kind, page, mpAppID, mpPage string
	sendAt, expireAt                                              timeFlag
	ttl                                                           time.Duration
	data                                                          dataFlag
}

func (r *runner) sendFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	var mf messageFlags
	var file, key string
	fs.StringVar(&mf.app, "app", "", "the configured WeChat `app` (default: the server's default app)")
	fs.StringVar(&mf.to, "to", "", "the recipient's `openid` (touser)")
	fs.StringVar(&mf.template, "template", "", "the template `id` (see wxpush templates APP)")
	fs.Var(&mf.data, "data", "a template value as `key=value`; repeat for each placeholder")
	fs.StringVar(&mf.url, "url", "", "the `URL` the message opens on tap")
	fs.StringVar(&mf.mpAppID, "miniprogram", "", "the mini program `appid` the message opens on tap")
	fs.StringVar(&mf.mpPage, "pagepath", "", "the mini program `page` opened (with -miniprogram)")
	fs.StringVar(&mf.priority, "priority", "", "queue `priority`: high, normal (default) or low")
	fs.Var(&mf.sendAt, "send-at", "send at this `time`: RFC 3339 (2026-01-02T15:04:05+08:00) or +duration (+10m)")
	fs.Var(&mf.expireAt, "expire-at", "settle expired if not sent by this `time`: RFC 3339 or +duration")
	fs.DurationVar(&mf.ttl, "ttl", 0, "expire this `duration` after the send time (10m, 2h)")
	fs.StringVar(&mf.kind, "kind", "", "message `kind`: template (default) or subscribe")
	fs.StringVar(&mf.page, "page", "", "the mini program `page` a subscribe message opens")
	fs.StringVar(&file, "file", "", "send every line of this JSON-lines `file` (- = stdin)")
	fs.StringVar(&key, "idempotency-key", "", "Idempotency-Key: repeating the command with the same `key` sends nothing twice")
	return func(ctx context.Context, args []string) error {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if file != "" {
			if len(args) > 0 {
				return usageErr("-file", "give a file or a message, not both")
			}
			return r.sendFile(ctx, file, key, mf.patch(set))
		}
		return r.sendOne(ctx, args, key, &mf, set)
	}
}

// patch returns a function that sets the fields whose flags were given.
func (mf *messageFlags) patch(set map[string]bool) func(*client.Message) {
	return func(m *client.Message) {
		for name := range set {
			switch name {
			case "app":
				m.App = mf.app
			case "to":
				m.ToUser = mf.to
			case "template":
				m.TemplateID = mf.template
			case "url":
				m.URL = mf.url
			case "miniprogram", "pagepath":
				m.MiniProgram = &client.MiniProgram{AppID: mf.mpAppID, PagePath: mf.mpPage}
			case "priority":
				m.Priority = mf.priority
			case "send-at":
				m.SendAt = mf.sendAt.t
			case "expire-at":
				m.ExpireAt = mf.expireAt.t
			case "ttl":
				m.TTL = mf.ttl
			case "kind":
				m.Kind = mf.kind
			case "page":
				m.Page = mf.page
			case "data":
				if m.Data == nil {
					m.Data = map[string]client.Value{}
				}
				for _, kv := range mf.data {
					v := m.Data[kv.key]
					v.Value = kv.value
					m.Data[kv.key] = v
				}
			}
		}
	}
}

func (r *runner) sendOne(ctx context.Context, args []string, key string, mf *messageFlags, set map[string]bool) error {
	var m client.Message
	var body []byte
	var err error
	switch {
	case len(args) > 1:
		return usageErr("send", "give one JSON message (quoted as one argument), or - to read it from stdin; got %d arguments", len(args))
	case len(args) == 1 && args[0] == "-":
		body, err = r.readStdin()
	case len(args) == 1:
		body = []byte(args[0])
	case !anySet(set, "app", "to", "template", "data", "url", "miniprogram", "pagepath",
		"priority", "send-at", "expire-at", "ttl", "kind", "page"):
		if r.stdin == nil || isTerminal(r.stdin) {
			return usageErr("send", "nothing to send: give -to, -template and -data, a JSON message, or - to read one from stdin")
		}
		body, err = r.readStdin()
	default:
		switch {
		case !set["to"]:
			return usageErr("-to", "required: the recipient's openid")
		case !set["template"]:
			return usageErr("-template", "required: the template id (wxpush templates APP lists them)")
		case !set["data"]:
			return usageErr("-data", "required: one key=value for each placeholder of the template")
		}
	}
	if err != nil {
		return err
	}
	if body != nil {
		if strings.TrimSpace(string(body)) == "" {
			return usageErr("send", "the message body is empty")
		}
		if err := json.Unmarshal(body, &m); err != nil {
			return &exitError{code: exitUsage, err: fmt.Errorf("message: %s", describe(err))}
		}
	}
	mf.patch(set)(&m)
	cl, err := r.client()
	if err != nil {
		return err
	}
	var opts []client.SendOption
	if key != "" {
		opts = append(opts, client.IdempotencyKey(key))
	}
	a, err := cl.Send(ctx, m, opts...)
	if err != nil {
		return err
	}
	if r.json {
		return r.printJSON(a)
	}
	fmt.Fprintf(r.stdout, "%s %s\n", a.ID, a.State)
	return nil
}

func anySet(set map[string]bool, names ...string) bool {
	for _, n := range names {
		if set[n] {
			return true
		}
	}
	return false
}

func (r *runner) readStdin() ([]byte, error) {
	if r.stdin == nil {
		return nil, usageErr("stdin", "no standard input")
	}
	b, err := io.ReadAll(io.LimitReader(r.stdin, maxBodyBytes+1))
	switch {
	case err != nil:
		return nil, usageErr("stdin", "%v", err)
	case len(b) > maxBodyBytes:
		return nil, usageErr("stdin", "a message is at most %d bytes", maxBodyBytes)
	}
	return b, nil
}

// describe words a decoding error as "<field>: <message>".
func describe(err error) string {
	var e *client.Error
	if errors.As(err, &e) {
		if e.Field == "" {
			return e.Message
		}
		return e.Field + ": " + e.Message
	}
	var syntax *json.SyntaxError
	if errors.As(err, &syntax) {
		return fmt.Sprintf("invalid JSON at byte %d: %v", syntax.Offset, err)
	}
	return err.Error()
}

// fileResult is one line's outcome in the -json summary of send -file.
type fileResult struct {
	Line  int           `json:"line"`
	ID    string        `json:"id,omitempty"`
	State client.State  `json:"state,omitempty"`
	Error *client.Error `json:"error,omitempty"`
}

// fileSummary is the -json summary of send -file.
type fileSummary struct {
	File     string `json:"file"`
	Messages int    `json:"messages"`
	Accepted int    `json:"accepted"`
	Rejected int    `json:"rejected"`
	// Unsent counts messages never sent because a request failed as a whole.
	Unsent         int          `json:"unsent"`
	IdempotencyKey string       `json:"idempotency_key"`
	Results        []fileResult `json:"results"`
	Error          string       `json:"error,omitempty"`
}

// maxListed bounds the bad lines printed before a file is refused.
const maxListed = 20

// sendFile sends every line of path, after checking them all.
func (r *runner) sendFile(ctx context.Context, path, key string, patch func(*client.Message)) error {
	var in io.Reader = r.stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return usageErr("-file", "%v", err)
		}
		defer f.Close()
		in = f
	} else if in == nil {
		return usageErr("-file", "no standard input")
	}
	msgs, lines, err := r.readFile(in, patch)
	if err != nil {
		return err
	}
	cl, err := r.client()
	if err != nil {
		return err
	}
	if key == "" {
		key = "wxpush-cli-" + rand.Text()
	}
	bar := &progress{w: r.stderr, on: isTerminal(r.stderr)}
	bar.update(0, len(msgs))
	res, sendErr := cl.SendBatch(ctx, msgs, client.IdempotencyKey(key), client.Progress(bar.update))
	bar.finish()

	sum := fileSummary{File: path, Messages: len(msgs), Accepted: res.Accepted, Rejected: res.Rejected,
		Unsent: len(msgs) - len(res.Results), IdempotencyKey: key, Results: make([]fileResult, len(res.Results))}
	for i, item := range res.Results {
		fr := fileResult{Line: lines[i], ID: item.ID, State: item.State, Error: item.Error}
		if item.Error != nil {
			e := *item.Error
			e.Field = itemField(e.Field, i)
			fr.Error = &e
		}
		sum.Results[i] = fr
	}
	if sendErr != nil {
		sum.Error = strings.TrimPrefix(sendErr.Error(), "wxpush: ")
	}
	if r.json {
		if err := r.printJSON(sum); err != nil {
			return err
		}
	} else {
		r.printSummary(sum)
	}
	if sendErr != nil {
		r.errorf("stopped after %d of %d messages; from line %d on nothing was sent: %s",
			len(res.Results), len(msgs), lines[len(res.Results)], sum.Error)
		r.errorf("to resume without sending any message twice, run the same command with -idempotency-key %s", key)
		return &exitError{code: exitFailed}
	}
	if sum.Rejected > 0 {
		return &exitError{code: exitFailed}
	}
	return nil
}

// readFile decodes every non-blank line of in, and returns the messages with
// their line numbers, or an error listing the bad lines.
func (r *runner) readFile(in io.Reader, patch func(*client.Message)) ([]client.Message, []int, error) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), maxBodyBytes)
	var msgs []client.Message
	var lines []int
	bad := 0
	n := 0
	for sc.Scan() {
		n++
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		var m client.Message
		if err := json.Unmarshal([]byte(text), &m); err != nil {
			if bad++; bad <= maxListed {
				r.errorf("line %d: %s", n, describe(err))
			}
			continue
		}
		patch(&m)
		msgs = append(msgs, m)
		lines = append(lines, n)
	}
	switch err := sc.Err(); {
	case errors.Is(err, bufio.ErrTooLong):
		return nil, nil, usageErr("-file", "line %d is longer than %d bytes; nothing was sent", n+1, maxBodyBytes)
	case err != nil:
		return nil, nil, usageErr("-file", "%v; nothing was sent", err)
	case bad > maxListed:
		r.errorf("… and %d more bad lines", bad-maxListed)
		fallthrough
	case bad > 0:
		return nil, nil, usageErr("-file", "%d of %d messages are not valid; nothing was sent", bad, bad+len(msgs))
	case len(msgs) == 0:
		return nil, nil, usageErr("-file", "no messages (every line is blank)")
	}
	return msgs, lines, nil
}

// itemField drops the batch index from an item's error field:
// "messages[12].touser" → "touser".
func itemField(field string, i int) string {
	prefix := "messages[" + strconv.Itoa(i) + "]"
	rest, ok := strings.CutPrefix(field, prefix)
	if !ok {
		return field
	}
	return strings.TrimPrefix(rest, ".")
}

func (r *runner) printSummary(s fileSummary) {
	fmt.Fprintf(r.stdout, "%s: %d messages: %d accepted, %d rejected", s.File, s.Messages, s.Accepted, s.Rejected)
	if s.Unsent > 0 {
		fmt.Fprintf(r.stdout, ", %d not sent", s.Unsent)
	}
	fmt.Fprintln(r.stdout)
	for _, res := range s.Results {
		if res.Error == nil {
			continue
		}
		if res.Error.Field != "" {
			fmt.Fprintf(r.stdout, "line %d: %s: %s\n", res.Line, res.Error.Field, res.Error.Message)
		} else {
			fmt.Fprintf(r.stdout, "line %d: %s\n", res.Line, res.Error.Message)
		}
	}
}

// progress draws "[=====     ] 1000/2500" on one terminal line.
type progress struct {
	w     io.Writer
	on    bool
	drawn bool
}

const barWidth = 30

func (p *progress) update(done, total int) {
	if !p.on || total == 0 {
		return
	}
	filled := done * barWidth / total
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d messages", strings.Repeat("=", filled), strings.Repeat(" ", barWidth-filled), done, total)
	p.drawn = true
}

func (p *progress) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}

// dataFlag collects -data key=value.
type dataFlag []keyValue

type keyValue struct{ key, value string }

func (d *dataFlag) String() string { return "" }

func (d *dataFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	for _, kv := range *d {
		if kv.key == k {
			return fmt.Errorf("key %q given twice", k)
		}
	}
	*d = append(*d, keyValue{k, v})
	return nil
}

// timeFlag is an RFC 3339 time or +duration from now.
type timeFlag struct{ t time.Time }

func (f *timeFlag) String() string { return "" }

func (f *timeFlag) Set(s string) error {
	if d, ok := strings.CutPrefix(s, "+"); ok {
		dur, err := time.ParseDuration(d)
		if err != nil {
			return fmt.Errorf("want an RFC 3339 time or +duration such as +10m, got %q", s)
		}
		f.t = time.Now().Add(dur)
		return nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return fmt.Errorf("want an RFC 3339 time such as 2026-01-02T15:04:05+08:00, or +duration, got %q", s)
	}
	f.t = t
	return nil
}
