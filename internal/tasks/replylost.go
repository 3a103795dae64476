package tasks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/delivery"
	"github.com/wxpush/wxpush/internal/wechat"
)

// mayHaveReached reports whether a failed send may still have been accepted
// by WeChat: no usable reply came back (a timeout, a reset connection, an
// HTTP error status, a reply that is not WeChat's JSON), so the request may
// have arrived and only its reply was lost. An errcode is WeChat's answer,
// and a connection that could not be made carried no request. The rest
// (TLS failures, a timeout before the connection was made) cannot be told
// apart and counts as possibly sent: the cost of that is a retry that asks
// for confirmation.
func mayHaveReached(err error) bool {
	var te *wechat.TransportError
	if !errors.As(err, &te) {
		return false
	}
	var op *net.OpError
	return !errors.As(err, &op) || op.Op != "dial"
}

// replyLost records an attempt whose reply was lost (delivery.Store.MarkAmbiguous)
// that began at start. It returns nil to go on with the failure as usual, or
// the outcome when WeChat's result for the attempt was held already and
// settled the message. The record is written even when the task's context
// has ended: it is what keeps a later requeue from sending it twice.
func (h *Handler) replyLost(ctx context.Context, log *slog.Logger, id, app, openID string, start time.Time, sendErr error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), SubmitTimeout)
	defer cancel()
	tr, err := h.store.MarkAmbiguous(ctx, id, app, openID, start)
	switch {
	case errors.Is(err, delivery.ErrNotFound):
		return nil
	case err != nil:
		log.Error("could not record a send whose reply was lost", "err", err)
		return nil
	case !tr.Changed:
		log.Info("no reply from wechat: it may have accepted the message; its result callback settles it if so", "err", sendErr)
		return nil
	}
	h.metrics.Finished.WithLabelValues(app, string(tr.State)).Inc()
	log.Info("the reply was lost but wechat's result was already here: message settled from it", "state", tr.State)
	return fmt.Errorf("tasks: message %s: %w", tr.State, asynq.SkipRetry)
}
