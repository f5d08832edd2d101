#!/usr/bin/env python3
"""Summarise bench/msrp/run.sh results (rtedge-loadgen JSON files) as
markdown, or (--write FILE) put the markdown read from stdin into FILE
between the msrp-vs-kamailio markers (appended if the markers are absent).

Input: $OUT/<case>.<server>.<run>.json plus the environment run.sh exports.
"""

import glob
import json
import os
import platform
import re
import statistics
import sys

BEGIN = "<!-- msrp-bench:msrp-vs-kamailio:begin -->"
END = "<!-- msrp-bench:msrp-vs-kamailio:end -->"

CASE_TEXT = {
    "tcp-1x100": "TCP, 1 pair × 100 B",
    "tcp-10x100": "TCP, 10 pairs × 100 B",
    "tcp-1x4k": "TCP, 1 pair × 4 KiB",
    "tcp-10x4k": "TCP, 10 pairs × 4 KiB",
    "ws-1x100": "WebSocket, 1 pair × 100 B",
    "ws-10x100": "WebSocket, 10 pairs × 100 B",
    "ws-1x4k": "WebSocket, 1 pair × 4 KiB",
    "ws-10x4k": "WebSocket, 10 pairs × 4 KiB",
}


def write(path):
    text = sys.stdin.read().strip() + "\n"
    body = open(path).read()
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in body and END in body:
        pre, rest = body.split(BEGIN, 1)
        _, post = rest.split(END, 1)
        body = pre + block + post
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    open(path, "w").write(body)


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def fmt_rate(x):
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs, f):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f(m)
    return f"{f(m)} ({f(min(xs))}–{f(max(xs))})"


def load(out):
    runs = {}
    for p in sorted(glob.glob(os.path.join(out, "*.json"))):
        name = os.path.basename(p)[: -len(".json")]
        m = re.fullmatch(r"(.+)\.(rtedge|kamailio)\.(\d+)", name)
        if not m:
            continue
        try:
            v = json.load(open(p))
        except (OSError, ValueError):
            v = None
        runs.setdefault((m.group(1), m.group(2)), []).append(v)
    return runs


