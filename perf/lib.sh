# Shell functions shared by perf/run.sh and perf/compare-builds.sh; sourced, not run.

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# utime+stime of PID in clock ticks (fields 14 and 15 of /proc/PID/stat); nothing if the
# process is gone.
cpu_ticks() {
    local stat f
    stat=$(<"/proc/$1/stat") 2>/dev/null || return 0
    stat=${stat##*) } # drop "pid (comm) ": field 3 is now index 0
    read -r -a f <<<"$stat"
    echo $((f[11] + f[12]))
}
