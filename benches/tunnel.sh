#!/usr/bin/env bash
# Side-by-side end-to-end tunnel benchmark: rwg vs wireguard-go vs boringtun-cli.
#
# For each implementation, two network namespaces joined by a veth pair (MTU 1500), the same
# implementation on both ends, tunnel MTU 1420. All pairs are built up front and then measured
# round-robin (round 1: A,B,C for test 1, A,B,C for test 2, ...; round 2: ...), so that load from
# other users of the machine is spread over every implementation rather than landing on one.
#
# Tests (iperf3 client in namespace "b", server in "a", over the tunnel):
#   tcp1      one TCP stream b->a            tcp1-rev  the same, a->b (-R)
#   tcp4      4 parallel TCP streams b->a    udp       UDP at a fixed offered rate (-b, -l 1380)
#   ping      50 pings, -i 0.01: avg and p99 (nearest rank; with 50 samples that is the maximum)
# Around every test: CPU time (utime+stime from /proc/PID/stat) of both daemons, and for the
# per-thread view, of each of their threads (/proc/PID/task/*/stat). Peak RSS (VmHWM) at the end.
#
# Needs root (netns), iperf3, wg, python3. Usage:
#   benches/tunnel.sh [--impls rwg,wireguard-go,boringtun] [--rounds N] [--quick] [--time S]
#                     [--udp-rate 500M] [--bt-threads N] [--out FILE] [--raw FILE] [--keep-logs DIR]
# RWG=path/to/rwg (default: $CARGO_TARGET_DIR or ./target, release/rwg).
set -euo pipefail
umask 077

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

IMPLS=rwg,wireguard-go,boringtun
ROUNDS=3
TIME=10
UDP_RATE=500M
BT_THREADS="" # empty: boringtun's default (4)
OUT=""
RAW=""
LOGDIR=""
while (($#)); do
	case $1 in
	--impls) IMPLS=$2; shift 2 ;;
	--rounds) ROUNDS=$2; shift 2 ;;
	--quick) TIME=3; shift ;;
	--time) TIME=$2; shift 2 ;;
	--udp-rate) UDP_RATE=$2; shift 2 ;;
	--bt-threads) BT_THREADS=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--raw) RAW=$2; shift 2 ;;
	--keep-logs) LOGDIR=$2; shift 2 ;;
	-h | --help) sed -n '2,19p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
: "${RWG:=${CARGO_TARGET_DIR:-$REPO/target}/release/rwg}"
IFS=, read -r -a IMPL_LIST <<<"$IMPLS"

((EUID == 0)) || { echo "needs root (network namespaces)" >&2; exit 1; }
for c in ip iperf3 wg python3 ping; do
	command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }
done
for impl in "${IMPL_LIST[@]}"; do
	case $impl in
	rwg) [[ -x $RWG ]] || { echo "no rwg at $RWG: cargo build --release -p rwg, or set RWG" >&2; exit 1; } ;;
	wireguard-go) command -v wireguard-go >/dev/null || { echo "wireguard-go not on PATH" >&2; exit 1; } ;;
	boringtun) command -v boringtun-cli >/dev/null || { echo "boringtun-cli not on PATH: cargo install --locked boringtun-cli" >&2; exit 1; } ;;
	*) echo "unknown implementation $impl" >&2; exit 2 ;;
	esac
done

WORK=$(mktemp -d /tmp/tunbench.XXXXXX)
TAG=$(($$ % 10000))
NSLIST=()
PIDLIST=()
IFLIST=()
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

cleanup() {
	set +e
	local p ns ifc i
	for ifc in "${IFLIST[@]}"; do [[ -s $WORK/pid-$ifc ]] && PIDLIST+=("$(cat "$WORK/pid-$ifc")"); done
	for p in "${PIDLIST[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for p in "${PIDLIST[@]}"; do
		for ((i = 0; i < 30; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null
	done
	for ns in "${NSLIST[@]}"; do ip netns del "$ns" 2>/dev/null; done
	for ifc in "${IFLIST[@]}"; do rm -f "/var/run/wireguard/$ifc.sock" "/var/run/wireguard/$ifc.name"; done
	if [[ -n $LOGDIR ]]; then mkdir -p "$LOGDIR" && cp -r "$WORK"/. "$LOGDIR"/; fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_until() { # SECONDS CMD...
	local deadline=$(($(date +%s) + $1))
	shift
	until "$@"; do
		(($(date +%s) < deadline)) || return 1
		sleep 0.1
	done
}

sock_ready() { # IFACE PID
	kill -0 "$2" 2>/dev/null || return 0 # dead: stop waiting, checked after
	[[ -S /var/run/wireguard/$1.sock ]] || return 1
	# socat rather than wg: wg unlinks a socket that refuses connections.
	printf 'get=1\n\n' | timeout 2 socat -t 2 - "UNIX-CONNECT:/var/run/wireguard/$1.sock" 2>/dev/null | grep -q '^errno=0$'
}

# start_daemon IMPL NS IFACE -> echoes pid
start_daemon() {
	local impl=$1 ns=$2 ifc=$3 logf="$WORK/daemon-$3.log" pid
	case $impl in
	rwg) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "$RWG" -f "$ifc" >"$logf" 2>&1 & ;;
	wireguard-go) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error wireguard-go -f "$ifc" >"$logf" 2>&1 & ;;
	boringtun) ip netns exec "$ns" boringtun-cli --foreground --disable-drop-privileges --verbosity error \
		${BT_THREADS:+--threads "$BT_THREADS"} "$ifc" >"$logf" 2>&1 & ;;
	esac
	pid=$!
	# Runs in $(...): record the pid where cleanup finds it even if we fail below.
	echo "$pid" >"$WORK/pid-$ifc"
	wait_until 10 sock_ready "$ifc" "$pid" || { echo "$impl $ifc: socket not ready" >&2; exit 1; }
	kill -0 "$pid" 2>/dev/null || { echo "$impl $ifc exited: $(tail -3 "$logf")" >&2; exit 1; }
	# `ip netns exec` execs, so $! is the daemon itself (no daemonizing with -f/--foreground).
	echo "$pid"
}

