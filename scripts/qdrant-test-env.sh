#!/usr/bin/env bash
# Real Qdrant servers for the test suite on 127.0.0.1, with an API key, telemetry off and their
# storage under the cache: one single node, and a three-node cluster in distributed mode (the
# conformance suite's second server kind; its collections get two replicas per shard).
#
#   eval "$(scripts/qdrant-test-env.sh start)"  start both (idempotent), export QDRANT_URL etc.
#   scripts/qdrant-test-env.sh env              print the export lines (exit 1 if not running)
#   scripts/qdrant-test-env.sh status           say what runs where
#   scripts/qdrant-test-env.sh stop [--clean]   stop; --clean also wipes the storage
#
# The binary: $QDRANT_BIN, else the last stdout line of $QDRANT_SRC/build.sh (the vendored
# Qdrant source; QDRANT_SRC defaults to ../shared/qdrant next to the checkout), which installs a
# checksummed prebuilt binary in a second or builds it from source once. Only `export ...` lines
# go to stdout; everything else goes to stderr. The API key is generated once and kept in the
# run folder (mode 600); it is a test key for these loopback servers only.
#
# Ports: the single node's REST port is TENANTRY_QDRANT_HTTP_PORT (default 16333), gRPC the
# next one. Cluster node i (0..2) uses TENANTRY_QDRANT_CLUSTER_PORT (default 16341) + 3*i for
# REST, +1 for gRPC, +2 for the peer-to-peer port.
#
# Environment:
#   TENANTRY_CACHE             cache root (default ~/.cache/tenantry)
#   TENANTRY_QDRANT_START_TIMEOUT  seconds to wait for readiness (default 120)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${TENANTRY_CACHE:-$HOME/.cache/tenantry}
RUN=$CACHE/qdrant-run
LOCK=$CACHE/qdrant.lock
START_TIMEOUT=${TENANTRY_QDRANT_START_TIMEOUT:-120}
SINGLE_PORT=${TENANTRY_QDRANT_HTTP_PORT:-16333}
CLUSTER_PORT=${TENANTRY_QDRANT_CLUSTER_PORT:-16341}
NODES=(single cluster-0 cluster-1 cluster-2)

log() { echo "qdrant-test-env: $*" >&2; }
die() { log "$*"; exit 1; }

# One invocation at a time (two parallel `start`s must not both launch servers).
lock() {
  mkdir -p "$CACHE"
  exec 9>"$LOCK"
  flock 9
}

# The qdrant binary: $QDRANT_BIN, else what $QDRANT_SRC/build.sh prints last (or, without
# that script, the binary it installed earlier on this machine).
find_bin() {
  if [[ -n ${QDRANT_BIN:-} ]]; then
    [[ -x $QDRANT_BIN ]] || die "QDRANT_BIN=$QDRANT_BIN is not an executable"
    echo "$QDRANT_BIN"
    return 0
  fi
  local src=${QDRANT_SRC:-$ROOT/../shared/qdrant} bin
  # Where build.sh installs it: a checkout elsewhere on the same machine finds it there.
  local cached=${QDRANT_CACHE:-$HOME/.cache/qdrant-server}/v1.18.3/bin/qdrant
  if [[ ! -x $src/build.sh && -x $cached ]]; then
    echo "$cached"
    return 0
  fi
  [[ -x $src/build.sh ]] ||
    die "no qdrant binary: set QDRANT_BIN to one, or QDRANT_SRC to the vendored Qdrant source (no $src/build.sh)"
  bin=$("$src/build.sh" | tail -n1)
  [[ -x $bin ]] || die "$src/build.sh did not print an executable path (got: $bin)"
  echo "$bin"
}

# http_port <node>: the node's REST port (gRPC is +1, peer-to-peer +2).
http_port() {
  case $1 in
  single) echo "$SINGLE_PORT" ;;
  cluster-*) echo $((CLUSTER_PORT + 3 * ${1#cluster-})) ;;
  esac
}

# pid_running <pid>: exists and is not a zombie.
pid_running() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z ]]
}

# alive <node>: its recorded pid runs a binary named qdrant (not a recycled pid).
alive() {
  local pidf=$RUN/$1/qdrant.pid pid cmd
  [[ -f $pidf ]] || return 1
  pid=$(cat "$pidf")
  [[ $pid =~ ^[0-9]+$ ]] && pid_running "$pid" || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ ${cmd%% *} == */qdrant ]]
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

api_key() { cat "$RUN/api.key" 2>/dev/null; }

# get <node> <path>: REST GET with the key; fails unless 2xx.
get() {
  curl -sf --max-time 3 -H "api-key: $(api_key)" "http://127.0.0.1:$(http_port "$1")$2" 2>/dev/null
}

# ready <node>: /readyz (open without the key) and /collections (checks the key) answer.
ready() { get "$1" /readyz >/dev/null && get "$1" /collections >/dev/null; }

# The first cluster node counts three peers.
cluster_formed() {
  [[ $(get cluster-0 /cluster | grep -o '"uri"' | wc -l) -eq 3 ]]
}

running() {
  local n
  for n in "${NODES[@]}"; do
    alive "$n" && ready "$n" || return 1
  done
  cluster_formed
}

print_env() {
  printf 'export QDRANT_URL=%q QDRANT_CLUSTER_URL=%q QDRANT_API_KEY=%q QDRANT_BIN=%q\n' \
    "http://127.0.0.1:$(($(http_port single) + 1))" \
    "http://127.0.0.1:$(($(http_port cluster-0) + 1))" "$(api_key)" "$(cat "$RUN/bin")"
}

