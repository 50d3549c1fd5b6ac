#!/usr/bin/env bash
# End-to-end tests: real WireGuard daemons in network namespaces, driven by the real `wg`,
# `wg-quick` and `ip`. Needs root, /dev/net/tun, and the tools from scripts/install-deps.
#
# Usage: tests/e2e/run.sh [--impl-a IMPL] [--impl-b IMPL] [--pairs "A:B A:B ..."] [--list] [SCENARIO...]
#   IMPL is rwg | wireguard-go | boringtun | gotatun. Without --impl-a/--impl-b/--pairs, the pairings
#   are $E2E_PAIRS (default below): rwg against every implementation in both roles, plus the
#   reference pairing wireguard-go <-> boringtun that validates the harness itself.
#   SCENARIO names (default: all, or $E2E_SCENARIOS): see --list. `proxy` and `proxycli` are rwg
#   proxy's tests (proxy.sh, proxy_cli.sh), each run once when any pairing includes rwg, reported
#   SKIP with the reason otherwise.
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
	keepaliveoff fwmark wgquick uapi hub replay impaired proxy proxycli)
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
for tool in ip wg wg-quick ping socat tcpdump tc ss sha256sum timeout pgrep python3; do
	command -v "$tool" >/dev/null || { echo "missing tool: $tool (run scripts/install-deps)" >&2; echo "0 passed, 1 failed"; exit 1; }
done

umask 077 # key files and wg-quick configs hold secrets
RUN_ID=$$
RUN_DIR=$(mktemp -d /tmp/rwg-e2e.XXXXXX)
export RUN_ID RUN_DIR
passed=0 failed=0 skipped=0 SEQ=0
failures=()

# not_run LABEL WHY: a scenario that cannot run here: SKIP, or FAIL under E2E_STRICT.
not_run() {
	if [[ $E2E_STRICT == 1 ]]; then
		printf 'FAIL  %s: cannot run (E2E_STRICT): %s\n' "$1" "$2"
		failed=$((failed + 1))
		failures+=("$1")
	else
		printf 'SKIP  %s: %s\n' "$1" "$2"
		skipped=$((skipped + 1))
	fi
}

# run_one SCENARIO A B: run in a subshell with its own traps; classify by exit status.
run_one() {
	local sc=$1 a=$2 b=$3 label reason rc t0 t1 pid i why
	SEQ=$((SEQ + 1))
	label=$(printf '%-12s %s' "$sc" "[$a -> $b]")
	case $(eval echo "\$SCOPE_$sc") in
	side) label=$(printf '%-12s %s' "$sc" "[$a; peer $b]") ;;
	rwg) label=$(printf '%-12s %s' "$sc" "[rwg proxy; peer $b]") ;;
	esac
	[[ $sc == hub ]] && label=$(printf '%-12s %s' "$sc" "[hub $a; spokes wireguard-go, boringtun]")
	SCDIR="$RUN_DIR/$(printf '%02d' "$SEQ")-$sc-$a-$b"
	mkdir -p "$SCDIR"
	local need=("$a" "$b")
	[[ $sc != hub ]] || need+=(wireguard-go boringtun)
	for i in "${need[@]}"; do
		if ! why=$(impl_available "$i"); then
			not_run "$label" "$why"
			return
		fi
	done
	t0=$(date +%s%N)
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
	if [[ $rc == 0 && -e $SCDIR/failed ]]; then
		rc=1 reason="(a check failed in a subshell; the scenario went on) $reason"
	fi
	case $rc in
	0) printf 'PASS  %s (%s)\n' "$label" "$dur"; passed=$((passed + 1)) ;;
	77) if [[ -e $SCDIR/skipped ]]; then
		printf 'SKIP  %s: %s\n' "$label" "$reason"; skipped=$((skipped + 1))
	else
		# Only the harness's skip() skips; a command that happened to exit 77 is a failure.
		rc=fail
	fi ;;
	esac
	case $rc in
	0 | 77) ;;
	*)
		[[ $rc != fail ]] || reason="exit status 77 without the harness's skip: ${reason:-no reason recorded}"
		# (No reason recorded: the shell itself stopped it, e.g. an unset variable under set -u.)
		[[ -n $reason ]] || reason="exit status $rc: $(grep -v '^\s*$' "$SCDIR/log" | tail -n 1 | cut -c1-200)"
		printf 'FAIL  %s (%s): %s\n' "$label" "$dur" "$reason"
		printf '      log: %s\n' "$SCDIR/log"
		tail -n 15 "$SCDIR/log" | sed 's/^/      | /'
		failed=$((failed + 1))
		failures+=("$label")
		;;
	esac
}

echo "rwg e2e: RWG=$RWG, pairings: $pairs, scenarios: ${selected[*]}, scratch: $RUN_DIR"
if [[ -n ${RWG_DISABLE:-} || -n ${RWG_WORKERS:-} ]]; then
	echo "rwg e2e: rwg daemons run with RWG_DISABLE='${RWG_DISABLE:-}' RWG_WORKERS='${RWG_WORKERS:-}' (except in the offload scenario)"
fi
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
		printf 'SKIP  %-12s [rwg]: no pairing includes rwg (%s)\n' "$sc" "$pairs"
		skipped=$((skipped + 1))
	fi
	side_done=()
done

total=$(($(date +%s) - start))
echo "e2e runtime: ${total}s, logs in $RUN_DIR"
if ((failed == 0)) && [[ ${E2E_KEEP:-0} != 1 ]]; then rm -rf "$RUN_DIR"; fi
if ((interrupted)); then echo "interrupted"; failed=$((failed + 1)); fi
summary="$passed passed, $failed failed"
((skipped == 0)) || summary+=", $skipped skipped"
echo "$summary"
((failed == 0))
