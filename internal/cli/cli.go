// Package cli is the wxpush command: it parses arguments, talks to a wxpush
// server's HTTP API through package client, and prints for a person or, with
// -json, for a program. Run is the whole command; cmd/wxpush only connects the
// process to it. It keeps no global state, so Run may be called concurrently,
// and it never prints the API key. Exit status: 0 done, 1 the server refused
// or failed (or a bulk send had rejected lines), 2 bad usage or unreadable
// input, in which case nothing was sent.
package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/wxpush/wxpush/client"
)

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

const defaultServer = "http://127.0.0.1:8080"

// Run runs the wxpush command with args (without the program name) and returns
// its exit status. getenv supplies WXPUSH_SERVER and WXPUSH_API_KEY.
func Run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	r := &runner{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	return r.exit(r.run(ctx, args))
}

// runner is one run of the command: its streams and the global flags.
type runner struct {
	getenv         func(string) string
	stdin          io.Reader
	stdout, stderr io.Writer
	server, apiKey string
	json           bool
}

// exitError carries an exit status; a nil err has been reported already.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// usageErr is bad input: the message names the flag or argument at fault.
func usageErr(field, format string, a ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...))}
}

// exit reports err on stderr as "wxpush: …" and returns the exit status.
func (r *runner) exit(err error) int {
	if err == nil {
		return exitOK
	}
	code := exitFailed
	var ee *exitError
	if errors.As(err, &ee) {
		code, err = ee.code, ee.err
	}
	if err != nil {
		r.errorf("%s", strings.TrimPrefix(err.Error(), "wxpush: "))
	}
	return code
}

func (r *runner) errorf(format string, a ...any) {
	fmt.Fprintf(r.stderr, "wxpush: "+format+"\n", a...)
}

// command is one subcommand.
type command struct {
	name     string // "send", "dead list"
	synopsis string // the arguments after the name
	summary  string
	help     string // what it does, examples
	// flags registers the command's own flags and returns its action, which
	// runs after parsing with the positional arguments.
	flags func(r *runner, fs *flag.FlagSet) func(ctx context.Context, args []string) error
}

func commands() []command {
	return []command{sendCommand, statusCommand, cancelCommand, deadListCommand, deadRetryCommand, resumeCommand, templatesCommand,
		webhooksDeadCommand, webhooksReplayCommand, webhooksListenCommand, inboxParkedCommand, inboxReplayCommand}
}

func (r *runner) run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wxpush", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	r.globalFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			r.topUsage(r.stdout)
			return nil
		}
		return usageErr("flags", "%v (run 'wxpush -h' for usage)", err)
	}
	args = fs.Args()
	if len(args) == 0 {
		r.topUsage(r.stderr)
		return &exitError{code: exitUsage}
	}
	name, rest := args[0], args[1:]
	if name == "help" {
		if len(rest) == 0 {
			r.topUsage(r.stdout)
			return nil
		}
		name, rest = rest[0], append(rest[1:], "-h")
	}
	if name == "dead" {
		if len(rest) == 0 || (rest[0] != "list" && rest[0] != "retry") {
			if len(rest) > 0 && (rest[0] == "-h" || rest[0] == "-help" || rest[0] == "--help") {
				r.groupUsage(r.stdout, "dead")
				return nil
			}
			r.groupUsage(r.stderr, "dead")
			return &exitError{code: exitUsage}
		}
		name, rest = "dead "+rest[0], rest[1:]
	}
	for group, subs := range map[string][]string{
		"webhooks": {"dead", "replay", "listen"}, // the webhook surface: webhooks.go
		"inbox":    {"parked", "replay"},         // the callback inbox: inbox.go
	} {
		if name != group {
			continue
		}
		if len(rest) == 0 || !slices.Contains(subs, rest[0]) {
			if len(rest) > 0 && (rest[0] == "-h" || rest[0] == "-help" || rest[0] == "--help") {
				r.groupUsage(r.stdout, group)
				return nil
			}
			r.groupUsage(r.stderr, group)
			return &exitError{code: exitUsage}
		}
		name, rest = group+" "+rest[0], rest[1:]
	}
	for _, c := range commands() {
		if c.name == name {
			return r.runCommand(ctx, c, rest)
		}
	}
	return usageErr(name, "unknown command (run 'wxpush -h' for the list)")
}

