#!/usr/bin/env python3
"""Summarize passes of `cargo bench -p rwg-crypto-bench` + `openssl speed` as Markdown.

Usage: summarize.py CRITERION_DIR OPENSSL_SPEED_OUTPUT [CRITERION_DIR OPENSSL_SPEED_OUTPUT ...]

Each pair is one pass: a copy of $CARGO_TARGET_DIR/criterion taken right after the bench run, and
the output of `openssl speed -evp chacha20-poly1305` run right after it. Per pass it takes
criterion's median estimate and computes every ratio within that pass; across passes it prints
the median and, in brackets, the min..max. On a shared, loaded machine the ratios are the
figures to trust, not the absolute numbers.
"""
import json
import os
import statistics
import sys

args = sys.argv[1:]
if not args or len(args) % 2:
    sys.exit(__doc__)
passes = [(args[i], args[i + 1]) for i in range(0, len(args), 2)]


def median_ns(root, group, bench):
    path = os.path.join(root, group, bench, "new", "estimates.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def openssl_gbps(path, column):
    with open(path) as f:
        for line in f:
            if line.startswith("ChaCha20-Poly1305"):
                # columns: 16 64 256 1024 8192 16384 bytes, in 1000s of bytes per second
                return float(line.split()[column].rstrip("k")) * 1e3 / 1e9
    raise SystemExit(f"no ChaCha20-Poly1305 line in {path}")


def openssl_1024_gbps(path):
    return openssl_gbps(path, 4)


def agg(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} [{fmt.format(min(values))}..{fmt.format(max(values))}]"


def per_pass(fn):
    return [fn(root, openssl_1024_gbps(log)) for root, log in passes]


print(f"{len(passes)} pass(es); median [min..max] over passes\n")
print(f"openssl 1024 B: {agg(per_pass(lambda r, o: o), '{:.2f}')} GB/s")
print(f"openssl 64 B: {agg([openssl_gbps(log, 2) for _, log in passes], '{:.3f}')} GB/s\n")

impls = ["ring", "ring-key-per-packet", "rustcrypto", "aws-lc", "aws-lc-key-per-packet"]
print("| implementation | 64 B GB/s | 1420 B GB/s | 64 B / openssl 1024 B | 1420 B / openssl 1024 B "
      "| time vs ring 64 B | time vs ring 1420 B |")
print("|---|---:|---:|---:|---:|---:|---:|")


def gbps(size, name):
    return lambda r, o: (size / ns) if (ns := median_ns(r, f"seal_{size}", name)) else None


def vs_openssl(size, name):
    return lambda r, o: (g / o) if (g := gbps(size, name)(r, o)) else None


def vs_ring(size, name):
    def f(r, o):
        ns = median_ns(r, f"seal_{size}", name)
        base = median_ns(r, f"seal_{size}", "ring")
        return ns / base if ns and base else None

    return f


for name in impls:
    cells = [
        agg(per_pass(gbps(64, name)), "{:.3f}"),
        agg(per_pass(gbps(1420, name)), "{:.3f}"),
        agg(per_pass(vs_openssl(64, name)), "{:.3f}"),
        agg(per_pass(vs_openssl(1420, name)), "{:.2f}"),
        agg(per_pass(vs_ring(64, name)), "{:.2f}"),
        agg(per_pass(vs_ring(1420, name)), "{:.2f}"),
    ]
    if cells[0] == "-":
        continue
    print(f"| {name} | " + " | ".join(cells) + " |")

print()
for name in ("ring", "aws-lc"):
    for size in (64, 1420):
        def extra(r, o, size=size, name=name):
            a = median_ns(r, f"seal_{size}", f"{name}-key-per-packet")
            b = median_ns(r, f"seal_{size}", name)
            return a - b if a and b else None

        print(f"- {name} key per packet, {size} B: {agg(per_pass(extra), '{:+.1f}')} ns/packet")
    print(f"- {name} key construction alone: "
          f"{agg(per_pass(lambda r, o, n=name: median_ns(r, 'key-setup', n)), '{:.1f}')} ns")

print()
for name in ("x25519-dalek", "aws-lc"):
    print(f"- X25519 {name}: {agg(per_pass(lambda r, o, n=name: (1e9 / ns) if (ns := median_ns(r, 'x25519', n)) else None), '{:,.0f}')} ops/s")
print(f"- X25519 aws-lc / x25519-dalek speed: "
      f"{agg(per_pass(lambda r, o: (a / b) if (a := median_ns(r, 'x25519', 'x25519-dalek')) and (b := median_ns(r, 'x25519', 'aws-lc')) else None), '{:.2f}')}x")
for name in ("blake2s_simd", "blake2"):
    print(f"- BLAKE2s-256 148 B {name}: "
          f"{agg(per_pass(lambda r, o, n=name: median_ns(r, 'blake2s-256_148', n)), '{:.0f}')} ns/hash")
print(f"- BLAKE2s blake2 / blake2s_simd time: "
      f"{agg(per_pass(lambda r, o: (a / b) if (a := median_ns(r, 'blake2s-256_148', 'blake2')) and (b := median_ns(r, 'blake2s-256_148', 'blake2s_simd')) else None), '{:.2f}')}")
