#!/usr/bin/env python3
"""Helpers of benches/scale.sh.

  scale_helper.py conf N OUT EXTRA K
      Writes a `wg setconf` file OUT with N peers, and K more peers to EXTRA (lines
      "public_key prefixes endpoint") for single `wg set` additions while the N exist.
      Every peer has a random public key (32 random bytes: nobody needs its private key), an
      IPv4 /32 and an IPv6 /128 of its own (EXTRA's are disjoint from OUT's), and an endpoint
      in TEST-NET-3 (203.0.113.0/24), which the benchmark's namespaces route nowhere.

  scale_helper.py rtt SOCKET EXTRA FIRST COUNT
      For COUNT peers of EXTRA from line FIRST (0-based): adds the peer with one raw UAPI
      request on SOCKET, then removes it with another, timing each from sending the request
      to reading the whole reply (no wg process: the daemon's side alone, plus one connection).
      Prints "add_rtt_s SECONDS" and "remove_rtt_s SECONDS" lines. 10 s timeout per request.

  scale_helper.py report ENV RESULTS IMPLS
      Prints the Markdown tables from the "N<TAB>impl<TAB>key<TAB>value" lines of RESULTS.
"""

import base64
import os
import socket
import time
import statistics
import sys


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def prefixes(i: int, v4_base: int, v6_net: int) -> str:
    # Peer i (< 2**22) gets 10.<v4_base + i / 65536>.x.y/32 and fd<v6_net>::<i>/128.
    return (
        f"10.{v4_base + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32,"
        f"fd{v6_net:02x}::{i >> 16:x}:{i & 0xFFFF:x}/128"
    )


def endpoint(i: int) -> str:
    return f"203.0.113.{i % 254 + 1}:{1024 + i % 60000}"


def conf(n: int, out: str, extra_out: str, extra: int) -> int:
    if not 0 <= n < 1 << 22 or not 0 <= extra < 1 << 16:
        print("N must be below 4194304 and K below 65536", file=sys.stderr)
        return 2
    lines = [f"[Interface]\nPrivateKey = {key()}\n"]
    for i in range(n):
        lines.append(
            f"[Peer]\nPublicKey = {key()}\nAllowedIPs = {prefixes(i, 0, 0)}\n"
            f"Endpoint = {endpoint(i)}\n"
        )
    with open(out, "w", encoding="ascii") as f:
        f.write("\n".join(lines))
    with open(extra_out, "w", encoding="ascii") as f:
        for i in range(extra):
            # 10.200.x.y and fdff::, where the first N (10.0-63.x.y, fd00::) never are.
            f.write(f"{key()} {prefixes(i, 200, 255)} {endpoint(i)}\n")
    return 0


def uapi_request(path: str, body: str) -> float:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        t0 = time.perf_counter()
        s.sendall(body.encode())
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        t = time.perf_counter() - t0
    if reply != b"errno=0\n\n":
        raise RuntimeError(f"daemon answered {reply!r}")
    return t


def rtt(path: str, extra: str, first: int, count: int) -> int:
    with open(extra, encoding="ascii") as f:
        peers = [line.split() for line in f][first : first + count]
    if len(peers) < count:
        print(f"{extra} has too few peers", file=sys.stderr)
        return 2
    for b64, prefixes, ep in peers:
        pk = base64.b64decode(b64).hex()
        ips = "".join(f"allowed_ip={p}\n" for p in prefixes.split(","))
        add = uapi_request(path, f"set=1\npublic_key={pk}\nendpoint={ep}\n{ips}\n")
        remove = uapi_request(path, f"set=1\npublic_key={pk}\nremove=true\n\n")
        print(f"add_rtt_s\t{add:.6f}\nremove_rtt_s\t{remove:.6f}")
    return 0


