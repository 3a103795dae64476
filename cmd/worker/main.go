// Command worker delivers wxpush messages; without REDIS_URL it runs standalone
// mode (embedded Redis, API and WeChat simulator in one process). See
// internal/service.RunWorker.
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
		os.Exit(service.HealthCheckMain(context.Background(), service.Worker, os.Getenv, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := service.RunWorker(ctx, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}
