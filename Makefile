# The commands a developer and CI use. See README.md.
.PHONY: run test bench bench-tls bench-webhooks bench-readers lint fmt check

# Start PostgreSQL (unless BILLING_DATABASE_URL is set), migrate, and serve
# gRPC on 127.0.0.1:50051 (BILLING_GRPC_ADDR). Ctrl-C stops everything.
run:
	scripts/dev.sh run

# Run every test, against a throwaway PostgreSQL it starts and stops.
test:
	scripts/dev.sh test

# The service under call-control load next to a plain SQL charge (pgbench),
# swept over concurrency and account distribution. See BENCHMARKS.md.
bench:
	scripts/bench.sh

# What TLS costs: the service with gRPC over TLS and PostgreSQL with
# sslmode=verify-full, side by side with plaintext. See BENCHMARKS.md.
bench-tls:
	scripts/bench-tls.sh

# How fast one webhook dispatcher delivers, alone and beside an endpoint
# that answers after 2 s. See BENCHMARKS.md.
bench-webhooks:
	scripts/bench-webhooks.sh

# How fast the read side catches up from a backlog (1,000,000 events by
# default, BENCH_READERS_EVENTS) with 1, 2 and 4 processes per role. See
# BENCHMARKS.md.
bench-readers:
	scripts/bench-readers.sh

# Formatting and lints, as CI checks them.
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

check:
	cargo check --workspace --all-targets
