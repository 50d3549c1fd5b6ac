#!/usr/bin/env bash
# End-to-end tests: real WireGuard daemons in network namespaces, driven by the real `wg`,
# `wg-quick` and `ip`. Needs root, /dev/net/tun, and the tools from scripts/install-deps.
#
# Usage: tests/e2e/run.sh [--impl-a IMPL] [--impl-b IMPL] [--pairs "A:B A:B ..."] [--list] [SCENARIO...]
#   IMPL is rwg | wireguard-go | boringtun. Without --impl-a/--impl-b/--pairs, the pairings
#   are $E2E_PAIRS (default below): rwg against every implementation in both roles, plus the
#   reference pairing wireguard-go <-> boringtun that validates the harness itself.
#   SCENARIO names (default: all, or $E2E_SCENARIOS): see --list.
# Environment:
#   RWG              the rwg binary (default: target/release/rwg); rwg pairings are skipped if absent
#   E2E_TRANSFER_MB  size of the big transfers (default 50)
#   E2E_KEEP=1       keep the scratch directory even when everything passed
#   E2E_VERBOSE=1    print each scenario's log as it runs
# Output: one PASS/FAIL/SKIP line per scenario and pairing, then exactly "N passed, N failed"
# (", N skipped" when some were skipped). Exit status is non-zero if anything failed.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RWG=${RWG:-$ROOT/target/release/rwg}
[[ $RWG == /* ]] || RWG=$PWD/$RWG
E2E_TRANSFER_MB=${E2E_TRANSFER_MB:-50}
E2E_XFER_TIMEOUT=${E2E_XFER_TIMEOUT:-120}
E2E_SCENARIO_TIMEOUT=${E2E_SCENARIO_TIMEOUT:-300}
# cargo install puts boringtun-cli here; sudo and CI shells often lack it on PATH.
for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
	[[ -d $d && :$PATH: != *:$d:* ]] && PATH=$PATH:$d
done
export RWG E2E_TRANSFER_MB E2E_XFER_TIMEOUT PATH

source "$HERE/lib.sh"
source "$HERE/scenarios.sh"

ALL_SCENARIOS=(ping transfer psk keepalive roaming show live wgquick uapi hub)
DEFAULT_PAIRS="rwg:wireguard-go wireguard-go:rwg rwg:boringtun boringtun:rwg rwg:rwg wireguard-go:boringtun"

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

impl_a="" impl_b="" pairs=${E2E_PAIRS:-} selected=()
while (($#)); do
	case $1 in
	--impl-a) impl_a=$2; shift 2 ;;
	--impl-b) impl_b=$2; shift 2 ;;
	--pairs) pairs=$2; shift 2 ;;
	--list)
		for s in "${ALL_SCENARIOS[@]}"; do v="SCOPE_$s"; printf '%-10s %s\n' "$s" "${!v}"; done
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
for tool in ip wg wg-quick ping socat tcpdump tc ss sha256sum timeout pgrep; do
	command -v "$tool" >/dev/null || { echo "missing tool: $tool (run scripts/install-deps)" >&2; echo "0 passed, 1 failed"; exit 1; }
done

umask 077 # key files and wg-quick configs hold secrets
RUN_ID=$$
RUN_DIR=$(mktemp -d /tmp/rwg-e2e.XXXXXX)
export RUN_ID RUN_DIR
passed=0 failed=0 skipped=0 SEQ=0
failures=()

# run_one SCENARIO A B: run in a subshell with its own traps; classify by exit status.
run_one() {
	local sc=$1 a=$2 b=$3 label reason rc t0 t1 pid i why
	SEQ=$((SEQ + 1))
	label=$(printf '%-9s %s' "$sc" "[$a -> $b]")
	[[ $sc == hub ]] && label=$(printf '%-9s %s' "$sc" "[hub $a; spokes wireguard-go, boringtun]")
	[[ $(eval echo "\$SCOPE_$sc") == side && $sc != hub ]] && label=$(printf '%-9s %s' "$sc" "[$a; peer $b]")
	SCDIR="$RUN_DIR/$(printf '%02d' "$SEQ")-$sc-$a-$b"
	mkdir -p "$SCDIR"
	for i in "$a" "$b"; do
		if ! why=$(impl_available "$i"); then
			printf 'SKIP  %s: %s\n' "$label" "$why"
			skipped=$((skipped + 1))
			return
		fi
	done
	if [[ $sc == hub ]]; then
		for i in wireguard-go boringtun; do
			if ! why=$(impl_available "$i"); then
				printf 'SKIP  %s: %s\n' "$label" "$why"; skipped=$((skipped + 1)); return
			fi
		done
	fi
	t0=$(date +%s%N)
	(
		set -eE
		trap on_err ERR
		trap cleanup EXIT
		trap 'echo "scenario stopped (watchdog timeout or interrupt)" >"$SCDIR/reason"; exit 124' TERM
		log "scenario $sc: A=$a B=$b in $SCDIR"
		"sc_$sc" "$a" "$b"
		log "scenario $sc passed"
	) >"$SCDIR/log" 2>&1 &
	pid=$!
	CUR_PID=$pid
	if [[ ${E2E_VERBOSE:-0} == 1 ]]; then tail -n +1 -f --pid="$pid" "$SCDIR/log" & fi
	# Watchdog: every step inside is bounded, this only catches the unforeseen.
	for ((i = 0; i < E2E_SCENARIO_TIMEOUT * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && kill -TERM "$pid"
	wait "$pid"
	rc=$?
	# An interrupt lands here first: let the scenario finish its cleanup.
	while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done
	CUR_PID=
	t1=$(date +%s%N)
	reason=$(head -n 1 "$SCDIR/reason" 2>/dev/null || true)
	local dur
	dur=$(printf '%d.%01ds' $(((t1 - t0) / 1000000000)) $((((t1 - t0) / 100000000) % 10)))
	case $rc in
	0) printf 'PASS  %s (%s)\n' "$label" "$dur"; passed=$((passed + 1)) ;;
	77) printf 'SKIP  %s: %s\n' "$label" "$reason"; skipped=$((skipped + 1)) ;;
	*)
		printf 'FAIL  %s (%s): %s\n' "$label" "$dur" "${reason:-exit status $rc}"
		printf '      log: %s\n' "$SCDIR/log"
		tail -n 15 "$SCDIR/log" | sed 's/^/      | /'
		failed=$((failed + 1))
		failures+=("$label")
		;;
	esac
}

echo "rwg e2e: RWG=$RWG, pairings: $pairs, scenarios: ${selected[*]}, scratch: $RUN_DIR"
start=$(date +%s)
declare -A side_done=()
CUR_PID='' interrupted=0
# Ctrl-C or TERM: stop the running scenario (its EXIT trap cleans up), then report.
trap 'interrupted=1; [[ -z $CUR_PID ]] || kill -TERM "$CUR_PID" 2>/dev/null' INT TERM
for sc in "${selected[@]}"; do
	((interrupted == 0)) || break
	scope_var="SCOPE_$sc"
	for pair in $pairs; do
		((interrupted == 0)) || break
		a=${pair%%:*} b=${pair#*:}
		if [[ ${!scope_var} == side ]]; then
			# Once per implementation under test, with the first partner that is available.
			[[ -z ${side_done[$a]+x} ]] || continue
			impl_available "$b" >/dev/null || [[ $pair == "$(echo "$pairs" | tr ' ' '\n' | grep "^$a:" | tail -n1)" ]] || continue
			side_done[$a]=1
		fi
		run_one "$sc" "$a" "$b"
	done
	side_done=()
done

# rwg proxy (userspace stack) against a real wireguard-go peer: its own script, one result here.
# Only with the default scenario set, so that picking scenarios stays quick.
if ((interrupted == 0)) && [[ -z ${E2E_SCENARIOS:-} ]] && [[ "${selected[*]}" == "${ALL_SCENARIOS[*]}" ]]; then
	if [[ ! -x $RWG ]]; then
		printf 'SKIP  proxy: no rwg binary at %s\n' "$RWG"; skipped=$((skipped + 1))
	elif RWG=$RWG timeout 600 "$HERE/proxy.sh" >"$RUN_DIR/proxy.log" 2>&1; then
		printf 'PASS  proxy (tests/e2e/proxy.sh: %s)\n' "$(tail -n 1 "$RUN_DIR/proxy.log")"; passed=$((passed + 1))
	else
		printf 'FAIL  proxy (tests/e2e/proxy.sh: %s)\n      log: %s\n' "$(tail -n 1 "$RUN_DIR/proxy.log")" "$RUN_DIR/proxy.log"
		grep '^FAIL' "$RUN_DIR/proxy.log" | sed 's/^/      | /'
		failed=$((failed + 1))
	fi
fi

total=$(($(date +%s) - start))
echo "e2e runtime: ${total}s, logs in $RUN_DIR"
if ((failed == 0)) && [[ ${E2E_KEEP:-0} != 1 ]]; then rm -rf "$RUN_DIR"; fi
if ((interrupted)); then echo "interrupted"; failed=$((failed + 1)); fi
summary="$passed passed, $failed failed"
((skipped == 0)) || summary+=", $skipped skipped"
echo "$summary"
((failed == 0))
