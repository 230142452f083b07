# callplane chores. `just` alone lists them.

default:
    @just --list

# Serve with the checked-in dev config (embedded SQLite, ./callplane.toml).
run *ARGS:
    cargo run --release -p callplane -- serve {{ARGS}}

# The README's test command (set TEST_POSTGRES_URL to include the PostgreSQL tests).
test:
    cargo test --workspace

# Formatting and clippy, warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# What CI checks: lint, tests, and the boot check of the default build.
check: lint test
    cargo run -q -p callplane -- check

# The end-to-end suite only (fixture hosts and the real binary as processes).
e2e:
    cargo test -p callplane-e2e
    cargo test -p callplane --test binary

# Webhook path against a minimal actix-web baseline, same run (docs/performance.md).
# Five interleaved rounds per scenario, median reported. BENCH_SECS sets seconds per round;
# BENCH_ONLY=recorded@32 runs one scenario once (for perf). With TEST_POSTGRES_URL set, the
# PostgreSQL scenarios (recorded-pg, db_down) run too.
bench:
    cargo build --release -p callplane -p callplane-bench
    ./target/release/callplane-bench
    ./target/release/callplane-media-bench
    ./target/release/callplane-console-bench
