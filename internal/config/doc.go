// Package config loads wxpush's configuration: Defaults, then the YAML file named by
// WXPUSH_CONFIG, then the environment variables of design.md's interface contract
// (env wins over file), then Validate. It only reads; it never dials Redis or WeChat,
// and it starts no goroutines or timers, so a file with 10,000 apps is plain data.
// Secrets are held as secret.Value, so a printed Config leaks nothing, and no error
// ever quotes a secret. A loaded Config is immutable by convention and safe to copy
// and share between goroutines.
//
// # The file
//
// WXPUSH_CONFIG names a YAML file (testdata/example.yaml is a complete, tested example):
//
//	apps:
//	  - name: shop              # wxpush's name for the app: the API's "app", the callback
//	                            # path /wechat/callback/{name} and the metric label;
//	                            # 1–64 of [a-z0-9_-], starting with a letter or digit
//	    appid: wx1234567890abcdef
//	    secret: "..."           # or secret_env: NAME to read it from that variable
//	    token: "..."            # callback token, 3–32 letters or digits (or token_env)
//	    aes_key: "..."          # optional EncodingAESKey, 43 of [A-Za-z0-9+/] (or aes_key_env)
//	    previous_token: "..."   # optional, still accepted during rotation (or previous_token_env)
//	    previous_aes_key: "..." # optional, likewise (or previous_aes_key_env)
//	    callback_compat: false  # with aes_key: also accept plain callbacks (WeChat's
//	                            # compatible mode); default false = encrypted ones only
//	    stable_token: false     # use /cgi-bin/stable_token instead of /cgi-bin/token
//	    rate_limit: {per_second: 20, burst: 20}  # optional; absent or 0 = no wxpush-side limit;
//	                                             # burst defaults to ceil(per_second)
//	    recipient_limit: {max: 3, window: 1m}    # optional: at most max messages per openid per window
//	    max_backlog: 100000     # optional admission control; 0 = unlimited
//	    validate_templates: true  # optional, default true
//	    status_url: https://…   # optional default status_url of the app's messages
//	    webhook_secret: "..."   # signs its webhooks, ≥ 16 characters (or webhook_secret_env);
//	                            # required with status_url or messages that carry one
//	    webhook_states: [delivered, dead]  # optional; default sent and every final state
//	tuning:                     # each key is the lower-case WXPUSH_* (or REDIS_URL,
//	  concurrency: 20           # WECHAT_API_BASE) variable without its prefix; the
//	  retry_base: 1s            # variable, when set, wins
//
// The tuning keys are concurrency, max_attempts, retry_base, retry_cap, send_timeout,
// retention, confirm_timeout, callback_hold, callback_window, task_check_interval, shutdown_timeout, idempotency_window, ui_writable, events, events_maxlen, webhook_window, webhook_retry_base, webhook_retry_cap,
// webhook_concurrency, webhook_per_endpoint, webhook_allow_private, api_rate, api_burst,
// log_level, log_format, http_addr, admin_addr, redis_url and wechat_api_base.
// Durations are Go duration strings (30s, 10m, 168h). Decoding is strict: an unknown
// key is an error. An empty file is an empty configuration.
//
// # The app named default
//
// WECHAT_APP_ID, WECHAT_APP_SECRET, WECHAT_TOKEN, WECHAT_AES_KEY, WECHAT_CALLBACK_COMPAT, WECHAT_STABLE_TOKEN,
// WECHAT_RATE_LIMIT (messages per second), WECHAT_RATE_BURST, WXPUSH_STATUS_URL,
// WXPUSH_WEBHOOK_SECRET and WXPUSH_WEBHOOK_STATES (comma-separated) define the app named
// "default". If the file has an app named default, each variable that is set overrides
// that field of it and the rest of the file's app is kept; otherwise WECHAT_APP_ID is
// required and the app is added after the file's apps.
//
// # Errors
//
// Load reports every problem at once (errors.Join). Problems found while reading the
// file say where: "WXPUSH_CONFIG /etc/wxpush.yaml:7: apps[0].secrt: unknown key".
// Validate names each bad field as the user wrote it — "apps[2].aes_key",
// "tuning.retry_base", or the environment variable ("WECHAT_TOKEN",
// "WXPUSH_RETRY_BASE") when the value came from there — with the bad value, except
// that a secret is described (its length), never quoted.
package config
