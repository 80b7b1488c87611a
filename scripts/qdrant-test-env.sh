#!/usr/bin/env bash
# A real Qdrant server for the test suite: one `qdrant` process on 127.0.0.1 with an API key,
# telemetry off and its storage under the cache.
#
#   eval "$(scripts/qdrant-test-env.sh start)"  start (idempotent), export QDRANT_URL etc.
#   scripts/qdrant-test-env.sh env              print the export lines (exit 1 if not running)
#   scripts/qdrant-test-env.sh status           say what runs where
#   scripts/qdrant-test-env.sh stop [--clean]   stop; --clean also wipes the storage
#
# The binary: $QDRANT_BIN, else the last stdout line of $QDRANT_SRC/build.sh (the vendored
# Qdrant source; QDRANT_SRC defaults to ../shared/qdrant next to the checkout), which installs a
# checksummed prebuilt binary in a second or builds it from source once. Only `export ...` lines
# go to stdout; everything else goes to stderr. The API key is generated once and kept in the
# run folder (mode 600); it is a test key for this loopback server only.
#
# Environment:
#   TENANTRY_CACHE             cache root (default ~/.cache/tenantry)
#   TENANTRY_QDRANT_HTTP_PORT  REST port on 127.0.0.1 (default 16333; gRPC is the next port)
#   TENANTRY_QDRANT_START_TIMEOUT  seconds to wait for /readyz (default 60)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${TENANTRY_CACHE:-$HOME/.cache/tenantry}
RUN=$CACHE/qdrant-run
LOCK=$CACHE/qdrant.lock
START_TIMEOUT=${TENANTRY_QDRANT_START_TIMEOUT:-60}

log() { echo "qdrant-test-env: $*" >&2; }
die() { log "$*"; exit 1; }

# One invocation at a time (two parallel `start`s must not both launch a server).
lock() {
  mkdir -p "$CACHE"
  exec 9>"$LOCK"
  flock 9
}

# The qdrant binary: $QDRANT_BIN, else what $QDRANT_SRC/build.sh prints last.
find_bin() {
  if [[ -n ${QDRANT_BIN:-} ]]; then
    [[ -x $QDRANT_BIN ]] || die "QDRANT_BIN=$QDRANT_BIN is not an executable"
    echo "$QDRANT_BIN"
    return 0
  fi
  local src=${QDRANT_SRC:-$ROOT/../shared/qdrant} bin
  [[ -x $src/build.sh ]] ||
    die "no qdrant binary: set QDRANT_BIN to one, or QDRANT_SRC to the vendored Qdrant source (no $src/build.sh)"
  bin=$("$src/build.sh" | tail -n1)
  [[ -x $bin ]] || die "$src/build.sh did not print an executable path (got: $bin)"
  echo "$bin"
}

# pid_running <pid>: exists and is not a zombie.
pid_running() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z ]]
}

# The pid in $RUN/qdrant.pid runs a binary named qdrant (not a recycled pid).
alive() {
  local pid cmd
  [[ -f $RUN/qdrant.pid ]] || return 1
  pid=$(cat "$RUN/qdrant.pid")
  [[ $pid =~ ^[0-9]+$ ]] && pid_running "$pid" || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ ${cmd%% *} == */qdrant ]]
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

state() { cat "$RUN/$1" 2>/dev/null; }

# /readyz is open without the key; /collections checks that the key is the server's.
readyz() {
  local port key
  port=$(state http.port) && key=$(state api.key) || return 1
  curl -sf --max-time 3 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 &&
    curl -sf --max-time 3 -H "api-key: $key" "http://127.0.0.1:$port/collections" >/dev/null 2>&1
}

running() { alive && readyz; }

print_env() {
  printf 'export QDRANT_URL=%q QDRANT_API_KEY=%q QDRANT_BIN=%q\n' \
    "http://127.0.0.1:$(state grpc.port)" "$(state api.key)" "$(state bin)"
}

