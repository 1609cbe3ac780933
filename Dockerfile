# syntax=docker/dockerfile:1
#
# identity-server and outbox-relay in one image:
#   docker build -t REGISTRY/identity:TAG .
# The image runs `identity-server serve` by default; the relay's Deployment runs
# `/usr/local/bin/outbox-relay serve` and the migration Job `identity-server migrate`.
# Nothing here needs protoc (proto/build.rs compiles the .proto files with protox), OpenSSL
# (rustls everywhere) or libpq (diesel's pure-Rust backend), so the builder installs no packages.

# ---- builder: the toolchain the workspace is tested with (rust-version in Cargo.toml: 1.89) ----
FROM rust:1.95.0-slim-bookworm AS builder
WORKDIR /build

# 1. Dependencies, cached in their own layers: the manifests and the lock file with stub
#    sources, so this part is rebuilt only when a Cargo.toml or Cargo.lock changes.
#    proto gets a stub build.rs so its build-dependencies (protox, tonic-prost-build) are cached
#    too; tests is a workspace member, so it needs its manifest and a target to resolve.
COPY Cargo.toml Cargo.lock ./
COPY proto/Cargo.toml proto/
COPY identity-server/Cargo.toml identity-server/
COPY outbox-relay/Cargo.toml outbox-relay/
COPY tests/Cargo.toml tests/
RUN mkdir -p proto/src identity-server/src outbox-relay/src tests/src \
    && echo 'fn main() {}' > proto/build.rs \
    && touch proto/src/lib.rs identity-server/src/lib.rs outbox-relay/src/lib.rs tests/src/lib.rs \
    && echo 'fn main() {}' > identity-server/src/main.rs \
    && echo 'fn main() {}' > outbox-relay/src/main.rs \
    && cargo build --release --locked -p identity-server -p outbox-relay

# 2. The real sources. identity-server embeds migrations/ (diesel_migrations) and outbox-relay
#    its email templates (outbox-relay/templates), so both are copied with the crates.
COPY proto proto
COPY migrations migrations
COPY identity-server identity-server
COPY outbox-relay outbox-relay
# COPY keeps the files' modification times, which can be older than the stub build above;
# touching the crate roots makes cargo rebuild our four crates (and nothing else).
RUN touch proto/build.rs proto/src/lib.rs \
        identity-server/build.rs identity-server/src/lib.rs identity-server/src/main.rs \
        outbox-relay/src/lib.rs outbox-relay/src/main.rs \
    && cargo build --release --locked -p identity-server -p outbox-relay \
    && cp target/release/identity-server target/release/outbox-relay /usr/local/bin/

# ---- runtime: glibc and libgcc only, no shell, no package manager, user 65532 ----
FROM gcr.io/distroless/cc-debian12:nonroot

# Set at build time: docker build --build-arg SOURCE_URL=... --build-arg VERSION=... .
ARG SOURCE_URL=https://example.invalid/identity
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="identity" \
      org.opencontainers.image.description="gRPC identity service (identity-server) and its transactional-outbox email and event relay (outbox-relay)" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /usr/local/bin/identity-server /usr/local/bin/outbox-relay /usr/local/bin/

# The distroless "nonroot" user; Kubernetes sets the same uid with runAsUser.
USER 65532:65532
# gRPC API. The plaintext health port (50052) and metrics (9464 / 9465) are opt-in settings.
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/identity-server"]
CMD ["serve"]
