# syntax=docker/dockerfile:1
# Vizora Gateway image: a release build in a Rust image, shipped on distroless/cc (glibc, CA
# certificates, no shell, uid 65532). The same image serves (`serve`, the default) and migrates
# (`migrate`, a one-shot job):
#   docker build -t vizora-gateway .
#   docker run --rm --env-file .env vizora-gateway migrate
#   docker run -p 3002:3002 --ulimit nofile=65536:65536 --env-file .env vizora-gateway
# Each live socket holds one file descriptor: raise the open-file limit where the container runs
# (compose `ulimits.nofile`, the kubelet/containerd default in Kubernetes; see docs/operations.md).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# aws-lc-sys (rustls' crypto provider) compiles C; cmake covers the configurations where its
# bundled build script asks for it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# 1. Dependencies only: the workspace manifests and the lock file with empty crate roots, so this
#    layer (the slow one) is rebuilt only when Cargo.toml/Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY gateway/Cargo.toml gateway/
COPY migration/Cargo.toml migration/
COPY sioclient/Cargo.toml sioclient/
COPY tests/Cargo.toml tests/
COPY loadtest/swarm/Cargo.toml loadtest/swarm/
# Every workspace member needs its manifest and crate roots, even those the image does not build.
RUN for crate in gateway migration sioclient tests; do \
      mkdir -p "$crate/src/bin" && echo '' > "$crate/src/lib.rs"; \
    done \
 && mkdir -p loadtest/swarm/src \
 && echo 'fn main() {}' > loadtest/swarm/src/main.rs \
 && echo 'fn main() {}' > gateway/src/main.rs \
 && echo 'fn main() {}' > tests/src/bin/gateway-under-test.rs \
 && cargo build --release --locked -p vizora-gateway \
 && rm -rf gateway/src migration/src sioclient/src

# 2. The sources (the test harness and the load generator keep their empty roots). COPY
#    keeps the files' own modification times, which can be older than the empty roots above:
#    touch them so cargo rebuilds our crates (and only them).
COPY gateway/src gateway/src
COPY migration/src migration/src
COPY sioclient/src sioclient/src
RUN find gateway/src migration/src sioclient/src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p vizora-gateway \
 && install -D -m 0755 target/release/vizora-gateway /out/vizora-gateway

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="vizora-gateway" \
      org.opencontainers.image.description="Realtime Socket.IO gateway for Vizora signage fleets" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/vizora-gateway /usr/local/bin/vizora-gateway
# distroless :nonroot already runs as 65532; spelled out so `runAsNonRoot` can verify a number.
USER 65532:65532
WORKDIR /home/nonroot
ENV HOST=0.0.0.0 \
    PORT=3002 \
    LOG_FORMAT=json
EXPOSE 3002
# No shell in the image: the binary probes its own readiness route (exit 0 on HTTP 200).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/vizora-gateway", "healthcheck", "--timeout", "2s"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/vizora-gateway"]
CMD ["serve"]