# SIGTERM, wait up to 20 s, then SIGKILL.
stop_proc() {
  local pid i
  if alive; then
    pid=$(cat "$RUN/qdrant.pid")
    log "stopping qdrant (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
      pid_running "$pid" || break
      sleep 0.1
    done
    if pid_running "$pid"; then
      log "qdrant did not exit after SIGTERM, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$RUN/qdrant.pid"
}

fail_start() {
  log "$1"
  if [[ -f $RUN/qdrant.log ]]; then
    echo "----- last lines of $RUN/qdrant.log -----" >&2
    tail -n 40 "$RUN/qdrant.log" >&2
  fi
  stop_proc
  exit 1
}

# launch <bin> <http port>: starts qdrant in the background, records its pid. The working
# folder is the run folder (qdrant writes its .qdrant-initialized marker there); setsid: it
# outlives this script; fd 9 (the lock) is closed for it.
launch() {
  local bin=$1 http=$2
  cd "$RUN"
  QDRANT__SERVICE__HOST=127.0.0.1 QDRANT__SERVICE__HTTP_PORT=$http \
    QDRANT__SERVICE__GRPC_PORT=$((http + 1)) QDRANT__SERVICE__API_KEY=$(state api.key) \
    QDRANT__STORAGE__STORAGE_PATH=$RUN/storage QDRANT__STORAGE__SNAPSHOTS_PATH=$RUN/snapshots \
    QDRANT__TELEMETRY_DISABLED=true QDRANT__LOG_LEVEL=WARN \
    setsid "$bin" </dev/null >"$RUN/qdrant.log" 2>&1 9>&- &
  echo $! >"$RUN/qdrant.pid"
}

do_start() {
  if running; then
    log "already running on 127.0.0.1:$(state http.port) (gRPC $(state grpc.port))"
    print_env
    return 0
  fi
  # Half-started or crashed leftovers: clear them first.
  stop_proc
  local bin http pid i t0
  bin=$(find_bin)
  mkdir -p "$RUN/storage" "$RUN/snapshots"
  [[ -s $RUN/api.key ]] || (umask 077 && openssl rand -hex 24 >"$RUN/api.key")
  http=${TENANTRY_QDRANT_HTTP_PORT:-16333}
  for i in "$http" "$((http + 1))"; do
    port_in_use "$i" && die "port $i on 127.0.0.1 is already in use (set TENANTRY_QDRANT_HTTP_PORT)"
  done
  echo "$http" >"$RUN/http.port"
  echo "$((http + 1))" >"$RUN/grpc.port"
  echo "$bin" >"$RUN/bin"
  [[ -f $RUN/qdrant.log ]] && mv -f "$RUN/qdrant.log" "$RUN/qdrant.log.prev"
  t0=$(date +%s)
  log "starting $bin on 127.0.0.1:$http (gRPC $((http + 1)))"
  launch "$bin" "$http"
  pid=$(cat "$RUN/qdrant.pid")
  for ((i = 0; ; i++)); do
    pid_running "$pid" || fail_start "qdrant exited during startup"
    readyz && break
    ((i < START_TIMEOUT * 4)) || fail_start "qdrant not ready after ${START_TIMEOUT}s"
    sleep 0.25
  done
  log "ready in $(($(date +%s) - t0))s (state and log in $RUN)"
  print_env
}

do_stop() {
  stop_proc
  if [[ ${1:-} == --clean ]]; then
    log "wiping the storage in $RUN"
    rm -rf "$RUN/storage" "$RUN/snapshots"
  fi
}

do_status() {
  if alive; then
    echo "qdrant: running (pid $(cat "$RUN/qdrant.pid"), $(state bin))"
  else
    echo "qdrant: stopped"
  fi
  if running; then
    echo "ready: http://127.0.0.1:$(state http.port), gRPC http://127.0.0.1:$(state grpc.port)"
  fi
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
