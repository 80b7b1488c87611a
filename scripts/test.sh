#!/usr/bin/env bash
# Runs the tests: installs what they need (Debian packages when it can, the local embedding
# model, the Python peers, a real kube-apiserver + etcd built once from the Go module proxy and
# cached, real Qdrant servers), then `cargo test`. Extra arguments go to cargo test; with a
# suite named (`scripts/test.sh --test api`) only what that suite needs is prepared, the rest
# is left to the suite's own fixtures (which start the API server or a Python peer on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
# One shared build folder outside the checkout, so fresh clones build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tenantry/target}"

log() { printf 'test.sh: %s\n' "$*" >&2; }

# install PACKAGE WHY: a Debian package, with apt-get as root (or with passwordless sudo);
# otherwise a clear stop naming it.
install() {
    local sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else
            log "error: $2 is missing: install the Debian package '$1' (sudo apt-get install -y $1)"
            exit 1
        fi
    fi
    command -v apt-get >/dev/null 2>&1 || { log "error: $2 is missing: install '$1'"; exit 1; }
    log "installing the Debian package $1 ($2)"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$1" >/dev/null
}
# need CMD PACKAGE WHY: the command, installed from its Debian package when missing.
need() { command -v "$1" >/dev/null 2>&1 || install "$2" "$3"; }

# Which suites run: all of them, or the `--test NAME` ones given.
suites=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
    --test) suites+=("${args[i + 1]:-}") ;;
    --test=*) suites+=("${args[i]#--test=}") ;;
    esac
done
all=$([[ $# -eq 0 || ${#suites[@]} -eq 0 && " $* " != *" --lib "* && " $* " != *" --doc "* ]] && echo 1 || echo 0)
# wants NAME...: whether any of these suites runs.
wants() {
    [[ $all == 1 ]] && return 0
    local s n
    for s in "${suites[@]}"; do for n in "$@"; do [[ $s == "$n" ]] && return 0; done; done
    return 1
}

need curl curl "curl, for the model download and the TLS tests"
need openssl openssl "openssl, for the test certificates"
# The quota, budget and cluster suites start their own redis-server processes on 127.0.0.1.
if wants quota budgets chart cluster credentials; then need redis-server redis-server "redis-server, for the quota tests"; fi
# The chart suite checks its alerting rules with promtool (in Debian's prometheus package).
if wants chart; then need promtool prometheus "promtool, for the chart's alerting rules"; fi
# The SDK, schemathesis and llama.cpp peers live in Python venvs.
if wants openai_sdk openapi llama; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || install python3-venv "Python's venv module"
fi
# llama-cpp-python (the real model server of tests/llama.rs) compiles llama.cpp once.
if wants llama; then
    need cmake cmake "cmake, to build llama.cpp"
    need g++ g++ "a C++ compiler, to build llama.cpp"
fi

TENANTRY_MODEL_DIR="$(scripts/install-model.sh)"
export TENANTRY_MODEL_DIR
# Python peers of the test suites: the official openai SDK, schemathesis, and llama-cpp-python's
# server with SmolLM2-135M (compiled from source on the first run, then cached).
if wants openai_sdk; then scripts/python-env.sh sdk >/dev/null; fi
if wants openapi; then scripts/python-env.sh schemathesis >/dev/null; fi
if wants llama; then scripts/python-env.sh llama >/dev/null; fi
# The console test drives Debian's Chromium with playwright-core from npm (cached).
if wants console; then
    [[ -x /usr/bin/chromium ]] || install chromium "Chromium, for the console test"
    need npm npm "npm, for playwright-core"
    scripts/node-env.sh playwright >/dev/null
fi
# The operator tests run against a real API server on 127.0.0.1 (first run: ~8 min build; Go).
if wants admission chart cluster credentials crd_api expose kubectl_plugin operator; then
    command -v go >/dev/null || { log "error: Go (1.26+) is needed once to build the test API server"; exit 1; }
    kube_env=$(scripts/kube-test-env.sh start) || { log "error: the test API server did not start (above)"; exit 1; }
    eval "$kube_env"
fi
# Real Qdrant servers on 127.0.0.1 for the vector-store conformance suite (one node and a
# three-node cluster; the binary is $QDRANT_BIN or the one $QDRANT_SRC/build.sh installs, default
# ../shared/qdrant). Servers the caller names (QDRANT_URL and QDRANT_CLUSTER_URL) are used instead.
# A start that fails stops here: under CI the conformance cases would fail without them.
if [[ -z ${QDRANT_URL:-} || -z ${QDRANT_CLUSTER_URL:-} ]]; then
    qdrant_env=$(scripts/qdrant-test-env.sh start) || {
        log "error: the Qdrant test servers did not start (above; logs in ${TENANTRY_CACHE:-$HOME/.cache/tenantry}/qdrant-run)"
        exit 1
    }
    eval "$qdrant_env"
fi
cargo test --locked "$@"
