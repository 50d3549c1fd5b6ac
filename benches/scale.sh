#!/usr/bin/env bash
# Control-plane scale benchmark: how long configuring and listing N peers takes, as a user does
# it with wg(8), for rwg and other userspace implementations side by side.
#
# For each N and each implementation: a fresh network namespace (only `lo`, no route out: the
# peers' endpoints in 203.0.113.0/24 are unreachable, nothing leaves), the daemon started in it
# in the foreground, then, with a timeout on every call:
#   setconf  `wg setconf IF FILE` of N peers (a /32, a /128 and an endpoint each), once;
#   show     `wg show IF dump >/dev/null` (a full get), --reps times;
#   add      `wg set IF peer NEW allowed-ips A/32,B/128 endpoint E` while N exist, --reps times;
#   remove   `wg set IF peer NEW remove` of the peer just added, --reps times;
#   no-op    `wg set IF peer NEW remove` again (absent peer): wg's start-up and a round trip;
#   UAPI add/remove  the same add and remove as raw UAPI requests on the socket (Python, no wg
#            process), timed from sending to the whole reply: the daemon's side.
# Each figure is wall time of the wg process (so it includes wg's own work and start-up),
# taken with bash's $EPOCHREALTIME. The peer count is checked after setconf from a dump.
# Memory: VmRSS of the daemon (/proc/PID/status) before and after setconf; bytes/peer is the
# difference divided by N. Daemon CPU (utime+stime, at the kernel's tick resolution) during
# setconf and during each show is recorded too: wall time includes the wg process and other
# load on the machine, daemon CPU does not.
# All implementations get the same file for a given N; they run one after another.
#
# Needs root (netns), wg, python3, socat. Usage:
#   benches/scale.sh [--impls rwg,wireguard-go[,boringtun,gotatun]] [--peers 10000,30000,100000]
#                    [--reps 5] [--timeout SECONDS] [--out FILE] [--raw FILE]
# RWG=path/to/rwg (default: $CARGO_TARGET_DIR or ./target, release/rwg). Builds nothing.
set -euo pipefail
umask 077

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"
REPO=$(cd "$HERE/.." && pwd)

IMPLS=rwg,wireguard-go
PEERS=10000,30000,100000
REPS=5
TIMEOUT=300
OUT=""
RAW=""
while (($#)); do
	case $1 in
	--impls) IMPLS=$2; shift 2 ;;
	--peers) PEERS=$2; shift 2 ;;
	--reps) REPS=$2; shift 2 ;;
	--timeout) TIMEOUT=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--raw) RAW=$2; shift 2 ;;
	-h | --help) sed -n '2,22p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
: "${RWG:=${CARGO_TARGET_DIR:-$REPO/target}/release/rwg}"
IFS=, read -r -a IMPL_LIST <<<"$IMPLS"
IFS=, read -r -a PEER_LIST <<<"$PEERS"
[[ $REPS =~ ^[1-9][0-9]*$ && $TIMEOUT =~ ^[1-9][0-9]*$ ]] || { echo "--reps and --timeout: positive integers" >&2; exit 2; }
for n in "${PEER_LIST[@]}"; do
	[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "--peers: positive integers, comma-separated" >&2; exit 2; }
done

((EUID == 0)) || { echo "needs root (network namespaces)" >&2; exit 1; }
for c in ip wg python3 socat timeout; do
	command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }
done
BORINGTUN=$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")
GOTATUN=$(command -v gotatun || echo "$HOME/.cargo/bin/gotatun")
for impl in "${IMPL_LIST[@]}"; do
	case $impl in
	rwg) [[ -x $RWG ]] || { echo "no rwg at $RWG: cargo build --release -p rwg, or set RWG" >&2; exit 1; } ;;
	wireguard-go) command -v wireguard-go >/dev/null || { echo "wireguard-go not on PATH" >&2; exit 1; } ;;
	boringtun) [[ -x $BORINGTUN ]] || { echo "no boringtun-cli: cargo install --locked boringtun-cli" >&2; exit 1; } ;;
	gotatun) [[ -x $GOTATUN ]] || { echo "no gotatun at $GOTATUN" >&2; exit 1; } ;;
	*) echo "unknown implementation $impl" >&2; exit 2 ;;
	esac
done

WORK=$(mktemp -d /tmp/scalebench.XXXXXX)
TAG=$(($$ % 10000))
NS=""
IFC=""
PID=""

