#!/usr/bin/env bash
# The performance kit: in one run, on this machine, with wrk and the same request mix,
# measures (a) an nginx upstream stub alone, (b) nginx proxy_pass to that stub, (c) vidgate
# to that stub with the Redis store, (d) vidgate with the embedded store, for the create
# path and the query path; prints req/s, p50, p99, the ratios c/b and d/b, Redis round
# trips per request, RSS with 1,000 keep-alive connections and the CPU of a /metrics
# scrape with 200 tenants. Results: bench/results/<timestamp>.txt (not committed).
#   bench/run.sh                      (BENCH_DURATION=10 BENCH_REPEATS=3 BENCH_WARMUP=3
#                                      BENCH_CONNECTIONS=64: about 6 minutes)
#   BENCH_DURATION=3 BENCH_REPEATS=1 bench/run.sh    (a quick look, about 1.5 minutes)
#   bench/run.sh profile              (c's create and query paths: perf profiles by thread,
#                                      crate and symbol; heap allocations per create from
#                                      valgrind's dhat on a system-allocator build; about
#                                      2.5 minutes, plus that build the first time)
# Cores (2): core 0 runs wrk, the nginx stub and redis-server (the load and what the
# gateway depends on); core 1 runs the proxy under test alone (nginx proxy or vidgate).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

mode=${1:-bench}
case $mode in bench | profile) ;; *)
  echo "usage: bench/run.sh [bench|profile]" >&2
  exit 2
  ;;
esac
duration=${BENCH_DURATION:-10}
repeats=${BENCH_REPEATS:-3}
warmup=${BENCH_WARMUP:-3}
connections=${BENCH_CONNECTIONS:-64}
tenants=200
load_core=0
proxy_core=1

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ "$mode" = profile ]; then
  command -v perf >/dev/null 2>&1 || need_apt+=(linux-perf)
  command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
fi
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v ss >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bench: installing ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
if [ "$(nproc)" -lt 2 ]; then
  echo "bench: needs 2 cores (one for the load, one for the proxy under test)" >&2
  exit 1
fi

cargo build --release --locked --bin vidgate
vidgate=$root/target/release/vidgate

# 1,000 keep-alive connections need as many descriptors in wrk and in the gateway.
hard_files=$(ulimit -Hn)
[ "$hard_files" != unlimited ] || hard_files=65536
ulimit -n "$hard_files"

work=$(mktemp -d /tmp/vidgate-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=$root/bench/results/$stamp.txt
[ "$mode" = bench ] || results=$root/bench/results/$stamp-$mode.txt
say() { echo "$*" | tee -a "$results"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  local port=$1 tries=0
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    tries=$((tries + 1))
    if [ $tries -gt 200 ]; then
      echo "bench: nothing listens on port $port" >&2
      exit 1
    fi
    sleep 0.05
  done
}
# Starts "$@" pinned to core $1 in the background, logging to $work/$2.log.
start() {
  local core=$1 name=$2
  shift 2
  taskset -c "$core" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  last_pid=$!
}

redis_port=$(free_port)
stub_port=$(free_port)
proxy_port=$(free_port)
redis_gw_port=$(free_port)
embedded_gw_port=$(free_port)

# --- Redis (no persistence: the request path is measured, not the disk).
start "$load_core" redis redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no
redis_pid=$last_pid
wait_port "$redis_port"

# --- nginx: the upstream stub (core 0) and the reverse proxy to it (core 1).
cp tests/fixtures/video/faststart_2s_audio.mp4 "$work/ref.mp4"
chmod 644 "$work/ref.mp4"
task='"created":1764000000,"model":"wan2.6-reference-video-flash","object":"video.generation.task","type":"video","usage":{"billing_rule":"per_second","credits_reserved":25,"user_group":"default"}'
nginx_conf() {
  local name=$1 body=$2
  mkdir -p "$work/$name"
  cat >"$work/$name/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/$name/nginx.pid;
error_log $work/$name/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$name/body;
  proxy_temp_path $work/$name/proxy;
  fastcgi_temp_path $work/$name/fastcgi;
  uwsgi_temp_path $work/$name/uwsgi;
  scgi_temp_path $work/$name/scgi;
  keepalive_requests 1000000;
$body
}
EOF
}
nginx_conf stub "  server {
    listen 127.0.0.1:$stub_port;
    default_type application/json;
    location = /v1/videos/generations {
      return 200 '{\"id\":\"task-unified-1764000000-\$request_id\",$task,\"progress\":0,\"status\":\"pending\",\"task_info\":{\"can_cancel\":true,\"estimated_time\":60}}';
    }
    location ~ ^/v1/tasks/(?<task_id>[A-Za-z0-9-]+)\$ {
      return 200 '{\"id\":\"\$task_id\",$task,\"progress\":40,\"status\":\"processing\",\"task_info\":{\"can_cancel\":true,\"estimated_time\":30}}';
    }
    location = /ref.mp4 {
      default_type video/mp4;
      alias $work/ref.mp4;
    }
  }"
