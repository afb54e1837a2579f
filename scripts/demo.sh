#!/usr/bin/env bash
# The main job: builds the hub, the agent and the load generator, then runs the demo: a hub,
# an agent and an echo target on loopback, a short mixed load directly and through the tunnel,
# and the comparison. Arguments go to `nowconnect-loadgen demo` (try `--help`).
# Exits non-zero if the build or any check of the demo fails.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p nowconnect-hub -p nowconnect-agent -p nowconnect-loadgen

# Where cargo put the binaries: CARGO_TARGET_DIR, a configured target-dir, or ./target.
target_dir="$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
target_dir="${target_dir:-${CARGO_TARGET_DIR:-target}}"
exec "$target_dir/release/nowconnect-loadgen" demo "$@"
