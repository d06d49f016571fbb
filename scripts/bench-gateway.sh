#!/usr/bin/env bash
# The gateway's added latency and throughput: the same load (oha) against a fake upstream that
# answers at once, directly and through a tiergate node that forwards every request to it,
# back to back in one run. Prints one Markdown table (see docs/benchmarks.md, "Gateway overhead").
#
# Cases: fixed rates (open loop, latency corrected for coordinated omission) and the most a
# closed loop of C connections gets. Only 127.0.0.1. Knobs (environment):
#   BENCH_RATES="500 2000 5000 10000"  BENCH_RATE_CONCURRENCY=50  BENCH_MAX_CONCURRENCY="1 16 64"
#   BENCH_DURATION=10s  BENCH_UPSTREAM_WORKERS=1  BENCH_KEEP=DIR (keep oha's JSON results there)
#   BENCH_MODEL_DIR=models/edge (the node loads it at start-up, though it never runs it here)
#   BENCH_GATEWAY_ENV="VAR=VALUE ..." (the gateway process's alone, e.g. TOKIO_WORKER_THREADS=1
#   or LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2, for experiments)
#   BENCH_VIA=tiergate, or plain-proxy: a minimal hyper proxy in tiergate's place, the floor
#   of what any HTTP/1.1 gateway costs here (bench/src/bin/plain-proxy.rs)
#   BENCH_CLOUD_OPTIONS="stream_whole_answers = false" (TOML lines for the node's [upstreams.cloud])
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

RATES=${BENCH_RATES:-"500 2000 5000 10000"}
RATE_CONCURRENCY=${BENCH_RATE_CONCURRENCY:-50}
MAX_CONCURRENCY=${BENCH_MAX_CONCURRENCY:-"1 16 64"}
DURATION=${BENCH_DURATION:-10s}
UPSTREAM_WORKERS=${BENCH_UPSTREAM_WORKERS:-1}
MODEL_DIR=${BENCH_MODEL_DIR:-models/edge}
VIA=${BENCH_VIA:-tiergate}
# Extra TOML lines for the node's [upstreams.cloud], e.g. "stream_whole_answers = false".
CLOUD_OPTIONS=${BENCH_CLOUD_OPTIONS:-}
# TOKIO_WORKER_THREADS is read by oha too: set it for the gateway process alone.
read -r -a GATEWAY_ENV <<<"${BENCH_GATEWAY_ENV:-}"
unset TOKIO_WORKER_THREADS
OHA_VERSION=1.16.0
OHA=$ROOT/.tools/cargo-bin/bin/oha
BODY='{"model":"tiergate","messages":[{"role":"user","content":"hello"}],"max_tokens":8}'
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ROOT/.tools/onnxruntime/libonnxruntime.so.1.31.1}

say() { echo "bench-gateway: $*" >&2; }

if [[ $VIA != tiergate && $VIA != plain-proxy ]]; then
    say "BENCH_VIA must be tiergate or plain-proxy, not $VIA"
    exit 1
fi
if [[ ! -f $ORT_DYLIB_PATH ]]; then
    say "no ONNX Runtime library at $ORT_DYLIB_PATH (run ./scripts/fetch-onnxruntime.sh)"
    exit 1
fi
if [[ ! -x $OHA ]]; then
    say "installing oha $OHA_VERSION into .tools/cargo-bin (a few minutes, once)"
    cargo install oha --version "$OHA_VERSION" --locked --root "$ROOT/.tools/cargo-bin"
