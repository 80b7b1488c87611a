#!/usr/bin/env bash
# The container image's build steps, runnable with or without Docker. The Dockerfile runs the
# `build` and `model` steps; CI (no container engine) runs `stage` + `check` on dev artifacts.
#
# Usage:
#   scripts/build-image.sh build [--profile P] [--out DIR]
#       cargo build --locked --profile P (default release) --bin tenantry; copies the binary
#       to DIR/tenantry when --out is given, with DIR/kubectl-tenantry, a symlink to it (the
#       kubectl plugin `kubectl tenantry`).
#   scripts/build-image.sh model DIR
#       installs the embedding model into DIR/all-MiniLM-L6-v2 (scripts/install-model.sh).
#   scripts/build-image.sh stage DIR [--profile P] [--no-model]
#       build + lays out the runtime filesystem in DIR as the image has it:
#       DIR/usr/local/bin/tenantry, DIR/models/all-MiniLM-L6-v2, DIR/data (the volume).
#       The model is copied from $TENANTRY_MODEL_DIR when that holds one, else installed.
#   scripts/build-image.sh check DIR
#       smoke-tests a staged filesystem: --version, the kubectl plugin's --help, `healthcheck`
#       against a closed port (must fail), then `serve` from it as uid 65532 with DIR mounted
#       read-only (a private mount namespace; skipped without root/unshare) and only a data
#       volume writable, until `healthcheck` passes; then SIGTERM and a clean exit.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly MODEL_NAME="all-MiniLM-L6-v2"
readonly UID_GID="65532"

log() { printf 'build-image: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Directory cargo puts a profile's artifacts in (dev builds go to debug/).
profile_dir() {
    local target="${CARGO_TARGET_DIR:-$repo_root/target}"
    case "$1" in
    dev | test) printf '%s/debug\n' "$target" ;;
    *) printf '%s/%s\n' "$target" "$1" ;;
    esac
}

cmd_build() {
    local profile=release out=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) die "build: unknown argument $1" ;;
        esac
    done
    log "cargo build --locked --profile $profile --bin tenantry"
    (cd "$repo_root" && cargo build --locked --profile "$profile" --bin tenantry)
    if [[ -n "$out" ]]; then
        mkdir -p "$out"
        install -m 0755 "$(profile_dir "$profile")/tenantry" "$out/tenantry"
        ln -sfn tenantry "$out/kubectl-tenantry"
        log "binary in $out/tenantry (and the kubectl plugin $out/kubectl-tenantry)"
    fi
}

