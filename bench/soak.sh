#!/usr/bin/env bash
# Soak benchmark (figures, not a timed test): SOAK_TASKS tasks (100,000 by default) through a
# real gateway process and the mock upstream process, with fast completion and a 2-s retention,
# on each store; prints the store's state (Redis used_memory and keys by kind, or the embedded
# file size), the gateway's RSS, the outbox and what `vidgate store export` holds, at the start,
# halfway, at the end and once retention has passed (tests/api/soak.rs; CI runs 200 tasks).
#   bench/soak.sh [embedded|redis|both]
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-both}
export SOAK_TASKS=${SOAK_TASKS:-100000}
filter=soak::soak_
[ "$which" = both ] || filter="soak::soak_${which}_"
mkdir -p bench/results
out=bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ).txt
cargo test --locked --test api "$filter" -- --nocapture --test-threads 1 2>&1 \
  | grep -E 'soak |soak:|test result|panicked|assert' | tee "$out"
echo "results in $out"
