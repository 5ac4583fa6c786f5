# Warren: run RPC procedures as sandboxed WebAssembly components over RabbitMQ.
# `just` lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

amqp_url := env_var_or_default("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
wasm_target := "wasm32-wasip2"
guest_out := "target/" + wasm_target + "/release"
# How the tests run: cargo-nextest where it is installed (tests of different
# binaries side by side, .config/nextest.toml says why), `cargo test` where it
# is not; WARREN_TEST_RUNNER="cargo test" chooses.
test_runner := env_var_or_default("WARREN_TEST_RUNNER", if `cargo nextest --version >/dev/null 2>&1 && echo yes || echo no` == "yes" { "cargo nextest run" } else { "cargo test" })

# List the recipes.
default:
    @just --list

# Add the wasm32-wasip2 target if rustup does not have it yet.
target:
    @rustup target list --installed | grep -qx {{wasm_target}} || rustup target add {{wasm_target}}

# Build the fib guest for wasm32-wasip2 (release) and install it as modules/fib.wasm.
build-guest: target
    cargo build -p guest-fib --target {{wasm_target}} --release
    @scripts/install-module {{guest_out}}/guest_fib.wasm fib

# Build the Python fib procedure (guest-fib-py) with componentize-py into modules/fib-py.wasm.
build-guest-py:
    scripts/build-guest-py

# Build the JavaScript fib procedure (guest-fib-js) with componentize-js into modules/fib-js.wasm.
build-guest-js:
    scripts/build-guest-js

# Build every procedure: the Rust fib guest, the Python one and the JavaScript one.
build-guests: build-guest build-guest-py build-guest-js

# (Where python3 or node is missing, those guests are skipped and their tests say SKIPPED.)
# Build the hostile test guests (test-guests/) in Rust, Python and JavaScript for the sandbox tests.
build-test-guests: target
    cargo build -p guest-hostile -p guest-configured -p guest-fetcher --target {{wasm_target}} --release
    WARREN_TOOLCHAIN_OPTIONAL=1 scripts/build-guest-py test-guests/hostile-py hostile-py --no-install
    WARREN_TOOLCHAIN_OPTIONAL=1 scripts/build-guest-js test-guests/hostile-js/hostile.js hostile-js --no-install

# Build the host and the client.
build:
    cargo build --workspace

# Make sure a RabbitMQ broker answers on 127.0.0.1:5672, starting a local one if installed.
broker:
    @scripts/ensure-broker

# Run the host in the foreground (Ctrl-C stops it gracefully).
host *ARGS: build-guest broker
    cargo run -q -p warren-host -- {{ARGS}}

# Call fib(N) through the client.
fib N:
    cargo run -q -p warren-client --bin warren -- fib {{N}}

# Call a procedure with a raw body: just call BODY [--procedure NAME]
call *ARGS:
    cargo run -q -p warren-client --bin warren -- call {{ARGS}}

# Everything end to end: build, broker, host, fib 30, a hot swap, stop.
demo: build-guest build broker
    scripts/demo

# RabbitMQ 4.x (Debian 13's package) beside the broker on 5672: just rabbitmq4 up|down|purge|status|url|ctl ARGS
rabbitmq4 *ARGS:
    scripts/rabbitmq4 {{ARGS}}

# The tests where broker versions differ, against RabbitMQ 4.x (started first; `just rabbitmq4 down` stops it).
# (Not languages.rs: a Python or JavaScript procedure reaches the broker only
# through the host, whose every broker path end_to_end covers here.)
test-rabbitmq4: build-guest build-test-guests py-env
    WARREN_TOOLCHAIN_OPTIONAL=1 scripts/build-guest-py
    AMQP_URL="$(scripts/rabbitmq4 up)" WARREN_PYTHON="$PWD/target/py/bin/python" {{test_runner}} \
        -p warren-host --test end_to_end --test deploy --test deploy_history --test deploy_parts \
        --test durable --test observe \
        -p warren-client --test python_interop --test cli

# A three-node RabbitMQ cluster beside the broker on 5672: just cluster up|down|status|urls|tls-urls|stop-node N|start-node N|restart
cluster *ARGS:
    scripts/cluster {{ARGS}}

# A Python virtualenv under target/py with pika, for the interop tests and benchmarks.
py-env:
    @scripts/py-env >/dev/null

# The whole test suite against the real broker (guests and the Python env made first).
test: build-guest build-test-guests broker py-env
    WARREN_TOOLCHAIN_OPTIONAL=1 scripts/build-guest-py
    WARREN_TOOLCHAIN_OPTIONAL=1 scripts/build-guest-js
    WARREN_PYTHON="$PWD/target/py/bin/python" {{test_runner}} --workspace --all-targets
    # nextest leaves the criterion benches out (.config/nextest.toml): run once each here.
    if [ "{{test_runner}}" = "cargo nextest run" ]; then cargo test --workspace --benches; fi

# Writes target/bench-compare/{report.md,report.json,chart.svg}.
# Warren beside the bare echo worker and the seed's server (bench-compare), then the criterion benches.
bench: bench-compare build-test-guests
    cargo bench -p warren-host --bench sandbox
    cargo bench -p warren-client --bench round_trip

# One caller floods, another calls one at a time, with and without per-caller quotas (BENCHMARKS.md): ARGS as scripts/bench-fairness says.
bench-fairness *ARGS: build-guest
    cargo build --release --workspace
    scripts/bench-fairness {{ARGS}}

# Only the side-by-side comparison (see `bench`); ARGS go to bench-compare, e.g. --rounds 5.
bench-compare *ARGS: build-guest broker py-env
    cargo build --release --workspace
    WARREN_PYTHON="$PWD/target/py/bin/python" target/release/bench-compare {{ARGS}}

# Writes target/bench-compare/languages.{md,json}.
# fib in Rust, Python and JavaScript beside the seed's server: fib(1) and fib(25), one call at a time.
bench-languages *ARGS: build-guests broker py-env
    cargo build --release --workspace
    WARREN_PYTHON="$PWD/target/py/bin/python" target/release/bench-compare --languages {{ARGS}}

# What one request costs warren-host (CPU, page faults, madvise, context switches): just host-cost NAME [REQUESTS] [CONCURRENCY] [BODY]
host-cost NAME *ARGS: build-guest broker
    cargo build --release --workspace
    scripts/host-cost {{NAME}} {{ARGS}}

# What a first compile costs warren-host (time, CPU, peak memory): just compile-cost NAME [HOST FLAG...], e.g. fib-py
compile-cost NAME *ARGS: build-guest broker
    cargo build --release --workspace
    scripts/compile-cost {{NAME}} {{ARGS}}

# Check that vendor/ is the published crates plus vendor/patches/, exactly.
check-vendor:
    scripts/check-vendor

# Warren against upstream wasmtime, without vendor/'s patches: just upstream-wasmtime check|test [ARGS]
upstream-wasmtime *ARGS:
    scripts/upstream-wasmtime {{ARGS}}

# No import cycles and no upward imports in host and protocol (the maps in their lib.rs).
check-imports:
    scripts/check-imports

# Formatting, lints and the import rules, as CI wants them.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    scripts/check-imports
