# syntax=docker/dockerfile:1
# vidgate container image: built with the Rust toolchain, run on distroless (glibc, CA
# certificates, no shell) as the unprivileged `nonroot` user (65532). Works with a read-only
# root filesystem: the embedded store lives in /var/lib/vidgate (a volume in Kubernetes).
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz.
#
#   docker build -t registry.example.com/platform/vidgate:0.1.0 .
#   docker run --rm -p 8080:8080 -e VIDGATE_UPSTREAM__API_KEY=... -e VIDGATE_AUTH__HS256_SECRET=... IMAGE

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# cmake: a fallback of aws-lc-sys's build (rustls / jsonwebtoken crypto); make: jemalloc's.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, in their own layer: rebuilt only when Cargo.toml / Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

COPY src ./src
# The fake main/lib above are older than the real sources, but make sure cargo rebuilds them.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin vidgate \
 && cp target/release/vidgate /vidgate

# The image's default configuration: the repository's defaults, listening on all interfaces,
# the embedded store in /var/lib/vidgate. Kubernetes mounts its own (the Helm chart's ConfigMap).
COPY config/vidgate.toml /tmp/vidgate.toml
RUN mkdir -p /out/etc/vidgate /out/var/lib/vidgate \
 && sed -e 's|^listen = "127.0.0.1:8080"|listen = "0.0.0.0:8080"|' \
        -e 's|^path = "data/vidgate.redb"|path = "/var/lib/vidgate/vidgate.redb"|' \
        /tmp/vidgate.toml > /out/etc/vidgate/vidgate.toml \
 && grep -q '^listen = "0.0.0.0:8080"' /out/etc/vidgate/vidgate.toml \
 && grep -q '^path = "/var/lib/vidgate/vidgate.redb"' /out/etc/vidgate/vidgate.toml

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /vidgate /usr/local/bin/vidgate
COPY --from=build /out/etc/vidgate/vidgate.toml /etc/vidgate/vidgate.toml
COPY --from=build --chown=65532:65532 /out/var/lib/vidgate /var/lib/vidgate
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/vidgate"]
CMD ["serve", "--config", "/etc/vidgate/vidgate.toml"]
