package cli

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/wxpush/wxpush/client"
)

var webhooksDeadCommand = command{
	name:     "webhooks dead",
	synopsis: "[-app APP] [-limit N] [-offset N]",
	summary:  "list dead status webhooks (delivery window ran out)",
	help: `
Lists status webhooks whose delivery gave up, newest first, a page at a time,
with the receiver (without query string), attempts and last error. Send one
again with 'wxpush webhooks replay EVENT_ID'.

example:
  wxpush webhooks dead -app shop -limit 20`,
	flags: func(r *runner, fs *flag.FlagSet) func(context.Context, []string) error {
		app := fs.String("app", "", "only this `app` (default: every app)")
		limit := fs.Int("limit", 50, "webhooks per page, 1 to 500")
		offset := fs.Int("offset", 0, "skip this many of the newest")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageErr("webhooks dead", "unexpected arguments %q (the app is -app)", args)
			}
			cl, err := r.client()
			if err != nil {
				return err
			}
			page, err := cl.DeadWebhooks(ctx, *app, *offset, *limit)
			if err != nil {
				return err
			}
			if r.json {
				return r.printJSON(page)
			}
			r.printDeadWebhooks(page, *app, *offset)
			return nil
		}
	},
}

var webhooksReplayCommand = command{
	name:     "webhooks replay",
	synopsis: "EVENT_ID...",
	summary:  "send dead status webhooks again",
	help: `
Sends each dead webhook again with a fresh delivery window. The receiver may
already have had it (deliveries are at least once): it deduplicates by
event_id.

example:
  wxpush webhooks replay 1796619932724-0`,
	flags: func(r *runner, fs *flag.FlagSet) func(context.Context, []string) error {
		return func(ctx context.Context, ids []string) error {
			if len(ids) == 0 {
				return usageErr("webhooks replay", "give one or more event IDs")
			}
			return r.eachID(ctx, "webhooks replay", ids, func(cl *client.Client, id string) error {
				if err := cl.ReplayWebhook(ctx, id); err != nil {
					return err
				}
				if r.json {
					return r.printJSON(map[string]string{"event_id": id, "status": "replaying"})
				}
				_, err := fmt.Fprintf(r.stdout, "%s replaying\n", id)
				return err
			})
		}
	},
}

func (r *runner) printDeadWebhooks(p client.DeadWebhookPage, app string, offset int) {
	name := "app " + app
	if app == "" {
		name = "any app"
	}
	if len(p.Events) == 0 {
		fmt.Fprintf(r.stdout, "no dead webhooks of %s (%d in all)\n", name, p.Total)
		return
	}
	tw := tabwriter.NewWriter(r.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "EVENT ID\tMESSAGE\tAPP\tSTATE\tURL\tATTEMPTS\tDIED\tLAST ERROR")
	for _, d := range p.Events {
		died := "-"
		if !d.DiedAt.IsZero() {
			died = d.DiedAt.Local().Format(timeLayout)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.Event.EventID, d.Event.ID, d.Event.App, d.Event.State,
			d.URL, d.Attempts, died, d.LastError)
	}
	tw.Flush()
	fmt.Fprintf(r.stdout, "%d-%d of %d dead webhooks of %s\n", offset+1, offset+len(p.Events), p.Total, name)
	if p.NextOffset > 0 {
		next := fmt.Sprintf("wxpush webhooks dead -offset %d", p.NextOffset)
		if app != "" {
			next = fmt.Sprintf("wxpush webhooks dead -app %s -offset %d", app, p.NextOffset)
		}
		fmt.Fprintf(r.stdout, "next page: %s\n", next)
	}
}
