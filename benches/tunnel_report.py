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

    def parse_ping(text):
        times = sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", text))
        m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
        if times:
            emit("avg_ms", f"{statistics.fmean(times):.3f}")
            rank = max(1, -(-99 * len(times) // 100))  # nearest rank
            emit("p99_ms", f"{times[rank - 1]:.3f}")
            emit("max_ms", f"{times[-1]:.3f}")
        if m:
            tx, rx = int(m.group(1)), int(m.group(2))
            emit("lost_pct", f"{100 * (tx - rx) / tx:.1f}")

    text = open(a.file).read()
    if a.test == "ping":
        parse_ping(text)
    else:
        try:
            j = json.loads(text)
        except ValueError:
            j = {}
        end = j.get("end", {})
        if "error" in j:
            emit("error", j["error"].replace("\t", " "))
        if a.test in ("udp", "udpmax", "udp64", "flood"):
            s = end.get("sum", {})
            # iperf3 3.12: end.sum is the sender's bytes with the receiver's loss counts;
            # end.sum_received the receiver's own bytes and packets.
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
                if s.get("seconds"):
                    emit("sent_kpps", f"{s.get('packets', 0) / s['seconds'] / 1e3:.1f}")
                    emit("sent_mbps", f"{s['bytes'] * 8 / s['seconds'] / 1e6:.1f}")
                if recv and recv.get("seconds") and "packets" in recv:
                    got = recv["packets"] - recv.get("lost_packets", 0)
                    emit("kpps", f"{got / recv['seconds'] / 1e3:.1f}")
        else:
            s = end.get("sum_received", {})
            if s:
                nbytes = s["bytes"]
                emit("mbps", f"{s['bits_per_second'] / 1e6:.1f}")
            r = end.get("sum_sent", {}).get("retransmits")
            if r is not None:
                emit("retrans", r)
    if a.ping:
        parse_ping(open(a.ping).read())
    if a.rss:
        rows = [ln.split() for ln in open(a.rss) if len(ln.split()) == 3]
        for col, side in ((1, "A"), (2, "B")):
            kb = [int(r[col]) for r in rows if r[col].isdigit()]
            if kb:
                emit(f"rss_max_kb_{side}", max(kb))
                emit(f"rss_final_kb_{side}", kb[-1])
                emit(f"rss_samples_kb_{side}", ",".join(f"{r[0]}ms:{r[col]}" for r in rows))
        if rows:
            emit("rss_max_kb", max(max(int(r[1]), int(r[2])) for r in rows))
            emit("rss_final_kb", max(int(rows[-1][1]), int(rows[-1][2])))
    before, after = read_ticks(a.before), read_ticks(a.after)
    pids = a.pids.split(",")
    total = 0
    busiest = (0, "")
    threads = defaultdict(int)
    for key, (comm, t1) in after.items():
        d = t1 - before.get(key, (comm, 0))[1]
        if key[1] == "total":  # the whole process, exited threads included
            total += d
            continue
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
    for impl in impls:
        hw = [data.get((impl, "all", f"hwm_kb_{side}"), {}).get(0) for side in "AB"]
        hw = [int(h) for h in hw if h and h.isdigit()]
        if hw:
            data[(impl, "all", "hwm_kb")][0] = str(max(hw))

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
    L.append("- " + "; ".join(env.get(i, i) for i in impls) + f"; {env.get('iperf3')}")
    L.append(f"- {env.get('params')}; the same implementation on both ends; veth MTU 1500, wg MTU 1420")
    L.append("- each cell: median [min..max] over rounds; ratios are computed within a round, then the median "
             "taken (for latency and memory rows, a ratio below 1 means rwg is better)")
    L.append("")

    MiB = 1 / 1024
    rows = [
        ("tcp1", "mbps", "TCP 1 stream b→a, Mbit/s", 0),
        ("tcp1-rev", "mbps", "TCP 1 stream a→b (-R), Mbit/s", 0),
        ("tcp4", "mbps", "TCP 4 streams, Mbit/s", 0),
        ("udp", "mbps", "UDP 1380 B at a fixed offered rate (-b), achieved, Mbit/s", 0),
        ("udp", "lost_pct", "UDP 1380 B at a fixed rate, loss, %", 1),
        ("udpmax", "mbps", "UDP 1380 B received (-b 0 -w 4M), Mbit/s", 0),
        ("udpmax", "sent_mbps", "UDP 1380 B offered (-b 0), Mbit/s", 0),
        ("udpmax", "lost_pct", "UDP 1380 B (-b 0 -w 4M) loss, %", 1),
        ("udp64", "kpps", "UDP 64 B received, kpps", 1),
        ("udp64", "sent_kpps", "UDP 64 B offered (iperf3 -b 0), kpps", 1),
        ("udp64", "lost_pct", "UDP 64 B loss, %", 1),
        ("ping", "avg_ms", "ping idle avg, ms", 3),
        ("ping", "p99_ms", "ping idle p99 (= max of 50), ms", 3),
        ("pingload", "avg_ms", "ping under 1 TCP stream avg, ms", 3),
        ("pingload", "p99_ms", "ping under 1 TCP stream p99, ms", 3),
        ("pingload", "max_ms", "ping under 1 TCP stream max, ms", 3),
        ("pingload", "lost_pct", "ping under 1 TCP stream lost, %", 1),
        ("pingload", "mbps", "TCP 1 stream while pinging, Mbit/s", 0),
        ("flood", "mbps", "flood UDP 1380 B -b 0 (receiver: default socket buffer) received, Mbit/s", 0),
        ("flood", "lost_pct", "flood loss, %", 1),
        ("flood", "rss_max_kb", "flood: RSS max of the larger daemon, MiB", 1, MiB),
        ("flood", "rss_final_kb", "flood: RSS at the flood's end, larger daemon, MiB", 1, MiB),
        ("all", "hwm_kb", "peak RSS (VmHWM) whole run, larger daemon, MiB", 1, MiB),
    ]
    eff = [
        ("tcp1", "TCP 1 stream"),
        ("tcp1-rev", "TCP 1 stream -R"),
        ("tcp4", "TCP 4 streams"),
        ("udp", "UDP"),
        ("udpmax", "UDP 1380 B -b 0"),
        ("udp64", "UDP 64 B"),
        ("flood", "UDP flood"),
    ]
    tests_run = {t for (_, t, _) in data}
    eff = [e for e in eff if e[0] in tests_run]

    def table(title, rowspec, key_of, digits_of):
        head = f"| {title} | " + " | ".join(impls) + " | " + " | ".join(f"rwg / {o}" for o in others) + " |"
        L.append(head)
        L.append("|---|" + "---:|" * (len(impls) + len(others)))
        for spec in rowspec:
            test, key, label, d, *scale = key_of(spec)
            if test not in tests_run:
                continue
            k = scale[0] if scale else 1
            cells = [cell([v * k for v in vals(i, test, key)], d) for i in impls]
            cells += [cell(ratios(test, key, o), 2) for o in others]
            L.append(f"| {label} | " + " | ".join(cells) + " |")
        L.append("")

    table("throughput and latency", rows, lambda s: s, None)
    L.append("CPU efficiency: payload MB delivered per CPU-second of both daemons together "
             "(utime+stime from /proc/PID/stat), and the CPU both daemons used, in % of one core:")
    L.append("")
    table("MB per CPU-second", eff, lambda s: (s[0], "mb_per_cpu_s", s[1], 1), None)
    table("daemons' CPU, % of one core", eff + [("ping", "ping"), ("pingload", "ping under load")],
          lambda s: (s[0], "cpu_pct", s[1], 0), None)
    if "udp64" in tests_run:
        L.append("64-byte UDP straight over the first pair's veth, no tunnel (the ceiling of iperf3's sender "
                 f"and receiver here): received {cell(vals('veth', 'udp64', 'kpps'), 1)} kpps, offered "
                 f"{cell(vals('veth', 'udp64', 'sent_kpps'), 1)} kpps, loss {cell(vals('veth', 'udp64', 'lost_pct'), 1)} %.")
        L.append("")
    loads = [v for (i, t, k) in list(data) if k == "load1" for v in vals(i, t, k)]
    if loads:
        L.append(f"1-minute load average after each test: {cell(loads, 2)} (median [min..max] over all tests).")
        L.append("")
    if "flood" in tests_run:
        L.append("RSS (VmRSS, MiB) of each daemon during the flood, last round, every 0.5 s:")
        L.append("")
        last = max((r for (i, t, k), v in data.items() if t == "flood" for r in v), default=None)
        for i in impls:
            for side in "AB":
                smp = data.get((i, "flood", f"rss_samples_kb_{side}"), {}).get(last)
                if smp:
                    mib = [f"{int(x.split(':')[1]) / 1024:.1f}" for x in smp.split(",")]
                    L.append(f"- {i} {side}: " + " ".join(mib))
        L.append("")

    L.append("Where packets were lost, summed over both ends: datagrams dropped because a UDP socket's "
             "receive buffer was full (`RcvbufErrors`), packets dropped because the TUN queue towards "
             "the daemon was full (`tx_dropped`), and the TCP sender's retransmissions. In the UDP test the "
             "rcvbuf drops include iperf3's own receiving socket:")
    L.append("")
    lossrows = []
    for t, l in eff:
        lossrows.append((t, "udp_rcvbuf_drops", f"{l}: UDP rcvbuf drops", 0))
        lossrows.append((t, "tun_queue_drops", f"{l}: TUN queue drops", 0))
        if t not in ("udp", "udpmax", "udp64", "flood"):
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
    s.add_argument("--ping", help="ping output of a test that also ran iperf3 (pingload)")
    s.add_argument("--rss", help="'ms kB_A kB_B' samples of the daemons' VmRSS (flood)")
    r = sub.add_parser("report")
    for k in ("env", "results", "impls"):
        r.add_argument(f"--{k}", required=True)
    a = p.parse_args()
    sample(a) if a.cmd == "sample" else report(a)


if __name__ == "__main__":
    sys.exit(main())
