# wxpush — `make` lists the targets.
GO       ?= go
PKGS     ?= ./...
BIN      ?= bin

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z_-]+:.*?## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: run
run: ## Run standalone mode: embedded Redis, API, worker and WeChat simulator in one process
	env -u REDIS_URL $(GO) run ./cmd/worker

.PHONY: test
test: ## go vet, the race-enabled test suite (real redis-server; see README), monitoring checks
	$(GO) vet $(PKGS)
	$(GO) test -race -timeout 15m $(PKGS)
	@$(MAKE) --no-print-directory test-monitoring
	@$(MAKE) --no-print-directory test-sdk

.PHONY: build
build: ## Build enqueuer, worker and wechat-sim into ./bin
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ ./cmd/...

.PHONY: lint
lint: ## gofmt check and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

.PHONY: bench
bench: ## Measure and print wxpush's figures (private redis-server; a few minutes)
	$(GO) test -run '^$$' -bench Figures -benchtime 1x -timeout 15m ./internal/bench

FUZZTIME ?= 10s
.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 10s); crashers land in testdata/fuzz
	$(GO) test -run '^$$' -fuzz '^FuzzParseEvent$$' -fuzztime $(FUZZTIME) ./internal/wechat
	$(GO) test -run '^$$' -fuzz '^FuzzFastEvent$$' -fuzztime $(FUZZTIME) ./internal/wechat
	$(GO) test -run '^$$' -fuzz '^FuzzOpenEnvelope$$' -fuzztime $(FUZZTIME) ./internal/wechat
	$(GO) test -run '^$$' -fuzz '^FuzzCreateMessage$$' -fuzztime $(FUZZTIME) ./internal/api
	$(GO) test -run '^$$' -fuzz '^FuzzParseRules$$' -fuzztime $(FUZZTIME) ./internal/wechat/wechatsim

PROMTOOL ?= promtool
PYTHON   ?= python3
.PHONY: test-monitoring
test-monitoring: ## promtool check/test of deploy/prometheus; dashboard JSON and metric names
	@if command -v $(PROMTOOL) >/dev/null 2>&1; then \
		set -e; \
		$(PROMTOOL) check config deploy/prometheus/prometheus.yml; \
		$(PROMTOOL) check rules deploy/prometheus/alerts.yml; \
		$(PROMTOOL) test rules deploy/prometheus/alerts_test.yml; \
	elif [ "$$WXPUSH_TEST_REQUIRE_PROMTOOL" = 1 ]; then \
		echo "FAIL: promtool not on PATH and WXPUSH_TEST_REQUIRE_PROMTOOL=1 (apt-get install prometheus)"; exit 1; \
	else \
		echo "SKIP promtool checks of deploy/prometheus: promtool not on PATH (apt-get install prometheus)"; \
	fi
	@if command -v $(PYTHON) >/dev/null 2>&1; then \
		set -e; \
		for f in deploy/grafana/wxpush.json; do $(PYTHON) -m json.tool $$f >/dev/null && echo "$$f: valid JSON"; done; \
		$(PYTHON) deploy/grafana/check_metrics.py internal/metrics deploy/grafana/wxpush.json deploy/prometheus/alerts.yml; \
	else \
		echo "SKIP dashboard checks of deploy/grafana: $(PYTHON) not on PATH"; \
	fi

.PHONY: e2e
e2e: ## Browser check of the web UI in headless Chromium (apt-get install chromium); not part of CI
	./scripts/e2e-ui.sh

.PHONY: test-faults
test-faults: ## Fault-injection suite: real binaries and redis-server, kills and outages (a few minutes)
	@# The Sentinel failover is the service package's one fault test; the rest
	@# of that package ran in make test already. Both run side by side.
	@WXPUSH_FAULTS=1 $(GO) test -race -count=1 -timeout 12m ./internal/faults/ & faults=$$!; \
	WXPUSH_FAULTS=1 $(GO) test -race -count=1 -timeout 12m -run '^TestSentinelFailover$$' ./internal/service/; sentinel=$$?; \
	wait $$faults && exit $$sentinel

.PHONY: test-sdk
test-sdk: ## The relay against a real WeChat SDK handler (nested module internal/relay/sdktest; module proxy)
	cd internal/relay/sdktest && $(GO) vet ./... && $(GO) test -race -count=1 ./...
