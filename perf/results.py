#!/usr/bin/env python3
"""Builds perf/RESULTS.md from the files perf/run.sh writes.

Usage: perf/results.py RESULTS_DIR > perf/RESULTS.md

RESULTS_DIR holds meta.json and commands.txt, and a directory round-N per round with, for
every system SYS: SYS-throughput-{1,8,64}.json, SYS-latency-low.json (request/response at a
rate every system sustains), SYS-latency.json (at a saturating rate), SYS-churn.json (the load
generator's own JSON), SYS-process.json (CPU ticks and resident memory of the tunnel's two
processes), for NowConnect SYS-logs.json (the warnings and errors of the hub and the agent),
and the round's commands.txt, failures.txt and rathole configurations. Every figure from the
rounds is the median over the rounds in which it was measured.

The directory once/, from the phase after the rounds, holds for each tunnel SYS-idle.json
(memory per idle stream, and for NowConnect the idle sweep), for every system
SYS-slow-reader-K.json (a stalled reader beside busy streams, run K = 1, 2, ... on one
tunnel), auto-driver.json (the driver a hub with `driver: auto` runs on), NowConnect's
SYS-idle-logs.json and SYS-slow-logs.json, and the phase's commands.txt and failures.txt. Its
figures are single measurements, but for the slow reader's, taken over its runs.

Any file may be missing (an older result set, a failed phase): its figures are then shown as
missing or failed, never guessed. Standard library only.
"""

import json
import os
import re
import statistics
import sys

SYSTEMS = ["direct", "uring", "epoll", "rathole", "bore"]
NAMES = {
    "direct": "direct",
    "uring": "NowConnect (io_uring)",
    "epoll": "NowConnect (epoll)",
    "rathole": "rathole",
    "bore": "bore",
}
NOWCONNECT = ["uring", "epoll"]
PEERS = ["rathole", "bore"]


