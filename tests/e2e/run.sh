#!/usr/bin/env bash
# End-to-end tests: real WireGuard daemons in network namespaces, driven by the real `wg`,
# `wg-quick` and `ip`. Needs root, /dev/net/tun, and the tools from scripts/install-deps.
#
# Usage: tests/e2e/run.sh [--impl-a IMPL] [--impl-b IMPL] [--pairs "A:B A:B ..."] [--list] [SCENARIO...]
#   IMPL is rwg | wireguard-go | boringtun | gotatun. Without --impl-a/--impl-b/--pairs, the pairings
#   are $E2E_PAIRS (default below): rwg against every implementation in both roles, plus the
#   reference pairing wireguard-go <-> boringtun that validates the harness itself.
#   SCENARIO names (default: all, or $E2E_SCENARIOS): see --list. `proxy`, `proxycli` and
#   `proxyfeat` are rwg proxy's tests (proxy.sh, proxy_cli.sh, proxy_features.sh), each run once
#   when any pairing includes rwg, reported SKIP with the reason otherwise.
# Environment:
#   RWG              the rwg binary (default: target/release/rwg); rwg pairings are skipped if absent
#   E2E_TRANSFER_MB  size of the big transfers (default 50)
#   E2E_OFFLOAD_MB   size of each transfer in the offload scenario (default 10)
#   E2E_IMPAIR_MB    size of each transfer in the impaired scenario (default 4)
#   RWG_ABUSE        the rwg-abuse binary, the relay of the replay and impaired scenarios
#                    (default: target/debug/rwg-abuse; cargo build -p rwg-abuse); without it they
#                    are skipped (failed under E2E_STRICT)
#   RWG_DISABLE, RWG_WORKERS  passed to every rwg daemon (the offload scenario sets its own)
#   E2E_STRICT=1     a pairing that cannot run (binary or peer implementation missing) fails
#                    instead of being skipped; the default when CI=true
#   E2E_KEEP=1       keep the scratch directory even when everything passed
#   E2E_VERBOSE=1    print each scenario's log as it runs
#   E2E_JOBS         scenarios run at a time (default 2; 1 runs them one after the other)
#   E2E_WG_TIMEOUT   seconds a `wg` call may take before the scenario fails (default 10)
# Output: one PASS/FAIL/SKIP line per scenario and pairing, then exactly "N passed, N failed"
# (", N skipped" when some were skipped). Exit status is non-zero if anything failed.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RWG=${RWG:-$ROOT/target/release/rwg}
[[ $RWG == /* ]] || RWG=$PWD/$RWG
RWG_ABUSE=${RWG_ABUSE:-$ROOT/target/debug/rwg-abuse}
[[ $RWG_ABUSE == /* ]] || RWG_ABUSE=$PWD/$RWG_ABUSE
E2E_TRANSFER_MB=${E2E_TRANSFER_MB:-50}
E2E_XFER_TIMEOUT=${E2E_XFER_TIMEOUT:-120}
E2E_SCENARIO_TIMEOUT=${E2E_SCENARIO_TIMEOUT:-300}
if [[ -z ${E2E_STRICT:-} ]]; then
	E2E_STRICT=0
	[[ ${CI:-} != true ]] || E2E_STRICT=1
fi
# cargo install puts boringtun-cli and gotatun here; sudo and CI shells often lack it on PATH.
for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
	[[ -d $d && :$PATH: != *:$d:* ]] && PATH=$PATH:$d
done
export RWG RWG_ABUSE E2E_TRANSFER_MB E2E_XFER_TIMEOUT PATH

source "$HERE/lib.sh"
source "$HERE/scenarios.sh"

ALL_SCENARIOS=(ping transfer offload psk keepalive roaming show live keychange setconf peerremove mtu
	keepaliveoff fwmark wgquick uapi hub replay impaired proxy proxycli proxyfeat)
DEFAULT_PAIRS="rwg:wireguard-go wireguard-go:rwg rwg:boringtun boringtun:rwg rwg:gotatun gotatun:rwg rwg:rwg wireguard-go:boringtun"

usage() { sed -n '2,/^set -uo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }

impl_a="" impl_b="" pairs=${E2E_PAIRS:-} selected=()
while (($#)); do
	case $1 in
	--impl-a) impl_a=$2; shift 2 ;;
	--impl-b) impl_b=$2; shift 2 ;;
	--pairs) pairs=$2; shift 2 ;;
	--list)
		for s in "${ALL_SCENARIOS[@]}"; do v="SCOPE_$s"; printf '%-12s %s\n' "$s" "${!v}"; done
		exit 0 ;;
	-h | --help) usage; exit 0 ;;
	-*) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
	*) selected+=("$1"); shift ;;
	esac
done
if [[ -n $impl_a || -n $impl_b ]]; then
	pairs="${impl_a:-rwg}:${impl_b:-${impl_a:-rwg}}"
fi
pairs=${pairs:-$DEFAULT_PAIRS}
if ((${#selected[@]} == 0)); then
	read -ra selected <<<"${E2E_SCENARIOS:-${ALL_SCENARIOS[*]}}"
fi
for s in "${selected[@]}"; do
	declare -F "sc_$s" >/dev/null || { echo "unknown scenario '$s' (try --list)" >&2; exit 2; }
done

if [[ $(id -u) != 0 ]]; then
	echo "tests/e2e/run.sh must run as root (network namespaces, TUN devices)" >&2
	echo "0 passed, 1 failed"
	exit 1
fi
for tool in ip wg wg-quick ping socat tcpdump tc ss sha256sum timeout pgrep python3 flock; do
	command -v "$tool" >/dev/null || { echo "missing tool: $tool (run scripts/install-deps)" >&2; echo "0 passed, 1 failed"; exit 1; }
done

umask 077 # key files and wg-quick configs hold secrets
RUN_ID=$$
RUN_DIR=$(mktemp -d /tmp/rwg-e2e.XXXXXX)
export RUN_ID RUN_DIR
passed=0 failed=0 skipped=0 SEQ=0
failures=()
# Scenarios run E2E_JOBS at a time (default 2). Each has its own namespaces, interface names and
# scratch directory (all carry its SEQ), so they do not meet; results print in launch order.
E2E_JOBS=${E2E_JOBS:-2}
[[ $E2E_JOBS =~ ^[1-9][0-9]*$ ]] || { echo "E2E_JOBS must be a positive number, not '$E2E_JOBS'" >&2; exit 2; }
RESULTS=()                # job index -> its PASS/FAIL/SKIP text, once finished
declare -A JOB_OF=()      # running scenario pid -> job index
declare -A DOG_OF=()      # running scenario pid -> its watchdog's pid
JOB_LABEL=() JOB_DIR=() JOB_T0=()
njobs=0 next_print=0

# record IDX KIND TEXT: the verdict of job IDX (KIND pass|fail|skip), counted now, printed in order.
record() {
	case $2 in
	pass) passed=$((passed + 1)) ;;
	skip) skipped=$((skipped + 1)) ;;
	fail) failed=$((failed + 1)); failures+=("${JOB_LABEL[$1]}") ;;
	esac
	RESULTS[$1]=$3
	while [[ -n ${RESULTS[$next_print]+x} ]]; do
		printf '%s\n' "${RESULTS[$next_print]}"
		next_print=$((next_print + 1))
	done
}

# launch SCENARIO A B: start it in a subshell with its own traps and a watchdog; returns at once.
launch() {
	local sc=$1 a=$2 b=$3 label i why idx pid
	SEQ=$((SEQ + 1))
	idx=$njobs
	njobs=$((njobs + 1))
	label=$(printf '%-12s %s' "$sc" "[$a -> $b]")
	case $(eval echo "\$SCOPE_$sc") in
	side) label=$(printf '%-12s %s' "$sc" "[$a; peer $b]") ;;
	rwg) label=$(printf '%-12s %s' "$sc" "[rwg proxy; peer $b]") ;;
	esac
	[[ $sc == hub ]] && label=$(printf '%-12s %s' "$sc" "[hub $a; spokes wireguard-go, boringtun]")
	JOB_LABEL[idx]=$label
	SCDIR="$RUN_DIR/$(printf '%02d' "$SEQ")-$sc-$a-$b"
	JOB_DIR[idx]=$SCDIR
	mkdir -p "$SCDIR"
	local need=("$a" "$b")
	[[ $sc != hub ]] || need+=(wireguard-go boringtun)
	for i in "${need[@]}"; do
		if ! why=$(impl_available "$i"); then
			# A scenario that cannot run here: SKIP, or FAIL under E2E_STRICT.
			if [[ $E2E_STRICT == 1 ]]; then
				record "$idx" fail "$(printf 'FAIL  %s: cannot run (E2E_STRICT): %s' "$label" "$why")"
			else
				record "$idx" skip "$(printf 'SKIP  %s: %s' "$label" "$why")"
			fi
			return
		fi
	done
	JOB_T0[idx]=$(date +%s%N)
	(
		set -eE
		trap on_err ERR
		trap cleanup EXIT
		trap 'echo "scenario stopped (watchdog timeout or interrupt)" >"$SCDIR/reason"; exit 124' TERM
		log "scenario $sc: A=$a B=$b in $SCDIR"
		"sc_$sc" "$a" "$b"
		# No PASS with a daemon that panicked or died on the way, even if every check passed.
		check_daemons
		log "scenario $sc passed"
	) >"$SCDIR/log" 2>&1 &
	pid=$!
	JOB_OF[$pid]=$idx
	if [[ ${E2E_VERBOSE:-0} == 1 ]]; then tail -n +1 -f --pid="$pid" "$SCDIR/log" & fi
	# Watchdog: every step inside is bounded, this only catches the unforeseen.
	(
		trap 'kill "$s" 2>/dev/null; exit 0' TERM
		sleep "$E2E_SCENARIO_TIMEOUT" &
		s=$!
		wait "$s"
		kill -TERM "$pid" 2>/dev/null
	) &
	DOG_OF[$pid]=$!
}

# finish PID RC: classify the finished scenario PID by its exit status RC.
finish() {
	local pid=$1 rc=$2 idx reason dur t1 scdir label
	idx=${JOB_OF[$pid]}
	unset "JOB_OF[$pid]"
	kill -TERM "${DOG_OF[$pid]}" 2>/dev/null
	wait "${DOG_OF[$pid]}" 2>/dev/null
	unset "DOG_OF[$pid]"
	scdir=${JOB_DIR[idx]} label=${JOB_LABEL[idx]}
	t1=$(date +%s%N)
	reason=$(head -n 1 "$scdir/reason" 2>/dev/null || true)
	dur=$(printf '%d.%01ds' $(((t1 - JOB_T0[idx]) / 1000000000)) $((((t1 - JOB_T0[idx]) / 100000000) % 10)))
	if [[ $rc == 0 && -e $scdir/failed ]]; then
		rc=1 reason="(a check failed in a subshell; the scenario went on) $reason"
	fi
	if [[ $rc == 0 ]]; then
		record "$idx" pass "$(printf 'PASS  %s (%s)' "$label" "$dur")"
		return
	fi
	# Only the harness's skip() skips; a command that happened to exit 77 is a failure.
	if [[ $rc == 77 && -e $scdir/skipped ]]; then
		record "$idx" skip "$(printf 'SKIP  %s: %s' "$label" "$reason")"
		return
	fi
	[[ $rc != 77 ]] || reason="exit status 77 without the harness's skip: ${reason:-no reason recorded}"
	# (No reason recorded: the shell itself stopped it, e.g. an unset variable under set -u.)
	[[ -n $reason ]] || reason="exit status $rc: $(grep -v '^\s*$' "$scdir/log" | tail -n 1 | cut -c1-200)"
	record "$idx" fail "$(
		printf 'FAIL  %s (%s): %s\n' "$label" "$dur" "$reason"
		printf '      log: %s\n' "$scdir/log"
		tail -n 15 "$scdir/log" | sed 's/^/      | /'
	)"
}

# reap: wait for one running scenario to finish and classify it. (wait -n also returns for a
# watchdog or an E2E_VERBOSE tail; those are not scenarios and are passed over.)
reap() {
	local pid rc
	while ((${#JOB_OF[@]})); do
		rc=0 pid=
		wait -n -p pid || rc=$?
		if [[ -z ${pid:-} ]]; then
			# Interrupted (the INT/TERM trap ran): the scenarios were told to stop; collect them.
			((interrupted)) || continue
			for pid in "${!JOB_OF[@]}"; do
				rc=0
				wait "$pid" || rc=$?
				finish "$pid" "$rc"
			done
			return
		fi
		[[ -n ${JOB_OF[$pid]+x} ]] || continue
		finish "$pid" "$rc"
		return
	done
}

# run_one SCENARIO A B: launch it once fewer than E2E_JOBS scenarios are running.
run_one() {
	while ((${#JOB_OF[@]} >= E2E_JOBS)); do reap; done
	((interrupted == 0)) || return 0
	launch "$@"
}

echo "rwg e2e: RWG=$RWG, pairings: $pairs, scenarios: ${selected[*]}, scratch: $RUN_DIR, $E2E_JOBS at a time"
if [[ -n ${RWG_DISABLE:-} || -n ${RWG_WORKERS:-} ]]; then
	echo "rwg e2e: rwg daemons run with RWG_DISABLE='${RWG_DISABLE:-}' RWG_WORKERS='${RWG_WORKERS:-}' (except in the offload scenario)"
fi
start=$(date +%s)
declare -A side_done=()
interrupted=0
# Ctrl-C or TERM: stop the running scenarios (their EXIT traps clean up), then report.
on_interrupt() {
	local p
	interrupted=1
	for p in "${!JOB_OF[@]}"; do kill -TERM "$p" 2>/dev/null; done
}
trap on_interrupt INT TERM
for sc in "${selected[@]}"; do
	((interrupted == 0)) || break
	scope_var="SCOPE_$sc"
	for pair in $pairs; do
		((interrupted == 0)) || break
		a=${pair%%:*} b=${pair#*:}
		if [[ ${!scope_var} == rwg ]]; then
			# Tests of rwg alone (the proxy): once, if any pairing includes rwg.
			[[ -z ${side_done[rwg]+x} ]] || continue
			[[ " $pairs " =~ [\ :]rwg[\ :] ]] || continue
			side_done[rwg]=1
			run_one "$sc" rwg wireguard-go
			continue
		fi
		if [[ ${!scope_var} == side ]]; then
			# Once per implementation under test, with the first partner that is available.
			[[ -z ${side_done[$a]+x} ]] || continue
			impl_available "$b" >/dev/null || [[ $pair == "$(echo "$pairs" | tr ' ' '\n' | grep "^$a:" | tail -n1)" ]] || continue
			side_done[$a]=1
		fi
		run_one "$sc" "$a" "$b"
	done
	if [[ ${!scope_var} == rwg && -z ${side_done[rwg]+x} ]] && ((interrupted == 0)); then
		while ((${#JOB_OF[@]})); do reap; done
		printf 'SKIP  %-12s [rwg]: no pairing includes rwg (%s)\n' "$sc" "$pairs"
		skipped=$((skipped + 1))
	fi
	side_done=()
done
while ((${#JOB_OF[@]})); do reap; done

total=$(($(date +%s) - start))
echo "e2e runtime: ${total}s, logs in $RUN_DIR"
if ((failed == 0)) && [[ ${E2E_KEEP:-0} != 1 ]]; then rm -rf "$RUN_DIR"; fi
if ((interrupted)); then echo "interrupted"; failed=$((failed + 1)); fi
summary="$passed passed, $failed failed"
((skipped == 0)) || summary+=", $skipped skipped"
echo "$summary"
((failed == 0))