stop_daemon() {
	local i
	if [[ -n $PID ]]; then
		kill -TERM "$PID" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$PID" 2>/dev/null || true
		wait "$PID" 2>/dev/null || true
	fi
	[[ -z $NS ]] || ip netns del "$NS" 2>/dev/null || true
	[[ -z $IFC ]] || rm -f "/var/run/wireguard/$IFC.sock" "/var/run/wireguard/$IFC.name"
	PID="" NS="" IFC=""
}
cleanup() {
	set +e
	stop_daemon
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


start_daemon() { # IMPL IDX: sets NS, IFC, PID
	local impl=$1
	local logf="$WORK/daemon-$impl-$2.log"
	NS="sc$TAG-$2"
	IFC="sc$TAG-$2"
	ip netns add "$NS"
	ip -n "$NS" link set lo up
	case $impl in
	rwg) ip netns exec "$NS" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "$RWG" -f "$IFC" >"$logf" 2>&1 & ;;
	wireguard-go) ip netns exec "$NS" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error wireguard-go -f "$IFC" >"$logf" 2>&1 & ;;
	boringtun) ip netns exec "$NS" "$BORINGTUN" --foreground --disable-drop-privileges --verbosity error \
		--log "$logf" "$IFC" >>"$logf" 2>&1 & ;;
	gotatun) ip netns exec "$NS" "$GOTATUN" --foreground --disable-drop-privileges --verbosity error \
		--log "$logf" "$IFC" >>"$logf" 2>&1 & ;;
	esac
	# `ip netns exec` execs, so $! is the daemon itself (no daemonizing in the foreground).
	PID=$!
	wait_until 10 sock_ready "$IFC" "$PID" || { echo "$impl: socket not ready" >&2; exit 1; }
	kill -0 "$PID" 2>/dev/null || { echo "$impl exited: $(tail -3 "$logf")" >&2; exit 1; }
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
threads() { awk '/^Threads/ {print $2}' "/proc/$1/status"; }
threads_at_most() { (($(threads "$1") <= $2)); }
cpu_ticks() { # utime + stime of the whole process (fields 14 and 15 of /proc/PID/stat)
	local s rest
	s=$(cat "/proc/$1/stat")
	rest=${s##*) }
	read -r -a a <<<"$rest"
	echo $((a[11] + a[12]))
}
TICKS=$(getconf CLK_TCK)

# timed NAME CMD...: runs CMD under the timeout; sets ELAPSED (seconds) and STATUS (ok,
# ">TIMEOUT s" or "failed (rc)").
timed() {
	local t0 t1 rc=0
	shift
	t0=$EPOCHREALTIME
	timeout -k 5 "$TIMEOUT" "$@" || rc=$?
	t1=$EPOCHREALTIME
	ELAPSED=$(python3 -c "print(f'{$t1 - $t0:.6f}')")
	case $rc in
	0) STATUS=ok ;;
	124 | 137) STATUS=">${TIMEOUT} s" ;;
	*) STATUS="failed ($rc)" ;;
	esac
}

RES="$WORK/results.tsv"
: >"$RES"
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RES"; }

