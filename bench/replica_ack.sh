#!/usr/bin/env bash
# What `store.min_replicas_acked = 1` adds to a money step (not a test): a private primary and
# replica on free loopback ports; STEPS writes each followed by `WAIT 1 500` on the same
# connection, against the same writes each followed by a PING (one round trip either way), in
# ROUNDS rounds. The difference per step is what WAIT costs beyond its round trip: the
# replica's acknowledgement. A create has two money steps (reserve, bind).
#   bench/replica_ack.sh   (STEPS=20000 ROUNDS=4 by default)
set -euo pipefail
steps=${STEPS:-20000}
rounds=${ROUNDS:-4}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
primary=$(free_port)
replica=$(free_port)
mkdir -p "$dir/p" "$dir/r"
redis-server --port "$primary" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir/p" >/dev/null &
primary_pid=$!
redis-server --port "$replica" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir/r" \
  --replicaof 127.0.0.1 "$primary" >/dev/null &
replica_pid=$!
trap 'kill $primary_pid $replica_pid; rm -rf "$dir"' EXIT
until redis-cli -p "$replica" info replication 2>/dev/null | grep -q master_link_status:up; do sleep 0.1; done
python3 -c "
for i in range($steps): print('SET k', i); print('PING')" >"$dir/ping.txt"
python3 -c "
for i in range($steps): print('SET k', i); print('WAIT 1 500')" >"$dir/wait.txt"
python3 - "$primary" "$steps" "$rounds" "$dir" <<'PY'
import subprocess, sys, time
primary, steps, rounds, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def timed(name):
    with open(f"{d}/{name}.txt") as commands:
        start = time.perf_counter()
        subprocess.run(["redis-cli", "-p", primary], stdin=commands, stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start
for round in range(1, rounds + 1):
    ping, wait = timed("ping"), timed("wait")
    print(f"round {round}: write+PING {ping:.2f} s, write+WAIT {wait:.2f} s: "
          f"WAIT adds {(wait - ping) / steps * 1000:.3f} ms per money step")
PY
