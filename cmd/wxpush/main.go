// Command wxpush is the producer and operator command line of wxpush: it sends
// messages (one, or a JSON-lines file in bulk) and inspects them over the HTTP
// API of a local or remote deployment. See internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/wxpush/wxpush/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
