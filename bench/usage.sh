#!/usr/bin/env bash
# Usage-report benchmark (not a test): fills a store with ENTRIES ledger entries over TENANTS
# tenants through the Store API, then times GET /v1/admin/usage (and the ledger) through a
# real gateway. Redis: a private redis-server on a free port, removed afterwards.
#   bench/usage.sh [redis|embedded]   (ENTRIES=1000000 TENANTS=50 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-redis}
entries=${ENTRIES:-1000000}
tenants=${TENANTS:-50}
cargo build --release --example usage_bench
bin=target/release/examples/usage_bench
if [ "$backend" = redis ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  redis_pid=$!
  trap 'kill $redis_pid' EXIT
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
  "$bin" --backend redis --redis-url "redis://127.0.0.1:$port" --entries "$entries" --tenants "$tenants"
  redis-cli -p "$port" info memory | grep used_memory_human
else
  # tmpfs: the fill's one fsync per step would otherwise take most of an hour on a disk.
  "$bin" --backend embedded --path /dev/shm/vidgate-bench-$$.redb --entries "$entries" --tenants "$tenants"
fi