nginx_conf proxy "  upstream stub {
    server 127.0.0.1:$stub_port;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$proxy_port;
    location / {
      proxy_pass http://stub;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
start "$load_core" nginx-stub "$nginx_bin" -p "$work/stub" -e "$work/stub/error.log" -c "$work/stub/nginx.conf"
start "$proxy_core" nginx-proxy "$nginx_bin" -p "$work/proxy" -e "$work/proxy/error.log" -c "$work/proxy/nginx.conf"
wait_port "$stub_port"
wait_port "$proxy_port"
# The worker processes (one each) do the work; their CPU per request is measured.
stub_worker=$(pgrep -P "$(cat "$work/stub/nginx.pid")" | head -n1)
proxy_worker=$(pgrep -P "$(cat "$work/proxy/nginx.pid")" | head -n1)

# --- vidgate: one with Redis, one embedded; budgets and caps lifted, reconciler off,
# $tenants tenants (the /metrics scrape refreshes a budget gauge for each).
gateway_conf() {
  local port=$1 store=$2
  cat <<EOF
[server]
listen = "127.0.0.1:$port"
[upstream]
base_url = "http://127.0.0.1:$stub_port"
files_base_url = "http://127.0.0.1:$stub_port"
api_key = "sk-bench"
[auth]
hs256_secret = "bench-secret-0123456789-0123456789-0123456789"
[store]
$store
[probe]
allowed_hosts = ["127.0.0.1"]
allow_private_networks = true
cache_ttl_secs = 3600
[reconciler]
enabled = false
[[tenants]]
id = "bench"
budget = "1000000000.00"
period = "month"
creates_per_minute = 60000
creates_burst = 1000000000
reads_per_minute = 60000
reads_burst = 1000000000
max_concurrent_tasks = 1000000000
EOF
  local i
  for ((i = 1; i < tenants; i++)); do
    printf '[[tenants]]\nid = "team-%03d"\nbudget = "500.00"\n' "$i"
  done
}
gateway_conf "$redis_gw_port" "backend = \"redis\"
redis_url = \"redis://127.0.0.1:$redis_port\"" >"$work/redis.toml"
gateway_conf "$embedded_gw_port" "backend = \"embedded\"
path = \"$work/vidgate.redb\"" >"$work/embedded.toml"
start "$proxy_core" vidgate-redis "$vidgate" serve --config "$work/redis.toml"
redis_gw_pid=$last_pid
start "$proxy_core" vidgate-embedded "$vidgate" serve --config "$work/embedded.toml"
embedded_gw_pid=$last_pid
wait_port "$redis_gw_port"
wait_port "$embedded_gw_port"

BENCH_TOKEN=$("$vidgate" token --tenant bench --sub bench-user --ttl 2h --config "$work/redis.toml")
BENCH_BODY=$(printf '{"model":"wan2.6-reference-video-flash","prompt":"character1 dances in the rain","video_urls":["http://127.0.0.1:%s/ref.mp4"],"quality":"720p","duration":5}' "$stub_port")
export BENCH_TOKEN BENCH_BODY

# Task ids for the query path: created through each gateway (the reference video is
# probed once here and cached for the runs).
make_tasks() {
  local port=$1 out=$2 i
  : >"$out"
  for ((i = 0; i < 100; i++)); do
    curl -sS --fail-with-body "http://127.0.0.1:$port/v1/videos/generations" \
      -H "Authorization: Bearer $BENCH_TOKEN" -H 'Content-Type: application/json' -d "$BENCH_BODY" |
      grep -o '"id":"task-unified-[^"]*"' | cut -d'"' -f4 >>"$out"
  done
  [ "$(wc -l <"$out")" = 100 ] || {
    echo "bench: could not create the query tasks on port $port" >&2
    exit 1
  }
}
make_tasks "$redis_gw_port" "$work/ids-redis"
make_tasks "$embedded_gw_port" "$work/ids-embedded"

# --- wrk runs.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}
# "busy idle" jiffies of each core, from /proc/stat.
core_times() { awk '/^cpu[0-9]/ {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, $5 + $6}' /proc/stat; }
# Busy % of each core between two `core_times` snapshots, as "c0% c1%".
core_busy() {
  paste -d' ' <(echo "$1") <(echo "$2") | awk '{b = $3 - $1; i = $4 - $2; printf "%s%.0f%%", (NR > 1 ? "/" : ""), 100 * b / (b + i)}'
}
# CPU ticks (user + system) of the processes given by pid.
cpu_ticks() {
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
# run_wrk URL SCRIPT|- SECONDS CONNECTIONS [IDS_FILE [PID...]]: prints "req/s p50_ms p99_ms
# requests errors core0%/core1% cpu_us_per_request" (CPU of the PIDs, 0 without).
run_wrk() {
  local url=$1 script=$2 seconds=$3 conns=$4 ids=${5:-} out before ticks
  shift $(($# < 5 ? $# : 5))
  local args=(-t1 -c "$conns" -d "${seconds}s" --latency)
  [ "$script" = - ] || args+=(-s "$script")
  before=$(core_times)
  ticks=$(cpu_ticks "$@")
  out=$(BENCH_IDS=$ids taskset -c "$load_core" wrk "${args[@]}" "$url")
  ticks=$(($(cpu_ticks "$@") - ticks))
  echo "$out" >>"$work/wrk.log"
  local rps p50 p99 requests errors
  rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
  p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
  p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  errors=$(echo "$out" | awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}')
  echo "$rps $p50 $p99 $requests $errors $(core_busy "$before" "$(core_times)")" \
    "$(awk -v t="$ticks" -v hz="$hz" -v n="$requests" 'BEGIN {printf "%.0f", t * 1e6 / hz / n}')"
}
hz=$(getconf CLK_TCK)
redis_calls() {
  redis-cli -p "$redis_port" info commandstats | tr -d '\r' |
    awk -F'[:,=]' '/^cmdstat_/ && $1 != "cmdstat_info" {sub("cmdstat_", "", $1); print $1, $3}'
}
# Per-request Redis commands from two `redis_calls` snapshots and a request count.
round_trips() {
  local before=$1 after=$2 requests=$3
  awk -v n="$requests" 'NR == FNR {b[$1] = $2; next} {d = $2 - b[$1]; if (d > 0) {t += d; s = s sprintf(" %s %.3f", $1, d / n)}}
    END {printf "%.3f per request (%s )\n", t / n, s}' "$before" "$after"
}
# Round trips per request, exactly: redis-cli MONITOR during 100 sequential requests of
# `path` against c (commands from a client are round trips; `[0 lua]` ones run inside a
# script), with the INFO commandstats delta over the same requests (scripts included).
exact_trips() {
  local path=$1 n=100 i monitor
  redis_calls >"$work/before"
  redis-cli -p "$redis_port" monitor >"$work/monitor.log" &
  monitor=$!
  sleep 0.3
  for ((i = 1; i <= n; i++)); do
    if [ "$path" = create ]; then
      curl -sS -o /dev/null --fail "${target[c]}/v1/videos/generations" \
        -H "Authorization: Bearer $BENCH_TOKEN" -H 'Content-Type: application/json' -d "$BENCH_BODY"
    else
      curl -sS -o /dev/null --fail "${target[c]}/v1/tasks/$(sed -n "${i}p" "${ids[c]}")" \
        -H "Authorization: Bearer $BENCH_TOKEN"
    fi
  done
  sleep 0.3
  kill "$monitor"
  wait "$monitor" 2>/dev/null || true
  redis_calls >"$work/after"
  awk -v n=$n '$2 ~ /^\[/ && $3 != "lua]" {c = tolower($4); gsub("\"", "", c); t++; k[c]++}
    END {s = ""; for (c in k) s = s sprintf(" %s %.2f", c, k[c] / n); printf "%.2f per request (%s )\n", t / n, s}' "$work/monitor.log"
}
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

if [ "$mode" = profile ]; then
  : >"$results"
  say "vidgate profile (create and query paths) $stamp  (commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ', dirty tree'))"
  say "machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  seconds=$((duration > 5 ? duration : 5))
  # perf_path create|query: a cpu-clock profile of c under wrk, by area and by symbol.
  perf_path() {
    local path=$1 url="http://127.0.0.1:$redis_gw_port" line perf_pid
    [ "$path" = create ] && url=$url/v1/videos/generations
    run_wrk "$url" "bench/wrk/$path.lua" "$warmup" "$connections" "$work/ids-redis" >/dev/null
    perf record -q -e cpu-clock -F 1999 -p "$redis_gw_pid" -o "$work/perf.data" -- sleep "$seconds" 2>"$work/perf.log" &
    perf_pid=$!
    line=$(run_wrk "$url" "bench/wrk/$path.lua" "$seconds" "$connections" "$work/ids-redis")
    wait "$perf_pid"
    say ""
    say "== $path path: perf cpu-clock samples of vidgate (c) during ${seconds}s at $(echo "$line" | cut -d' ' -f1) req/s (cpu0/cpu1 busy $(echo "$line" | cut -d' ' -f6))"
    perf report -i "$work/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
      grep -v '^#' | grep -v '^$' >"$work/perf.txt"
    say "-- by thread: $(perf report -i "$work/perf.data" --no-children --sort comm --stdio 2>/dev/null |
      awk '/^ +[0-9.]+%/ {printf "%s%s %s", (n++ ? ", " : ""), $2, $1}')"
    say "-- by crate or area (share of all samples)"
    # Symbols to areas: the crate a demangled Rust path starts with, or what a C symbol is.
    awk '{
        pct = $1; sub(/%/, "", pct); sym = $0; sub(/^ *[0-9.]+% +\[[.k]\] /, "", sym)
        area = "other"
        if ($2 == "[k]") area = "kernel (network, scheduling)"
        else if (sym ~ /^(_?_?(libc_)?malloc|_?_?(libc_)?free|cfree|_int_(malloc|free)|realloc|_int_realloc|malloc_consolidate|tcache|unlink_chunk|_rjem_|do_rallocx|je_|imalloc|ifree|isfree)/) area = "malloc/free (jemalloc)"
        else if (sym ~ /^(__)?mem(cpy|move|set|cmp)|^__strlen|^str/) area = "libc memory/string"
        else if (sym ~ /aws_lc|^(aws_lc_|sha256|SHA256|HMAC|hmac)/) area = "aws-lc (JWT HMAC)"
        else if (match(sym, /^<?&?(mut )?[a-z_][a-z0-9_]*::/)) { area = substr(sym, RSTART, RLENGTH); gsub(/^<?&?(mut )?|::$/, "", area) }
        total[area] += pct
      } END { for (a in total) printf "%6.2f%%  %s\n", total[a], a }' "$work/perf.txt" | sort -rn | head -n 16 | tee -a "$results"
    say "-- top symbols"
    head -n 25 "$work/perf.txt" | cut -c1-150 | sed 's/ *$//' | tee -a "$results"
  }
  perf_path create
  perf_path query
  say ""

  # Heap allocations per create: two gateways under dhat, one making $small creates and one
  # $large; the difference over the extra creates is what one create allocates. dhat hooks
  # malloc: this gateway is built with the system allocator (its own target dir, no LTO:
  # inlining does not change what is allocated).
  CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo build --release --locked --bin vidgate --features system-allocator --target-dir target/system-allocator
  dhat_vidgate=$root/target/system-allocator/release/vidgate
  dhat_run() {
    local creates=$1 port i
    port=$(free_port)
    sed "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$work/redis.toml" >"$work/dhat.toml"
    valgrind --tool=dhat --dhat-out-file="$work/dhat-$creates.json" "$dhat_vidgate" serve --config "$work/dhat.toml" \
      >"$work/dhat.out" 2>"$work/dhat.err" &
    local pid=$!
    # This runs in a subshell (process substitution): its own trap stops the gateway.
    # shellcheck disable=SC2064 # the pid is meant to be expanded now
    trap "kill $pid 2>/dev/null || true" EXIT
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.2; done
    for ((i = 0; i < creates; i++)); do
      curl -sS -o /dev/null --fail "http://127.0.0.1:$port/v1/videos/generations" \
        -H "Authorization: Bearer $BENCH_TOKEN" -H 'Content-Type: application/json' -d "$BENCH_BODY"
    done
    sleep 1
    kill "$pid"
    wait "$pid" || true
    # "Total: 1,234 bytes in 56 blocks" and "At t-end: ...": bytes, blocks.
    awk '/Total:/ {gsub(",", ""); tb = $(NF - 4); tn = $(NF - 1)} /At t-end:/ {gsub(",", ""); eb = $(NF - 4); en = $(NF - 1)}
      END {print tb, tn, eb, en}' "$work/dhat.err"
  }
  small=20
  large=220
  read -r b1 n1 e1 _ < <(dhat_run "$small")
  read -r b2 n2 e2 _ < <(dhat_run "$large")
  say "-- heap per create (valgrind dhat, $small vs $large sequential creates, Redis store, system allocator)"
  say "$(awk -v b1="$b1" -v n1="$n1" -v b2="$b2" -v n2="$n2" -v e1="$e1" -v e2="$e2" -v k=$((large - small)) \
    'BEGIN {printf "%.0f allocations, %.1f KiB allocated per create; %.0f bytes per create still live at exit", (n2 - n1) / k, (b2 - b1) / k / 1024, (e2 - e1) / k}')"
  say "-- where a create allocates: blocks per create by the first vidgate function on the stack"
  python3 - "$work/dhat-$small.json" "$work/dhat-$large.json" $((large - small)) <<'PY' | tee -a "$results"
import collections, json, re, sys
def sites(path):
    data = json.load(open(path))
    frames = data["ftbl"]
    out = collections.Counter()
    for pp in data["pps"]:
        names = [re.sub(r"^0x[0-9A-F]+: ", "", frames[f]) for f in pp["fs"]]
        own = next((n for n in names if "vidgate::" in n), "(outside vidgate: " + (names[1] if len(names) > 1 else "?") + ")")
        out[re.sub(r" \(.*$", "", own)[:110]] += pp["tbk"]
    return out
small, large, k = sites(sys.argv[1]), sites(sys.argv[2]), int(sys.argv[3])
diff = {site: (large[site] - small.get(site, 0)) / k for site in large}
for site, blocks in sorted(diff.items(), key=lambda kv: -kv[1])[:15]:
    print(f"{blocks:7.1f}  {site}")
PY
  say "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "results: $results"
  exit 0
fi

declare -A target=(
  [a]="http://127.0.0.1:$stub_port"
  [b]="http://127.0.0.1:$proxy_port"
  [c]="http://127.0.0.1:$redis_gw_port"
  [d]="http://127.0.0.1:$embedded_gw_port"
)
declare -A sut=([a]="$stub_worker" [b]="$proxy_worker" [c]="$redis_gw_pid" [d]="$embedded_gw_pid")
declare -A ids=([a]="$work/ids-redis" [b]="$work/ids-redis" [c]="$work/ids-redis" [d]="$work/ids-embedded")
declare -A label=(
  [a]="a: nginx stub alone"
  [b]="b: nginx proxy_pass -> stub"
  [c]="c: vidgate, Redis store -> stub"
  [d]="d: vidgate, embedded store -> stub"
)

: >"$results"
say "vidgate bench $stamp  (commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ', dirty tree'))"
say "machine: $(nproc) cores, $(awk '/model name/ {sub(/.*: /, ""); print; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
say "wrk: 1 thread, $connections connections, ${duration}s x $repeats after a ${warmup}s warm-up, scenarios interleaved"
say "cores: $load_core = wrk + nginx stub + redis-server; $proxy_core = the proxy under test (nginx proxy or vidgate, 1 worker)"
say ""

for path in create query; do
  script=bench/wrk/$path.lua
  route=/v1/videos/generations
  [ $path = create ] || route=
  : >"$work/$path.runs"
  for s in a b c d; do
    run_wrk "${target[$s]}$route" "$script" "$warmup" "$connections" "${ids[$s]}" >/dev/null
  done
  for ((r = 1; r <= repeats; r++)); do
    for s in a b c d; do
      if [ "$s" = c ]; then
        redis_calls >"$work/before"
        redis_ticks=$(cpu_ticks "$redis_pid")
      fi
      line=$(run_wrk "${target[$s]}$route" "$script" "$duration" "$connections" "${ids[$s]}" "${sut[$s]}")
      echo "$s $line" >>"$work/$path.runs"
      if [ "$s" = c ]; then
        redis_calls >"$work/after"
        # Redis's own CPU per request of c, over the same window.
        awk -v t=$(($(cpu_ticks "$redis_pid") - redis_ticks)) -v hz="$hz" -v n="$(cut -d' ' -f4 <<<"$line")" \
          'BEGIN {printf "%.0f\n", t * 1e6 / hz / n}' >>"$work/$path.redis"
        echo "$(echo "$line" | cut -d' ' -f4) $(round_trips "$work/before" "$work/after" "$(echo "$line" | cut -d' ' -f4)")" >>"$work/$path.trips"
      fi
    done
  done
  say "== $path path ($(cut -d' ' -f1-3 /proc/loadavg) load after)"
  printf '%-36s %10s %9s %9s %7s %10s %8s\n' scenario "req/s" "p50 ms" "p99 ms" errors "cpu0/cpu1" "µs/req" | tee -a "$results"
  declare -A rps=() p99=() cpu=()
  for s in a b c d; do
    rps[$s]=$(awk -v s=$s '$1 == s {print $2}' "$work/$path.runs" | median)
    p50=$(awk -v s=$s '$1 == s {print $3}' "$work/$path.runs" | median)
    p99[$s]=$(awk -v s=$s '$1 == s {print $4}' "$work/$path.runs" | median)
    errors=$(awk -v s=$s '$1 == s {n += $6} END {print n + 0}' "$work/$path.runs")
    busy=$(awk -v s=$s '$1 == s {b = $7} END {print b}' "$work/$path.runs")
    cpu[$s]=$(awk -v s=$s '$1 == s {print $8}' "$work/$path.runs" | median)
    printf '%-36s %10.0f %9.3f %9.3f %7s %10s %8s\n' "${label[$s]}" "${rps[$s]}" "$p50" "${p99[$s]}" "$errors" "$busy" "${cpu[$s]}" |
      tee -a "$results"
  done
  say "(µs/req: CPU of the proxy under test per request: the nginx worker, or vidgate; Redis's own for c: $(median <"$work/$path.redis") µs/req)"
  for s in c d; do
    say "$(awk -v r="${rps[$s]}" -v b="${rps[b]}" -v p="${p99[$s]}" -v q="${p99[b]}" -v s="$s" -v c="${cpu[$s]}" -v d="${cpu[b]}" \
      'BEGIN {printf "%s/b: req/s %.2f, p99 %.2f (CPU per request: %.1f times b'"'"'s)", s, r / b, p / q, c / d}')"
  done
  say "Redis round trips per $path (c, MONITOR over 100 sequential ones): $(exact_trips $path)"
  say "Redis commands per $path inside scripts included (c, INFO commandstats delta, same 100): $(round_trips "$work/before" "$work/after" 100)"
  say "Redis commands per $path under load (c, INFO commandstats delta, last repeat): $(tail -n1 "$work/$path.trips" | cut -d' ' -f2-)"
  say ""
done

# --- RSS with 1,000 open keep-alive connections (wrk holds them on /healthz).
rss_of() { awk '/^VmRSS/ {printf "%.1f MB", $2 / 1024}' "/proc/$1/status"; }
say "== memory with 1,000 keep-alive connections ($((duration > 5 ? duration : 5))s of wrk -c 1000 on /healthz)"
for s in c b; do
  case $s in c) pid=$redis_gw_pid ;; b) pid=$proxy_worker ;; esac
  idle=$(rss_of "$pid")
  seconds=$((duration > 5 ? duration : 5))
  route=/healthz
  [ $s = c ] || route=/v1/tasks/task-unified-1
  taskset -c "$load_core" wrk -t1 -c 1000 -d "${seconds}s" "${target[$s]}$route" >"$work/rss.log" 2>&1 &
  wrk_pid=$!
  sleep $((seconds / 2))
  port=${target[$s]##*:}
  open=$(ss -Htn state established "( sport = :$port )" | wc -l)
  busy=$(rss_of "$pid")
  wait "$wrk_pid"
  say "${label[$s]}: RSS $busy with $open connections open (idle before: $idle)"
done
say ""

# --- /metrics with $tenants tenants: the gateway's CPU per scrape (Redis store).
say "== /metrics scrape, $tenants tenants (c)"
ticks_before=$(cpu_ticks "$redis_gw_pid")
redis_calls >"$work/before"
line=$(run_wrk "${target[c]}/metrics" - 5 1)
redis_calls >"$work/after"
ticks_after=$(cpu_ticks "$redis_gw_pid")
scrapes=$(echo "$line" | cut -d' ' -f4)
say "$(awk -v t=$((ticks_after - ticks_before)) -v hz="$(getconf CLK_TCK)" -v n="$scrapes" -v p50="$(echo "$line" | cut -d' ' -f2)" \
  'BEGIN {printf "%d scrapes: %.2f ms of gateway CPU per scrape (user + system), p50 %.2f ms", n, t * 1000 / hz / n, p50}')"
say "Redis commands per scrape: $(round_trips "$work/before" "$work/after" "$scrapes")"
say ""
say "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "results: $results"