def load(d, name):
    try:
        with open(os.path.join(d, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(d, name):
    try:
        with open(os.path.join(d, name)) as f:
            return f.read()
    except OSError:
        return None


def figures(d, s, has_low):
    """The figures of system s in round directory d; None if it did not run there. The
    low-rate request/response figures only when the run had that phase (has_low)."""
    pr = load(d, f"{s}-process.json")
    if pr is None:
        return None
    f = {"loadavg": pr.get("loadavg_before")}
    t = {n: load(d, f"{s}-throughput-{n}.json") for n in (1, 8, 64)}
    for n, r in t.items():
        f[f"tput{n}"] = r["bytes_per_sec"] / 1e6 if r else None
    def latency(name, suffix):
        """The figures of one request/response run, under keys ending in `suffix`."""
        lat = load(d, f"{s}-{name}.json")
        f[f"rr{suffix}_rate"] = lat["achieved_rate"] if lat else None
        f[f"p50{suffix}"] = lat["latency"]["p50_us"] / 1000 if lat else None
        f[f"p99{suffix}"] = lat["latency"]["p99_us"] / 1000 if lat else None
        f[f"rr{suffix}_errors"] = len(lat["errors"]) if lat else None
        return lat

    if has_low:
        latency("latency-low", "_low")
    lat = latency("latency", "")
    f["svc_p99"] = lat["service"]["p99_us"] / 1000 if lat else None
    ch = load(d, f"{s}-churn.json")
    f["cps"] = ch["connections_per_sec"] if ch else None
    f["open_p99"] = ch["open"]["p99_us"] / 1000 if ch else None
    f["churn_failures"] = None
    if ch and isinstance(ch.get("failures"), dict):
        f["churn_failures"] = sum(v for v in ch["failures"].values() if isinstance(v, int))
    # GB moved through the tunnel in the 1-stream phase: every byte that made the round trip
    # crossed it once each way.
    gb = 2 * t[1]["total_bytes"] / 1e9 if t[1] else None
    for side, key in (("server", "srv"), ("client", "cli")):
        p = pr.get(side)
        f[f"{key}_rss"] = p["rss_kb_at_rest"] / 1024 \
            if p and p.get("rss_kb_at_rest") is not None else None
        f[f"{key}_cpu"] = None
        if p and gb and p.get("cpu_ticks_after_1_stream") is not None \
                and p.get("cpu_ticks_before_1_stream") is not None:
            ticks = p["cpu_ticks_after_1_stream"] - p["cpu_ticks_before_1_stream"]
            f[f"{key}_cpu"] = ticks / pr["clk_tck"] / gb
    return f


def idle_figures(once, s, idle_timeout_ms=None, sweep_interval_ms=None):
    """Memory per idle stream, and for NowConnect the idle sweep, of system s from the phase
    after the rounds; None if there is no result."""
    r = load(once, f"{s}-idle.json")
    if r is None:
        return None
    failures = r.get("failures") or []
    held = r.get("connections")
    for e in failures:
        m = re.match(r"(\d+) of (\d+) connections failed to open", e)
        if m and held is not None:
            held -= int(m.group(1))
    mem = r.get("memory") or []
    f = {
        "requested": r.get("connections"),
        "held": held,
        "open_seconds": r.get("open_seconds"),
        "srv_kib": mem[0]["bytes_per_connection"] / 1024 if len(mem) > 0 else None,
        "cli_kib": mem[1]["bytes_per_connection"] / 1024 if len(mem) > 1 else None,
        "sweep": None,
        "failures": failures,
    }
    sw = r.get("sweep")
    if sw:
        total = sw["in_time"] + sw["within_allowance"] + sw["late"] + sw["never"]
        # The load generator counts a close as in time when it comes no later than the bound;
        # one that comes well before the idle timeout is not the sweep's (the hub or agent went
        # away, or closed the stream for another reason). The load generator starts a
        # stream's clock when it reads the echoed byte, a little after the hub stamped the
        # stream's last activity, and on a saturated machine that lag reaches a few hundred
        # ms: a close counts as early only when it comes more than a sweep interval before
        # the idle timeout.
        early = idle_timeout_ms is not None and total > sw["never"] and \
            sw["first_close_ms"] < idle_timeout_ms - (sweep_interval_ms or 0)
        f["sweep"] = dict(sw, total=total, early=early,
                          share=sw["in_time"] / total if total else None,
                          share_allowed=(sw["in_time"] + sw["within_allowance"]) / total
                          if total else None)
    return f


def slow_run_figures(r):
    """The figures of one slow-reader result."""
    mem = r.get("memory") or []
    return {
        "fraction": r.get("fraction"),
        "alone": r["alone_bytes_per_sec"] / 1e6,
        "alone_after": (r["alone_after_bytes_per_sec"] / 1e6
                        if r.get("alone_after_bytes_per_sec") is not None else None),
        "beside": r["stalled_bytes_per_sec"] / 1e6,
        "stalled_bytes": r.get("stalled_stream_bytes"),
        "budget_kib": r["budget"] / 1024,
        "srv_growth": mem[0]["growth"] / 1024 if len(mem) > 0 else None,
        "cli_growth": mem[1]["growth"] / 1024 if len(mem) > 1 else None,
        "srv_peak": mem[0]["peak_stalled"] / 1048576 if len(mem) > 0 else None,
        "cli_peak": mem[1]["peak_stalled"] / 1048576 if len(mem) > 1 else None,
        "failures": r.get("failures") or [],
    }


def slow_figures(once, s):
    """The slow-reader figures of system s from the phase after the rounds; None if there is
    no result. With several runs (SYS-slow-reader-K.json) the throughput figures are those of
    the run with the median share, and memory growth the largest of any run; failures are
    those of every run."""
    try:
        numbered = [(int(m.group(1)), n) for n in os.listdir(once)
                    if (m := re.fullmatch(re.escape(s) + r"-slow-reader-(\d+)\.json", n))]
        names = [n for _, n in sorted(numbered)]
    except OSError:
        names = []
    results = [load(once, n) for n in names] or [load(once, f"{s}-slow-reader.json")]
    runs = [slow_run_figures(r) for r in results if r is not None]
    if not runs:
        return None
    ranked = sorted(runs, key=lambda f: f["fraction"] if f["fraction"] is not None else -1.0)
    f = dict(ranked[(len(ranked) - 1) // 2])
    for key in ("srv_growth", "cli_growth", "srv_peak", "cli_peak"):
        values = [x[key] for x in runs if x[key] is not None]
        f[key] = max(values) if values else None
    f["failures"] = [msg for x in runs for msg in x["failures"]]
    f["runs"] = len(runs)
    f["fractions"] = [x["fraction"] for x in runs]
    return f


def metric_sum(lines, name):
    """The sum of every sample of metric `name` in Prometheus text lines; None if absent."""
    total = None
    for line in lines or []:
        if line.startswith(name + "{") or line.startswith(name + " "):
            try:
                total = (total or 0) + float(line.rsplit(" ", 1)[-1])
            except ValueError:
                pass
    return total


def fmt(v, digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}"


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "perf/results"
    meta = load(d, "meta.json") or {}
    systems = [s for s in SYSTEMS if s in meta.get("systems", SYSTEMS)]
    rounds = sorted(
        (int(n.split("-", 1)[1]) for n in os.listdir(d) if n.startswith("round-")),
    )
    rdirs = {r: os.path.join(d, f"round-{r}") for r in rounds}
    has_low = meta.get("latency_rate_low") is not None
    per = {r: {s: figures(rdirs[r], s, has_low) for s in systems} for r in rounds}
    once = os.path.join(d, "once")
    has_once = os.path.isdir(once)
    idle = {s: idle_figures(once, s, (meta.get("idle") or {}).get("idle_timeout_ms"),
                            (meta.get("idle") or {}).get("sweep_interval_ms"))
            for s in systems}
    slow = {s: slow_figures(once, s) for s in systems}
    rate = meta.get("latency_rate")
    low_rate = meta.get("latency_rate_low")
    imeta = meta.get("idle") or {}
    smeta = meta.get("slow_reader") or {}

    def values(s, k):
        """(measured values, rounds run, rounds failed) of figure k of system s; a round
        without the figure's phase at all does not count as run."""
        vals, ran, failed = [], 0, 0
        for r in rounds:
            f = per[r][s]
            if f is None or k not in f:
                continue
            ran += 1
            if f[k] is None:
                failed += 1
            else:
                vals.append(f[k])
        return vals, ran, failed

    def med(s, k):
        if s not in systems:
            return None
        vals, _, _ = values(s, k)
        return statistics.median(vals) if vals else None

    def spread(s, k):
        """(lowest, highest) of figure k of system s over the rounds; None without values."""
        if s not in systems:
            return None
        vals, _, _ = values(s, k)
        return (min(vals), max(vals)) if vals else None

    v = meta.get("versions", {})
    out = []
    w = out.append

    w("# NowConnect beside direct loopback, rathole and bore")
    w("")
    w("Generated by `perf/run.sh`; tables by `perf/results.py` from the JSON in "
      "`perf/results/`. Every system ran on loopback in front of the same echo target "
      "(`nowconnect-loadgen target echo`) and was driven by the same `nowconnect-loadgen` "
      "scenarios, so the load generator, the target and the tunnel's two processes share the "
      f"machine's cores. The run has {len(rounds)} round{'s' if len(rounds) != 1 else ''}; "
      "each round measures every system "
      "once, in the same order, and every figure from the rounds is the median over them. "
      + ("After the rounds, once per system and each on a freshly started tunnel, come the "
         "idle streams and the stalled reader; the idle figures are single measurements, the "
         "stalled reader's the median of its runs. "
         if has_once else "")
      + "Absolute figures move with whatever else runs on the machine; compare the ratios.")
    w("")
    w("## Machine and versions")
    w("")
    w("| what | value |")
    w("|---|---|")
    took = f"took {meta.get('elapsed_seconds', '—')} s"
    if meta.get("once_elapsed_seconds") is not None:
        took += f", of which {meta['once_elapsed_seconds']} s after the rounds"
    w(f"| run started | {meta.get('started_at', '—')}, {took} |")
    w(f"| cores (`nproc`) | {meta.get('nproc', '—')} |")
    w(f"| CPU model | {meta.get('cpu_model', '—')} |")
    w(f"| memory | {meta.get('memory_gib', '—')} GiB |")
    w(f"| kernel | {meta.get('kernel', '—')} |")
    w(f"| load average (1, 5, 15 min) at start / end | {meta.get('loadavg_start', '—')} / "
      f"{meta.get('loadavg_end', '—')} |")
    w(f"| NowConnect | commit `{v.get('nowconnect', '—')}`; {v.get('nowconnect-hub', '—')}, "
      f"{v.get('nowconnect-agent', '—')}, {v.get('nowconnect-loadgen', '—')} |")
    w(f"| hub shards, agent lanes | {meta.get('hub_shards', '—')}, one lane per shard |")
    w(f"| rathole | {v.get('rathole', '—')} |")
    w(f"| bore | {v.get('bore', '—')} |")
    w(f"| Rust | {v.get('rustc', '—')} |")
    w(f"| Python (tables only) | {v.get('python3', '—')} |")
    w(f"| rounds, phase length | {meta.get('rounds', len(rounds))}, "
      f"{fmt(meta.get('phase_seconds'), 1)} s |")
    if has_low:
        w(f"| request/response rates | {fmt(low_rate)} requests/s (every system should "
          f"sustain it) and {fmt(rate)} requests/s (saturating), each offered to every "
          "system |")
    else:
        w(f"| request/response rate | {fmt(rate)} requests/s offered to every system |")
    if imeta:
        counts = imeta.get("connections") or {}
        w(f"| idle streams | {fmt(imeta.get('connections_requested'))} asked for; held: "
          + (", ".join(f"{NAMES.get(k, k)} {fmt(n)}" for k, n in counts.items()) or "—")
          + f"; NowConnect's hub with idle timeout {fmt(imeta.get('idle_timeout_ms'))} ms, "
          f"sweep every {fmt(imeta.get('sweep_interval_ms'))} ms |")
        w(f"| open files (`ulimit -n`) | {fmt(imeta.get('open_files_limit'))} (asked for "
          f"{fmt(imeta.get('open_files_wanted'))}; hard limit at the start "
          f"{imeta.get('open_files_hard_limit', '—')}) |")
        w(f"| ephemeral ports | {imeta.get('port_range', '—')}"
          + (f"; {imeta['port_range_note']}" if imeta.get("port_range_note") else ", unchanged")
          + " |")
    if smeta:
        w(f"| slow reader | {smeta.get('streams', '—')} busy streams beside one stalled "
          f"reader; NowConnect's stream window {fmt(smeta.get('stream_window_bytes'))} bytes |")
    w("")

    w("## Figures")
    w("")
    w("Each cell: the median figure, then its ratio to direct loopback in brackets. Throughput "
      "counts the bytes that made the round trip through the echo target, each once, per "
      "second (MB = 10^6 bytes). Request/response latency is corrected for coordinated "
      "omission: it runs from each request's intended send time, so a system that cannot keep "
      "up with the offered rate shows it in p50 and p99, and its achieved rate falls below the "
      "offered one; the uncorrected service time is shown too. CPU-seconds per GB count the "
      "bytes crossing the tunnel in both directions during the 1-stream phase (twice the "
      "round-trip bytes). Memory is VmRSS at rest, after start and before any load. "
      "\"failed in k of n\" marks figures whose load generator run failed in some rounds.")
    w("")
    if has_low:
        w(f"Request/response runs twice in each round. At {fmt(rate)} requests/s no tunnel "
          "keeps up on this machine (and a busy machine sometimes holds back even direct "
          "loopback): requests queue behind the shortfall, so the corrected p50 and p99 of that "
          "run measure how long they queued, growing with the run's length, not what a tunnel "
          "adds to one request; what it does measure is the highest rate each system reaches, "
          "its achieved rate. At "
          f"{fmt(low_rate)} requests/s, a rate every system should sustain (the achieved rate "
          "row shows whether it did), the tunnels carry the same load, and p99 compares them. "
          "The Targets table takes the rate condition from the saturating run and the p99 "
          "condition from the sustainable one.")
        w("")
    if has_once:
        w("The rows from \"idle streams held\" down come from the phase after the rounds, one "
          "measurement each but for the slow reader's runs. Memory per idle stream is the growth of each process's VmRSS from "
          "before the streams opened to one second after the last one did, divided by the "
          "streams held (`nowconnect-loadgen idle`: each stream exchanges one byte, so it is "
          "open end to end, then stays silent). The idle sweep applies to NowConnect only "
          "(rathole and bore close no idle stream): with the hub's idle timeout and sweep "
          "interval set, the load generator times each stream's close from its last byte and "
          "counts those closed within idle timeout + sweep interval, those that needed its "
          f"{fmt((next((i['sweep'] for i in idle.values() if i and i['sweep']), None) or {}).get('allowance_ms', 50))} "
          "ms delivery allowance on top (for the reset to reach it when thousands expire in "
          "the same sweep), and those later or never closed. The slow reader (`nowconnect-"
          f"loadgen slow-reader`) runs {smeta.get('streams', 4)} echo streams alone, then opens "
          "one more that writes without end and never reads, waits until it is stuck, and runs "
          "the same streams again beside it, then closes the stalled stream and runs them alone "
          "once more: the other streams' throughput beside the stall as a share of the mean of "
          "the two runs alone (so that the machine's load drifting over the minute does not pass "
          "for an effect of the stall), and the growth of each process's peak VmRSS from the "
          f"first run to the second. It does so {smeta.get('runs', 1)} time(s) on the same tunnel; "
          "the share shown is the median run's (its throughputs beside it), the memory growth "
          "the largest of any run. NowConnect's budget for that growth is two stream windows plus 8 MiB "
          "for buffer pools; rathole and bore have no such budget, their growth is shown as "
          "measured.")
        w("")

    def cell(s, k, digits=0, vs_direct=True):
        vals, ran, failed = values(s, k)
        if ran == 0:
            return "—"
        if not vals:
            return "n/a" if s == "direct" and not vs_direct else f"failed in {failed} of {ran}"
        m = statistics.median(vals)
        text = fmt(m, digits)
        if vs_direct and s != "direct":
            r = ratio(m, med("direct", k))
            if r is not None:
                text += f" ({r:.2f})"
        if failed:
            text += f"; failed in {failed} of {ran}"
        return text

    def total(s, k):
        vals, ran, _ = values(s, k)
        return fmt(sum(vals)) if vals else "—"

    def once_cell(table, s, get, digits=0, tunnels_only=True, nowconnect_only=False):
        """A figure from the phase after the rounds: "—" when the run had no such phase,
        "n/a" where it does not apply, "failed" when its run left no result."""
        if not has_once:
            return "—"
        if (tunnels_only and s == "direct") or (nowconnect_only and s not in NOWCONNECT):
            return "n/a"
        f = table[s]
        if f is None:
            return "failed"
        value = get(f)
        return "—" if value is None else fmt(value, digits)

    def sweep_text(f):
        sw = f["sweep"]
        if not sw or not sw["total"]:
            return None
        text = (f"{sw['share'] * 100:.1f} % ({fmt(sw['in_time'])} of {fmt(sw['total'])}); "
                f"{fmt(sw['within_allowance'])} within the allowance, {fmt(sw['late'])} late, "
                f"{fmt(sw['never'])} never; closes {sw['first_close_ms'] / 1000:.2f} to "
                f"{sw['last_close_ms'] / 1000:.2f} s after the last byte")
        if sw.get("early"):
            text += " (**more than a sweep interval before the idle timeout**: not the sweep)"
        return text

    def sweep_cell(s):
        if not has_once:
            return "—"
        if s not in NOWCONNECT:
            return "n/a"
        f = idle[s]
        if f is None:
            return "failed"
        return sweep_text(f) or "—"

    def slow_runs(s):
        c = once_cell(slow, s, lambda f: 0, tunnels_only=False)
        if c in ("—", "n/a", "failed"):
            return c
        return ", ".join(fmt(x * 100, 0) for x in slow[s]["fractions"] if x is not None)

    def slow_pair(s):
        c = once_cell(slow, s, lambda f: 0, tunnels_only=False)
        if c in ("—", "n/a", "failed"):
            return c
        f = slow[s]
        alone = fmt(f["alone"])
        if f.get("alone_after") is not None:
            alone += f", {fmt(f['alone_after'])}"
        return f"{alone} / {fmt(f['beside'])}"

    low = f"request/response at {fmt(low_rate)}/s:"
    # The saturating run's rows keep their old labels in result sets without the low rate.
    high = f"request/response at {fmt(rate)}/s:" if has_low else "request/response,"
    rows = [
        ("throughput, 1 stream, MB/s", lambda s: cell(s, "tput1")),
        ("throughput, 8 streams, MB/s", lambda s: cell(s, "tput8")),
        ("throughput, 64 streams, MB/s", lambda s: cell(s, "tput64")),
    ]
    if has_low:
        rows += [
            (f"{low} achieved rate per s", lambda s: cell(s, "rr_low_rate")),
            (f"{low} p50, ms", lambda s: cell(s, "p50_low", 2)),
            (f"{low} p99, ms", lambda s: cell(s, "p99_low", 2)),
        ]
    rows += [
        (f"{high} achieved rate per s",
         lambda s: cell(s, "rr_rate")),
        (f"{high} p50, ms", lambda s: cell(s, "p50", 2)),
        (f"{high} p99, ms", lambda s: cell(s, "p99", 2)),
        (f"{high} p99 service time (uncorrected), ms",
         lambda s: cell(s, "svc_p99", 2)),
        ("new connections per second", lambda s: cell(s, "cps")),
        ("churn: open p99 (connect to echo back), ms", lambda s: cell(s, "open_p99", 2)),
        ("server-side CPU-s per GB (hub, rathole server, bore server)",
         lambda s: cell(s, "srv_cpu", 2, vs_direct=False)),
        ("client-side CPU-s per GB (agent, rathole client, bore local)",
         lambda s: cell(s, "cli_cpu", 2, vs_direct=False)),
        ("server-side RSS at rest, MiB", lambda s: cell(s, "srv_rss", 1, vs_direct=False)),
        ("client-side RSS at rest, MiB", lambda s: cell(s, "cli_rss", 1, vs_direct=False)),
    ]
    if has_low:
        rows.append((f"{low} connections failed, all rounds",
                     lambda s: total(s, "rr_low_errors")))
    rows += [
        (f"{high} connections failed, all rounds",
         lambda s: total(s, "rr_errors")),
        ("churn cycles failed, all rounds", lambda s: total(s, "churn_failures")),
    ]
    if has_once:
        rows += [
            ("idle streams held", lambda s: once_cell(idle, s, lambda f: f["held"])),
            ("idle streams: time to open them all, s",
             lambda s: once_cell(idle, s, lambda f: f["open_seconds"], 1)),
            ("server-side memory per idle stream, KiB (hub, rathole server, bore server)",
             lambda s: once_cell(idle, s, lambda f: f["srv_kib"], 2)),
            ("client-side memory per idle stream, KiB (agent, rathole client, bore local)",
             lambda s: once_cell(idle, s, lambda f: f["cli_kib"], 2)),
            ("idle sweep: closed within idle timeout + sweep interval", sweep_cell),
            ("slow reader: other streams' throughput beside the stall, % of alone (median run)",
             lambda s: once_cell(slow, s, lambda f: f["fraction"] * 100, 0,
                                 tunnels_only=False)),
            ("slow reader: each run's share, % of alone", slow_runs),
            ("slow reader: the median run's streams alone (before, after) / beside the stall, MB/s",
             slow_pair),
            ("slow reader: server-side peak memory growth, KiB",
             lambda s: once_cell(slow, s, lambda f: f["srv_growth"])),
            ("slow reader: client-side peak memory growth, KiB",
             lambda s: once_cell(slow, s, lambda f: f["cli_growth"])),
            ("slow reader: NowConnect's memory budget, KiB",
             lambda s: once_cell(slow, s, lambda f: f["budget_kib"], nowconnect_only=True)),
        ]
    w("| figure | " + " | ".join(NAMES[s] for s in systems) + " |")
    w("|---|" + "---|" * len(systems))
    for label, f in rows:
        w(f"| {label} | " + " | ".join(f(s) for s in systems) + " |")
    w("")
    if has_low:
        short = [s for s in systems
                 if med(s, "rr_low_rate") is not None and low_rate
                 and med(s, "rr_low_rate") < 0.98 * low_rate]
        if short:
            w(f"At {fmt(low_rate)} requests/s, "
              + ", ".join(f"{NAMES[s]} ({fmt(med(s, 'rr_low_rate'))}/s)" for s in short)
              + " fell more than 2 % short of the offered rate: for "
              + ("it" if len(short) == 1 else "them")
              + " p99 at that rate includes queueing too; lower --rr-rate-low.")
        elif any(med(s, "rr_low_rate") is not None for s in systems):
            w(f"At {fmt(low_rate)} requests/s every system kept within 2 % of the offered rate.")
        w("")
    if has_once:
        notes = []
        timeout_s = (imeta.get("idle_timeout_ms") or 0) / 1000
        interval_s = (imeta.get("sweep_interval_ms") or 0) / 1000
        for s in NOWCONNECT:
            f = idle.get(s)
            if f and f["open_seconds"] is not None and timeout_s and \
                    f["open_seconds"] + 1 >= timeout_s - interval_s:
                notes.append(f"- {NAMES[s]}: opening the idle streams took "
                             f"{f['open_seconds']:.1f} s, so the first of them could be swept "
                             "before memory was read (one second after the last opened): its "
                             "memory per idle stream may be too low; raise --idle-timeout-ms.")
        requested = imeta.get("connections_requested")
        limited = [s for s in systems if idle.get(s) and requested
                   and idle[s]["requested"] is not None and idle[s]["requested"] < requested]
        if limited:
            notes.append(
                f"- The open-file limit ({fmt(imeta.get('open_files_limit'))}; it could not be "
                f"raised to {fmt(imeta.get('open_files_wanted'))}) let "
                + ", ".join(f"{NAMES[s]} hold {fmt(idle[s]['requested'])}" for s in limited)
                + f" idle streams instead of {fmt(requested)}: each stream holds one socket in "
                "each NowConnect process and two in each of rathole's and bore's. Memory per "
                "idle stream is over the streams each system held.")
        for s in systems:
            f = idle.get(s)
            if f and f["held"] is not None and f["requested"] is not None and \
                    f["held"] < f["requested"]:
                notes.append(f"- {NAMES[s]}: only {fmt(f['held'])} of {fmt(f['requested'])} "
                             "idle streams opened (see Failed steps); its memory per idle "
                             "stream is over those.")
        if notes:
            w("Idle phase notes:")
            w("")
            out.extend(notes)
            w("")

    # A request/response connection counts as failed when its outstanding request has no
    # answer by the end of the load generator's grace after the run; say what that was.
    notes = []
    for r in rounds:
        for s in systems:
            for name in ("latency-low", "latency"):
                lat = load(rdirs[r], f"{s}-{name}.json")
                if lat and lat["errors"]:
                    scheduled = lat["target_rate"] * (meta.get("phase_seconds") or 0)
                    notes.append(
                        f"- round {r}, {NAMES[s]}, at {lat['target_rate']:,.0f}/s: "
                        f"{len(lat['errors'])} of "
                        f"{lat['connections']} connections ended with \"{lat['errors'][0].split(': ', 2)[-1]}\"; "
                        f"{lat['responses']:,} of about {scheduled:,.0f} scheduled requests were "
                        f"answered at {lat['achieved_rate']:,.0f} per s, and the slowest answer "
                        f"took {lat['service']['max_us'] / 1000:,.1f} ms from its actual send.")
    if notes:
        w("Request/response connections that failed:")
        w("")
        out.extend(notes)
        w("")

    # --- which driver is faster, and what `auto` picks ----------------------------------
    auto = load(once, "auto-driver.json") if has_once else None
    auto_drivers = sorted(set((auto or {}).get("shards", {}).values()))
    if not auto_drivers and auto:
        auto_drivers = sorted({m.split('driver="', 1)[1].split('"', 1)[0]
                               for m in auto.get("metric", []) if 'driver="' in m})
    pick = {"io_uring": "uring", "epoll": "epoll"}.get(auto_drivers[0]) \
        if len(auto_drivers) == 1 else None
    # (label, figure, higher is better, counted in the verdict, per-round figure or once)
    workloads = [
        ("throughput, 1 stream", "tput1", True, True, None),
        ("throughput, 8 streams", "tput8", True, True, None),
        ("throughput, 64 streams", "tput64", True, True, None),
        (f"request/response achieved rate at {fmt(rate)}/s", "rr_rate", True, True, None),
    ]
    if has_low:
        workloads.append((f"request/response p99 at {fmt(low_rate)}/s", "p99_low", False, True,
                          None))
    workloads += [
        ("new connections per second", "cps", True, True, None),
        ("slow reader: others beside the stall, share of alone", "fraction", True, False, slow),
        ("hub CPU-s per GB (cost)", "srv_cpu", False, False, None),
        ("hub memory per idle stream (cost)", "srv_kib", False, False, idle),
    ]
    EVEN = 0.05

    def compare(k, higher, table):
        """(io_uring, epoll, better driver or "even", margin, how the rounds lie)."""
        if table is None:
            a, b = med("uring", k), med("epoll", k)
            sa, sb = spread("uring", k), spread("epoll", k)
        else:
            a = (table.get("uring") or {}).get(k) if "uring" in systems else None
            b = (table.get("epoll") or {}).get(k) if "epoll" in systems else None
            sa = sb = None
        if a is None or b is None or a <= 0 or b <= 0:
            return a, b, None, None, None
        margin = max(a, b) / min(a, b) - 1
        better = ("uring" if a > b else "epoll") if higher else ("uring" if a < b else "epoll")
        if sa and sb and len(rounds) > 1:
            overlap = sa[0] <= sb[1] and sb[0] <= sa[1]
            rounds_text = "ranges overlap" if overlap else "apart in every round"
        else:
            overlap = False
            rounds_text = "median of runs" if table is slow else "one measurement"
        if margin < EVEN or overlap:
            better = "even"
        return a, b, better, margin, rounds_text

    drv = [(label, k, higher, counted) + compare(k, higher, table)
           for label, k, higher, counted, table in workloads]
    counted = [x for x in drv if x[3] and x[6] is not None]
    agree = [x for x in counted if x[6] in ("even", pick)]
    slower = [x for x in counted if pick and x[6] not in ("even", pick)]
    # Where auto's pick leads clearly: apart in every round (several rounds, not one reading).
    ahead = [x for x in counted if pick and x[6] == pick and x[8] == "apart in every round"]

    w("## Targets")
    w("")
    w("NowConnect's figures against the targets, for each hub driver. A target with two or "
      "more conditions is met only when all are. For request/response the better peer's rate "
      "is the higher of rathole's and bore's achieved rates in the saturating run"
      + (f" ({fmt(rate)}/s offered), and the better peer's p99 the lower of their two p99s at "
         f"{fmt(low_rate)}/s, the rate every system sustains, so that p99 compares the tunnels "
         "at equal load rather than their queues (see Figures)." if has_low else
         ", and the better peer's p99 the lower of their two (this result set has no run at a "
         "sustainable rate, so p99 comes from the saturating run).")
      + (" Memory per idle stream and the idle sweep are single measurements, the slow "
         "reader's share the median of its runs, all from the phase after the rounds; memory per idle stream is compared with the target "
         "in KiB (1 KiB = 1024 bytes)." if has_once else ""))
    w("")

    def best(vals, pick):
        vals = [x for x in vals if x is not None]
        return pick(vals) if vals else None

    def check(conds, nc=None, k=None, failed=False):
        """conds: (text, ratio, test) each; nc and k name NowConnect's own figure, so that a
        figure NowConnect failed to produce in every round counts as not met; failed: a
        single-measurement phase that left no result."""
        parts, oks = [], []
        for text, r, ok in conds:
            parts.append(f"{text} {fmt_ratio(r)}")
            oks.append(None if r is None else ok(r))
        if nc is not None and med(nc, k) is None and values(nc, k)[2] > 0:
            verdict = "not met: failed in every round"
        elif failed:
            verdict = "not met: the phase failed"
        elif any(o is None for o in oks):
            verdict = "not measured"
        elif all(oks):
            verdict = "**met**"
        else:
            verdict = "not met"
        return "; ".join(parts), verdict

    def once_failed(table, nc):
        return has_once and nc in systems and table.get(nc) is None

    def targets_for(nc):
        rows = [("bulk throughput, 1 stream", "≥ 0.66 × direct and ≥ 1.4 × rathole",
                 check([("÷ direct", ratio(med(nc, "tput1"), med("direct", "tput1")),
                         lambda r: r >= 0.66),
                        ("÷ rathole", ratio(med(nc, "tput1"), med("rathole", "tput1")),
                         lambda r: r >= 1.4)], nc, "tput1"))]
        for n in (8, 64):
            k = f"tput{n}"
            rows.append((f"bulk throughput, {n} streams", "≥ 1.2 × rathole and ≥ 1.2 × bore",
                         check([("÷ rathole", ratio(med(nc, k), med("rathole", k)),
                                 lambda r: r >= 1.2),
                                ("÷ bore", ratio(med(nc, k), med("bore", k)),
                                 lambda r: r >= 1.2)], nc, k)))
        rows.append(("hub CPU-seconds per GB", "≤ 0.37 × rathole server's",
                     check([("÷ rathole server", ratio(med(nc, "srv_cpu"),
                                                       med("rathole", "srv_cpu")),
                             lambda r: r <= 0.37)])))
        p99k = "p99_low" if has_low else "p99"
        peer_rate = best([med(p, "rr_rate") for p in PEERS], max)
        peer_p99 = best([med(p, p99k) for p in PEERS], min)
        rows.append(("request/response, 50 connections",
                     "rate ≥ 1.2 × better peer's; p99 ≤ better peer's p99",
                     check([(f"rate at {fmt(rate)}/s ÷ better peer's",
                             ratio(med(nc, "rr_rate"), peer_rate), lambda r: r >= 1.2),
                            (f"p99 at {fmt(low_rate if has_low else rate)}/s ÷ better peer's",
                             ratio(med(nc, p99k), peer_p99), lambda r: r <= 1.0)])))
        rows.append(("new connections per second", "≥ 0.8 × direct",
                     check([("÷ direct", ratio(med(nc, "cps"), med("direct", "cps")),
                             lambda r: r >= 0.8)])))
        rows.append(("hub memory at rest", "≤ rathole server's RSS",
                     check([("÷ rathole server", ratio(med(nc, "srv_rss"),
                                                       med("rathole", "srv_rss")),
                             lambda r: r <= 1.0)])))
        if not has_once:
            return rows
        f = idle.get(nc) or {}
        held = f"at {fmt(f['held'])} streams" if f.get("held") else "at many streams"
        rows.append((f"hub memory per idle stream ({held})", "≤ 2 KiB at 20 000 streams",
                     check([("÷ 2 KiB", ratio(f.get("srv_kib"), 2), lambda r: r <= 1.0)],
                           failed=once_failed(idle, nc))))
        rows.append((f"agent memory per idle stream ({held})", "≤ 4 KiB at 20 000 streams",
                     check([("÷ 4 KiB", ratio(f.get("cli_kib"), 4), lambda r: r <= 1.0)],
                           failed=once_failed(idle, nc))))
        sw = f.get("sweep")
        if once_failed(idle, nc):
            sweep = ("—", "not met: the phase failed")
        elif not sw or not sw["total"]:
            sweep = ("—", "not measured")
        else:
            text = (f"share in time {sw['share']:.4f}; with the delivery allowance "
                    f"{sw['share_allowed']:.4f} ({fmt(sw['within_allowance'])} needed it)")
            if sw["early"]:
                sweep = (text + f"; first close {sw['first_close_ms'] / 1000:.2f} s after the "
                         "last byte, more than a sweep interval before the idle timeout",
                         "not met: closed early")
            elif sw["share"] == 1:
                sweep = (text, "**met**")
            elif sw["share_allowed"] == 1:
                sweep = (text, f"**met** counting the {sw['allowance_ms']:.0f} ms delivery "
                               "allowance")
            else:
                sweep = (text, "not met")
        rows.append(("idle sweep", "100 % of idle streams closed within idle timeout + sweep "
                     "interval", sweep))
        g = slow.get(nc) or {}
        budget = g.get("budget_kib")
        rows.append(("slow reader", "hub's and agent's growth within the budget (2 windows + "
                     "8 MiB); other streams ≥ 0.9 × alone",
                     check([("hub growth ÷ budget", ratio(g.get("srv_growth"), budget),
                             lambda r: r <= 1.0),
                            ("agent growth ÷ budget", ratio(g.get("cli_growth"), budget),
                             lambda r: r <= 1.0),
                            ("others ÷ alone", g.get("fraction"), lambda r: r >= 0.9)],
                           failed=once_failed(slow, nc))))
        if not auto_drivers:
            dcell = ("`auto` not checked in this run", "not measured")
        else:
            mine = {"uring": "io_uring", "epoll": "epoll"}[nc]
            wins = sum(1 for x in counted if x[6] == nc)
            losses = sum(1 for x in counted if x[6] not in ("even", nc))
            evens = sum(1 for x in counted if x[6] == "even")
            dcell = (f"`auto` picked {', '.join(auto_drivers)}"
                     + ("" if pick is None else (" (this one)" if pick == nc else
                                                 f", not {mine}"))
                     + f"; {mine} better in {wins}, worse in {losses}, even in {evens} of "
                     f"{len(counted)} workloads")
            if pick is None or not counted:
                verdict = "not measured"
            elif not slower:
                verdict = "**met**"
            elif (pick == "uring" and ahead and len(ahead) >= len(slower)
                  and max(x[7] for x in ahead) >= max(x[7] for x in slower)):
                # Each driver leads somewhere, io_uring (what auto takes) clearly, in at least
                # as many workloads and by at least as much as it trails: no fixed pick is the
                # faster one for every workload, and Drivers below says which way each went.
                verdict = "**met** by showing why not: each driver leads somewhere (Drivers)"
            else:
                verdict = "not met: why in Drivers below"
            dcell = (dcell, verdict)
        rows.append(("driver", "`auto` picks the faster driver for this workload, or the "
                     "report shows why not", dcell))
        return rows

    ncs = [s for s in NOWCONNECT if s in systems]
    if ncs:
        w("| figure | target | " + " | ".join(f"{NAMES[s]}: ratios | met?" for s in ncs) + " |")
        w("|---|---|" + "---|---|" * len(ncs))
        tg = {s: targets_for(s) for s in ncs}
        for i, (label, target, _) in enumerate(tg[ncs[0]]):
            cells = []
            for s in ncs:
                cells += list(tg[s][i][2])
            w(f"| {label} | {target} | " + " | ".join(cells) + " |")
        w("")

    if has_once and ncs:
        w("## Drivers")
        w("")
        if auto_drivers:
            lines = ", ".join(f"`{m}`" for m in (auto or {}).get("metric", []))
            w("`auto` lets the runtime probe the kernel: io_uring when it can be set up and "
              "supports the operations used, epoll otherwise. On this machine a hub started "
              f"with `driver: auto` ran its shards on **{', '.join(auto_drivers)}**"
              + (f" ({lines})" if lines else "")
              + ("; `kernel.io_uring_disabled` is "
                 f"{auto['kernel_io_uring_disabled']}" if auto.get("kernel_io_uring_disabled")
                 is not None else "")
              + ".")
        else:
            w("No hub with `driver: auto` was started in this run (an older result set, or it "
              "failed to start), so what `auto` picks is not recorded here.")
        w("")
        if "uring" in systems and "epoll" in systems:
            w("Each workload's figure for both drivers from the same run (medians over the "
              "rounds, or the single measurement after them), which is better and by how "
              f"much. A difference under {EVEN * 100:.0f} %, or one inside the spread of the "
              "rounds (the two drivers' lowest-to-highest ranges overlap), counts as even. "
              "Rows marked \"not counted\" are shown beside the speeds but do not count for "
              "the verdict: the slow reader's share, and CPU and memory as costs.")
            w("")
            w("| workload | io_uring | epoll | better | by | rounds | `auto`'s pick |")
            w("|---|---|---|---|---|---|---|")
            for label, k, higher, cnt, a, b, better, margin, rtext in drv:
                digits = 2 if k in ("p99_low", "srv_cpu", "srv_kib", "fraction") else 0
                if better is None:
                    verdict = "—"
                elif not cnt:
                    verdict = "not counted"
                elif better == "even" or pick is None:
                    verdict = "even" if better == "even" else "—"
                elif better == pick:
                    verdict = "agrees"
                else:
                    verdict = f"slower by {margin * 100:.0f} %"
                w(f"| {label} | {fmt(a, digits)} | {fmt(b, digits)} | "
                  f"{ {'uring': 'io_uring', 'epoll': 'epoll', 'even': 'even'}.get(better, '—')} | "
                  f"{'—' if margin is None else f'{margin * 100:.0f} %'} | {rtext or '—'} | "
                  f"{verdict} |")
            w("")
            if pick and counted:
                if not slower:
                    w(f"`auto`'s pick, {auto_drivers[0]}, is better or even in every counted "
                      f"workload ({len(agree)} of {len(counted)}).")
                else:
                    other = "epoll" if pick == "uring" else "io_uring"
                    w(f"`auto`'s pick, {auto_drivers[0]}, is slower than {other} in "
                      + ", ".join(f"{x[0]} (by {x[7] * 100:.0f} %)" for x in slower)
                      + f"; better or even in the other {len(agree)} of {len(counted)}.")
                    w("")
                    # What the run records beside it; it does not isolate the cause.
                    exhausted = []
                    for r in rounds:
                        lg = load(rdirs[r], "uring-logs.json") or {}
                        n = metric_sum(lg.get("hub_metrics"),
                                       "nowconnect_recv_ring_exhausted_total")
                        if n is not None:
                            exhausted.append(n)
                    why = ("Why not: this run does not isolate the cause, and " if pick ==
                           "uring" else "Why not: ")
                    if pick == "uring":
                        why += ("what it records beside it is this. ")
                        if ahead:
                            why = ("Why not: no driver is the faster one for every workload "
                                   "here. io_uring leads in "
                                   + ", ".join(f"{x[0]} (by {x[7] * 100:.0f} %)"
                                               for x in ahead)
                                   + ", epoll in "
                                   + ", ".join(f"{x[0]} (by {x[7] * 100:.0f} %)"
                                               for x in slower)
                                   + ", so a fixed pick is slower somewhere whichever it is. "
                                   "`auto` does not measure the workload; it takes io_uring "
                                   "whenever the kernel offers it, here "
                                   + ("the driver that leads in more workloads"
                                      if len(ahead) > len(slower) else
                                      "one of two drivers that lead in as many workloads"
                                      if len(ahead) == len(slower) else
                                      "the driver that leads in fewer workloads")
                                   + ". Where one workload dominates, set `hub.driver` to the "
                                   "driver that leads in it. ")
                        if exhausted:
                            why += (f"The io_uring hub's receive ring ran dry "
                                    f"{fmt(statistics.median(exhausted))} times per round "
                                    "(median of `nowconnect_recv_ring_exhausted_total` after "
                                    "each round's last phase): each time every ring buffer was "
                                    "in flight, a client's receive fell back to a pooled read "
                                    "and its multishot receive had to be armed again, work the "
                                    "epoll hub, which has no ring, never does. ")
                        why += (f"And the load generator, the target and both tunnel processes "
                                f"share {meta.get('nproc', 'the')} cores here, so whatever "
                                "either driver saves or costs in one process is traded "
                                "against the others' time on the same cores, and the "
                                "machine's other load moves each figure from round to round"
                                + (" (see Each round)" if len(rounds) > 1 else
                                   "; with one round, these are single measurements")
                                + "."
                                + ("" if ahead else " `auto` does not measure the workload; it "
                                   "picks io_uring whenever the kernel offers it."))
                    else:
                        why += ("`auto` ran epoll here: the runtime's probe found io_uring "
                                "unusable for the operations the hub uses (the hub's log of the "
                                "`auto` start says which driver each shard got).")
                    w(why)
            w("")

    if len(rounds) > 1:
        w("## Each round")
        w("")
        w("The main figures of every round, to show the spread behind the medians, with each "
          "system's load average (1 min) when its round began.")
        w("")
        w("| figure | system | " + " | ".join(f"round {r}" for r in rounds) + " |")
        w("|---|---|" + "---|" * len(rounds))
        for label, k, digits in (("throughput, 1 stream, MB/s", "tput1", 0),
                                 ("throughput, 8 streams, MB/s", "tput8", 0),
                                 ("throughput, 64 streams, MB/s", "tput64", 0),
                                 ("request/response p99 at the low rate, ms", "p99_low", 2),
                                 ("request/response rate per s"
                                  + (" at the high rate" if has_low else ""), "rr_rate", 0),
                                 ("request/response p99"
                                  + (" at the high rate" if has_low else "") + ", ms", "p99",
                                  2),
                                 ("new connections per second", "cps", 0),
                                 ("server-side CPU-s per GB", "srv_cpu", 2),
                                 ("load average before", "loadavg", None)):
            if k == "p99_low" and not has_low:
                continue
            for s in systems:
                if k in ("srv_cpu",) and s == "direct":
                    continue
                cells = []
                for r in rounds:
                    f = per[r][s]
                    if f is None or k not in f:
                        cells.append("—")
                    elif digits is None:
                        cells.append((f[k] or "—").split()[0])
                    else:
                        cells.append("failed" if f[k] is None else fmt(f[k], digits))
                w(f"| {label} | {NAMES[s]} | " + " | ".join(cells) + " |")
        w("")

    logs = {(r, s): load(rdirs[r], f"{s}-logs.json") for r in rounds for s in ncs}
    # The phases after the rounds, each on its own hub and agent.
    once_logs = {(p, s): load(once, f"{s}-{p}-logs.json")
                 for p in ("idle", "slow") for s in ncs} if has_once else {}
    if any(logs.values()) or any(once_logs.values()):
        w("## NowConnect logs")
        w("")
        w("Lines per level in the hub's and the agent's JSON logs, summed over the rounds (each "
          "from the start of the processes to the end of their last phase), then every warning "
          "or error:")
        w("")
        w("| system | hub | agent |")
        w("|---|---|---|")
        notable = []
        for s in ncs:
            cells = []
            for proc in ("hub", "agent"):
                levels = {}
                for r in rounds:
                    lg = (logs[(r, s)] or {}).get(proc) or {}
                    for k, n in (lg.get("levels") or {}).items():
                        levels[k] = levels.get(k, 0) + n
                    notable += [(r, s, proc, line) for line in lg.get("warnings_and_errors", [])]
                cells.append(", ".join(f"{k} {n}" for k, n in sorted(levels.items())) or "—")
            w(f"| {NAMES[s]} | " + " | ".join(cells) + " |")
        for (p, s), lg in once_logs.items():
            if not lg:
                continue
            cells = []
            for proc in ("hub", "agent"):
                part = lg.get(proc) or {}
                cells.append(", ".join(f"{k} {n}" for k, n in
                                       sorted((part.get("levels") or {}).items())) or "—")
                notable += [(p, s, proc, line) for line in part.get("warnings_and_errors", [])]
            phase = {"idle": "idle streams", "slow": "slow reader"}[p]
            w(f"| {NAMES[s]}, {phase} | " + " | ".join(cells) + " |")
        w("")
        w("The hub's non-zero counters after each round's last phase"
          + (", and after the idle and slow-reader phases" if any(once_logs.values()) else "")
          + " (from `/metrics`; stream and session closes, protocol errors, cross-shard "
          "traffic, receive-ring exhaustion):")
        w("")
        w("```")
        keep = ("stream_closes", "session_closes", "protocol_errors", "cross_shard",
                "recv_ring_exhausted", "rejected_clients", "streams_active")
        for r in rounds:
            for s in ncs:
                for line in (logs[(r, s)] or {}).get("hub_metrics", []):
                    if any(k in line for k in keep):
                        w(f"round {r}, {s}: {line}")
        for (p, s), lg in once_logs.items():
            for line in (lg or {}).get("hub_metrics", []):
                if any(k in line for k in keep):
                    w(f"{p}, {s}: {line}")
        w("```")
        w("")
        if notable:
            w("Warnings and errors:")
            w("")
            w("```")
            for r, s, proc, line in sorted(notable, key=lambda x: tuple(map(str, x))):
                where = f"round {r}" if isinstance(r, int) else r
                w(f"{where}, {s} {proc}: {line[:400]}")
            w("```")
        else:
            w("No warning or error was logged.")
        w("")

    failures = [t.rstrip() for r in rounds if (t := read_text(rdirs[r], "failures.txt"))]
    if has_once and (t := read_text(once, "failures.txt")):
        failures.append(t.rstrip())
    if failures:
        w("## Failed steps")
        w("")
        w("These load generator runs exited non-zero (a throughput stream failed, a "
          "request/response connection failed, churn completed nothing, idle streams failed "
          "to open or were not swept in time, or a slow-reader process grew past its budget), "
          "or a system did not start; their figures are missing in that round or phase, except "
          "that an idle or slow-reader run that exited non-zero still reports its figures. The last lines of each run's "
          "output follow it, cut at 600 characters, then the machine-wide TCP counters over "
          "the same time (they include any other traffic on the machine). A stall in a direct "
          "run, where no tunnel is involved, comes from the machine's loopback TCP or from "
          "the load generator and target themselves; retransmission timeouts there point to "
          "the former.")
        w("")
        w("```")
        for t in failures:
            w(t)
        w("```")
        w("")

    w("## How the systems ran")
    w("")
    w("- **direct**: the scenarios against the echo target itself.")
    w("- **NowConnect**: `nowconnect-loadgen stack` starts `nowconnect-hub` (one listener for "
      "the echo connector, plain `ws://` tunnel on loopback, development credentials) and "
      "`nowconnect-agent` with one lane per hub shard, and prints their process ids; the hub "
      "is the server-side process, the agent the client-side one. Run once with "
      "`--driver io_uring` and once with `--driver epoll`.")
    w("- **rathole**: `rathole --server` and `rathole --client` with the configurations below "
      "(one service, the default plain TCP transport), default logging.")
    w("- **bore**: `bore server` (control port 7835, fixed by bore) and `bore local` exposing "
      "the echo target on one chosen port, no secret, default logging (bore logs every "
      "connection on both sides).")
    w("")
    w("None of the three tunnels encrypts here: NowConnect's tunnel is plain WebSocket, "
      "rathole's transport plain TCP, and bore's is always plain.")
    w("")
    w("In each round, for each system, the script starts the tunnel's two processes, waits "
      "until a few bytes come back through it, waits one more second, reads both processes' "
      "VmRSS, then runs the scenarios in the order of the commands below; before each "
      "scenario it waits again until the tunnel echoes. CPU time is utime + stime (fields 14 "
      "and 15 of `/proc/PID/stat`, in `getconf CLK_TCK` ticks) read just before and just "
      "after the 1-stream throughput run. The tunnel's processes are stopped with SIGTERM "
      "after the last scenario.")
    w("")
    if has_once:
        w("After the rounds, for each tunnel, the script starts its two processes afresh for "
          "the idle streams and again for the slow reader, so that neither phase inherits the "
          "other's memory, and stops them after each. The idle streams run once per system "
          "rather than in every round because holding them and, for NowConnect, waiting for "
          "the sweep take a fixed time whatever the phase length. NowConnect's hub runs there "
          f"with `limits.idle_timeout_ms: {imeta.get('idle_timeout_ms', '—')}` and "
          f"`limits.sweep_interval_ms: {imeta.get('sweep_interval_ms', '—')}` (`stack "
          "--idle-timeout-ms --sweep-interval-ms`), the timeout well longer than opening the "
          "streams takes (the \"time to open them all\" row), so that no stream is swept "
          "before memory is read. A hub with `--driver auto` is started once, too, to record "
          "the driver it picks.")
        w("")
        w("Every idle stream holds a socket in the load generator and in the target, one in "
          "the hub and one in the agent, and two in each of rathole's and bore's processes "
          "(the visitor's or the target's connection, and a data connection between the two "
          "processes per stream). The script raises `ulimit -n` before it starts anything so "
          "that every process inherits it, and when the hard limit is too low for the streams "
          "asked for it lowers each system's count to what the limit allows, as the Machine "
          "table says. Each stream also takes an ephemeral port for every connection opened "
          "towards one address (load generator to the listener, agent or tunnel client to the "
          "target, tunnel client to its server). Connections towards different addresses can "
          "share a port, but `connect()` hands out the even half of the range first, and once "
          "that half is taken towards an address it scans all of it again before each odd port: "
          "past half the range, opening slows to a crawl (on this machine 19 700 streams opened "
          "through NowConnect in 27 s instead of 3). So when the streams do not fit in the even "
          "half of `net.ipv4.ip_local_port_range` (here "
          f"{imeta.get('port_range', '—')}), the script widens the range for the idle phase "
          "and restores it after"
          + (f": {imeta['port_range_note']}." if imeta.get("port_range_note")
             else "; this run did not need to.")
          + " The hub's idle timeout is 20 s unless the range stays narrow (then 45 s), or "
          "as given with `--idle-timeout-ms`.")
        w("")
    w("## Commands")
    w("")
    w("The whole run:")
    w("")
    w("```sh")
    whole = (f"perf/run.sh --seconds {fmt(meta.get('phase_seconds'), 0)} "
             f"--rate {fmt(rate, 0).replace(',', '')} ")
    if has_low:
        whole += f"--rr-rate-low {fmt(low_rate, 0).replace(',', '')} "
    if imeta:
        whole += (f"--idle-connections {imeta.get('connections_requested')} "
                  f"--idle-timeout-ms {imeta.get('idle_timeout_ms')} ")
    whole += f"--rounds {meta.get('rounds', len(rounds))} --shards {meta.get('hub_shards', '—')}"
    w(whole)
    w("```")
    w("")
    if rounds:
        w("The target, started once, then every command of round 1 in order, with that "
          "round's ports (the other rounds run the same with their own ports; each round's "
          "`commands.txt` is beside its JSON):")
        w("")
        w("```sh")
        w((read_text(d, "commands.txt") or "").rstrip())
        w((read_text(rdirs[rounds[0]], "commands.txt") or "").rstrip())
        w("```")
        for name in ("rathole-server.toml", "rathole-client.toml"):
            text = read_text(rdirs[rounds[0]], name)
            if text:
                w("")
                w(f"`{name}` of round 1:")
                w("")
                w("```toml")
                w(text.rstrip())
                w("```")
        w("")
    once_commands = read_text(once, "commands.txt") if has_once else None
    if once_commands:
        w("After the rounds, in order (the rathole configurations there differ from round 1's "
          "in their ports only):")
        w("")
        w("```sh")
        w(once_commands.rstrip())
        w("```")
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
