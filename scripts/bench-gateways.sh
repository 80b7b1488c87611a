#!/usr/bin/env bash
# Gateway benchmark, side by side: a mock OpenAI-compatible upstream, tenantry (in-process and
# Redis quotas), LiteLLM's proxy (PyPI) and Portkey's gateway (npm), all driven by wrk with the
# same request, in alternating rounds (benches/gateways.rs; results in BENCHMARKS.md).
#
# Usage: scripts/bench-gateways.sh [--no-peers]
#   --no-peers   only the mock and tenantry (no LiteLLM/Portkey install)
# Environment: TENANTRY_BENCH_SECONDS (per run, default 10), TENANTRY_BENCH_ROUNDS (default 2),
# TENANTRY_BENCH_STREAMS (streamed requests per target, default 500), TENANTRY_BENCH_BIN (another
# tenantry binary to measure instead of this tree's release build), TENANTRY_BENCH_SOAK_MINUTES
# (a soak instead: tenantry alone under 16 connections that long, RSS every 30 s; implies
# --no-peers).
#
# Installs, once: wrk (Debian package), LiteLLM into ${TENANTRY_CACHE:-~/.cache/tenantry}/py,
# @portkey-ai/gateway into ${TENANTRY_CACHE:-~/.cache/tenantry}/node. Needs redis-server.
set -euo pipefail

readonly PORTKEY_VERSION="1.15.2"
cd "$(dirname "$0")/.."
log() { printf 'bench-gateways: %s\n' "$*" >&2; }

peers=1
[[ "${1:-}" == "--no-peers" || -n ${TENANTRY_BENCH_SOAK_MINUTES:-} ]] && peers=0

if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk (Debian package)"
    if [[ $(id -u) -eq 0 ]]; then apt-get install -y -qq wrk >&2; else sudo apt-get install -y -qq wrk >&2; fi
fi
command -v redis-server >/dev/null 2>&1 || {
    log "error: redis-server is required (Debian: apt-get install redis-server)"
    exit 1
}
TENANTRY_MODEL_DIR="${TENANTRY_MODEL_DIR:-$(scripts/install-model.sh)}"
export TENANTRY_MODEL_DIR

if [[ $peers -eq 1 ]]; then
    TENANTRY_BENCH_LITELLM="$(scripts/python-env.sh litellm)"
    node_dir="${TENANTRY_CACHE:-$HOME/.cache/tenantry}/node/portkey-$PORTKEY_VERSION"
    if [[ ! -f "$node_dir/.complete" ]]; then
        command -v npm >/dev/null 2>&1 || {
            log "error: npm is required for the Portkey gateway (or pass --no-peers)"
            exit 1
        }
        log "installing @portkey-ai/gateway@$PORTKEY_VERSION (npm)"
        mkdir -p "$node_dir"
        (cd "$node_dir" && npm install --silent --no-audit --no-fund "@portkey-ai/gateway@$PORTKEY_VERSION" >&2)
        touch "$node_dir/.complete"
    fi
    TENANTRY_BENCH_PORTKEY="$node_dir/node_modules/@portkey-ai/gateway/build/start-server.js"
    export TENANTRY_BENCH_LITELLM TENANTRY_BENCH_PORTKEY
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tenantry/target}"
exec cargo bench --locked --bench gateways
