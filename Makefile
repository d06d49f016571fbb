# The two commands a user needs: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
CARGO ?= cargo
ORT_LIB := $(CURDIR)/.tools/onnxruntime/libonnxruntime.so.1.31.1
export ORT_DYLIB_PATH ?= $(ORT_LIB)

.PHONY: demo test setup build lint unit bench models fmt

## Fetch what is needed, build, run the demo on the bundled models.
demo: setup build
	./target/debug/tiergate demo

## Everything the tests need, then the tests (CI runs this).
test: setup lint build unit

setup: $(ORT_LIB)

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

## Regenerate every model artifact under models/ (needs only PyPI).
models:
	./models/make-models.sh

fmt:
	$(CARGO) fmt --all