# setup_pair IDX IMPL: namespaces tb<tag>-<idx>a/b, ifaces tb<tag><idx>a/b
setup_pair() {
	local idx=$1 impl=$2 nsa="tb$TAG-$1a" nsb="tb$TAG-$1b" ifa="tb$TAG${1}a" ifb="tb$TAG${1}b" ns
	for ns in "$nsa" "$nsb"; do
		ip netns add "$ns"
		NSLIST+=("$ns")
		ip -n "$ns" link set lo up
	done
	ip link add va netns "$nsa" mtu 1500 type veth peer name vb netns "$nsb" mtu 1500
	ip -n "$nsa" addr add 10.0.0.1/24 dev va
	ip -n "$nsb" addr add 10.0.0.2/24 dev vb
	ip -n "$nsa" link set va up
	ip -n "$nsb" link set vb up
	wg genkey >"$WORK/$idx-a.key"
	wg genkey >"$WORK/$idx-b.key"
	IFLIST+=("$ifa" "$ifb")
	local pa pb
	pa=$(start_daemon "$impl" "$nsa" "$ifa")
	pb=$(start_daemon "$impl" "$nsb" "$ifb")
	ip netns exec "$nsa" wg set "$ifa" private-key "$WORK/$idx-a.key" listen-port 51820 \
		peer "$(wg pubkey <"$WORK/$idx-b.key")" allowed-ips 192.168.241.2/32
	ip netns exec "$nsb" wg set "$ifb" private-key "$WORK/$idx-b.key" listen-port 51821 \
		peer "$(wg pubkey <"$WORK/$idx-a.key")" allowed-ips 192.168.241.1/32 endpoint 10.0.0.1:51820
	ip -n "$nsa" addr add 192.168.241.1/24 dev "$ifa"
	ip -n "$nsb" addr add 192.168.241.2/24 dev "$ifb"
	ip -n "$nsa" link set "$ifa" mtu 1420 up
	ip -n "$nsb" link set "$ifb" mtu 1420 up
	wait_until 15 ip netns exec "$nsb" ping -c1 -W1 -q 192.168.241.1 >/dev/null 2>&1 ||
		{ echo "$impl: no ping through the tunnel" >&2; exit 1; }
	ip netns exec "$nsa" iperf3 -s -D -I "$WORK/iperf-$idx.pid" --logfile "$WORK/iperf-$idx.log"
	wait_until 5 test -s "$WORK/iperf-$idx.pid"
	PIDLIST+=("$(cat "$WORK/iperf-$idx.pid")")
	wait_until 5 bash -c "ip netns exec $nsa ss -Hltn 'sport = :5201' | grep -q ."
	eval "NSA_$idx=$nsa NSB_$idx=$nsb PA_$idx=$pa PB_$idx=$pb"
	log "$impl: $ifa (pid $pa) <-> $ifb (pid $pb) up"
}

