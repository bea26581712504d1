# syntax=docker/dockerfile:1
# The ATB image: one binary (`atb broker`, `atb agentauth`, `atb keys`, ...).
#
#   docker build -t ghcr.io/atb-project/atb:0.1.0 .
#
# Build stage: the release binary, dynamically linked against Debian 12's
# OpenSSL 3 (the openssl crate), which the runtime image provides.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# BuildKit caches: the registry and the target directory survive between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin atb \
 && install -D -m 0755 target/release/atb /out/atb \
 && /out/atb --help >/dev/null

# Runtime: distroless (glibc, libssl3, CA certificates; no shell, no package
# manager), as nobody (65534), nothing written outside mounted volumes, so
# the chart's readOnlyRootFilesystem holds.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/atb /usr/local/bin/atb
USER 65534:65534
WORKDIR /tmp
EXPOSE 8443 8080 8444 8081
ENTRYPOINT ["/usr/local/bin/atb"]
CMD ["broker", "--config", "/etc/atb/config/broker.toml"]