# stop_node <node>: SIGTERM, wait up to 20 s, then SIGKILL.
stop_node() {
  local pid i
  if alive "$1"; then
    pid=$(cat "$RUN/$1/qdrant.pid")
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
      pid_running "$pid" || break
      sleep 0.1
    done
    if pid_running "$pid"; then
      log "$1 did not exit after SIGTERM, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$RUN/$1/qdrant.pid"
}

stop_all() {
  local n
  for n in "${NODES[@]}"; do stop_node "$n"; done
}

fail_start() {
  log "$1"
  local n
  for n in "${NODES[@]}"; do
    if [[ -f $RUN/$n/qdrant.log ]]; then
      echo "----- last lines of $RUN/$n/qdrant.log -----" >&2
      tail -n 20 "$RUN/$n/qdrant.log" >&2
    fi
  done
  stop_all
  exit 1
}

# launch <bin> <node> [args...]: starts the node in the background in its own folder (qdrant
# writes its .qdrant-initialized marker into the working folder) and records its pid.
# setsid: it outlives this script; fd 9 (the lock) is closed for it.
launch() {
  local bin=$1 node=$2 http dir=$RUN/$2
  shift 2
  http=$(http_port "$node")
  mkdir -p "$dir/storage" "$dir/snapshots"
  [[ -f $dir/qdrant.log ]] && mv -f "$dir/qdrant.log" "$dir/qdrant.log.prev"
  (
    cd "$dir"
    export QDRANT__SERVICE__HOST=127.0.0.1 QDRANT__SERVICE__HTTP_PORT=$http \
      QDRANT__SERVICE__GRPC_PORT=$((http + 1)) QDRANT__SERVICE__API_KEY="$(api_key)" \
      QDRANT__STORAGE__STORAGE_PATH=$dir/storage QDRANT__STORAGE__SNAPSHOTS_PATH=$dir/snapshots \
      QDRANT__TELEMETRY_DISABLED=true QDRANT__LOG_LEVEL=WARN
    if [[ $node == cluster-* ]]; then
      export QDRANT__CLUSTER__ENABLED=true QDRANT__CLUSTER__P2P__PORT=$((http + 2))
    fi
    setsid "$bin" "$@" </dev/null >"$dir/qdrant.log" 2>&1 9>&- &
    echo $! >"$dir/qdrant.pid"
  )
}

# wait_for <what> <command...>: polls until the command succeeds, the nodes keep running.
wait_for() {
  local what=$1 i n
  shift
  for ((i = 0; ; i++)); do
    for n in "${NODES[@]}"; do
      [[ ! -f $RUN/$n/qdrant.pid ]] || alive "$n" || fail_start "$n exited during startup"
    done
    "$@" && return 0
    ((i < START_TIMEOUT * 4)) || fail_start "$what not ready after ${START_TIMEOUT}s"
    sleep 0.25
  done
}

do_start() {
  if running; then
    log "already running (single node on 127.0.0.1:$(http_port single), cluster from 127.0.0.1:$(http_port cluster-0))"
    print_env
    return 0
  fi
  # Half-started or crashed leftovers: clear them first.
  stop_all
  local bin n p t0 first_p2p
  bin=$(find_bin)
  mkdir -p "$RUN"
  echo "$bin" >"$RUN/bin"
  [[ -s $RUN/api.key ]] || (umask 077 && openssl rand -hex 24 >"$RUN/api.key")
  for n in "${NODES[@]}"; do
    for p in 0 1 2; do
      [[ $n == single && $p == 2 ]] && continue
      port_in_use "$(($(http_port "$n") + p))" &&
        die "port $(($(http_port "$n") + p)) on 127.0.0.1 is already in use (see TENANTRY_QDRANT_HTTP_PORT / TENANTRY_QDRANT_CLUSTER_PORT)"
    done
  done
  t0=$(date +%s)
  log "starting $bin: single node on 127.0.0.1:$(http_port single), cluster from 127.0.0.1:$(http_port cluster-0)"
  launch "$bin" single
  first_p2p=$(($(http_port cluster-0) + 2))
  launch "$bin" cluster-0 --uri "http://127.0.0.1:$first_p2p"
  wait_for single ready single
  wait_for cluster-0 ready cluster-0
  for n in cluster-1 cluster-2; do
    launch "$bin" "$n" --bootstrap "http://127.0.0.1:$first_p2p" \
      --uri "http://127.0.0.1:$(($(http_port "$n") + 2))"
    wait_for "$n" ready "$n"
  done
  wait_for "the cluster" cluster_formed
  log "ready in $(($(date +%s) - t0))s (state and logs in $RUN)"
  print_env
}

do_stop() {
  stop_all
  if [[ ${1:-} == --clean ]]; then
    log "wiping the storage in $RUN"
    local n
    for n in "${NODES[@]}"; do rm -rf "${RUN:?}/$n"; done
  fi
}

do_status() {
  local n
  for n in "${NODES[@]}"; do
    if alive "$n"; then
      echo "$n: running (pid $(cat "$RUN/$n/qdrant.pid"), REST 127.0.0.1:$(http_port "$n"))"
    else
      echo "$n: stopped"
    fi
  done
  running && echo "ready: $(print_env)" | sed 's/QDRANT_API_KEY=[^ ]*/QDRANT_API_KEY=<in the run folder>/'
  echo "state: $RUN"
}

case ${1:-} in
start) lock; do_start ;;
stop) lock; do_stop "${2:-}" ;;
env) running || die "not running (run: $0 start)"; print_env ;;
status) do_status ;;
*)
  echo "usage: $0 start|stop [--clean]|env|status" >&2
  exit 2
  ;;
esac
