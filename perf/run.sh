#!/usr/bin/env bash
# Measures NowConnect beside direct loopback, rathole and bore with the same load generator
# scenarios, in one run on this machine, and writes perf/RESULTS.md and perf/results/*.json.
#
# Systems, all on loopback, all in front of the same echo target:
#   direct   the load generator talks to the target itself
#   uring    nowconnect-hub on io_uring + nowconnect-agent (plain ws:// tunnel)
#   epoll    the same with the hub on epoll
#   rathole  rathole server + rathole client (plain TCP transport, one service)
#   bore     bore server + bore local
#
# Scenarios per system and round, each --seconds long: throughput both ways with 1, 8 and 64
# streams; request/response with 50 connections and 64-byte messages, first at a rate every
# system sustains (--rr-rate-low), then at a rate that saturates them (--rate); connection
# churn with 8 workers. Around the 1-stream phase the CPU time of the server-side process
# (hub, rathole server, bore server) and the client-side process (agent, rathole client, bore
# local) is read from /proc; their resident memory is read at rest, before any load. Every
# round measures every system once; the report (perf/results.py) shows each figure's median.
#
# After the rounds, once per system, each on a freshly started tunnel: many idle streams
# (`nowconnect-loadgen idle`, --idle-connections; for NowConnect with the hub's idle timeout
# and sweep interval set, so that the sweep is checked too), and one stalled reader beside
# busy streams (`nowconnect-loadgen slow-reader`); and a hub with `driver: auto` is started
# once to record which driver it picks on this machine.
#
# Many idle streams need many open files: the script raises `ulimit -n` before it starts
# anything, so that every process it starts inherits the limit. When the hard limit cannot be
# raised, each system's idle stream count is lowered to what the limit allows, and the report
# says so. When a system's idle streams would need more ephemeral ports towards one address
# than net.ipv4.ip_local_port_range offers, the range is widened for the run and restored at
# the end.
#
# Installs rathole and bore with cargo when they are missing. Stops every process it started
# when it ends, also on SIGINT or SIGTERM.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: perf/run.sh [options]

  --seconds S      length of each load phase in seconds (default 5)
  --rounds N       how many times every system is measured; the report shows medians
                   (default 3)
  --rate R         request/response rate that saturates the tunnels, in requests per
                   second, the same for every system (default 100000)
  --rr-rate-low R  request/response rate every system sustains, for p99 at equal load
                   (default 10000)
  --idle-connections N
                   idle streams held once per system after the rounds (default 20000;
                   lowered per system when the open-file limit does not allow them)
  --idle-timeout-ms MS
                   the hub's idle timeout in the idle phase; must be well longer than
                   opening the idle streams takes (default 20000, or 45000 when the
                   ephemeral port range cannot be widened for them; sweep every 1000 ms)
  --shards N       hub shards (default: nproc)
  --systems LIST   space-separated subset of: direct uring epoll rathole bore
                   (default: all five; the tables need all five for every ratio)
  --out DIR        where the JSON goes (default perf/results)
  --report FILE    the Markdown report (default perf/RESULTS.md)
  --no-build       use the release binaries as they are
  -h, --help       this text

The run raises `ulimit -n` (to 1048576, or else to the hard limit) before it starts anything,
and may widen net.ipv4.ip_local_port_range for the idle phase (restored at the end); both
need root to go past the defaults.

Environment: CARGO_TARGET_DIR (default ./target) locates the release binaries;
PEERS_TARGET_DIR is the build directory for installing rathole and bore when missing
(default: a temporary directory).
EOF
}

PHASE=5
ROUNDS=3
RATE=100000
RATE_LOW=10000
IDLE_CONNECTIONS=20000
IDLE_TIMEOUT_MS="" # 20000, or 45000 when the port range stays narrow; see the once phase
SWEEP_INTERVAL_MS=1000 # the hub's default
SLOW_STREAMS=4
# Slow-reader runs per system, on the same tunnel: the report takes the median share.
SLOW_RUNS=3
STREAM_WINDOW=262144 # the hub's default limits.stream_window_bytes
SHARDS=$(nproc)
SYSTEMS="direct uring epoll rathole bore"
BUILD=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=perf/lib.sh
source "$ROOT/perf/lib.sh"
OUT=$ROOT/perf/results
REPORT=$ROOT/perf/RESULTS.md
RATHOLE_VERSION=0.5.0
BORE_VERSION=0.6.0
BORE_CONTROL_PORT=7835 # fixed by bore
NOFILE_WANTED=1048576
FD_MARGIN=256 # open files a process needs beside its streams' sockets

