#!/usr/bin/env bash
# Runs `tenantry serve` on the embedded default: the tenants in config/tenants, data in ./data,
# the local embedding model (installed on first run), no external service. Extra arguments go
# to `tenantry serve` (e.g. `--dev`). Set OPENAI_BASE_URL (and OPENAI_API_KEY) to answer with a
# real model; without it the offline extractive responder answers.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tenantry/target}"
TENANTRY_MODEL_DIR="$(scripts/install-model.sh)"
export TENANTRY_MODEL_DIR
exec scripts/tenantry serve "$@"
