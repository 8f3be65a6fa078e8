#!/usr/bin/env bash
# Archive benchmark (figures, not a timed test): ARCHIVE_BENCH_TASKS results (50) of
# ARCHIVE_BENCH_MB MB each (100 here; CI runs 1 MB in tests/api/archive_bench.rs) completed at
# once by the mock upstream process and copied by a real gateway process into a file: archive;
# prints the throughput and the gateway's RSS while it copies (sampled every 100 ms).
#   bench/archive.sh                                   # into a directory
#   ARCHIVE_BENCH_S3=1 GARAGE_BIN=... bench/archive.sh   # into S3 (Garage on loopback)
set -euo pipefail
cd "$(dirname "$0")/.."
export ARCHIVE_BENCH_TASKS=${ARCHIVE_BENCH_TASKS:-50}
export ARCHIVE_BENCH_MB=${ARCHIVE_BENCH_MB:-100}
mkdir -p bench/results
out=bench/results/archive-$(date -u +%Y%m%dT%H%M%SZ).txt
cargo test --locked --test api archive_bench:: -- --nocapture --test-threads 1 2>&1 \
  | grep -E 'archive figures|test result|panicked|assert' | tee "$out"
echo "results in $out"