func (r *runner) runCommand(ctx context.Context, c command, args []string) error {
	fs := flag.NewFlagSet("wxpush "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	action := c.flags(r, fs)
	r.globalFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			r.commandUsage(r.stdout, c, fs)
			return nil
		}
		return usageErr(c.name, "%v (run 'wxpush %s -h' for usage)", err, c.name)
	}
	return action(ctx, fs.Args())
}

// globalFlags registers -server, -api-key and -json, accepted before the
// command and after it.
func (r *runner) globalFlags(fs *flag.FlagSet) {
	fs.Var(stringFlag{&r.server}, "server", "API base `URL` (else $WXPUSH_SERVER, else "+defaultServer+")")
	fs.Var(stringFlag{&r.apiKey}, "api-key", "API `key`, sent as a bearer token (else $WXPUSH_API_KEY)")
	fs.Var(boolFlag{&r.json}, "json", "print JSON instead of text")
}

// client returns a client of the server the flags and environment name.
func (r *runner) client() (*client.Client, error) {
	server := cmp.Or(r.server, r.getenv("WXPUSH_SERVER"), defaultServer)
	c, err := client.New(server, client.WithAPIKey(cmp.Or(r.apiKey, r.getenv("WXPUSH_API_KEY"))))
	if err != nil {
		return nil, usageErr("-server", "%s", strings.TrimPrefix(err.Error(), "wxpush: "))
	}
	return c, nil
}

// stringFlag is a string flag whose default is never printed: a default
// filled in from an earlier flag could be the API key.
type stringFlag struct{ p *string }

func (f stringFlag) String() string     { return "" }
func (f stringFlag) Set(v string) error { *f.p = v; return nil }

// boolFlag is a bool flag that keeps a value set before the command.
type boolFlag struct{ p *bool }

func (f boolFlag) String() string   { return "" }
func (f boolFlag) IsBoolFlag() bool { return true }
func (f boolFlag) Set(v string) error {
	switch v {
	case "true", "1":
		*f.p = true
	case "false", "0":
		*f.p = false
	default:
		return fmt.Errorf("want true or false, got %q", v)
	}
	return nil
}

func (r *runner) topUsage(w io.Writer) {
	fmt.Fprint(w, `wxpush sends WeChat template messages through a wxpush server and inspects them.

usage: wxpush [-server URL] [-api-key KEY] [-json] <command> [arguments]

commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-16s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
global flags (accepted before or after the command):
`)
	fs := flag.NewFlagSet("wxpush", flag.ContinueOnError)
	r.globalFlags(fs)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprint(w, `
exit status: 0 done; 1 the server refused or failed, or a bulk send had
rejected lines; 2 bad usage or unreadable input (nothing was sent).

Run 'wxpush <command> -h' for a command's flags and examples.
`)
}

func (r *runner) groupUsage(w io.Writer, group string) {
	fmt.Fprintf(w, "usage: wxpush %s <command>\n\ncommands:\n", group)
	for _, c := range commands() {
		if strings.HasPrefix(c.name, group+" ") {
			fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintf(w, "\nRun 'wxpush %s <command> -h' for its flags.\n", group)
}

func (r *runner) commandUsage(w io.Writer, c command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: wxpush %s %s\n\n%s\n\nflags:\n", c.name, c.synopsis, strings.TrimSpace(c.help))
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// isTerminal reports whether f is a terminal (a character device), for the
// progress line and for not waiting on a keyboard for a message body.
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	if !ok {
		return false
	}
	fi, err := file.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
