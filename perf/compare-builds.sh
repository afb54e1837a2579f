#!/usr/bin/env bash
# Compares builds of the hub and agent on this machine, in one run: each round starts every
# build's tunnel in turn (`nowconnect-loadgen stack --bin-dir DIR`) in front of the same echo
# target and measures throughput with 1 and 8 streams and the request/response rate at
# 50,000/s offered, together with the hub's and agent's CPU time (from /proc) over each
# measurement. Prints a Markdown table of the medians over the rounds and of each build's
# figures relative to the first build's.
#
# Usage: perf/compare-builds.sh [--rounds N] [--seconds S] [--driver D] [--direction W] NAME=DIR[,OPTION...]...
#   DIR holds nowconnect-hub and nowconnect-agent, for instance a copy of target/release
#   taken at each commit compared. nowconnect-loadgen is taken from target/release. Options
#   after the directory go to that build's `nowconnect-loadgen stack`, so one build can be
#   compared under two settings: base=target/release big=target/release,--stream-window-bytes=1048576
#   --direction up or down measures the bulk streams one way, against a sink or a source target
#   (default both, through the echo target); CPU per GB counts the bytes crossing the tunnel.
#
# Builds alternate within every round, so that the machine's other load, which moves
# absolute figures by tens of percent from minute to minute here, falls on all of them alike.
set -euo pipefail

ROUNDS=3
SECONDS_EACH=5
DRIVER=io_uring
DIRECTION=both
BUILDS=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --driver) DRIVER=$2; shift 2 ;;
    --direction) DIRECTION=$2; shift 2 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *=*) BUILDS+=("$1"); shift ;;
    *) echo "compare-builds: unexpected argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ ${#BUILDS[@]} -ge 1 ]] || { echo "compare-builds: name at least one build as NAME=DIR" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOADGEN=$ROOT/target/release/nowconnect-loadgen
[[ -x $LOADGEN ]] || { echo "compare-builds: build it first: cargo build --release -p nowconnect-loadgen" >&2; exit 2; }
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=perf/lib.sh
source "$ROOT/perf/lib.sh"
HZ=$(getconf CLK_TCK)

ECHO=127.0.0.1:$(free_port)
"$LOADGEN" target echo --listen "$ECHO" >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
# The bulk streams' target: the echo target itself, or a sink or a source of its own.
case $DIRECTION in
both) BULK=$ECHO ;;
up | down)
    BULK=127.0.0.1:$(free_port)
    kind=sink
    [[ $DIRECTION == down ]] && kind=source
    "$LOADGEN" target "$kind" --listen "$BULK" >"$WORK/$kind.log" 2>&1 &
    PIDS+=($!)
    ;;
*) echo "compare-builds: --direction is both, up or down" >&2; exit 2 ;;
esac
sleep 0.3

# One measurement: NAME DIR[,OPTION...] ROUND SCENARIO CONNECTOR ARGS... against a fresh
# stack of build NAME, whose connectors are echo and bulk.
measure() {
    local name=$1 spec=$2 round=$3 scenario=$4 connector=$5
    shift 5
    local out=$WORK/stack-$name-$round-$scenario.out stack line hub agent addr h0 a0 dir opts
    IFS=, read -r -a opts <<<"$spec"
    dir=${opts[0]}
    "$LOADGEN" stack --bin-dir "$dir" --driver "$DRIVER" --target "echo=$ECHO" --target "bulk=$BULK" \
        "${opts[@]:1}" >"$out" 2>"$out.log" &
    stack=$!
    for _ in $(seq 100); do [[ -s $out ]] && break; sleep 0.1; done
    line=$(head -1 "$out")
    read -r hub agent addr < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["hub_pid"], d["agent_pid"], d["listeners"][sys.argv[2]])' "$line" "$connector")
    h0=$(cpu_ticks "$hub")
    a0=$(cpu_ticks "$agent")
    "$LOADGEN" "$@" --addr "$addr" --json "$WORK/$name-$round-$scenario.json" >/dev/null
    printf '{"hub_cpu_ms": %s, "agent_cpu_ms": %s}\n' \
        $((($(cpu_ticks "$hub") - h0) * 1000 / HZ)) $((($(cpu_ticks "$agent") - a0) * 1000 / HZ)) \
        >"$WORK/$name-$round-$scenario.cpu.json"
    kill "$stack"
    wait "$stack" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
    for build in "${BUILDS[@]}"; do
        name=${build%%=*}
        dir=${build#*=}
        echo "round $round of $ROUNDS: $name" >&2
        measure "$name" "$dir" "$round" t1 bulk throughput --streams 1 --direction "$DIRECTION" --seconds "$SECONDS_EACH"
        measure "$name" "$dir" "$round" t8 bulk throughput --streams 8 --direction "$DIRECTION" --seconds "$SECONDS_EACH"
        measure "$name" "$dir" "$round" rr echo latency --connections 50 --size 64 --rate 50000 --seconds "$SECONDS_EACH"
    done
done

python3 - "$WORK" "$ROUNDS" "$DIRECTION" "${BUILDS[@]%%=*}" <<'EOF'
import json, statistics, sys
work, rounds, direction, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
# Bytes crossing the tunnel per byte counted: an echoed byte crosses it twice.
crossings = 2 if direction == "both" else 1
def load(name, r, s):
    with open(f"{work}/{name}-{r}-{s}.json") as f:
        fig = json.load(f)
    with open(f"{work}/{name}-{r}-{s}.cpu.json") as f:
        cpu = json.load(f)
    return fig, cpu
rows = []
for name in names:
    row = {}
    for s in ("t1", "t8"):
        figs = [load(name, r, s) for r in range(1, rounds + 1)]
        row[s] = statistics.median(f["bytes_per_sec"] / 1e6 for f, _ in figs)
        # CPU-ms per GB crossing the tunnel.
        row[s + "_hub"] = statistics.median(c["hub_cpu_ms"] / (crossings * f["total_bytes"] / 1e9) for f, c in figs)
        row[s + "_agent"] = statistics.median(c["agent_cpu_ms"] / (crossings * f["total_bytes"] / 1e9) for f, c in figs)
    figs = [load(name, r, "rr") for r in range(1, rounds + 1)]
    row["rr"] = statistics.median(f["achieved_rate"] for f, _ in figs)
    row["rr_hub"] = statistics.median(c["hub_cpu_ms"] * 1000 / f["responses"] for f, c in figs)
    row["rr_agent"] = statistics.median(c["agent_cpu_ms"] * 1000 / f["responses"] for f, c in figs)
    rows.append((name, row))
base = rows[0][1]
cols = [
    ("t1", "1 stream, MB/s"), ("t1_hub", "hub CPU-ms/GB"), ("t1_agent", "agent CPU-ms/GB"),
    ("t8", "8 streams, MB/s"), ("t8_hub", "hub CPU-ms/GB"), ("t8_agent", "agent CPU-ms/GB"),
    ("rr", "requests/s at 50k offered"), ("rr_hub", "hub CPU-µs/request"), ("rr_agent", "agent CPU-µs/request"),
]
print(f"Medians over {rounds} rounds, bulk streams {direction}; in brackets, the ratio to {rows[0][0]}.\n")
print("| build | " + " | ".join(c[1] for c in cols) + " |")
print("|---" * (len(cols) + 1) + "|")
for name, row in rows:
    cells = [f"{row[k]:,.0f} ({row[k] / base[k]:.2f})" for k, _ in cols]
    print(f"| {name} | " + " | ".join(cells) + " |")
EOF