cmd_model() {
    [[ $# -eq 1 ]] || die "model: expected DIR"
    mkdir -p "$1"
    "$repo_root/scripts/install-model.sh" "$1/$MODEL_NAME" >/dev/null
}

cmd_stage() {
    [[ $# -ge 1 ]] || die "stage: expected DIR"
    local dir="$1" profile=release model=1
    shift
    while [[ $# -gt 0 ]]; do
        case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --no-model) model=0; shift ;;
        *) die "stage: unknown argument $1" ;;
        esac
    done
    cmd_build --profile "$profile" --out "$dir/usr/local/bin"
    mkdir -p "$dir/models" "$dir/data"
    if [[ "$model" == 1 ]]; then
        local src="${TENANTRY_MODEL_DIR:-}"
        if [[ -n "$src" && -s "$src/model.safetensors" && -s "$src/tokenizer.json" ]]; then
            log "copying the model from $src"
            rm -rf "$dir/models/$MODEL_NAME"
            cp -R "$src" "$dir/models/$MODEL_NAME"
        else
            cmd_model "$dir/models"
        fi
        chmod -R a+rX "$dir/models"
    fi
    # The image's files are root-owned and read-only for the service user; only /data (a
    # volume at run time) belongs to it.
    if [[ "$(id -u)" == 0 ]]; then chown "$UID_GID:$UID_GID" "$dir/data"; fi
    log "staged in $dir"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd_check() {
    [[ $# -eq 1 ]] || die "check: expected DIR"
    local dir
    dir="$(cd "$1" && pwd)"
    local bin="$dir/usr/local/bin/tenantry"
    [[ -x "$bin" ]] || die "no binary at $bin"
    log "tenantry --version: $("$bin" --version)"
    local plugin_help
    plugin_help="$("$dir/usr/local/bin/kubectl-tenantry" --help)"
    [[ $plugin_help == *"Usage: kubectl tenantry "* ]] \
        || die "kubectl-tenantry does not run as the kubectl plugin: $plugin_help"
    log "kubectl-tenantry runs as the kubectl plugin"
    local port
    port="$(free_port)"
    if "$bin" healthcheck --url "http://127.0.0.1:$port/healthz" 2>/dev/null; then
        die "healthcheck passed against a closed port"
    fi
    log "healthcheck against a closed port fails, as it should"
    [[ -s "$dir/models/$MODEL_NAME/model.safetensors" ]] || {
        log "no model staged: skipping the serve check"
        return 0
    }

    local work api metrics
    work="$(mktemp -d)"
    chmod 0755 "$work"
    mkdir -p "$work/data" "$work/tenants"
    cp "$repo_root"/config/tenants/*.yaml "$work/tenants/" 2>/dev/null || true
    chmod -R a+rX "$work/tenants"
    api="$(free_port)"
    metrics="$(free_port)"
    local -a run=("$bin" serve --listen "127.0.0.1:$api" --metrics-listen "127.0.0.1:$metrics"
        --data-dir "$work/data" --tenants "$work/tenants")
    local readonly_root=0
    if [[ "$(id -u)" == 0 ]] && unshare -m true 2>/dev/null && command -v setpriv >/dev/null; then
        readonly_root=1
        chown "$UID_GID:$UID_GID" "$work/data"
        # A private mount namespace in which the staged root is read-only, the process runs
        # as 65532:65532 with no capabilities, and only the data folder is writable.
        run=(unshare -m sh -c 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && cd "$0" && exec setpriv --reuid '"$UID_GID"' --regid '"$UID_GID"' --clear-groups --inh-caps=-all "$@"' "$dir" "${run[@]}")
    else
        log "not root or no unshare/setpriv: serve runs without the read-only mount"
    fi
    local before
    before="$(cd "$dir" && find . -newer "$bin" -print | sort)"
    TENANTRY_MODEL_DIR="$dir/models/$MODEL_NAME" RUST_LOG=warn "${run[@]}" >"$work/serve.log" 2>&1 &
    local pid=$!
    local ok=0
    for _ in $(seq 1 120); do
        if "$bin" healthcheck --url "http://127.0.0.1:$api/healthz" 2>/dev/null; then
            ok=1
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if [[ "$ok" != 1 ]]; then
        kill "$pid" 2>/dev/null || true
        cat "$work/serve.log" >&2
        rm -rf "$work"
        die "the staged serve never became healthy"
    fi
    log "staged serve is healthy (read-only root: $readonly_root, uid $UID_GID: $readonly_root)"
    kill -TERM "$pid"
    local status=0
    wait "$pid" || status=$?
    local after
    after="$(cd "$dir" && find . -newer "$bin" -print | sort)"
    rm -rf "$work"
    [[ "$status" == 0 ]] || die "serve exited with $status after SIGTERM"
    [[ "$before" == "$after" ]] || die "serve wrote into the image filesystem: $after"
    log "check passed"
}

[[ $# -ge 1 ]] || die "usage: $0 build|model|stage|check ..."
step="$1"
shift
case "$step" in
build) cmd_build "$@" ;;
model) cmd_model "$@" ;;
stage) cmd_stage "$@" ;;
check) cmd_check "$@" ;;
*) die "unknown step $step (build, model, stage, check)" ;;
esac
