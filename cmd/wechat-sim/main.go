// Command wechat-sim serves the WeChat API simulator on its own, for tests
// and demos that run wxpush against it from another process.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "wechat-sim:", err)
		os.Exit(1)
	}
}