fi
cargo build --release --locked -p tiergate -p tiergate-bench

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${BENCH_KEEP:-} ]]; then
        mkdir -p "$BENCH_KEEP"
        cp "$WORK"/*.json "$WORK"/*.log "$BENCH_KEEP"/ 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (up to 30 s) for the JSON "listening" line a process prints on stdout into FILE.
wait_listening() {
    local file=$1 pid=$2
    for _ in $(seq 300); do
        if grep -q '"event":"listening"' "$file" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "process $pid exited before listening; its logs:"
            cat "$WORK"/*.log >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    say "no listening line in $file after 30 s"
    exit 1
}

target/release/fake-upstream --workers "$UPSTREAM_WORKERS" >"$WORK/upstream.out" 2>"$WORK/upstream.log" &
PIDS+=($!)
wait_listening "$WORK/upstream.out" "${PIDS[-1]}"
UPSTREAM=$(jq -r .addr "$WORK/upstream.out")

start_tiergate() {
    # Every request goes to the cloud upstream without the local model (thresholds 0), and
    # the breaker's triggers are off: an overloaded moment must not turn into fast refusals
    # that would flatter the gateway's figures.
    cat >"$WORK/node.toml" <<EOF
[node]
name = "bench-edge"
tier = "edge"

[server]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"

[engine]
model_dir = "$MODEL_DIR"

[upstreams.cloud]
base_url = "http://$UPSTREAM/v1"
model = "bench"
$CLOUD_OPTIONS

[upstreams.cloud.health]
consecutive_failures = 0
error_rate_threshold = 0.0

[router]
local_max_complexity = 0.0
cloud_min_complexity = 0.0

[limits]
max_body_bytes = 1048576
EOF
    env "${GATEWAY_ENV[@]}" TIERGATE_LOG=warn target/release/tiergate serve --config "$WORK/node.toml" >"$WORK/node.out" 2>"$WORK/node.log" &
    PIDS+=($!)
}
start_plain_proxy() {
    env "${GATEWAY_ENV[@]}" target/release/plain-proxy --upstream "$UPSTREAM" >"$WORK/node.out" 2>"$WORK/node.log" &
    PIDS+=($!)
}
if [[ $VIA == tiergate ]]; then start_tiergate; else start_plain_proxy; fi
wait_listening "$WORK/node.out" "${PIDS[-1]}"
GATEWAY=$(jq -r .http "$WORK/node.out")

DIRECT_URL="http://$UPSTREAM/v1/chat/completions"
GATEWAY_URL="http://$GATEWAY/v1/chat/completions"

# Both paths must answer 200 with the upstream's text before anything is measured.
for url in "$DIRECT_URL" "$GATEWAY_URL"; do
    answer=$(curl -sS --fail-with-body -H 'content-type: application/json' -d "$BODY" "$url")
    if ! grep -q 'Hello from the fake upstream.' <<<"$answer"; then
        say "unexpected answer from $url: $answer"
        exit 1
    fi
done

oha_run() {
    local out=$1 url=$2
    shift 2
    "$OHA" --no-tui --output-format json -o "$out" -m POST -T application/json -d "$BODY" "$@" "$url"
}

# Warm-up: connections, allocator, branch predictors; not measured.
for url in "$DIRECT_URL" "$GATEWAY_URL"; do
    oha_run "$WORK/warmup.json" "$url" -z 2s -c 16
done

say "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates bench 2>/dev/null || echo ' + uncommitted changes in crates/ or bench/')"
say "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
say "upstream $UPSTREAM (workers $UPSTREAM_WORKERS), $VIA $GATEWAY (env: ${BENCH_GATEWAY_ENV:-none}); $DURATION per run"

GATEWAY_PID=${PIDS[-1]}
CLOCK_TICKS=$(getconf CLK_TCK)
# User + system CPU time of the gateway process so far, in clock ticks.
gateway_ticks() { awk '{print $14 + $15}' "/proc/$GATEWAY_PID/stat"; }

CASES=()
run_case() {
    local id=$1 label=$2 before
    shift 2
    say "$label"
    oha_run "$WORK/$id.direct.json" "$DIRECT_URL" "$@"
    before=$(gateway_ticks)
    oha_run "$WORK/$id.gateway.json" "$GATEWAY_URL" "$@"
    awk -v ticks=$(( $(gateway_ticks) - before )) -v hz="$CLOCK_TICKS" \
        'BEGIN { print ticks / hz }' >"$WORK/$id.gateway.cpu"
    CASES+=("$id=$label")
}

for rate in $RATES; do
    run_case "rate$rate" "$rate req/s, c=$RATE_CONCURRENCY" \
        -q "$rate" --latency-correction -z "$DURATION" -w -c "$RATE_CONCURRENCY"
done
for conns in $MAX_CONCURRENCY; do
    run_case "max$conns" "max rate, c=$conns" -z "$DURATION" -w -c "$conns"
done

say "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
target/release/bench-report --via "$VIA" "$WORK" "${CASES[@]}"