def figures(v):
    """msg/s, server CPU µs/msg, p99, p50, server CPU %, loadgen µs/msg,
    processes, ok."""
    if not v:
        return None
    srv = v.get("server") or {}
    measured = (v.get("timing") or {}).get("measured_s") or 0
    cpu = srv.get("cpu_measure") or {}
    cpu_s = (cpu.get("user_s") or 0) + (cpu.get("sys_s") or 0)
    lat = v.get("latency_us") or {}
    cpu_msg = srv.get("cpu_us_per_msg")
    return {
        "rate": (v.get("throughput") or {}).get("msg_per_s"),
        "cpu": cpu_msg,
        # The kernel's share of it (stime): the loopback TCP path, copies
        # and wake-ups, which any relay pays.
        "sys": cpu_msg * (cpu.get("sys_s") or 0) / cpu_s if cpu_msg is not None and cpu_s else None,
        "p99": lat.get("p99"),
        "p50": lat.get("p50"),
        "cpu_pct": 100 * cpu_s / measured if measured else None,
        "lg": (v.get("client") or {}).get("cpu_us_per_msg"),
        "procs": srv.get("processes"),
        "ok": bool(v.get("ok")),
    }


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        write(sys.argv[2])
        return
    env = os.environ
    out = env["OUT"]
    runs = load(out)
    cases = [c for c in env.get("CASE_IDS", "").split(",") if c]
    servers = [s for s in env.get("SERVERS", "rtedge,kamailio").split(",") if s]
    o = []
    o.append(f"## MSRP relay vs Kamailio 5.6 — {env.get('STARTED', '')}\n")
    o.append(
        f"Machine: nproc {os.cpu_count()}, CPU \"{cpu_model()}\", kernel "
        f"{platform.release()}. Load average (1/5/15 min): {env.get('LOAD_START')} at "
        f"the start, {env.get('LOAD_END')} at the end. A shared VM: the "
        "hypervisor's other guests and steal time vary between runs; compare "
        "CPU µs/msg more than msg/s.\n"
    )
    procs = sorted(
        {f["procs"] for (c, s), vs in runs.items() if s == "kamailio"
         for f in map(figures, vs) if f and f["procs"]}
    )
    o.append(
        f"Servers: **rtedge** (workspace HEAD {env.get('HEAD')}, release build, "
        "`workers = 1`, one `msrp` and one `ws` listener, `sub_protocols = [\"msrp\"]`, "
        f"digest AUTH against a users file); {env.get('KAM_VERSION')} (Debian package) with "
        "`bench/msrp/kamailio-msrp.cfg` — the msrp module guide's cmap example plus "
        "xhttp/websocket for MSRP over WebSocket on the same port, "
        f"`children={env.get('CHILDREN')}` "
        f"({'/'.join(map(str, procs)) or '?'} processes in all, their CPU summed). "
        "Both pinned to CPU 1 (`taskset -c 1`, Kamailio's children inherit it); "
        "`rtedge-loadgen` pinned to CPU 0, one thread.\n"
    )
    o.append(
        f"Method: {env.get('RUNS')} run(s) per server and case, servers alternating, "
        f"{env.get('DURATION')} measured after {env.get('WARMUP')} warm-up; each cell "
        "is the median with min–max. Every pair AUTHs both ends (digest), then the "
        "sender keeps 32 SENDs in flight to its receiver through the relay "
        "(To-Path = receiver's Use-Path + receiver URI; Failure-Report yes, so the "
        "relay answers 200 and the receiver answers 200 to the relay). msg/s = SENDs "
        "delivered intact per second. Server CPU µs/msg = utime+stime of the server "
        "and all its descendant processes (/proc/PID/stat, sampled at the start and "
        "end of the measured window) ÷ messages delivered in the window. p99 = "
        "delivery latency, sender queued the SEND → receiver parsed it (µs). Server "
        "CPU % = CPU time ÷ window (100 % = one core). Kernel µs/msg = the stime "
        "part of the server CPU.\n"
    )
    o.append("Command (from the workspace root):\n")
    o.append(f"    {env.get('CMDLINE')}\n")
    o.append("Each run (URL, PID and size vary):\n")
    o.append(f"    {env.get('CMD_EXAMPLE')}\n")
    o.append(
        "| case | server | msg/s | server CPU µs/msg | of which kernel | p99 µs | p50 µs "
        "| server CPU % | loadgen CPU µs/msg | runs ok |"
    )
    o.append("|---|---|---|---|---|---|---|---|---|---|")
    medians = {}
    for c in cases:
        for s in servers:
            fs = [figures(v) for v in runs.get((c, s), [])]
            good = [f for f in fs if f and f["ok"]]
            use = good or [f for f in fs if f]
            col = lambda k: [f[k] for f in use]
            medians[(c, s)] = (
                {k: med([x for x in col(k) if x is not None]) for k in ("rate", "cpu", "sys", "p99")}
                if use
                else {}
            )
            name = "**rtedge**" if s == "rtedge" else "Kamailio"
            o.append(
                f"| {CASE_TEXT.get(c, c)} | {name} | {spread(col('rate'), fmt_rate)} "
                f"| {spread(col('cpu'), lambda x: f'{x:.2f}')} "
                f"| {spread([x for x in col('sys') if x is not None], lambda x: f'{x:.2f}')} "
                f"| {spread(col('p99'), lambda x: f'{x:.0f}')} "
                f"| {spread(col('p50'), lambda x: f'{x:.0f}')} "
                f"| {spread(col('cpu_pct'), lambda x: f'{x:.0f}')} "
                f"| {spread(col('lg'), lambda x: f'{x:.2f}')} "
                f"| {len(good)}/{len(fs)} |"
            )
    if "rtedge" in servers and "kamailio" in servers:
        o.append("")
        o.append(
            "Ratios of the medians, rtedge ÷ Kamailio (targets: msg/s ≥ 5, "
            "CPU/msg ≤ 0.083 = 1/12). \"rtedge kernel\" is rtedge's kernel time alone "
            "÷ Kamailio's whole CPU per message: how much of the 1/12 budget the "
            "kernel's share of the work takes before any user-space code runs.\n"
        )
        o.append(
            "| case | msg/s | CPU µs/msg | rtedge kernel | p99 latency | msg/s ≥ 5× | CPU ≤ 1/12 |"
        )
        o.append("|---|---|---|---|---|---|---|")
        for c in cases:
            r, k = medians.get((c, "rtedge"), {}), medians.get((c, "kamailio"), {})

            def ratio(key):
                a, b = r.get(key), k.get(key)
                return a / b if a is not None and b else None

            rr, rc, rp = ratio("rate"), ratio("cpu"), ratio("p99")
            rs = r.get("sys") / k["cpu"] if r.get("sys") is not None and k.get("cpu") else None
            f2 = lambda x: "–" if x is None else f"{x:.2f}"
            f3 = lambda x: "–" if x is None else f"{x:.3f}"
            met = lambda x, good: "–" if x is None else ("met" if good(x) else "**not met**")
            o.append(
                f"| {CASE_TEXT.get(c, c)} | {f2(rr)} | {f3(rc)} | {f3(rs)} | {f2(rp)} "
                f"| {met(rr, lambda x: x >= 5)} | {met(rc, lambda x: x <= 1 / 12)} |"
            )
    o.append("")
    print("\n".join(o))


if __name__ == "__main__":
    main()
