#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (the local embedding model, a real
# kube-apiserver + etcd built once from the Go module proxy and cached, a real Qdrant server), then `cargo test`. Extra arguments go to cargo test (e.g. `scripts/test.sh --test api`).
set -euo pipefail
cd "$(dirname "$0")/.."
# One shared build folder outside the checkout, so fresh clones build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tenantry/target}"
TENANTRY_MODEL_DIR="$(scripts/install-model.sh)"
export TENANTRY_MODEL_DIR
# Python peers of the test suites: the official openai SDK, schemathesis, and llama-cpp-python's
# server with SmolLM2-135M (compiled from source on the first run, then cached).
scripts/python-env.sh sdk >/dev/null
scripts/python-env.sh schemathesis >/dev/null
scripts/python-env.sh llama >/dev/null
# playwright-core (npm) for the console test in headless Chromium.
scripts/node-env.sh playwright >/dev/null
# The operator tests run against a real API server on 127.0.0.1 (first run: ~8 min build).
eval "$(scripts/kube-test-env.sh start)"
# Real Qdrant servers on 127.0.0.1 for the vector-store conformance suite (one node and a
# three-node cluster; the binary is $QDRANT_BIN or the one $QDRANT_SRC/build.sh installs, default
# ../shared/qdrant). A QDRANT_URL given by the caller is used instead.
[[ -n ${QDRANT_URL:-} ]] || eval "$(scripts/qdrant-test-env.sh start)"
cargo test --locked "$@"
