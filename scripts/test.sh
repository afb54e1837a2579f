#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs every test in the
# workspace. Works on a fresh Debian machine with Rust; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the end-to-end tests use (a real proxy and real protocol servers and
# clients). Installed only when missing, so a machine that has them runs the tests offline.
need_apt=(ca-certificates tinyproxy redis-server redis-tools nginx-light curl)
missing=()
for pkg in "${need_apt[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# Node packages of the real services some tests start (an OpenID identity provider and an
# AuthZEN policy decision point), at the versions tests/node/package-lock.json pins.
if ! command -v npm >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
# A stamp of the lock file installed last lets a machine that has them run the tests offline.
if ! cmp -s tests/node/package-lock.json tests/node/node_modules/.installed-lock.json; then
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
    cp tests/node/package-lock.json tests/node/node_modules/.installed-lock.json
fi

# The end-to-end tests run the hub and agent binaries: build them first.
cargo build --workspace --bins --quiet

# Doc tests first (nextest does not run them), so the summary of the main run closes the output.
cargo test --workspace --doc --quiet

# The hub's process tests run once per driver: io_uring with everything else, then epoll.
if cargo nextest --version >/dev/null 2>&1; then
    NOWCONNECT_TEST_DRIVER=epoll cargo nextest run -p nowconnect-hub --tests --no-fail-fast "$@"
    NOWCONNECT_TEST_DRIVER=io_uring cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
    NOWCONNECT_TEST_DRIVER=epoll cargo test -p nowconnect-hub --tests --no-fail-fast "$@"
    NOWCONNECT_TEST_DRIVER=io_uring cargo test --workspace --all-targets --no-fail-fast "$@"
fi
