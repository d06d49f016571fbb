#!/usr/bin/env bash
# Runs the property-based fuzz targets (proptest, stable toolchain) with many cases, each under a
# time bound. `make test` runs the same properties with a few hundred cases each.
#
#   scripts/fuzz.sh                 # 20000 cases per property, at most 300 s per target
#   CASES=200000 BUDGET=1800 scripts/fuzz.sh
#
# A failure prints the minimal failing input (proptest shrinks it) and saves its seed under the
# test's proptest-regressions/ file, which is replayed first on every later run: commit that
# file, fix the bug, and add the input as a plain test beside the property.
set -euo pipefail
cd "$(dirname "$0")/.."

CASES="${CASES:-20000}"
BUDGET="${BUDGET:-300}"
CARGO="${CARGO:-cargo}"

# package, test target (or --lib), test name filter
TARGETS=(
  "tiergate-upstream --test fuzz_sse -"
  "tiergate --lib http::fuzz_openai"
  "tiergate --test fuzz_parsers grpc_"
  "tiergate --test fuzz_parsers config_"
)

# Build first, so the time budget is spent fuzzing.
"$CARGO" test --locked -p tiergate-upstream --test fuzz_sse --no-run
"$CARGO" test --locked -p tiergate --lib --test fuzz_parsers --no-run

failed=0
for target in "${TARGETS[@]}"; do
  read -r package kind name filter <<<"$target"
  args=(-p "$package")
  if [[ "$kind" == "--lib" ]]; then
    filter="$name"
    args+=(--lib)
  else
    args+=("$kind" "$name")
  fi
  [[ "$filter" == "-" ]] && filter=""
  echo "== $target: $CASES cases, at most ${BUDGET}s"
  start=$(date +%s)
  if PROPTEST_CASES="$CASES" timeout "$BUDGET" "$CARGO" test --locked "${args[@]}" -- $filter --test-threads=1; then
    echo "   passed in $(( $(date +%s) - start ))s"
  else
    status=$?
    if [[ $status -eq 124 ]]; then
      echo "   time budget spent without a failure (${BUDGET}s)"
    else
      echo "   FAILED (exit $status)"
      failed=1
    fi
  fi
done
exit "$failed"