def report(env_path: str, results_path: str, impls: str) -> int:
    env = {}
    with open(env_path, encoding="utf-8") as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            env[k] = v
    res: dict = {}
    with open(results_path, encoding="utf-8") as f:
        for line in f:
            n, impl, k, v = line.rstrip("\n").split("\t")
            res.setdefault((int(n), impl), {}).setdefault(k, []).append(v)
    order = impls.split(",")
    ns = sorted({n for n, _ in res})

    def one(n, impl, k):
        v = res.get((n, impl), {}).get(k)
        return v[0] if v else None

    def num(n, impl, k):
        v = one(n, impl, k)
        try:
            return float(v) if v is not None else None
        except ValueError:
            return None

    def med(n, impl, k):
        vs = [float(x) for x in res.get((n, impl), {}).get(k, [])]
        return statistics.median(vs) if vs else None

    def span(n, impl, k, scale, fmt):
        vs = sorted(float(x) * scale for x in res.get((n, impl), {}).get(k, []))
        if not vs:
            return "–"
        m = statistics.median(vs)
        if len(vs) == 1:
            return format(m, fmt)
        return f"{m:{fmt}} [{vs[0]:{fmt}}..{vs[-1]:{fmt}}]"

    def taken(n, impl):
        # Peers actually configured: N, or as many as a failed setconf left.
        got = num(n, impl, "setconf_peers")
        return n if got is None else got

    def timed(n, impl, k, scale, fmt):
        status = one(n, impl, k + "_status")
        if status and status != "ok":
            got = one(n, impl, "setconf_peers") if k == "setconf_s" else None
            return f"{status}: {int(got):,} peers taken" if got is not None else status
        return span(n, impl, k, scale, fmt)

    for k in ("date", "machine", "cpu", "kernel", "load", "load_end", "rwg", "wireguard-go",
              "wg", "params"):
        if k in env:
            print(f"- {k}: {env[k]}")
    print()
    print("| peers | implementation | `wg setconf` s | its daemon CPU s | `wg show dump` s "
          "| its daemon CPU s | `wg set` add ms | `wg set` remove ms | no-op `wg set` ms "
          "| UAPI add µs | UAPI remove µs | RSS before MiB | RSS after setconf MiB "
          "| bytes/peer |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        for impl in order:
            if (n, impl) not in res:
                continue
            r0, r1 = num(n, impl, "rss0_kb"), num(n, impl, "rss1_kb")
            t = taken(n, impl)
            per_peer = f"{(r1 - r0) * 1024 / t:.0f}" if r0 is not None and r1 is not None and t else "–"
            if t != n:
                per_peer += f" (of {int(t):,})"
            cpu = num(n, impl, "cpu_setconf_s")
            print(
                f"| {n:,} | {impl} | {timed(n, impl, 'setconf_s', 1, '.2f')} "
                f"| {'–' if cpu is None else f'{cpu:.2f}'} "
                f"| {timed(n, impl, 'show_s', 1, '.3f')} "
                f"| {span(n, impl, 'cpu_show_s', 1, '.2f')} "
                f"| {timed(n, impl, 'add_s', 1000, '.1f')} "
                f"| {timed(n, impl, 'remove_s', 1000, '.1f')} "
                f"| {timed(n, impl, 'noop_s', 1000, '.1f')} "
                f"| {timed(n, impl, 'add_rtt_s', 1e6, '.0f')} "
                f"| {timed(n, impl, 'remove_rtt_s', 1e6, '.0f')} "
                f"| {'–' if r0 is None else f'{r0 / 1024:.1f}'} "
                f"| {'–' if r1 is None else f'{r1 / 1024:.1f}'} | {per_peer} |"
            )
    if len(order) > 1:
        base = order[0]
        print()
        print(f"Time and memory of each implementation divided by {base}'s, same run "
              "(> 1: slower or larger than " + base + "):")
        print()
        print("| peers | implementation | setconf | show | set add | set remove | UAPI add "
              "| UAPI remove | bytes/peer |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for n in ns:
            for impl in order[1:]:
                if (n, impl) not in res or (n, base) not in res:
                    continue

                def ratio(k):
                    a, b = med(n, impl, k), med(n, base, k)
                    ok = all(one(n, x, k + "_status") in (None, "ok") for x in (impl, base))
                    return f"{a / b:.1f}" if ok and a and b else "–"

                def rss(x):
                    r0, r1 = num(n, x, "rss0_kb"), num(n, x, "rss1_kb")
                    return None if r0 is None or r1 is None or not taken(n, x) else (r1 - r0) / taken(n, x)

                ra, rb = rss(impl), rss(base)
                print(
                    f"| {n:,} | {impl} | {ratio('setconf_s')} | {ratio('show_s')} "
                    f"| {ratio('add_s')} | {ratio('remove_s')} "
                    f"| {ratio('add_rtt_s')} | {ratio('remove_rtt_s')} "
                    f"| {f'{ra / rb:.1f}' if ra and rb else '–'} |"
                )
    return 0


def main() -> int:
    a = sys.argv[1:]
    if len(a) == 5 and a[0] == "conf":
        return conf(int(a[1]), a[2], a[3], int(a[4]))
    if len(a) == 5 and a[0] == "rtt":
        return rtt(a[1], a[2], int(a[3]), int(a[4]))
    if len(a) == 4 and a[0] == "report":
        return report(a[1], a[2], a[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
