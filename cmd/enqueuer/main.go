// Command enqueuer is wxpush's HTTP front door: the producer API, the WeChat
// callback receiver and /metrics. See internal/service.RunEnqueuer.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wxpush/wxpush/internal/service"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == service.HealthCheckFlag {
		os.Exit(service.HealthCheckMain(context.Background(), service.Enqueuer, os.Getenv, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := service.RunEnqueuer(ctx, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "enqueuer:", err)
		os.Exit(1)
	}
}
