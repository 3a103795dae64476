package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/wxpush/wxpush/client"
)

// maxWebhookBody is the largest webhook body 'webhooks listen' reads.
const maxWebhookBody = 1 << 20

var webhooksListenCommand = command{
	name:     "webhooks listen",
	synopsis: "-secret-env NAME [-addr HOST:PORT] [-tolerance D]",
	summary:  "receive status webhooks: verify each signature, print the events",
	help: `
Runs a status webhook receiver for development and checks: every POST is
verified with the app's webhook secret (read from the environment variable
-secret-env names, never from a flag, so it stays out of the process list) and
printed to stdout as one JSON line, exactly the body wxpush sent. A verified
webhook is answered 204; a bad or stale signature 401, reported on stderr.
It prints "listening on http://ADDR" to stderr once it is ready; -addr with
port 0 picks a free port. Stop it with Ctrl-C.

example:
  WXPUSH_WEBHOOK_SECRET=… wxpush webhooks listen -secret-env WXPUSH_WEBHOOK_SECRET -addr 127.0.0.1:8099`,
	flags: func(r *runner, fs *flag.FlagSet) func(context.Context, []string) error {
		addr := fs.String("addr", "127.0.0.1:8099", "listen `address`")
		secretEnv := fs.String("secret-env", "", "environment `variable` that holds the webhook secret")
		tolerance := fs.Duration("tolerance", 5*time.Minute, "largest accepted clock difference of a signature")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageErr("webhooks listen", "unexpected arguments %q", args)
			}
			if *secretEnv == "" {
				return usageErr("webhooks listen", "-secret-env is required")
			}
			secret := r.getenv(*secretEnv)
			if secret == "" {
				return usageErr("webhooks listen", "environment variable %s is empty", *secretEnv)
			}
			return r.listen(ctx, *addr, []byte(secret), *tolerance)
		}
	},
}

func (r *runner) listen(ctx context.Context, addr string, secret []byte, tolerance time.Duration) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("webhooks listen: %w", err)
	}
	var mu sync.Mutex // one line at a time on stdout and stderr
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.Method != http.MethodPost {
				http.Error(w, "POST only", http.StatusMethodNotAllowed)
				return
			}
			body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxWebhookBody))
			if err != nil {
				http.Error(w, "body too large or cut off", http.StatusBadRequest)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if err := client.VerifyWebhook(secret, req.Header.Get("Wxpush-Signature"), body, tolerance, time.Now()); err != nil {
				fmt.Fprintf(r.stderr, "refused a webhook: %v\n", err)
				http.Error(w, "bad signature", http.StatusUnauthorized)
				return
			}
			fmt.Fprintf(r.stdout, "%s\n", body)
			w.WriteHeader(http.StatusNoContent)
		}),
	}
	fmt.Fprintf(r.stderr, "listening on http://%s\n", ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("webhooks listen: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("webhooks listen: %w", err)
	}
	return nil
}
