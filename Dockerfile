# syntax=docker/dockerfile:1
# The billing service image: one static `billing` binary and the CA
# certificates, on an empty base, running as a non-root user.
#
#   docker build -t billing .
#   docker run --rm billing --help
#
# The image's entry point is the binary, so a container runs a subcommand:
# `serve` (the roles in BILLING_ROLES), `migrate`, `rebuild`, `lag`, `rates`.
# docker-compose.yml and helm/billing run it this way; README.md
# ("Operations") lists the settings.

# The compiler the project is built and tested with (Cargo.toml's
# rust-version is the oldest that works; scripts/check-deploy.sh checks that
# this is not older).
ARG RUST_VERSION=1.95

# Build on musl, so the binary is static and needs nothing from its image
# (musl's resolver reads /etc/hosts and /etc/resolv.conf, which the container
# runtime provides). librdkafka and zlib are compiled from their crates'
# vendored sources: they need a C toolchain, make, bash and perl.
#
# TLS: gRPC, PostgreSQL and the JWKS fetch use rustls (on ring, compiled by
# the C toolchain above). Only librdkafka needs OpenSSL: its `ssl` feature
# (Kafka over TLS, SASL SCRAM) is built on it, through the openssl-sys crate.
# Alpine's openssl-dev has the headers, openssl-libs-static the libssl.a and
# libcrypto.a archives, pkgconf the pkg-config librdkafka's configure script
# asks about libssl.
FROM rust:${RUST_VERSION}-alpine AS build
RUN apk add --no-cache build-base bash perl linux-headers ca-certificates \
        openssl-dev openssl-libs-static pkgconf
# zlib from source, linked in statically (never the image's libz.so).
ENV LIBZ_SYS_STATIC=1
# OpenSSL from those archives, linked in statically: without OPENSSL_STATIC,
# openssl-sys links libssl.so/libcrypto.so, and the build below refuses the
# dynamically linked result (the runtime image has no shared libraries). The
# directories are named so that openssl-sys takes Alpine's own OpenSSL as it
# is, without asking pkg-config (whose answer for a static link varies with
# the .pc files).
ENV OPENSSL_STATIC=1 \
    OPENSSL_LIB_DIR=/usr/lib \
    OPENSSL_INCLUDE_DIR=/usr/include
WORKDIR /src
# Only what the build reads (.dockerignore keeps the rest out of the context).
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY proto proto
COPY migrations migrations
# The registry and target directories are cache mounts: a rebuild after a
# source change recompiles only our crates. A dynamically linked binary would
# not start on the empty base, so the build refuses one.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin billing \
    && cp target/release/billing /billing \
    && if readelf -d /billing | grep -q NEEDED; then \
         echo "billing is dynamically linked" >&2; readelf -d /billing >&2; exit 1; \
       fi \
    && /billing --version

# The runtime: nothing but the binary and the CA certificates: the roots any
# TLS peer is checked against when no CA file is named (an OTLP collector
# behind https, a JWKS URL, PostgreSQL with sslrootcert=system, Kafka brokers
# without BILLING_KAFKA_SSL_CA_LOCATION). Certificates, keys and secrets are
# mounted at run time (docker-compose.yml, helm/billing), never built in.
FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /billing /usr/local/bin/billing
# Any non-root id works (the binary reads no home directory); 65532 is the
# usual "nonroot". Numeric, as the image has no /etc/passwd, so that
# Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# gRPC API (BILLING_GRPC_ADDR) and Prometheus metrics (BILLING_METRICS_ADDR):
# the ports docker-compose.yml and the Helm chart use.
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/billing"]
CMD ["serve"]