# Per-thread CPU ticks of a process: lines "pid tid comm ticks". comm can contain spaces
# (wireguard-go's threads do not, but be safe): take what follows the last ')'.
thread_ticks() {
	local p=$1 f s
	for f in /proc/"$p"/task/*/stat; do
		s=$(cat "$f" 2>/dev/null) || continue
		local comm=${s#*(}
		comm=${comm%)*}
		local rest=${s##*) }
		read -r -a a <<<"$rest"
		# rest starts at field 3 (state); utime = field 14 -> a[11], stime = field 15 -> a[12]
		printf '%s %s %s %s\n' "$p" "$(basename "$(dirname "$f")")" "${comm// /_}" "$((a[11] + a[12]))"
	done
}
snap() { thread_ticks "$1"; thread_ticks "$2"; } # PA PB

# Where packets get lost, summed over both namespaces of a pair: "RcvbufErrors tx_dropped",
# i.e. UDP datagrams the kernel dropped because a socket's receive buffer was full, and packets
# dropped because the TUN's queue to the daemon was full.
drops() { # IDX
	local ns ifc rb=0 td=0 v
	for ns in a b; do
		v=$(ip netns exec "tb$TAG-$1$ns" awk '/^Udp:/ { if (h) print $6; h = 1 }' /proc/net/snmp)
		rb=$((rb + v))
		ifc="tb$TAG$1$ns"
		v=$(ip netns exec "tb$TAG-$1$ns" cat "/sys/class/net/$ifc/statistics/tx_dropped")
		td=$((td + v))
	done
	echo "$rb $td"
}

# run_test IDX IMPL ROUND TEST: appends "round impl test key value" lines to $RES
run_test() {
	local idx=$1 impl=$2 round=$3 test=$4 v
	local nsa=NSA_$idx nsb=NSB_$idx pa=PA_$idx pb=PB_$idx
	nsa=${!nsa} nsb=${!nsb} pa=${!pa} pb=${!pb}
	local j="$WORK/r$round-$impl-$test.json" before after
	local d0 d1
	read -r -a d0 <<<"$(drops "$idx")"
	before=$(snap "$pa" "$pb")
	local t0 t1
	t0=$(date +%s%N)
	case $test in
	tcp1) timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c 192.168.241.1 -t "$TIME" -J >"$j" || true ;;
	tcp1-rev) timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c 192.168.241.1 -t "$TIME" -R -J >"$j" || true ;;
	tcp4) timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c 192.168.241.1 -t "$TIME" -P 4 -J >"$j" || true ;;
	udp) timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c 192.168.241.1 -t "$TIME" -u -b "$UDP_RATE" -l 1380 -J >"$j" || true ;;
	ping) ip netns exec "$nsb" ping -n -c 50 -i 0.01 -W 1 192.168.241.1 >"$j" 2>&1 || true ;;
	esac
	t1=$(date +%s%N)
	after=$(snap "$pa" "$pb")
	read -r -a d1 <<<"$(drops "$idx")"
	printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$impl" "$test" udp_rcvbuf_drops "$((d1[0] - d0[0]))" \
		"$round" "$impl" "$test" tun_queue_drops "$((d1[1] - d0[1]))" >>"$RES"
	python3 "$HERE/tunnel_report.py" sample --round "$round" --impl "$impl" --test "$test" \
		--file "$j" --wall-ns $((t1 - t0)) --pids "$pa,$pb" \
		--before <(printf '%s\n' "$before") --after <(printf '%s\n' "$after") >>"$RES"
	log "round $round $impl $test: $(grep -P "^$round\t$impl\t$test\t(mbps|avg_ms)\t" "$RES" | cut -f5)"
}

RES="$WORK/results.tsv"
: >"$RES"
TESTS=(tcp1 tcp1-rev tcp4 udp ping)

# Environment, for the header.
{
	printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf 'nproc\t%s\n' "$(nproc)"
	printf 'cpu\t%s\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	printf 'kernel\t%s\n' "$(uname -r)"
	printf 'load\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf 'rwg\t%s\n' "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || echo '+dirty') ($RWG)"
	printf 'wireguard-go\t%s\n' "$(wireguard-go --version 2>/dev/null | head -1)"
	printf 'boringtun\t%s, threads %s\n' "$(boringtun-cli --version 2>/dev/null | head -1)" "${BT_THREADS:-default (4)}"
	printf 'iperf3\t%s\n' "$(iperf3 --version | head -1)"
	printf 'params\trounds %s, -t %s s, UDP -b %s -l 1380, ping -c 50 -i 0.01\n' "$ROUNDS" "$TIME" "$UDP_RATE"
} >"$WORK/env.tsv"

for i in "${!IMPL_LIST[@]}"; do setup_pair "$i" "${IMPL_LIST[$i]}"; done

for ((r = 1; r <= ROUNDS; r++)); do
	for t in "${TESTS[@]}"; do
		for i in "${!IMPL_LIST[@]}"; do
			run_test "$i" "${IMPL_LIST[$i]}" "$r" "$t"
		done
	done
done

# Peak RSS of every daemon.
for i in "${!IMPL_LIST[@]}"; do
	for side in A B; do
		v=PA_$i
		[[ $side == B ]] && v=PB_$i
		printf '0\t%s\tall\thwm_kb_%s\t%s\n' "${IMPL_LIST[$i]}" "$side" \
			"$(awk '/^VmHWM/ {print $2}' "/proc/${!v}/status")" >>"$RES"
	done
done
printf 'load_end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/env.tsv"

[[ -z $RAW ]] || cp "$RES" "$RAW"
python3 "$HERE/tunnel_report.py" report --env "$WORK/env.tsv" --results "$RES" --impls "$IMPLS" |
	if [[ -n $OUT ]]; then tee "$OUT"; else cat; fi
