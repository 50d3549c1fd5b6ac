#!/usr/bin/env python3
"""Helper of benches/tunnel.sh: turns one test's output into result lines ("sample"), and all
result lines into the Markdown report ("report"). Result lines: round, impl, test, key, value
(tab separated)."""
import argparse
import json
import os
import re
import statistics
import sys
from collections import defaultdict

TICK = os.sysconf("SC_CLK_TCK")


def read_ticks(path):
    """'pid tid comm ticks' lines -> {(pid, tid): (comm, ticks)}"""
    out = {}
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) == 4:
                out[(p[0], p[1])] = (p[2], int(p[3]))
    return out


def sample(a):
    res = []

    def emit(k, v):
        res.append(f"{a.round}\t{a.impl}\t{a.test}\t{k}\t{v}")

    wall = a.wall_ns / 1e9
    nbytes = None
    text = open(a.file).read()
    if a.test == "ping":
        times = sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", text))
        m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
        if times:
            emit("avg_ms", f"{statistics.fmean(times):.3f}")
            rank = max(1, -(-99 * len(times) // 100))  # nearest rank
            emit("p99_ms", f"{times[rank - 1]:.3f}")
        if m:
            tx, rx = int(m.group(1)), int(m.group(2))
            emit("lost_pct", f"{100 * (tx - rx) / tx:.1f}")
    else:
        try:
            j = json.loads(text)
        except ValueError:
            j = {}
        end = j.get("end", {})
        if "error" in j:
            emit("error", j["error"].replace("\t", " "))
        if a.test == "udp":
            s = end.get("sum", {})
            # iperf3 3.12: end.sum is the sender's bytes with the receiver's loss counts.
            if s:
                lost = s.get("lost_percent", 0.0)
                recv = end.get("sum_received")
                if recv and recv.get("bytes"):
                    bps, nbytes = recv["bits_per_second"], recv["bytes"]
                else:
                    bps = s["bits_per_second"] * (1 - lost / 100)
                    nbytes = s["bytes"] * (1 - lost / 100)
                emit("mbps", f"{bps / 1e6:.1f}")
                emit("lost_pct", f"{lost:.2f}")
        else:
            s = end.get("sum_received", {})
            if s:
                nbytes = s["bytes"]
                emit("mbps", f"{s['bits_per_second'] / 1e6:.1f}")
            r = end.get("sum_sent", {}).get("retransmits")
            if r is not None:
                emit("retrans", r)
    before, after = read_ticks(a.before), read_ticks(a.after)
    pids = a.pids.split(",")
    total = 0
    busiest = (0, "")
    threads = defaultdict(int)
    for key, (comm, t1) in after.items():
        d = t1 - before.get(key, (comm, 0))[1]
        total += d
        side = "A" if key[0] == pids[0] else "B"
        threads[f"{side}:{comm}"] += d
        if d > busiest[0]:
            busiest = (d, f"{side}:{comm}")
    cpu = total / TICK
    emit("cpu_s", f"{cpu:.2f}")
    emit("cpu_pct", f"{100 * cpu / wall:.0f}")
    if nbytes is not None and cpu > 0:
        emit("mb_per_cpu_s", f"{nbytes / 1e6 / cpu:.1f}")
    emit("busiest_thread_pct", f"{100 * busiest[0] / TICK / wall:.0f}")
    emit("busiest_thread", busiest[1])
    for name, d in sorted(threads.items()):
        emit(f"thread_pct:{name}", f"{100 * d / TICK / wall:.0f}")
    print("\n".join(res))


def fmt(v, digits):
    return f"{v:.{digits}f}"


def cell(vals, digits=0):
    if not vals:
        return "–"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m, digits)
    return f"{fmt(m, digits)} [{fmt(min(vals), digits)}..{fmt(max(vals), digits)}]"


def report(a):
    env = {}
    for line in open(a.env):
        k, _, v = line.rstrip("\n").partition("\t")
        env[k] = v
    impls = a.impls.split(",")
    data = defaultdict(dict)  # (impl, test, key) -> {round: value}
    for line in open(a.results):
        p = line.rstrip("\n").split("\t")
        if len(p) != 5:
            continue
        r, impl, test, key, val = p
        data[(impl, test, key)][int(r)] = val

    def vals(impl, test, key):
        out = []
        for v in data.get((impl, test, key), {}).values():
            try:
                out.append(float(v))
            except ValueError:
                pass
        return out

    def ratios(test, key, other):
        a_ = data.get(("rwg", test, key), {})
        b_ = data.get((other, test, key), {})
        out = []
        for r in sorted(set(a_) & set(b_)):
            try:
                x, y = float(a_[r]), float(b_[r])
            except ValueError:
                continue
            if y > 0:
                out.append(x / y)
        return out

    others = [i for i in impls if i != "rwg"] if "rwg" in impls else []
    L = []
    L.append(f"### Tunnel benchmark, {env.get('date')}")
    L.append("")
    L.append(f"- machine: `nproc` = {env.get('nproc')}, {env.get('cpu')}, Linux {env.get('kernel')}; "
             f"load average at start {env.get('load')}, at end {env.get('load_end')}")
    L.append(f"- rwg {env.get('rwg')}; {env.get('wireguard-go')}; {env.get('boringtun')}; {env.get('iperf3')}")
    L.append(f"- {env.get('params')}; the same implementation on both ends; veth MTU 1500, wg MTU 1420")
    L.append("- each cell: median [min..max] over rounds; ratios are computed within a round, then the median taken")
    L.append("")

    rows = [
        ("tcp1", "mbps", "TCP 1 stream b→a, Mbit/s", 0),
        ("tcp1-rev", "mbps", "TCP 1 stream a→b (-R), Mbit/s", 0),
        ("tcp4", "mbps", "TCP 4 streams, Mbit/s", 0),
        ("udp", "mbps", "UDP achieved, Mbit/s", 0),
        ("udp", "lost_pct", "UDP loss, %", 1),
        ("ping", "avg_ms", "ping avg, ms", 3),
        ("ping", "p99_ms", "ping p99 (= max of 50), ms", 3),
    ]
    eff = [
        ("tcp1", "TCP 1 stream"),
        ("tcp1-rev", "TCP 1 stream -R"),
        ("tcp4", "TCP 4 streams"),
        ("udp", "UDP"),
    ]

    def table(title, rowspec, key_of, digits_of):
        head = f"| {title} | " + " | ".join(impls) + " | " + " | ".join(f"rwg / {o}" for o in others) + " |"
        L.append(head)
        L.append("|---|" + "---:|" * (len(impls) + len(others)))
        for spec in rowspec:
            test, key, label, d = key_of(spec)
            cells = [cell(vals(i, test, key), d) for i in impls]
            cells += [cell(ratios(test, key, o), 2) for o in others]
            L.append(f"| {label} | " + " | ".join(cells) + " |")
        L.append("")

    table("throughput and latency", rows, lambda s: s, None)
    L.append("CPU efficiency: payload MB delivered per CPU-second of both daemons together "
             "(utime+stime from /proc/PID/stat), and the CPU both daemons used, in % of one core:")
    L.append("")
    table("MB per CPU-second", eff, lambda s: (s[0], "mb_per_cpu_s", s[1], 1), None)
    table("daemons' CPU, % of one core", eff + [("ping", "ping")], lambda s: (s[0], "cpu_pct", s[1], 0), None)

    L.append("Where packets were lost, summed over both ends: datagrams dropped because a UDP socket's "
             "receive buffer was full (`RcvbufErrors`), packets dropped because the TUN queue towards "
             "the daemon was full (`tx_dropped`), and the TCP sender's retransmissions. In the UDP test the "
             "rcvbuf drops include iperf3's own receiving socket:")
    L.append("")
    lossrows = []
    for t, l in eff:
        lossrows.append((t, "udp_rcvbuf_drops", f"{l}: UDP rcvbuf drops", 0))
        lossrows.append((t, "tun_queue_drops", f"{l}: TUN queue drops", 0))
        if t != "udp":
            lossrows.append((t, "retrans", f"{l}: TCP retransmits", 0))
    table("lost packets per test", lossrows, lambda s: s, None)

    # Per-thread view: % of one core of each named thread (summed over same-named threads).
    L.append("Busiest single thread, % of one core (median), and which one (A = iperf3 server side, "
             "B = client side; b→a means B encrypts, A decrypts):")
    L.append("")
    L.append("| test | " + " | ".join(impls) + " |")
    L.append("|---|" + "---|" * len(impls))
    for test, label in eff:
        cells = []
        for i in impls:
            names = list(data.get((i, test, "busiest_thread"), {}).values())
            top = max(set(names), key=names.count) if names else "?"
            cells.append(f"{cell(vals(i, test, 'busiest_thread_pct'))} ({top})")
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    L.append("")
    for i in impls:
        keys = sorted({k for (im, t, k) in data if im == i and k.startswith("thread_pct:")})
        if not keys or i != "rwg":
            continue
        L.append(f"{i} per thread, % of one core (median over rounds; threads with the same name summed):")
        L.append("")
        L.append("| thread | " + " | ".join(l for _, l in eff) + " |")
        L.append("|---|" + "---:|" * len(eff))
        for k in keys:
            cs = [cell(vals(i, t, k)) for t, _ in eff]
            if all(c in ("0", "0 [0..0]", "–") for c in cs):
                continue
            L.append(f"| {k.split(':', 1)[1]} | " + " | ".join(cs) + " |")
        L.append("")
    L.append("Peak RSS (VmHWM) of each daemon at the end of the run, kB: "
             + "; ".join(f"{i} A {data.get((i, 'all', 'hwm_kb_A'), {}).get(0, '?')}, "
                         f"B {data.get((i, 'all', 'hwm_kb_B'), {}).get(0, '?')}" for i in impls))
    errs = [(k, v) for k, v in data.items() if k[2] == "error"]
    if errs:
        L.append("")
        L.append("Errors: " + "; ".join(f"{k[0]} {k[1]} round {r}: {m}" for k, v in errs for r, m in v.items()))
    print("\n".join(L))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    for k in ("round", "impl", "test", "file", "pids", "before", "after"):
        s.add_argument(f"--{k}", required=True)
    s.add_argument("--wall-ns", type=int, required=True)
    r = sub.add_parser("report")
    for k in ("env", "results", "impls"):
        r.add_argument(f"--{k}", required=True)
    a = p.parse_args()
    sample(a) if a.cmd == "sample" else report(a)


if __name__ == "__main__":
    sys.exit(main())
