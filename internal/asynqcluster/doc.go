// Package asynqcluster holds no code: its tests pin how github.com/hibiken/asynq
// (the version in go.mod, v0.26.0 when written) behaves on a real Redis Cluster
// of three masters (redistest.StartCluster), reached with
// asynq.RedisClusterClientOpt.
//
// What they establish:
//
//   - Every key of a queue carries the hash tag {<queue>} (asynq:{high}:pending,
//     asynq:{high}:t:<id>, asynq:{high}:unique:…, asynq:{high}:lease, …), and
//     every Lua script touches the keys of one queue only, including the keys it
//     builds from ARGV inside Lua, so nothing fails with CROSSSLOT. One queue
//     lives on one master: a cluster spreads queues, not one queue's load.
//     wxpush's queues hash to slots 9976 (high), 136 (normal) and 15214 (low):
//     three different masters under redis-cli's even three-way split.
//   - Outside the queues, asynq keeps asynq:queues, asynq:servers, asynq:workers
//     (each on whichever master owns its slot) and per-server
//     asynq:servers:{…} / asynq:workers:{…}, which share their own hash tag.
//     They are written with single-key commands or one-tag scripts.
//   - Working: Client enqueue (immediate, ProcessIn, TaskID and its
//     ErrTaskIDConflict, Unique and its ErrDuplicateTask, Retention); a Server
//     over wxpush's weighted queues, and strict priority across masters; retry
//     after RetryDelayFunc, IsFailure; archive on SkipRetry and on exhausted
//     retries; requeue on Shutdown; cancelation over pub/sub; the recoverer;
//     the Inspector (GetQueueInfo, Queues, History, Servers, GetTaskInfo,
//     ListRetryTasks, ListArchivedTasks, RunTask, ArchiveTask, DeleteTask, the
//     bulk archive/run/delete calls, Pause/UnpauseQueue, DeleteQueue,
//     ClusterKeySlot, ClusterNodes); asynqmon's queues, servers and redis_info
//     endpoints.
//   - A crashed worker's task comes back only once its lease (30 s, extended
//     while the worker lives) has been expired for 30 s more, and the recoverer
//     looks at Server start and then once a minute: 60 to 120 s after the
//     crash. The test backdates the lease instead of waiting.
//
// Not covered: the Scheduler and group aggregation (wxpush uses neither), and
// resharding or failover while tasks flow.
//
// When an asynq upgrade changes any of this, a test here fails: update this
// comment and the docs that rely on it.
package asynqcluster