measure() { # N IMPL IDX
	local n=$1 impl=$2 conf="$WORK/peers-$1.conf" extra="$WORK/extra-$1.txt"
	local r0 r1 t0 c0 c1 lines k pfx ep r
	start_daemon "$impl" "$3"
	r0=$(rss_kb "$PID")
	t0=$(threads "$PID")
	c0=$(cpu_ticks "$PID")
	timed setconf wg setconf "$IFC" "$conf"
	c1=$(cpu_ticks "$PID")
	# setconf sets listen_port (to 0 when the file has none), so a daemon may bind new sockets
	# and start new reader threads while the old ones wind down: wait until the thread count
	# is back (bounded; Go's runtime may keep extra threads) before reading RSS.
	wait_until 3 threads_at_most "$PID" "$t0" || true
	r1=$(rss_kb "$PID")
	rec "$n" "$impl" setconf_s "$ELAPSED"
	rec "$n" "$impl" setconf_s_status "$STATUS"
	rec "$n" "$impl" cpu_setconf_s "$(python3 -c "print(($c1 - $c0) / $TICKS)")"
	rec "$n" "$impl" rss0_kb "$r0"
	rec "$n" "$impl" rss1_kb "$r1"
	log "$impl N=$n: setconf $STATUS ${ELAPSED}s, RSS ${r0} -> ${r1} kB"
	if [[ $STATUS != ok ]]; then
		# How far it got, and why (wireguard-go, for one, refuses peers beyond 2^16).
		lines=$(timeout -k 5 30 wg show "$IFC" dump 2>/dev/null | wc -l) || true
		rec "$n" "$impl" setconf_peers "$((lines > 0 ? lines - 1 : 0))"
		log "$impl N=$n: $((lines > 0 ? lines - 1 : 0)) peers configured; daemon says: $(grep -m1 -i 'error' "$WORK/daemon-$impl-$3.log" || echo nothing)"
		stop_daemon
		return
	fi
	# Check that every peer arrived (dump: one interface line, then one line per peer).
	lines=$(timeout -k 5 "$TIMEOUT" wg show "$IFC" dump | wc -l)
	if ((lines != n + 1)); then
		echo "$impl: $((lines - 1)) peers after setconf of $n" >&2
		exit 1
	fi
	for ((r = 0; r < REPS; r++)); do
		c0=$(cpu_ticks "$PID")
		timed show wg show "$IFC" dump >/dev/null
		c1=$(cpu_ticks "$PID")
		rec "$n" "$impl" show_s "$ELAPSED"
		[[ $STATUS == ok ]] || { rec "$n" "$impl" show_s_status "$STATUS"; break; }
		rec "$n" "$impl" cpu_show_s "$(python3 -c "print(($c1 - $c0) / $TICKS)")"
	done
	log "$impl N=$n: show $STATUS ${ELAPSED}s (last)"
	for ((r = 0; r < REPS; r++)); do
		read -r k pfx ep < <(sed -n "$((r + 1))p" "$extra")
		timed add wg set "$IFC" peer "$k" allowed-ips "$pfx" endpoint "$ep"
		rec "$n" "$impl" add_s "$ELAPSED"
		[[ $STATUS == ok ]] || { rec "$n" "$impl" add_s_status "$STATUS"; break; }
		timed remove wg set "$IFC" peer "$k" remove
		rec "$n" "$impl" remove_s "$ELAPSED"
		[[ $STATUS == ok ]] || { rec "$n" "$impl" remove_s_status "$STATUS"; break; }
	done
	# The floor of the two above: the same request for a peer that is not there.
	for ((r = 0; r < REPS; r++)); do
		read -r k pfx ep < <(sed -n "$((r + 1))p" "$extra")
		timed noop wg set "$IFC" peer "$k" remove
		rec "$n" "$impl" noop_s "$ELAPSED"
		[[ $STATUS == ok ]] || { rec "$n" "$impl" noop_s_status "$STATUS"; break; }
	done
	# The daemon's side of the same, without a wg process: raw UAPI requests, other new peers.
	if timeout -k 5 "$TIMEOUT" python3 "$HERE/scale_helper.py" rtt "/var/run/wireguard/$IFC.sock" \
		"$extra" "$REPS" "$REPS" >"$WORK/rtt.tsv"; then
		while IFS=$'\t' read -r k v; do rec "$n" "$impl" "$k" "$v"; done <"$WORK/rtt.tsv"
	else
		rec "$n" "$impl" add_rtt_s_status failed
	fi
	log "$impl N=$n: set add/remove done"
	lines=$(timeout -k 5 "$TIMEOUT" wg show "$IFC" dump | wc -l)
	((lines == n + 1)) || { echo "$impl: $((lines - 1)) peers after add/remove, want $n" >&2; exit 1; }
	rec "$n" "$impl" rss2_kb "$(rss_kb "$PID")"
	log "$impl N=$n: RSS at the end ${r1} -> $(rss_kb "$PID") kB"
	stop_daemon
}

{
	printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf 'machine\t%s cores, %s MiB RAM\n' "$(nproc)" "$(awk '/^MemTotal/ {print int($2 / 1024)}' /proc/meminfo)"
	printf 'cpu\t%s\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	printf 'kernel\t%s\n' "$(uname -r)"
	printf 'load\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf 'rwg\t%s\n' "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || echo '+dirty') ($RWG)"
	printf 'wireguard-go\t%s\n' "$(wireguard-go --version 2>/dev/null | head -1)"
	printf 'wg\t%s\n' "$(wg --version | head -1)"
	printf 'params\timpls %s, peers %s, reps %s, timeout %s s per wg call\n' "$IMPLS" "$PEERS" "$REPS" "$TIMEOUT"
} >"$WORK/env.tsv"

idx=0
for n in "${PEER_LIST[@]}"; do
	log "generating $n peers"
	python3 "$HERE/scale_helper.py" conf "$n" "$WORK/peers-$n.conf" "$WORK/extra-$n.txt" $((2 * REPS))
	for impl in "${IMPL_LIST[@]}"; do
		measure "$n" "$impl" "$idx"
		idx=$((idx + 1))
	done
	rm -f "$WORK/peers-$n.conf"
done
printf 'load_end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/env.tsv"

[[ -z $RAW ]] || cp "$RES" "$RAW"
python3 "$HERE/scale_helper.py" report "$WORK/env.tsv" "$RES" "$IMPLS" | if [[ -n $OUT ]]; then tee "$OUT"; else cat; fi
