package service_test

import (
	"context"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/wxpush/wxpush/internal/redistest"
	"github.com/wxpush/wxpush/internal/service"
	"github.com/wxpush/wxpush/internal/servicetest"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

// TestWorkerDrainsOnShutdown: a worker told to stop while a send is in flight
// lets it finish and records the result, leaving nothing active in asynq.
func TestWorkerDrainsOnShutdown(t *testing.T) {
	t.Parallel()
	redis := redistest.Start(t)
	sim, err := wechatsim.New(wechatsim.Config{
		Apps:      []wechatsim.App{{AppID: servicetest.AppID, Secret: servicetest.Secret, Token: servicetest.Token}},
		Templates: []wechatsim.Template{{AppID: servicetest.AppID, TemplateID: "T1", Content: "{{thing1.DATA}}"}},
		Latency:   700 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	simSrv := httptest.NewServer(sim)
	t.Cleanup(func() { simSrv.Close(); sim.Close() })
	apiAddr := servicetest.FreeAddr(t)
	api := "http://" + apiAddr
	env := map[string]string{
		"REDIS_URL": redis.URL(), "WECHAT_API_BASE": simSrv.URL,
		"WECHAT_APP_ID": servicetest.AppID, "WECHAT_APP_SECRET": servicetest.Secret, "WECHAT_TOKEN": servicetest.Token,
		"WXPUSH_HTTP_ADDR": apiAddr, "WXPUSH_ADMIN_ADDR": servicetest.FreeAddr(t), "WXPUSH_SHUTDOWN_TIMEOUT": "10s",
	}
	servicetest.Run(t, "enqueuer", service.RunEnqueuer, env)
	servicetest.WaitHTTP(t, api+"/healthz")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- service.RunWorker(ctx, func(k string) string { return env[k] }, io.Discard, io.Discard)
	}()

	id := servicetest.PostMessage(t, api, servicetest.MessageBody("drain_1"))
	deadline := time.Now().Add(10 * time.Second)
	for sim.Stats().SendRequests == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the worker never sent")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The send is now in flight (the simulator answers after 700 ms): stop.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("service.RunWorker: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("worker did not stop")
	}
	if m := servicetest.GetMessage(t, api, id); m.State != "sent" || m.WeChatMsgID == "" {
		t.Errorf("after shutdown the in-flight message is %+v, want sent with its msgid", m)
	}
	info, err := asynq.NewInspectorFromRedisClient(redis.Client(t)).GetQueueInfo("normal")
	if err != nil {
		t.Fatal(err)
	}
	if info.Active != 0 || info.Pending != 0 || info.Retry != 0 {
		t.Errorf("asynq after shutdown: active %d pending %d retry %d, want all 0", info.Active, info.Pending, info.Retry)
	}
}
