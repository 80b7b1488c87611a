#!/usr/bin/env bash
# Node packages the test suites drive tenantry with, installed from npm once into
# ${TENANTRY_CACHE:-$HOME/.cache/tenantry}/node and reused.
#
# Usage:
#   scripts/node-env.sh playwright   playwright-core (drives the system's Chromium, downloads no
#                                    browser); prints its node_modules folder on stdout (for
#                                    NODE_PATH)
#
# Only npm is used. Progress goes to stderr. Idempotent: a complete install is left as is.
set -euo pipefail

readonly PLAYWRIGHT_VERSION="1.65.1"

log() { printf 'node-env: %s\n' "$*" >&2; }

command -v npm >/dev/null 2>&1 || { log "error: node and npm are required (Debian: apt-get install nodejs npm)"; exit 1; }
cache="${TENANTRY_CACHE:-$HOME/.cache/tenantry}/node"

case "${1:-}" in
playwright)
    dir="$cache/playwright-core-$PLAYWRIGHT_VERSION"
    if [[ ! -f "$dir/.complete" ]]; then
        log "installing playwright-core@$PLAYWRIGHT_VERSION into $dir"
        rm -rf "$dir"
        mkdir -p "$dir"
        (cd "$dir" && npm install --silent --no-audit --no-fund --ignore-scripts \
            "playwright-core@$PLAYWRIGHT_VERSION" >&2)
        touch "$dir/.complete"
    fi
    echo "$dir/node_modules"
    ;;
*)
    log "usage: $0 playwright"
    exit 2
    ;;
esac