while [[ $# -gt 0 ]]; do
    case $1 in
    --seconds) PHASE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --rr-rate-low) RATE_LOW=$2; shift 2 ;;
    --idle-connections) IDLE_CONNECTIONS=$2; shift 2 ;;
    --idle-timeout-ms) IDLE_TIMEOUT_MS=$2; shift 2 ;;
    --shards) SHARDS=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --report) REPORT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ $IDLE_CONNECTIONS =~ ^[0-9]+$ && $IDLE_CONNECTIONS -ge 1 ]]; then
    echo "run.sh: --idle-connections must be a whole number of at least 1" >&2
    exit 2
fi
if [[ -n $IDLE_TIMEOUT_MS ]] &&
    ! [[ $IDLE_TIMEOUT_MS =~ ^[0-9]+$ && $IDLE_TIMEOUT_MS -ge $SWEEP_INTERVAL_MS ]]; then
    echo "run.sh: --idle-timeout-ms must be a whole number of at least $SWEEP_INTERVAL_MS" >&2
    exit 2
fi
for s in $SYSTEMS; do
    case $s in
    direct | uring | epoll | rathole | bore) ;;
    *) echo "run.sh: unknown system $s" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
export PATH="$BIN:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nowconnect-perf.XXXXXX")
PIDS=()  # every background process this script started, in start order
EXTRA=() # hub and agent pids, started by the stack process, checked at the end
KEEP_WORK=0

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Raised before anything starts, so that the load generator, the target and every tunnel's
# processes inherit it: each idle stream holds one or two sockets in each of them.
NOFILE_HARD=$(ulimit -Hn)
if ulimit -n "$NOFILE_WANTED" 2>/dev/null; then
    :
elif ulimit -n "$NOFILE_HARD" 2>/dev/null; then
    log "cannot raise the open-file limit to $NOFILE_WANTED (no CAP_SYS_RESOURCE here?);" \
        "using the hard limit $NOFILE_HARD: idle streams beyond what it allows are left out"
else
    log "cannot raise the open-file limit at all; it stays at $(ulimit -n):" \
        "idle streams beyond what it allows are left out"
fi
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=$NOFILE_WANTED

# The idle streams system SYS can hold under the open-file limit: the load generator and the
# target hold one socket per stream; the hub and the agent one each too; rathole's and bore's
# two processes two each (the visitor's or target's connection and a data connection between
# them, one per stream). Rounded down to hundreds when lowered.
idle_count() {
    local per=1 max
    case $1 in rathole | bore) per=2 ;; esac
    max=$(((NOFILE - FD_MARGIN) / per))
    if ((IDLE_CONNECTIONS <= max)); then
        echo "$IDLE_CONNECTIONS"
    else
        echo $((max / 100 * 100))
    fi
}

# The ephemeral port range, widened by widen_ports when the idle phase needs it and restored
# by restore_ports (and by cleanup, should the run end first).
PORT_RANGE_FILE=/proc/sys/net/ipv4/ip_local_port_range
PORT_RANGE_SAVED=""
PORT_RANGE_NOTE=""

# Every idle stream takes an ephemeral port for each connection its processes open towards
# one address (load generator to listener, agent or client to the target, rathole's and bore's
# client to their server). Connections towards different addresses can share a port, but
# connect() draws from the even half of the range first and, once that half is taken towards
# an address, scans all of it again before each odd port it hands out: past half the range,
# opening slows to a crawl (here 15 000 streams opened through NowConnect in 4.5 s and 19 700
# in 27 s). Widens the range for the idle phase when N streams and some room do not fit in its
# even half, upwards to 65535 first, then downwards.
widen_ports() {
    local n=$1 lo hi need new_lo new_hi=65535
    [[ -r $PORT_RANGE_FILE ]] || return 0
    read -r lo hi <"$PORT_RANGE_FILE"
    need=$((2 * (n + 2000)))
    ((need <= hi - lo + 1)) && return 0
    new_lo=$((new_hi + 1 - need))
    ((new_lo > lo)) && new_lo=$lo
    ((new_lo < 1024)) && new_lo=1024
    if ((new_lo == lo && new_hi == hi)); then
        log "net.ipv4.ip_local_port_range ($lo-$hi) cannot be widened further for $n idle" \
            "streams: opening them may slow down past half the range"
        PORT_RANGE_NOTE="$lo-$hi, narrow for $n idle streams: opening them may have slowed past half the range"
    elif printf '%s %s\n' "$new_lo" "$new_hi" >"$PORT_RANGE_FILE" 2>/dev/null; then
        [[ -n $PORT_RANGE_SAVED ]] || PORT_RANGE_SAVED="$lo $hi"
        printf '%s\n' "sysctl -w net.ipv4.ip_local_port_range=\"$new_lo $new_hi\"" >>"$R/commands.txt"
        log "net.ipv4.ip_local_port_range widened from $lo-$hi to $new_lo-$new_hi for $n" \
            "idle streams (restored after the idle phase)"
        PORT_RANGE_NOTE="widened from $lo-$hi to $new_lo-$new_hi for the idle phase, restored after it"
    else
        log "cannot widen net.ipv4.ip_local_port_range ($lo-$hi) for $n idle streams:" \
            "opening them may slow down past half the range"
        PORT_RANGE_NOTE="$lo-$hi, narrow for $n idle streams and could not be widened: opening them may have slowed past half the range"
    fi
}

