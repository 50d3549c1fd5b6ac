#!/usr/bin/env python3
"""Helper of benches/abuse.sh: turns one test's output into result lines ("sample"), and all
result lines into the Markdown report ("report"). Result lines: round, impl, test, key, value
(tab separated), as in benches/tunnel_report.py."""
import argparse
import json
import re
import statistics
import sys
from collections import defaultdict


def read_metrics(path):
    """rwg's Prometheus lines -> {name: value}; a reason label becomes part of the name."""
    out = {}
    for line in open(path):
        m = re.match(r'^(\w+)(?:\{reason="(\w+)"\})?\s+(\d+)$', line.strip())
        if m:
            name = m.group(1) + (f"_{m.group(2)}" if m.group(2) else "")
            out[name] = int(m.group(3))
    return out


def sample(a):
    res = []

    def emit(k, v):
        res.append(f"{a.round}\t{a.impl}\t{a.test}\t{k}\t{v}")

    try:
        j = json.load(open(a.iperf))
    except (ValueError, OSError):
        j = {}
    if "error" in j:
        emit("error", j["error"].replace("\t", " "))
    s = j.get("end", {}).get("sum_received", {})
    if s.get("bits_per_second") is not None:
        emit("mbps", f"{s['bits_per_second'] / 1e6:.1f}")
    r = j.get("end", {}).get("sum_sent", {}).get("retransmits")
    if r is not None:
        emit("retrans", r)
    rows = [ln.split() for ln in open(a.rss) if len(ln.split()) == 2]
    kb = [int(r[1]) for r in rows if r[1].isdigit() and int(r[1]) > 0]
    if kb:
        emit("rss_start_kb", kb[0])
        emit("rss_max_kb", max(kb))
        emit("rss_end_kb", kb[-1])
        emit("rss_growth_kb", kb[-1] - kb[0])
        emit("rss_samples_kb", ",".join(f"{r[0]}ms:{r[1]}" for r in rows))
    if a.attack:
        for line in open(a.attack):
            k, _, v = line.strip().partition("=")
            if k and v:
                emit(f"atk_{k}", v)
    before, after = read_metrics(a.metrics_before), read_metrics(a.metrics_after)
    for k, v in sorted(after.items()):
        d = v - before.get(k, 0)
        if d:
            emit(f"m_{k}", d)
    print("\n".join(res))


