#!/usr/bin/env bash
# Builds every fuzz target, writes the seed corpus, and runs each target for a bounded time
# (FUZZ_SECONDS, default 20) on one core, FUZZ_JOBS targets (default: one per core) at a time.
# Exits non-zero if any target crashes, times out or runs out of memory; prints one summary line per target: runs, executions per second of wall
# time (libFuzzer's figure), and per second of CPU time (what one core does, whatever else the
# machine is running; the figure README.md quotes).
#
#   fuzz/smoke.sh                      # all targets, 20 s each
#   FUZZ_SECONDS=60 fuzz/smoke.sh      # longer
#   FUZZ_TARGETS="messages cookie" fuzz/smoke.sh
#   FUZZ_SANITIZER=none fuzz/smoke.sh  # campaign build: no ASan, 5-6x the executions (README.md)
#
# Uses the nightly toolchain when rustup has one; otherwise stable with RUSTC_BOOTSTRAP=1
# (cargo-fuzz needs -Z flags for the sanitizer and coverage instrumentation); FUZZ_STABLE=1
# forces the latter, to check what a CI machine without nightly does.
set -euo pipefail

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz_dir/.."

seconds=${FUZZ_SECONDS:-20}
targets=${FUZZ_TARGETS:-"messages cookie responder initiator transport peer replay allowed_ips offload uapi wg_quick_config socks5 socks5_request http_head"}
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [ -z "${FUZZ_STABLE:-}" ] && rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
    toolchain=nightly
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    toolchain="stable (RUSTC_BOOTSTRAP=1)"
fi
echo "smoke: $toolchain, ${seconds}s per target: $targets" >&2

# Comparison tracing (libFuzzer's way past magic values) is turned off for the build as a whole
# and back on for rwg-proto and the harness by Cargo.toml's per-package rustflags: in the hash,
# cipher and curve code it only cost time (over half of it) and found nothing to compare.
# AddressSanitizer by default (CI); FUZZ_SANITIZER=none builds without it, into a target
# directory of its own so that switching does not rebuild the other.
sanitizer=${FUZZ_SANITIZER:-address}
host=$(rustc -vV | sed -n 's/^host: //p')
asan_dir=${CARGO_TARGET_DIR:-$fuzz_dir/target}
target_dir=$asan_dir
build=(build --no-trace-compares)
if [ "$sanitizer" = address ]; then
    "${fuzz[@]}" "${build[@]}"
else
    # Only the targets: make_corpus, which has no libFuzzer, links only against ASan's runtime
    # (it provides the coverage callbacks); it is taken from the ASan build below.
    target_dir="$asan_dir/$sanitizer"
    build+=(-s "$sanitizer" --target-dir "$target_dir")
    for t in $targets; do
        "${fuzz[@]}" "${build[@]}" "$t"
    done
fi

# Seeds from genuine handshakes (see src/bin/make_corpus.rs); make_corpus was built with the
# targets, so this costs no extra compilation.
if [ -x "$asan_dir/$host/release/make_corpus" ]; then
    "$asan_dir/$host/release/make_corpus" "$fuzz_dir/corpus" >&2
else
    echo "smoke: no make_corpus (run once without FUZZ_SANITIZER); seeds/ only" >&2
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
TIMEFORMAT='%U %S'
# run_target T: one target, bounded; writes its summary line to $logs/T.summary and a crash's
# details to $logs/T.crash. Fails if the target crashed.
run_target() {
    local t=$1 log="$logs/$1.log" status=ok seeds=() runs secs cov rate user sys cpu_ms cpu_rate rc=0
    mkdir -p "$fuzz_dir/corpus/$t" "$fuzz_dir/artifacts/$t"
    # The committed, minimised corpus (seeds/<target>, see README.md "Seeds") is read too;
    # new finds go to corpus/<target> only.
    if [ -d "$fuzz_dir/seeds/$t" ]; then
        seeds=("$fuzz_dir/seeds/$t")
    fi
    # The binary `cargo fuzz run` would start, with its settings, started directly so that the
    # CPU time measured is the fuzzer's alone. One job, bounded time; a single input slower
    # than 10 s or above 2 GB is a finding too.
    if ! { time ASAN_OPTIONS=detect_odr_violation=0 "$target_dir/$host/release/$t" \
        -artifact_prefix="$fuzz_dir/artifacts/$t/" "$fuzz_dir/corpus/$t" "${seeds[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; } 2>"$logs/$t.time"; then
        status=CRASH
        rc=1
        # The panic message, the reproducer path and the backtrace's first lines.
        grep -E -A12 "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" | head -60 >"$logs/$t.crash" || tail -40 "$log" >"$logs/$t.crash"
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1)
    rate=$(( ${runs:-0} / (${secs:-0} > 0 ? ${secs:-1} : 1) ))
    # User + system seconds, in milliseconds (bash prints them with three decimals).
    read -r user sys <"$logs/$t.time" || true
    cpu_ms=$(( 10#${user/./} + 10#${sys/./} ))
    cpu_rate=$(( ${runs:-0} * 1000 / (cpu_ms > 0 ? cpu_ms : 1) ))
    printf '%-11s %-5s runs=%-9s execs/s=%-7s execs/cpu-s=%-7s %s\n' "$t" "$status" "${runs:-?}" "$rate" "$cpu_rate" "${cov:-}" >"$logs/$t.summary"
    return "$rc"
}

# FUZZ_JOBS targets at a time (default: one per core), each on one core.
jobs=${FUZZ_JOBS:-$(nproc)}
failed=0
running=0
for t in $targets; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
    run_target "$t" &
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n || failed=1
    running=$((running - 1))
done

for t in $targets; do
    if [ -s "$logs/$t.crash" ]; then
        echo "smoke: $t crashed:" >&2
        cat "$logs/$t.crash" >&2
    fi
done
for t in $targets; do
    cat "$logs/$t.summary" 2>/dev/null || printf '%-11s no summary (the run did not finish)\n' "$t"
done
exit "$failed"