restore_ports() {
    [[ -n $PORT_RANGE_SAVED ]] || return 0
    if printf '%s\n' "$PORT_RANGE_SAVED" >"$PORT_RANGE_FILE" 2>/dev/null; then
        log "net.ipv4.ip_local_port_range restored to $PORT_RANGE_SAVED"
        if [[ -d ${R:-} ]]; then
            printf '%s\n' "sysctl -w net.ipv4.ip_local_port_range=\"$PORT_RANGE_SAVED\"" \
                >>"$R/commands.txt"
        fi
    else
        log "could not restore net.ipv4.ip_local_port_range to $PORT_RANGE_SAVED; do it by hand"
    fi
    PORT_RANGE_SAVED=""
}

# Stops one process: SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "process $pid did not stop on SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# A pid the stack process started: stopped only if it is still the same program.
stop_extra() {
    local pid=$1 name=$2
    if [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$name"* ]]; then
        log "$name ($pid) outlived its stack process; stopping it"
        kill -TERM "$pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

cleanup() {
    local rc=$? i entry
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    for entry in "${EXTRA[@]}"; do
        stop_extra "${entry%%:*}" "${entry#*:}"
    done
    restore_ports
    if [[ $rc -ne 0 || $KEEP_WORK -eq 1 ]]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" in the background, stdout in $WORK/$1.out and stderr in $WORK/$1.log; sets
# STARTED to its pid.
start_bg() {
    local name=$1
    shift
    # Removed first: the reader of the new process's output must not see an old run's.
    rm -f "$WORK/$name.out" "$WORK/$name.log"
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
    STARTED=$!
    PIDS+=("$STARTED")
}

# Starts "$@" in the background with stdout and stderr in FILE; sets STARTED to its pid.
start_bg_to() {
    local file=$1
    shift
    rm -f "$file"
    "$@" >"$file" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# Stops the processes given and drops them from PIDS.
stop_started() {
    local pid keep=() p
    for pid in "$@"; do stop_pid "$pid"; done
    for p in "${PIDS[@]}"; do
        [[ " $* " == *" $p "* ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

port_is_free() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

# Waits until ADDR echoes a few bytes back (a tunnel is up end to end), for up to 30 s.
wait_echo() {
    python3 - "$1" <<'EOF'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
deadline = time.time() + 30
while True:
    try:
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.sendall(b"ready?")
            got = b""
            while len(got) < 6:
                chunk = s.recv(6 - len(got))
                if not chunk:
                    break
                got += chunk
            if got == b"ready?":
                sys.exit(0)
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("no echo from %s within 30 s" % sys.argv[1])
    time.sleep(0.2)
EOF
}

# Waits until FILE has a first line; prints it.
wait_line() {
    local file=$1 pid=$2 i
    for ((i = 0; i < 600; i++)); do
        if [[ -s $file ]] && IFS= read -r line <"$file"; then
            printf '%s\n' "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    return 1
}

# VmRSS of PID in KiB; nothing if the process is gone.
rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true
}

# After a phase on a tunnel: notes it when the tunnel's processes (the stack process for
# NowConnect, and the server and client) are no longer running, so that figures cut short by
# a vanished process are not taken for the tunnel's own.
check_alive() {
    local sys=$1 what=$2 pid gone=()
    for pid in "${TUNNEL[@]}" "$SERVER" "$CLIENT"; do
        [[ -n $pid && " ${gone[*]} " != *" $pid "* ]] || continue
        kill -0 "$pid" 2>/dev/null || gone+=("$pid")
    done
    ((${#gone[@]} == 0)) && return 0
    log "$WHERE, $sys: process(es) ${gone[*]} no longer running after $what"
    printf '%s\n' "$WHERE, $sys: process(es) ${gone[*]} of the tunnel no longer running after $what (stopped from outside, or crashed); figures from then on are not the tunnel's" \
        >>"$R/failures.txt"
    KEEP_WORK=1
}

# Machine-wide TCP counters: segments retransmitted, retransmission timeouts, segments
# dropped because a receive queue was full (/proc/net/snmp and /proc/net/netstat).
tcp_counters() {
    awk '$1 == "Tcp:" || $1 == "TcpExt:" {
            if (!($1 in hdr)) { for (i = 2; i <= NF; i++) name[$1, i] = $i; hdr[$1] = 1; next }
            for (i = 2; i <= NF; i++) v[name[$1, i]] = $i
         }
         END { printf "%d %d %d\n", v["RetransSegs"], v["TCPTimeouts"], v["TCPRcvQDrop"] }' \
        /proc/net/snmp /proc/net/netstat
}

# Shows a command as run from the repository root.
shown() {
    local text="$*"
    printf '%s\n' "${text//"$ROOT/"/}"
}

# Runs and records one loadgen command; a failing scenario is noted with its error, and the
# run goes on.
loadgen() {
    local out=$WORK/loadgen-$((++RUNS)).log tcp0 tcp1
    shown "nowconnect-loadgen $*" >>"$R/commands.txt"
    read -r -a tcp0 < <(tcp_counters)
    # In the background, so that a signal reaches the trap at once, not after the phase.
    start_bg_to "$out" nowconnect-loadgen "$@"
    local pid=$STARTED rc=0
    wait "$pid" || rc=$?
    stop_started "$pid"
    read -r -a tcp1 < <(tcp_counters)
    if [[ $rc -ne 0 ]]; then
        log "  failed: $(shown "nowconnect-loadgen $*")"
        {
            shown "$CURRENT: nowconnect-loadgen $*"
            tail -n 3 "$out" | cut -c1-600 | sed 's/^/    /'
            printf '    (machine-wide TCP meanwhile: %d segments retransmitted, %d retransmission timeouts, %d segments dropped at full receive queues)\n' \
                $((tcp1[0] - tcp0[0])) $((tcp1[1] - tcp0[1])) $((tcp1[2] - tcp0[2]))
        } >>"$R/failures.txt"
    fi
}
RUNS=0

# Before each phase: the tunnel must echo again (an agent may be reconnecting after a failed
# phase).
ready() {
    if ! wait_echo "$1" 2>>"$WORK/ready.log"; then
        log "  $CURRENT: no echo through $1 within 30 s"
        printf '%s\n' "$CURRENT: no echo through $1 within 30 s before a phase" >>"$R/failures.txt"
    fi
}

# Waits until the freshly started tunnel of system SYS echoes through ADDR; otherwise notes
# the failure, stops the processes given and returns non-zero.
tunnel_up() {
    local sys=$1 addr=$2
    shift 2
    wait_echo "$addr" 2>>"$WORK/ready.log" && return 0
    log "$WHERE, $sys: no echo through $addr within 30 s of the start; skipping it"
    printf '%s\n' "$WHERE, $sys: no echo through $addr within 30 s of the start" \
        >>"$R/failures.txt"
    KEEP_WORK=1
    stop_started "$@"
    return 1
}

# The scenarios against ADDR for system SYS; SERVER and CLIENT are the tunnel's two processes
# (empty for direct).
measure() {
    local sys=$1 addr=$2 server=${3:-} client=${4:-}
    local srv_rss="" cli_rss="" s0="" s1="" c0="" c1="" n load
    CURRENT="$WHERE, $sys"
    sleep 1
    if [[ -n $server ]]; then
        srv_rss=$(rss_kb "$server")
        cli_rss=$(rss_kb "$client")
    fi
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    log "$WHERE, $sys: throughput, 1 stream"
    ready "$addr"
    if [[ -n $server ]]; then
        s0=$(cpu_ticks "$server")
        c0=$(cpu_ticks "$client")
    fi
    loadgen throughput --addr "$addr" --direction both --streams 1 --seconds "$PHASE" \
        --json "$R/$sys-throughput-1.json"
    if [[ -n $server ]]; then
        s1=$(cpu_ticks "$server")
        c1=$(cpu_ticks "$client")
    fi
    for n in 8 64; do
        log "$WHERE, $sys: throughput, $n streams"
        ready "$addr"
        loadgen throughput --addr "$addr" --direction both --streams "$n" --seconds "$PHASE" \
            --json "$R/$sys-throughput-$n.json"
    done
    log "$WHERE, $sys: request/response, 50 connections at $RATE_LOW/s"
    ready "$addr"
    loadgen latency --addr "$addr" --connections 50 --size 64 --rate "$RATE_LOW" \
        --seconds "$PHASE" --json "$R/$sys-latency-low.json"
    log "$WHERE, $sys: request/response, 50 connections at $RATE/s"
    ready "$addr"
    loadgen latency --addr "$addr" --connections 50 --size 64 --rate "$RATE" \
        --seconds "$PHASE" --json "$R/$sys-latency.json"
    log "$WHERE, $sys: churn, 8 workers"
    ready "$addr"
    loadgen churn --addr "$addr" --concurrency 8 --seconds "$PHASE" \
        --json "$R/$sys-churn.json"
    python3 - "$R/$sys-process.json" "$sys" "$server" "$client" "$srv_rss" "$cli_rss" \
        "$s0" "$s1" "$c0" "$c1" "$(getconf CLK_TCK)" "$load" <<'EOF'
import json, sys
out, system, spid, cpid, srss, crss, s0, s1, c0, c1, tck, load = sys.argv[1:]
num = lambda v: int(v) if v else None
doc = {
    "system": system,
    "clk_tck": int(tck),
    "loadavg_before": load,
    "server": None if not spid else {
        "pid": int(spid), "rss_kb_at_rest": num(srss),
        "cpu_ticks_before_1_stream": num(s0), "cpu_ticks_after_1_stream": num(s1)},
    "client": None if not cpid else {
        "pid": int(cpid), "rss_kb_at_rest": num(crss),
        "cpu_ticks_before_1_stream": num(c0), "cpu_ticks_after_1_stream": num(c1)},
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
EOF
}

# Starts the tunnel of system SYS (uring, epoll, auto, rathole, bore) in front of the echo
# target, its logs named after TAG; further arguments go to `nowconnect-loadgen stack`. Sets
# ADDR (where the load goes), SERVER and CLIENT (the server-side and client-side process) and
# TUNNEL (what stop_tunnel stops), and for NowConnect ADMIN and STACK_DIR. Returns non-zero,
# with the failure noted, when the tunnel does not come up.
start_tunnel() {
    local sys=$1 tag=$2
    shift 2
    ADDR="" SERVER="" CLIENT="" ADMIN="" STACK_DIR=""
    TUNNEL=()
    case $sys in
    uring) start_nowconnect "$sys" io_uring "$tag" "$@" ;;
    epoll) start_nowconnect "$sys" epoll "$tag" "$@" ;;
    auto) start_nowconnect "$sys" auto "$tag" "$@" ;;
    rathole) start_rathole "$tag" ;;
    bore) start_bore "$tag" ;;
    esac
}

stop_tunnel() {
    stop_started "${TUNNEL[@]}"
    TUNNEL=()
}

start_nowconnect() {
    local sys=$1 driver=$2 tag=$3 line stack
    shift 3
    log "$WHERE, $sys: starting hub ($driver, $SHARDS shards) and agent"
    shown "nowconnect-loadgen stack --driver $driver --shards $SHARDS --target echo=$ECHO${*:+ $*}" \
        >>"$R/commands.txt"
    start_bg "stack-$sys-$tag" nowconnect-loadgen stack --driver "$driver" --shards "$SHARDS" \
        --target "echo=$ECHO" "$@"
    stack=$STARTED
    if ! line=$(wait_line "$WORK/stack-$sys-$tag.out" "$stack"); then
        log "$WHERE, $sys: the stack did not start; see $WORK/stack-$sys-$tag.log"
        printf '%s\n' "$WHERE, $sys: the stack did not start" >>"$R/failures.txt"
        KEEP_WORK=1
        stop_started "$stack"
        return 1
    fi
    # The directory last: it takes the rest of the line, whatever it holds.
    read -r SERVER CLIENT ADDR ADMIN STACK_DIR < <(python3 -c '
import json, sys
d = json.loads(sys.argv[1])
print(d["hub_pid"], d["agent_pid"], d["listeners"]["echo"], d["admin"], d["dir"])' "$line")
    EXTRA+=("$SERVER:nowconnect-hub" "$CLIENT:nowconnect-agen")
    TUNNEL=("$stack")
    tunnel_up "$sys" "$ADDR" "$stack"
}

# The stack removes its directory when it stops: keeps the hub's and agent's warnings and
# errors, and the hub's counters, in FILE.
save_nowconnect_logs() {
    python3 - "$1" "$ADMIN" "$STACK_DIR/hub.log" "$STACK_DIR/agent.log" <<'EOF'
import json, sys, urllib.request
doc = {}
try:
    with urllib.request.urlopen("http://%s/metrics" % sys.argv[2], timeout=5) as r:
        text = r.read().decode()
    doc["hub_metrics"] = [
        line for line in text.splitlines()
        if line and not line.startswith("#") and "_bucket{" not in line
        and line.rsplit(" ", 1)[-1] not in ("0", "0.0")
    ]
except OSError as e:
    doc["hub_metrics_error"] = str(e)
for path in sys.argv[3:]:
    name = path.rsplit("/", 1)[-1].removesuffix(".log")
    levels, notable = {}, []
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            rec = {"level": "TEXT"}
        level = rec.get("level", "?")
        levels[level] = levels.get(level, 0) + 1
        if level not in ("INFO", "DEBUG", "TRACE"):
            notable.append(line)
    doc[name] = {"lines": len(lines), "levels": levels, "warnings_and_errors": notable[:50]}
with open(sys.argv[1], "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
EOF
}

start_rathole() {
    local tag=$1 ctl svc
    ctl=$(free_port)
    svc=$(free_port)
    cat >"$R/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$ctl"

[server.services.echo]
token = "perf-run-token"
bind_addr = "127.0.0.1:$svc"
EOF
    cat >"$R/rathole-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$ctl"

[client.services.echo]
token = "perf-run-token"
local_addr = "$ECHO"
EOF
    log "$WHERE, rathole: starting server and client"
    shown "rathole --server $R/rathole-server.toml" >>"$R/commands.txt"
    shown "rathole --client $R/rathole-client.toml" >>"$R/commands.txt"
    start_bg "rathole-server-$tag" rathole --server "$R/rathole-server.toml"
    SERVER=$STARTED
    start_bg "rathole-client-$tag" rathole --client "$R/rathole-client.toml"
    CLIENT=$STARTED
    ADDR=127.0.0.1:$svc
    TUNNEL=("$CLIENT" "$SERVER")
    tunnel_up rathole "$ADDR" "$CLIENT" "$SERVER"
}

start_bore() {
    local tag=$1 port i
    if ! port_is_free "$BORE_CONTROL_PORT"; then
        log "$WHERE, bore: its control port $BORE_CONTROL_PORT is taken; skipping bore"
        printf '%s\n' "$WHERE, bore: control port $BORE_CONTROL_PORT taken" >>"$R/failures.txt"
        return 1
    fi
    port=$(free_port)
    log "$WHERE, bore: starting server and local"
    printf '%s\n' "bore server --bind-addr 127.0.0.1 --min-port $port --max-port $port" \
        "bore local ${ECHO##*:} --local-host 127.0.0.1 --to 127.0.0.1 --port $port" \
        >>"$R/commands.txt"
    start_bg "bore-server-$tag" bore server --bind-addr 127.0.0.1 --min-port "$port" \
        --max-port "$port"
    SERVER=$STARTED
    for ((i = 0; i < 100; i++)); do
        port_is_free "$BORE_CONTROL_PORT" || break
        sleep 0.1
    done
    start_bg "bore-local-$tag" bore local "${ECHO##*:}" --local-host 127.0.0.1 --to 127.0.0.1 \
        --port "$port"
    CLIENT=$STARTED
    ADDR=127.0.0.1:$port
    TUNNEL=("$CLIENT" "$SERVER")
    tunnel_up bore "$ADDR" "$CLIENT" "$SERVER"
}

# One round's scenarios for system SYS.
run_round() {
    local sys=$1
    if [[ $sys == direct ]]; then
        measure direct "$ECHO"
        return 0
    fi
    start_tunnel "$sys" "$round" || return 0
    measure "$sys" "$ADDR" "$SERVER" "$CLIENT"
    check_alive "$sys" "the round's scenarios"
    case $sys in uring | epoll) save_nowconnect_logs "$R/$sys-logs.json" ;; esac
    stop_tunnel
}

# --- once per system, after the rounds -----------------------------------------------------

# Idle streams through system SYS on a fresh tunnel: what each costs its two processes, and
# for NowConnect, whose hub runs with an idle timeout, whether the sweep closed every one in
# time.
idle_phase() {
    local sys=$1 n sweep=()
    CURRENT="once, $sys"
    n=$(idle_count "$sys")
    if ((n < IDLE_CONNECTIONS)); then
        log "once, $sys: $n idle streams instead of $IDLE_CONNECTIONS (open-file limit $NOFILE)"
    fi
    IDLE_COUNTS+=" $sys=$n"
    case $sys in
    uring | epoll)
        sweep=(--idle-timeout-ms "$IDLE_TIMEOUT_MS" --sweep-interval-ms "$SWEEP_INTERVAL_MS") ;;
    esac
    start_tunnel "$sys" idle "${sweep[@]}" || return 0
    sleep 1
    log "once, $sys: $n idle streams"
    ready "$ADDR"
    loadgen idle --addr "$ADDR" --connections "$n" --hub-pid "$SERVER" --agent-pid "$CLIENT" \
        "${sweep[@]}" --json "$R/$sys-idle.json"
    check_alive "$sys" "the idle streams"
    # Memory is read one second after the last stream opened: the first streams must not have
    # been swept by then.
    if [[ ${#sweep[@]} -gt 0 && -s $R/$sys-idle.json ]] &&
        ! python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(d["open_seconds"] + 1 >= 0.8 * int(sys.argv[2]) / 1000)' "$R/$sys-idle.json" \
            "$IDLE_TIMEOUT_MS"; then
        log "once, $sys: opening the idle streams took close to the idle timeout" \
            "($IDLE_TIMEOUT_MS ms); raise --idle-timeout-ms for a trustworthy memory figure"
    fi
    case $sys in uring | epoll) save_nowconnect_logs "$R/$sys-idle-logs.json" ;; esac
    stop_tunnel
}

# One stalled reader beside busy streams through system SYS on a fresh tunnel (directly
# against the target for direct). NowConnect's processes are held to the loadgen's budget
# (two stream windows and 8 MiB for buffer pools); the peers have no such budget, so theirs
# is set out of reach and their growth only shown.
slow_phase() {
    local sys=$1 args=()
    CURRENT="once, $sys"
    if [[ $sys == direct ]]; then
        for k in $(seq "$SLOW_RUNS"); do
            log "once, direct: a stalled reader beside $SLOW_STREAMS streams ($k of $SLOW_RUNS)"
            loadgen slow-reader --addr "$ECHO" --streams "$SLOW_STREAMS" --seconds "$PHASE" \
                --json "$R/direct-slow-reader-$k.json"
        done
        return 0
    fi
    start_tunnel "$sys" slow || return 0
    case $sys in
    uring | epoll) args=(--window-bytes "$STREAM_WINDOW") ;;
    *) args=(--budget-bytes "$NO_BUDGET") ;;
    esac
    sleep 1
    for k in $(seq "$SLOW_RUNS"); do
        log "once, $sys: a stalled reader beside $SLOW_STREAMS streams ($k of $SLOW_RUNS)"
        ready "$ADDR"
        loadgen slow-reader --addr "$ADDR" --streams "$SLOW_STREAMS" --seconds "$PHASE" \
            --hub-pid "$SERVER" --agent-pid "$CLIENT" "${args[@]}" \
            --json "$R/$sys-slow-reader-$k.json"
    done
    check_alive "$sys" "the slow reader"
    case $sys in uring | epoll) save_nowconnect_logs "$R/$sys-slow-logs.json" ;; esac
    stop_tunnel
}
NO_BUDGET=1099511627776 # 1 TiB

# Which driver a hub with `driver: auto` runs on this machine: its `nowconnect_shard_driver`
# metric and its shards' start lines.
auto_driver() {
    CURRENT="once, auto"
    start_tunnel auto driver || return 0
    python3 - "$R/auto-driver.json" "$ADMIN" "$STACK_DIR/hub.log" <<'EOF'
import json, sys, urllib.request
out, admin, log = sys.argv[1:]
doc = {"metric": [], "shards": {}}
try:
    with urllib.request.urlopen("http://%s/metrics" % admin, timeout=5) as r:
        doc["metric"] = [line for line in r.read().decode().splitlines()
                         if line.startswith("nowconnect_shard_driver{")]
except OSError as e:
    doc["metric_error"] = str(e)
try:
    for line in open(log, errors="replace"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        fields = rec.get("fields", rec)
        if fields.get("message") == "shard runtime started":
            doc["shards"][str(fields.get("shard"))] = fields.get("driver")
except OSError as e:
    doc["log_error"] = str(e)
try:
    with open("/proc/sys/kernel/io_uring_disabled") as f:
        doc["kernel_io_uring_disabled"] = int(f.read().strip())
except (OSError, ValueError):
    doc["kernel_io_uring_disabled"] = None
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
EOF
    log "once, auto: the hub's shards run on $(python3 -c '
import json, sys
print(", ".join(sorted(set(json.load(open(sys.argv[1]))["shards"].values()))) or "?")' \
        "$R/auto-driver.json")"
    stop_tunnel
}

# --- build and install ---------------------------------------------------------------------

cd "$ROOT"
if [[ $BUILD -eq 1 ]]; then
    log "building the release binaries"
    cargo build --release -p nowconnect-hub -p nowconnect-agent -p nowconnect-loadgen >&2
fi
install_peer() {
    local cmd=$1 crate=$2 version=$3
    command -v "$cmd" >/dev/null && return 0
    log "installing $crate $version"
    # rathole 0.5.0's lock file no longer builds on current Rust: no --locked.
    CARGO_TARGET_DIR=${PEERS_TARGET_DIR:-$WORK/peers-target} \
        cargo install "$crate" --version "$version" >&2
}
if [[ " $SYSTEMS " == *" rathole "* ]]; then
    install_peer rathole rathole "$RATHOLE_VERSION"
fi
if [[ " $SYSTEMS " == *" bore "* ]]; then
    install_peer bore bore-cli "$BORE_VERSION"
fi

mkdir -p "$OUT"
rm -rf "$OUT"/round-* "$OUT/once"
rm -f "$OUT"/*.json "$OUT/commands.txt"

# --- the machine and the versions ----------------------------------------------------------

STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# The code measured: the commit, and whether anything outside the results differs from it.
NC_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no -- . ':(exclude)perf/results' \
    ':(exclude)perf/RESULTS.md' 2>/dev/null) ]]; then
    NC_COMMIT="$NC_COMMIT with local changes"
fi
T0=$(date +%s)
PORT_RANGE_START=$(tr -s '\t ' ' ' <"$PORT_RANGE_FILE" 2>/dev/null || echo unknown)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RATHOLE_V=""
BORE_V=""
if command -v rathole >/dev/null; then
    RATHOLE_V="rathole $(rathole --version | awk '/Build Version/ { print $3 }')"
fi
if command -v bore >/dev/null; then
    BORE_V=$(bore --version)
fi

# --- the target, shared by every system ----------------------------------------------------

ECHO=127.0.0.1:$(free_port)
shown "nowconnect-loadgen target echo --listen $ECHO" >"$OUT/commands.txt"
start_bg target-echo nowconnect-loadgen target echo --listen "$ECHO"
wait_echo "$ECHO"

# Every round runs every system once, in the same order, so a change in the machine's other
# load over the run touches all of them alike; the report takes each figure's median.
for ((round = 1; round <= ROUNDS; round++)); do
    WHERE="round $round"
    R=$OUT/round-$round
    mkdir -p "$R"
    : >"$R/commands.txt"
    for sys in $SYSTEMS; do
        run_round "$sys"
    done
done

# Once per system, each on a fresh tunnel so that neither phase inherits the other's memory:
# idle streams (a separate phase to keep the run short: holding them and waiting for the sweep
# take a fixed time whatever --seconds is), a stalled reader, and the driver `auto` picks.
WHERE=once
R=$OUT/once
mkdir -p "$R"
: >"$R/commands.txt"
IDLE_COUNTS=""
T_ONCE=$(date +%s)
if [[ " $SYSTEMS " == *" uring "* || " $SYSTEMS " == *" epoll "* ]]; then
    auto_driver
fi
# The most idle streams any system holds decides whether the port range must be widened, and
# how long opening them may take: with the range wide enough, 20 000 streams opened through
# NowConnect in about 3 s here; past half of a narrow range, in up to 27 s.
IDLE_MAX=0
for sys in $SYSTEMS; do
    [[ $sys == direct ]] && continue
    n=$(idle_count "$sys")
    ((n > IDLE_MAX)) && IDLE_MAX=$n
done
if ((IDLE_MAX > 0)); then
    widen_ports "$IDLE_MAX"
fi
if [[ -z $IDLE_TIMEOUT_MS ]]; then
    IDLE_TIMEOUT_MS=20000
    if [[ $PORT_RANGE_NOTE == *narrow* ]]; then
        IDLE_TIMEOUT_MS=45000
        log "idle timeout $IDLE_TIMEOUT_MS ms: opening the idle streams may be slow"
    fi
fi
for sys in $SYSTEMS; do
    [[ $sys == direct ]] || idle_phase "$sys"
done
restore_ports
for sys in $SYSTEMS; do
    slow_phase "$sys"
done
ONCE_ELAPSED=$(($(date +%s) - T_ONCE))

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(($(date +%s) - T0))

python3 - "$OUT/meta.json" <<EOF
import json, platform, sys
cpu = ""
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
mem_kb = 0
with open("/proc/meminfo") as f:
    for line in f:
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
doc = {
    "started_at": "$STARTED_AT",
    "elapsed_seconds": $ELAPSED,
    "nproc": $(nproc),
    "kernel": platform.release(),
    "cpu_model": cpu,
    "memory_gib": round(mem_kb / 1048576, 1),
    "loadavg_start": "$LOAD_START",
    "loadavg_end": "$LOAD_END",
    "phase_seconds": float("$PHASE"),
    "rounds": $ROUNDS,
    "latency_rate": float("$RATE"),
    "latency_rate_low": float("$RATE_LOW"),
    "hub_shards": $SHARDS,
    "once_elapsed_seconds": $ONCE_ELAPSED,
    "idle": {
        "connections_requested": $IDLE_CONNECTIONS,
        "connections": {k: int(v) for k, v in (w.split("=") for w in "$IDLE_COUNTS".split())},
        "idle_timeout_ms": $IDLE_TIMEOUT_MS,
        "sweep_interval_ms": $SWEEP_INTERVAL_MS,
        "open_files_limit": $NOFILE,
        "open_files_wanted": $NOFILE_WANTED,
        "open_files_hard_limit": "$NOFILE_HARD",
        "port_range": "$PORT_RANGE_START",
        "port_range_note": "$PORT_RANGE_NOTE",
    },
    "slow_reader": {
        "streams": $SLOW_STREAMS,
        "runs": $SLOW_RUNS,
        "stream_window_bytes": $STREAM_WINDOW,
        "peer_budget_bytes": $NO_BUDGET,
    },
    "systems": "$SYSTEMS".split(),
    "versions": {
        "nowconnect": "$NC_COMMIT",
        "nowconnect-hub": "$(nowconnect-hub --version 2>/dev/null || true)",
        "nowconnect-agent": "$(nowconnect-agent --version 2>/dev/null || true)",
        "nowconnect-loadgen": "$(nowconnect-loadgen --version 2>/dev/null || true)",
        "rathole": "$RATHOLE_V",
        "bore": "$BORE_V",
        "rustc": "$(rustc --version)",
        "python3": platform.python_version(),
    },
}
with open(sys.argv[1], "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
EOF

python3 "$ROOT/perf/results.py" "$OUT" >"$REPORT"
log "done in ${ELAPSED} s: $REPORT"
