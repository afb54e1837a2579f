#!/usr/bin/env bash
# Runs every fuzz target of nowconnect-core for the given number of seconds each
# (default 30), starting from the seed inputs in core/fuzz/seeds/. Fails on any crash.
#
#   scripts/fuzz.sh                  # about 30 s per target, as CI does
#   scripts/fuzz.sh 600              # the ten-minute local runs
#   scripts/fuzz.sh 600 hello ws_decoder   # only these targets
set -euo pipefail
cd "$(dirname "$0")/../core"
seconds=${1:-30}
shift || true

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
# libFuzzer instrumentation needs nightly flags: use a nightly toolchain when one is
# installed, else let the stable compiler accept them.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

if (($#)); then
    targets="$*"
else
    targets=$("${fuzz[@]}" list)
fi
for target in $targets; do
    "${fuzz[@]}" build -O "$target"
done
for target in $targets; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    log=$(mktemp)
    echo "fuzzing $target for ${seconds}s"
    status=0
    "${fuzz[@]}" run -O "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        echo "fuzz target $target failed (exit $status); the input is under core/fuzz/artifacts/$target/"
        exit "$status"
    fi
    rm -f "$log"
done
