package redisconn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// UnsafeConfigError is a Redis setting that can lose accepted messages. A process
// that sees one refuses to start: wxpush promises that an accepted message reaches
// a final state, and it cannot keep that promise on such a Redis.
type UnsafeConfigError struct {
	Setting string // the Redis configuration parameter, e.g. "maxmemory-policy"
	Value   string // its current value
	Reason  string // what it risks and how to fix it
	Node    string // on Redis Cluster, the master that has it
}

func (e *UnsafeConfigError) Error() string {
	on := ""
	if e.Node != "" {
		on = " on cluster node " + e.Node
	}
	return fmt.Sprintf("redisconn: unsafe Redis setting %s %q%s: %s", e.Setting, e.Value, on, e.Reason)
}

// The settings Check reads. Each is read with its own CONFIG GET because Redis
// before 7.0 takes a single pattern per call.
const (
	settingPolicy      = "maxmemory-policy"
	settingAppendOnly  = "appendonly"
	settingAppendFsync = "appendfsync"
	settingSave        = "save"
)

// Check reads the Redis settings that decide whether an accepted message can be
// lost and judges them. err is an *UnsafeConfigError when maxmemory-policy is
// anything but noeviction (every wxpush key is a message record, a queue entry
// or state the queue depends on, so an evicted key is a lost message), or
// ctx's error; nothing else fails the check.
//
// Warnings are for risks an operator may accept: no persistence at all, or
// appendfsync no. Managed Redis often forbids or renames CONFIG; Check then falls
// back to INFO, and whatever it still cannot read becomes a "could not verify"
// warning rather than an error, as does a Redis that stops answering during the
// check (the caller's Ping decides whether an unreachable Redis is fatal). Each
// warning starts with the settings it is about, then a colon. Nothing returned
// quotes the client's options, so no password can leak.
func Check(ctx context.Context, c redis.UniversalClient) (warnings []string, err error) {
	ws, err := check(ctx, c)
	for _, w := range ws {
		warnings = append(warnings, w.setting+": "+w.msg)
	}
	return warnings, err
}

// StartupCheck runs Check for a starting process: it logs each warning at WARN
// with the setting it is about and returns the error that must stop the process.
func StartupCheck(ctx context.Context, c redis.UniversalClient, log *slog.Logger) error {
	ws, err := check(ctx, c)
	for _, w := range ws {
		log.Warn("redis configuration warning", "setting", w.setting, "warning", w.msg)
	}
	return err
}

type warning struct {
	setting string // one setting, or several joined by commas
	msg     string
}

// check judges c, or on Redis Cluster every master.
func check(ctx context.Context, c redis.UniversalClient) ([]warning, error) {
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		return checkNode(ctx, c)
	}
	var mu sync.Mutex
	var all []warning
	err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		ws, err := checkNode(ctx, node)
		var unsafe *UnsafeConfigError
		if errors.As(err, &unsafe) {
			unsafe.Node = node.Options().Addr
		}
		mu.Lock()
		defer mu.Unlock()
		for _, w := range ws {
			w.msg = "cluster node " + node.Options().Addr + ": " + w.msg
			all = append(all, w)
		}
		return err
	})
	return all, err
}

func checkNode(ctx context.Context, c redis.UniversalClient) ([]warning, error) {
	s, cfgErr := configSettings(ctx, c)
	if cfgErr != nil {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s = infoSettings(ctx, c)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}

	var warnings []warning
	var unverified []string
	policy, ok := s[settingPolicy]
	switch {
	case !ok:
		unverified = append(unverified, settingPolicy)
	case policy != "noeviction":
		return nil, &UnsafeConfigError{Setting: settingPolicy, Value: policy,
			Reason: "Redis may evict keys under memory pressure, and an evicted message record or queue entry " +
				"is a lost message; run CONFIG SET maxmemory-policy noeviction and set it in redis.conf " +
				"(see deploy/redis.md)"}
	}

	aof, ok := s[settingAppendOnly]
	switch {
	case !ok:
		unverified = append(unverified, settingAppendOnly)
	case aof == "yes":
		fsync, ok := s[settingAppendFsync]
		if !ok {
			unverified = append(unverified, settingAppendFsync)
		} else if fsync == "no" {
			warnings = append(warnings, warning{settingAppendFsync, "appendfsync is no: the operating system decides " +
				"when the append-only file reaches disk, so a machine crash can lose the last ~30 s of accepted " +
				"messages; use appendfsync everysec (at most ~1 s) or always"})
		}
	default:
		save, ok := s[settingSave]
		if !ok {
			unverified = append(unverified, settingSave)
		} else if strings.TrimSpace(save) == "" {
			warnings = append(warnings, warning{settingAppendOnly + "," + settingSave, `appendonly is no and save is "": ` +
				"Redis has no persistence, so a restart loses every queued message; set appendonly yes " +
				"(appendfsync everysec or always)"})
		}
	}

	if len(unverified) > 0 {
		why := "CONFIG GET did not return them"
		if cfgErr != nil {
			why = "CONFIG GET failed: " + cfgErr.Error()
		}
		list := strings.Join(unverified, ",")
		warnings = append(warnings, warning{list, "could not verify the Redis settings " + list + " (" + why +
			"); check by hand that they are set as deploy/redis.md recommends"})
	}
	return warnings, nil
}

// configSettings reads the settings with CONFIG GET. A setting the server does
// not know (a Redis-compatible server, or an old version) is left out.
func configSettings(ctx context.Context, c redis.UniversalClient) (map[string]string, error) {
	s := make(map[string]string, 4)
	for _, name := range []string{settingPolicy, settingAppendOnly, settingAppendFsync, settingSave} {
		kv, err := c.ConfigGet(ctx, name).Result()
		if err != nil {
			return nil, err
		}
		if v, ok := kv[name]; ok {
			s[name] = v
		}
	}
	return s, nil
}

// infoSettings reads what INFO tells of the settings when CONFIG is forbidden:
// the eviction policy (INFO memory) and whether the append-only file is on
// (INFO persistence). INFO does not show save points or the fsync policy, so
// those stay unknown unless the append-only file settles the question. An INFO
// that fails leaves its settings unknown.
func infoSettings(ctx context.Context, c redis.UniversalClient) map[string]string {
	s := make(map[string]string, 2)
	if v, ok := infoField(ctx, c, "memory", "maxmemory_policy"); ok {
		s[settingPolicy] = v
	}
	if v, ok := infoField(ctx, c, "persistence", "aof_enabled"); ok {
		switch v {
		case "1":
			s[settingAppendOnly] = "yes"
		case "0":
			s[settingAppendOnly] = "no"
		}
	}
	return s
}

func infoField(ctx context.Context, c redis.UniversalClient, section, field string) (string, bool) {
	text, err := c.Info(ctx, section).Result()
	if err != nil {
		return "", false
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), field+":"); ok {
			return v, true
		}
	}
	return "", false
}
