package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/wxpush/wxpush/client"
)

var statusCommand = command{
	name:     "status",
	synopsis: "ID...",
	summary:  "show messages' states and histories",
	help: `
Prints each message's state, attempts, WeChat msgid, last error, times and
history. States: queued, scheduled, retrying, sent, then delivered,
user_blocked, wechat_failed, rejected, dead, expired, canceled or unconfirmed.

example:
  wxpush status 01KABCDEF...`,
	flags: func(r *runner, fs *flag.FlagSet) func(context.Context, []string) error {
		return func(ctx context.Context, ids []string) error {
			return r.eachID(ctx, "status", ids, func(cl *client.Client, id string) error {
				s, err := cl.Status(ctx, id)
				if err != nil {
					return err
				}
				if r.json {
					return r.printJSON(s)
				}
				r.printStatus(s)
				return nil
			})
		}
	},
}

var cancelCommand = command{
	name:     "cancel",
	synopsis: "ID...",
	summary:  "cancel messages WeChat has not accepted",
	help: `
Cancels each message that is queued, scheduled or retrying; it is then
canceled and never sent. A message already sent to WeChat cannot be canceled.

example:
  wxpush cancel 01KABCDEF...`,
	flags: func(r *runner, fs *flag.FlagSet) func(context.Context, []string) error {
		return func(ctx context.Context, ids []string) error {
			return r.eachID(ctx, "cancel", ids, func(cl *client.Client, id string) error {
				a, err := cl.Cancel(ctx, id)
				if err != nil {
					return err
				}
				return r.printAccepted(a)
			})
		}
	},
}

var deadListCommand = command{
	name:     "dead list",
	synopsis: "[-app APP] [-limit N] [-offset N]",
	summary:  "list an app's dead messages (retries exhausted)",
	help: `
Lists an app's dead messages, newest first, a page at a time, with their
attempts and last error. Requeue them with 'wxpush dead retry ID...'.

example:
  wxpush dead list -app shop -limit 20`,
	flags: func(r *runner, fs *flag.FlagSet) func(context.Context, []string) error {
		app := fs.String("app", "", "the `app` (default: the server's default app)")
		limit := fs.Int("limit", 50, "messages per page, 1 to 500")
		offset := fs.Int("offset", 0, "skip this many of the newest")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageErr("dead list", "unexpected arguments %q (the app is -app)", args)
			}
			cl, err := r.client()
			if err != nil {
				return err
			}
			page, err := cl.Dead(ctx, *app, *offset, *limit)
			if err != nil {
				return err
			}
			if r.json {
				return r.printJSON(page)
			}
			r.printDead(page, *app, *offset)
			return nil
		}
	},
}

var deadRetryCommand = command{
	name:     "dead retry",
	synopsis: "ID...",
	summary:  "requeue dead messages",
	help: `
Requeues each dead message with its id; WeChat drops it if an earlier attempt
did get through (the same client_msg_id).

example:
  wxpush dead retry 01KABCDEF... 01KABCDEG...`,
	flags: func(r *runner, fs *flag.FlagSet) func(context.Context, []string) error {
		return func(ctx context.Context, ids []string) error {
			return r.eachID(ctx, "dead retry", ids, func(cl *client.Client, id string) error {
				if err := cl.Retry(ctx, id); err != nil {
					return err
				}
				return r.printAccepted(client.Accepted{ID: id, State: client.StateQueued})
			})
		}
	},
}

var resumeCommand = command{
	name:     "resume",
	synopsis: "APP",
	summary:  "lift an app's park and wake its waiting messages",
	help: `
Lifts an app's park — the daily quota (45009), or a configuration error such
as a wrong secret — once its cause is fixed, and wakes its waiting messages.
Resuming an app that is not parked is harmless.

example:
  wxpush resume shop`,
	flags: func(r *runner, fs *flag.FlagSet) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			app, err := oneArg("resume", "APP", args)
			if err != nil {
				return err
			}
			cl, err := r.client()
			if err != nil {
				return err
			}
			res, err := cl.Resume(ctx, app)
			if err != nil {
				return err
			}
			if r.json {
				return r.printJSON(res)
			}
			was := "was not parked"
			if res.Resumed {
				was = "resumed (it was parked)"
			}
			fmt.Fprintf(r.stdout, "%s: %s; %d waiting messages woken\n", res.App, was, res.Woken)
			return nil
		}
	},
}

var templatesCommand = command{
	name:     "templates",
	synopsis: "APP",
	summary:  "list an app's templates and their data keys",
	help: `
Lists an app's template-message templates: id, title and the data keys a
message must give (one -data key=value each).

example:
  wxpush templates default`,
	flags: func(r *runner, fs *flag.FlagSet) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			app, err := oneArg("templates", "APP", args)
			if err != nil {
				return err
			}
			cl, err := r.client()
			if err != nil {
				return err
			}
			list, err := cl.Templates(ctx, app)
			if err != nil {
				return err
			}
			if r.json {
				if list == nil {
					list = []client.Template{}
				}
				return r.printJSON(list)
			}
			if len(list) == 0 {
				fmt.Fprintf(r.stdout, "app %s has no templates\n", app)
				return nil
			}
			tw := tabwriter.NewWriter(r.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TEMPLATE_ID\tTITLE\tKEYS")
			for _, t := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", t.ID, t.Title, strings.Join(t.Keys(), ","))
			}
			return tw.Flush()
		}
	},
}

