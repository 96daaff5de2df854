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
FROM rust:${RUST_VERSION}-alpine AS build
RUN apk add --no-cache build-base bash perl linux-headers ca-certificates
# zlib from source, linked in statically (never the image's libz.so).
ENV LIBZ_SYS_STATIC=1
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

# The runtime: nothing but the binary and the CA certificates (for any TLS
# peer, such as an OTLP collector behind https).
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
