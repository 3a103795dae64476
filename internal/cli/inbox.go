package cli

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/wxpush/wxpush/client"
)

var inboxParkedCommand = command{
	name:     "inbox parked",
	synopsis: "[-limit N]",
	summary:  "list delivery results the callback inbox set aside",
	help: `
Lists the callback inbox's parked events, oldest first: results the appliers
could not read, or whose apply failed five times. Once the cause is fixed, put
one back with 'wxpush inbox replay ID'.

example:
  wxpush inbox parked -limit 20`,
	flags: func(r *runner, fs *flag.FlagSet) func(context.Context, []string) error {
		limit := fs.Int("limit", 50, "events to list, 1 to 500")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageErr("inbox parked", "unexpected arguments %q", args)
			}
			cl, err := r.client()
			if err != nil {
				return err
			}
			p, err := cl.ParkedCallbacks(ctx, *limit)
			if err != nil {
				return err
			}
			if r.json {
				return r.printJSON(p)
			}
			r.printParked(p)
			return nil
		}
	},
}

var inboxReplayCommand = command{
	name:     "inbox replay",
	synopsis: "ID...",
	summary:  "put parked delivery results back into the callback inbox",
	help: `
Puts each parked event back into the callback inbox, with its first receive
time, to be applied again. Applying a result twice changes nothing.

example:
  wxpush inbox replay 1796619932724-0`,
	flags: func(r *runner, fs *flag.FlagSet) func(context.Context, []string) error {
		return func(ctx context.Context, ids []string) error {
			if len(ids) == 0 {
				return usageErr("inbox replay", "give one or more parked event IDs")
			}
			return r.eachID(ctx, "inbox replay", ids, func(cl *client.Client, id string) error {
				if err := cl.ReplayParkedCallback(ctx, id); err != nil {
					return err
				}
				if r.json {
					return r.printJSON(map[string]string{"id": id, "status": "replaying"})
				}
				_, err := fmt.Fprintf(r.stdout, "%s replaying\n", id)
				return err
			})
		}
	},
}

func (r *runner) printParked(p client.ParkedCallbacks) {
	if len(p.Events) == 0 {
		fmt.Fprintln(r.stdout, "no parked callback events")
		return
	}
	tw := tabwriter.NewWriter(r.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAPP\tEVENT\tRECEIVED\tREASON")
	for _, e := range p.Events {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.ID, e.App, e.Event, e.ReceivedAt.Format("2006-01-02 15:04:05Z07:00"), e.Reason)
	}
	tw.Flush()
	if p.Total > len(p.Events) {
		fmt.Fprintf(r.stdout, "%d of %d shown (oldest first)\n", len(p.Events), p.Total)
	}
}