func oneArg(cmd, what string, args []string) (string, error) {
	if len(args) != 1 || args[0] == "" {
		return "", usageErr(cmd, "want exactly one %s argument, got %d", what, len(args))
	}
	return args[0], nil
}

// eachID runs do for every id, reporting failures as they come; the exit
// status is 1 if any failed.
func (r *runner) eachID(ctx context.Context, cmd string, ids []string, do func(*client.Client, string) error) error {
	if len(ids) == 0 {
		return usageErr(cmd, "give one or more message IDs")
	}
	cl, err := r.client()
	if err != nil {
		return err
	}
	failed := 0
	for _, id := range ids {
		if err := do(cl, id); err != nil {
			if ctx.Err() != nil || len(ids) == 1 {
				return err
			}
			failed++
			r.exit(err)
		}
	}
	if failed > 0 {
		return &exitError{code: exitFailed}
	}
	return nil
}

func (r *runner) printJSON(v any) error {
	enc := json.NewEncoder(r.stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func (r *runner) printAccepted(a client.Accepted) error {
	if r.json {
		return r.printJSON(a)
	}
	_, err := fmt.Fprintf(r.stdout, "%s %s\n", a.ID, a.State)
	return err
}

const timeLayout = "2006-01-02 15:04:05.000 Z07:00"

func (r *runner) printStatus(s client.Status) {
	tw := tabwriter.NewWriter(r.stdout, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	row("id", s.ID)
	row("app", s.App)
	row("kind", s.Kind)
	row("state", string(s.State))
	row("attempts", fmt.Sprint(s.Attempts))
	row("wechat_msgid", s.WeChatMsgID)
	row("wechat_status", s.WeChatStatus)
	if s.LastError != nil {
		row("last_error", fmt.Sprintf("%d %s", s.LastError.ErrCode, s.LastError.ErrMsg))
	}
	for _, t := range []struct {
		name string
		at   time.Time
	}{{"created_at", s.CreatedAt}, {"send_at", s.SendAt}, {"expire_at", s.ExpireAt}, {"sent_at", s.SentAt}, {"finished_at", s.FinishedAt}} {
		if !t.at.IsZero() {
			row(t.name, t.at.Local().Format(timeLayout))
		}
	}
	tw.Flush()
	if len(s.History) == 0 {
		return
	}
	fmt.Fprintln(r.stdout, "history:")
	tw = tabwriter.NewWriter(r.stdout, 0, 4, 2, ' ', 0)
	for _, e := range s.History {
		var detail []string
		if e.ErrCode != 0 || e.ErrMsg != "" {
			detail = append(detail, fmt.Sprintf("errcode %d %s", e.ErrCode, e.ErrMsg))
		}
		if e.Status != "" {
			detail = append(detail, "status "+e.Status)
		}
		if e.Note != "" {
			detail = append(detail, e.Note)
		}
		line := fmt.Sprintf("  %s\t%s\t%s", e.At.Local().Format(timeLayout), e.Event, e.State)
		if len(detail) > 0 {
			line += "\t" + strings.Join(detail, "; ")
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
}

func (r *runner) printDead(p client.DeadPage, app string, offset int) {
	name := "app " + app
	if app == "" {
		name = "the default app"
	}
	if len(p.Messages) == 0 {
		fmt.Fprintf(r.stdout, "no dead messages of %s (%d in all)\n", name, p.Total)
		return
	}
	tw := tabwriter.NewWriter(r.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAPP\tATTEMPTS\tDIED\tLAST ERROR")
	for _, m := range p.Messages {
		died, last := "-", "-"
		if !m.FinishedAt.IsZero() {
			died = m.FinishedAt.Local().Format(timeLayout)
		}
		if m.LastError != nil {
			last = fmt.Sprintf("%d %s", m.LastError.ErrCode, m.LastError.ErrMsg)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", m.ID, m.App, m.Attempts, died, last)
	}
	tw.Flush()
	fmt.Fprintf(r.stdout, "%d-%d of %d dead messages of %s\n", offset+1, offset+len(p.Messages), p.Total, name)
	if p.NextOffset > 0 {
		next := fmt.Sprintf("wxpush dead list -offset %d", p.NextOffset)
		if app != "" {
			next = fmt.Sprintf("wxpush dead list -app %s -offset %d", app, p.NextOffset)
		}
		fmt.Fprintf(r.stdout, "next page: %s\n", next)
	}
}