def fmt(v, digits):
    return f"{v:,.{digits}f}"


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

    def vals(impl, test, key, scale=1.0):
        out = []
        for v in data.get((impl, test, key), {}).values():
            try:
                out.append(float(v) * scale)
            except ValueError:
                pass
        return out

    # Throughput under attack over the unattacked throughput of the same round.
    for impl in impls:
        base = data.get((impl, "base", "mbps"), {})
        for test in ("flood", "junk"):
            for r, v in data.get((impl, test, "mbps"), {}).items():
                if r in base and float(base[r]) > 0:
                    data[(impl, test, "ratio_pct")][r] = f"{100 * float(v) / float(base[r]):.0f}"

    tests_run = {t for (_, t, _) in data}
    L = []
    L.append(f"### Under attack, {env.get('date')}")
    L.append("")
    L.append(f"- machine: `nproc` = {env.get('nproc')}, {env.get('cpu')}, Linux {env.get('kernel')}; "
             f"load average at start {env.get('load')}, at end {env.get('load_end')}")
    L.append("- " + "; ".join(env.get(i, i) for i in impls) + f"; {env.get('iperf3')}")
    L.append(f"- {env.get('params')}; the same implementation at both ends of the tunnel")
    L.append("- each cell: median [min..max] over rounds; the ratio is computed within a round")
    L.append("")

    MiB = 1 / 1024

    def count_cell(impl, test, key):
        v = vals(impl, test, key)
        return cell(v, 0)

    def handshake_cell(impl):
        raw = list(data.get((impl, "flood", "handshake_s"), {}).values())
        ok = [float(x) for x in raw if x != "fail"]
        fails = sum(1 for x in raw if x == "fail")
        if not raw:
            return "–"
        c = cell(ok, 1) if ok else "never"
        return c + (f" ({fails} of {len(raw)} failed)" if fails else "")

    def alive_cell(impl, test):
        raw = list(data.get((impl, test, "alive"), {}).values())
        if not raw:
            return "–"
        dead = sum(1 for x in raw if x != "1")
        return "yes" if dead == 0 else f"**no** ({dead} of {len(raw)} rounds)"

    rows = []
    if "base" in tests_run:
        rows.append(("TCP b→a, no attack, Mbit/s", lambda i: cell(vals(i, "base", "mbps"))))
    if "flood" in tests_run:
        rows += [
            ("**handshake flood**: TCP b→a, Mbit/s", lambda i: cell(vals(i, "flood", "mbps"))),
            ("flood: throughput kept, % of no attack", lambda i: cell(vals(i, "flood", "ratio_pct"))),
            ("flood: initiations sent per s (valid mac1)", lambda i: count_cell(i, "flood", "atk_sent_per_s")),
            ("flood: cookie replies received", lambda i: count_cell(i, "flood", "atk_cookie_replies")),
            ("flood: of which decrypted (mac2 from then on)", lambda i: count_cell(i, "flood", "atk_cookies_accepted")),
            ("flood: initiations sent with mac2", lambda i: count_cell(i, "flood", "atk_sent_with_mac2")),
            ("flood: new handshake of the legitimate peer, s", handshake_cell),
            ("flood: victim CPU, % of one core", lambda i: cell(vals(i, "flood", "cpu_pct"))),
            ("flood: victim RSS before, MiB", lambda i: cell(vals(i, "flood", "rss_start_kb", MiB), 1)),
            ("flood: victim RSS max, MiB", lambda i: cell(vals(i, "flood", "rss_max_kb", MiB), 1)),
            ("flood: victim RSS growth (2 s after − before), MiB", lambda i: cell(vals(i, "flood", "rss_growth_kb", MiB), 1)),
            ("flood: victim alive and tunnel up afterwards", lambda i: alive_cell(i, "flood")),
        ]
    if "junk" in tests_run:
        rows += [
            ("**junk storm**: TCP b→a, Mbit/s", lambda i: cell(vals(i, "junk", "mbps"))),
            ("junk: throughput kept, % of no attack", lambda i: cell(vals(i, "junk", "ratio_pct"))),
            ("junk: datagrams sent per s", lambda i: count_cell(i, "junk", "atk_sent_per_s")),
            ("junk: of which oversized (1501–65 507 B)", lambda i: count_cell(i, "junk", "atk_kind_oversized")),
            ("junk: victim CPU, % of one core", lambda i: cell(vals(i, "junk", "cpu_pct"))),
            ("junk: victim RSS max, MiB", lambda i: cell(vals(i, "junk", "rss_max_kb", MiB), 1)),
            ("junk: victim RSS growth (2 s after − before), MiB", lambda i: cell(vals(i, "junk", "rss_growth_kb", MiB), 1)),
            ("junk: victim alive and tunnel up afterwards", lambda i: alive_cell(i, "junk")),
        ]
    rows.append(("peak RSS (VmHWM) of the victim, whole run, MiB", lambda i: cell(vals(i, "all", "hwm_kb", MiB), 1)))
    L.append("| | " + " | ".join(impls) + " |")
    L.append("|---|" + "---:|" * len(impls))
    for label, f in rows:
        L.append(f"| {label} | " + " | ".join(f(i) for i in impls) + " |")
    L.append("")

    if "rwg" in impls:
        keys = sorted({k for (i, t, k) in data if i == "rwg" and k.startswith("m_")})
        tests = [t for t in ("flood", "junk") if t in tests_run]
        if keys and tests:
            L.append("rwg's own counters over each test (its metrics endpoint; median over rounds):")
            L.append("")
            L.append("| counter | " + " | ".join(tests) + " |")
            L.append("|---|" + "---:|" * len(tests))
            for k in keys:
                L.append(f"| `{k[2:]}` | " + " | ".join(cell(vals("rwg", t, k)) for t in tests) + " |")
            L.append("")

    if "flood" in tests_run:
        L.append("Victim RSS (MiB) every 0.5 s during the flood, last round:")
        L.append("")
        last = max((r for (i, t, k), v in data.items() if t == "flood" for r in v), default=None)
        for i in impls:
            smp = data.get((i, "flood", "rss_samples_kb"), {}).get(last)
            if smp:
                L.append(f"- {i}: " + " ".join(f"{int(x.split(':')[1]) / 1024:.1f}" for x in smp.split(",")))
        L.append("")
    errs = [(k, v) for k, v in data.items() if k[2] == "error"]
    if errs:
        L.append("Errors: " + "; ".join(f"{k[0]} {k[1]} round {r}: {m}" for k, v in errs for r, m in v.items()))
    print("\n".join(L))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    for k in ("round", "impl", "test", "iperf", "rss", "metrics-before", "metrics-after"):
        s.add_argument(f"--{k}", required=True)
    s.add_argument("--attack", help="the attacker's key=value report")
    r = sub.add_parser("report")
    for k in ("env", "results", "impls"):
        r.add_argument(f"--{k}", required=True)
    a = p.parse_args()
    sample(a) if a.cmd == "sample" else report(a)


if __name__ == "__main__":
    sys.exit(main())
