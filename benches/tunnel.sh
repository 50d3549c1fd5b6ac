#!/usr/bin/env bash
# Side-by-side end-to-end tunnel benchmark: rwg vs wireguard-go (Debian) vs boringtun-cli vs
# gotatun-cli, and optionally current upstream wireguard-go built outside the repository
# (benches/peers/build-wireguard-go-upstream.sh).
#
# For each implementation, two network namespaces joined by a veth pair (MTU 1500), the same
# implementation on both ends, tunnel MTU 1420. All pairs are built up front and then measured
# round-robin (round 1: A,B,C for test 1, A,B,C for test 2, ...; round 2: ...), so that load from
# other users of the machine is spread over every implementation rather than landing on one.
#
# Tests (iperf3 client in namespace "b", server in "a", over the tunnel; S = --time):
#   tcp1      one TCP stream b->a            tcp1-rev  the same, a->b (-R)
#   tcp4      4 parallel TCP streams b->a    udp       UDP at a fixed offered rate (-b, -l 1380)
#   udpmax    1380-byte UDP, -b 0 (as fast as iperf3 sends), -w 4M (so that the receiving
#             iperf3's socket buffer is not where packets are lost): the received rate, with
#             more offered than any implementation carries here.
#   udp64     64-byte UDP, -b 0 (as fast as iperf3 sends), -w 4M: received packets per second.
#             Once per round the same runs straight over the veth of the first pair (no tunnel),
#             which shows the ceiling of iperf3's sender and receiver on this machine.
#   ping      50 pings, -i 0.01: avg and p99 (nearest rank; with 50 samples that is the maximum)
#   pingload  ping -i 0.02 for about 0.8 S while one TCP stream b->a runs: avg and p99
#   flood     UDP -b 0 -l 1380 for S seconds (beyond what the tunnel carries): VmRSS of both
#             daemons sampled every 0.5 s; the maximum and the last sample (samples in --raw)
# Around every test: CPU time (utime+stime from /proc/PID/stat) of both daemons, and for the
# per-thread view, of each of their threads (/proc/PID/task/*/stat). Peak RSS (VmHWM) at the end.
# Before every test the script waits (at most 5 s) until no daemon of any pair uses CPU, so that
# the backlog of one test does not run into the next; and the order of the implementations
# rotates from round to round, so that none always follows the same one.
#
# Comparing rwg builds and settings in the same run: --rwg-baseline BIN adds "rwg-base" (rwg
# built from another commit; RWG_BASE_REV=text names it), and --rwg-variant 'NAME=VAR=VALUE ...'
# (repeatable) adds "rwg-NAME", this rwg started with those environment variables, e.g.
# --rwg-variant 'off=RWG_DISABLE=all RWG_WORKERS=1'. Each gets its own pair and ratio column.
#
# Needs root (netns), iperf3, wg, socat, python3. Usage:
#   benches/tunnel.sh [--impls rwg,wireguard-go,boringtun,gotatun[,wireguard-go-upstream]]
#                     [--tests tcp1,...] [--rounds N] [--quick] [--time S] [--udp-rate 500M]
#                     [--bt-threads N] [--out FILE] [--raw FILE] [--keep-logs DIR]
#                     [--rwg-baseline BIN] [--rwg-variant 'NAME=VAR=VALUE ...']...
# RWG=path/to/rwg (default: $CARGO_TARGET_DIR or ./target, release/rwg; RWG_REV=text names the
# commit it was built from in the header, default this checkout's HEAD); GOTATUN=path (default:
# gotatun on PATH, else ~/.cargo/bin/gotatun); WG_GO_UPSTREAM=path (default
# /work/peers/wireguard-go-upstream/wireguard-go).
set -euo pipefail
umask 077

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"
REPO=$(cd "$HERE/.." && pwd)

IMPLS=rwg,wireguard-go,boringtun,gotatun
ALL_TESTS=tcp1,tcp1-rev,tcp4,udp,udpmax,udp64,ping,pingload,flood
TESTS_ARG=$ALL_TESTS
ROUNDS=3
TIME=10
UDP_RATE=500M
BT_THREADS="" # empty: boringtun's default (4)
OUT=""
RAW=""
LOGDIR=""
RWG_BASE=""
declare -A VARIANT_ENV=()
VARIANTS=()
need_arg() { (($# >= 2)) && [[ -n $2 ]] || { echo "$1 needs a value" >&2; exit 2; }; }
while (($#)); do
	case $1 in
	--impls) need_arg "$@"; IMPLS=$2; shift 2 ;;
	--tests) need_arg "$@"; TESTS_ARG=$2; shift 2 ;;
	--rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
	--quick) TIME=3; shift ;;
	--time) need_arg "$@"; TIME=$2; shift 2 ;;
	--udp-rate) need_arg "$@"; UDP_RATE=$2; shift 2 ;;
	--bt-threads) need_arg "$@"; BT_THREADS=$2; shift 2 ;;
	--out) need_arg "$@"; OUT=$2; shift 2 ;;
	--raw) need_arg "$@"; RAW=$2; shift 2 ;;
	--keep-logs) need_arg "$@"; LOGDIR=$2; shift 2 ;;
	--rwg-baseline) need_arg "$@"; RWG_BASE=$2; shift 2 ;;
	--rwg-variant)
		need_arg "$@"
		[[ $2 =~ ^([a-z0-9]+)=(.*)$ ]] || { echo "--rwg-variant wants NAME=VAR=VALUE ... (NAME: a-z, 0-9)" >&2; exit 2; }
		[[ -z ${VARIANT_ENV[${BASH_REMATCH[1]}]:-} ]] || { echo "rwg variant ${BASH_REMATCH[1]} given twice" >&2; exit 2; }
		VARIANT_ENV[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
		VARIANTS+=("${BASH_REMATCH[1]}")
		shift 2
		;;
	-h | --help) sed -n '2,48p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive integer" >&2; exit 2; }
[[ $TIME =~ ^[1-9][0-9]*$ ]] || { echo "--time must be a positive integer (seconds)" >&2; exit 2; }
: "${RWG:=${CARGO_TARGET_DIR:-$REPO/target}/release/rwg}"
: "${GOTATUN:=$(command -v gotatun || echo "${HOME:-/root}/.cargo/bin/gotatun")}"
: "${WG_GO_UPSTREAM:=/work/peers/wireguard-go-upstream/wireguard-go}"
if [[ -n $RWG_BASE ]]; then
	[[ -x $RWG_BASE ]] || { echo "--rwg-baseline: no executable at $RWG_BASE" >&2; exit 1; }
	IMPLS+=,rwg-base
fi
for v in "${VARIANTS[@]}"; do
	for a in ${VARIANT_ENV[$v]}; do
		[[ $a =~ ^[A-Z_][A-Z0-9_]*= ]] || { echo "--rwg-variant $v: $a is not VAR=VALUE" >&2; exit 2; }
	done
	IMPLS+=,rwg-$v
done
IFS=, read -r -a IMPL_LIST <<<"$IMPLS"
IFS=, read -r -a TESTS <<<"$TESTS_ARG"
((${#IMPL_LIST[@]})) || { echo "--impls is empty" >&2; exit 2; }
((${#TESTS[@]})) || { echo "--tests is empty" >&2; exit 2; }
for t in "${TESTS[@]}"; do
	[[ ,$ALL_TESTS, == *",$t,"* ]] || { echo "unknown test $t (known: $ALL_TESTS)" >&2; exit 2; }
done

((EUID == 0)) || { echo "needs root (network namespaces)" >&2; exit 1; }
for c in ip iperf3 wg python3 ping socat ss timeout; do
	command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }
done
declare -A SEEN=()
for impl in "${IMPL_LIST[@]}"; do
	[[ -z ${SEEN[$impl]:-} ]] || { echo "$impl given twice in --impls" >&2; exit 2; }
	SEEN[$impl]=1
	case $impl in
	rwg) [[ -x $RWG ]] || { echo "no rwg at $RWG: cargo build --release -p rwg, or set RWG" >&2; exit 1; } ;;
	rwg-base) ;;
	rwg-*) [[ -n ${VARIANT_ENV[${impl#rwg-}]:-} ]] || { echo "unknown implementation $impl (rwg variants come from --rwg-variant)" >&2; exit 2; } ;;
	wireguard-go) command -v wireguard-go >/dev/null || { echo "wireguard-go not on PATH: apt-get install wireguard-go" >&2; exit 1; } ;;
	boringtun) command -v boringtun-cli >/dev/null || { echo "boringtun-cli not on PATH: cargo install --locked boringtun-cli" >&2; exit 1; } ;;
	gotatun) [[ -x $GOTATUN ]] || { echo "no gotatun at $GOTATUN: cargo install --locked gotatun-cli, or set GOTATUN" >&2; exit 1; } ;;
	wireguard-go-upstream) [[ -x $WG_GO_UPSTREAM ]] ||
		{ echo "no upstream wireguard-go at $WG_GO_UPSTREAM: benches/peers/build-wireguard-go-upstream.sh, or set WG_GO_UPSTREAM" >&2; exit 1; } ;;
	*) echo "unknown implementation $impl (known: rwg, wireguard-go, boringtun, gotatun, wireguard-go-upstream)" >&2; exit 2 ;;
	esac
done

WORK=$(mktemp -d /tmp/tunbench.XXXXXX)
TAG=$(($$ % 10000))
NSLIST=()
PIDLIST=()
IFLIST=()

cleanup() {
	set +e
	local p ifc
	for p in $(jobs -p); do kill -TERM "$p" 2>/dev/null; done # background iperf3 of pingload/flood
	for ifc in "${IFLIST[@]}"; do [[ -s $WORK/pid-$ifc ]] && PIDLIST+=("$(cat "$WORK/pid-$ifc")"); done
	stop_pids "${PIDLIST[@]}"
	remove_run "${NSLIST[@]}" -- "${IFLIST[@]}"
	if [[ -n $LOGDIR ]]; then mkdir -p "$LOGDIR" && cp -r "$WORK"/. "$LOGDIR"/; fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# start_daemon IMPL NS IFACE -> echoes pid
start_daemon() {
	local impl=$1 ns=$2 ifc=$3 logf="$WORK/daemon-$3.log" pid
	case $impl in
	rwg) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "$RWG" -f "$ifc" >"$logf" 2>&1 & ;;
	rwg-base) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "$RWG_BASE" -f "$ifc" >"$logf" 2>&1 & ;;
	rwg-*)
		local vars
		read -r -a vars <<<"${VARIANT_ENV[${impl#rwg-}]}"
		ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "${vars[@]}" "$RWG" -f "$ifc" >"$logf" 2>&1 &
		;;
	wireguard-go) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error wireguard-go -f "$ifc" >"$logf" 2>&1 & ;;
	boringtun) ip netns exec "$ns" boringtun-cli --foreground --disable-drop-privileges --verbosity error \
		${BT_THREADS:+--threads "$BT_THREADS"} "$ifc" >"$logf" 2>&1 & ;;
	gotatun) ip netns exec "$ns" "$GOTATUN" --foreground --disable-drop-privileges --verbosity error \
		"$ifc" >"$logf" 2>&1 & ;;
	wireguard-go-upstream) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error \
		"$WG_GO_UPSTREAM" -f "$ifc" >"$logf" 2>&1 & ;;
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

# CPU ticks of a process: one line "pid total comm ticks" from /proc/PID/stat (includes threads
# that have exited), then per thread "pid tid comm ticks". comm can contain spaces (wireguard-go's
# threads do not, but be safe): take what follows the last ')'.
stat_ticks() { # FILE -> "comm ticks"
	local s comm rest a
	s=$(cat "$1" 2>/dev/null) || return 1
	comm=${s#*(}
	comm=${comm%)*}
	rest=${s##*) }
	read -r -a a <<<"$rest"
	# rest starts at field 3 (state); utime = field 14 -> a[11], stime = field 15 -> a[12]
	printf '%s %s\n' "${comm// /_}" "$((a[11] + a[12]))"
}
thread_ticks() {
	local p=$1 f v
	v=$(stat_ticks "/proc/$p/stat") && printf '%s total %s\n' "$p" "$v"
	for f in /proc/"$p"/task/*/stat; do
		v=$(stat_ticks "$f") || continue
		printf '%s %s %s\n' "$p" "$(basename "$(dirname "$f")")" "$v"
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

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# A TCP connection from namespace NS to the iperf3 port carries data: control plus >= 1 stream.
iperf_streams_up() { # NS
	(($(ip netns exec "$1" ss -Htn state established 'dport = :5201' | wc -l) >= 2))
}

# pingload: one TCP stream b->a in the background; once its data connection is up, pings.
run_pingload() { # NSB JSON PINGOUT
	local nsb=$1 j=$2 out=$3 ip n=$((TIME * 40))
	timeout $((TIME + 25)) ip netns exec "$nsb" iperf3 -c 192.168.241.1 -t $((TIME + 3)) -J >"$j" 2>>"$WORK/iperf-client.err" &
	ip=$!
	wait_until 5 iperf_streams_up "$nsb" || log "pingload: iperf3 stream not up after 5 s; pinging anyway"
	ip netns exec "$nsb" ping -n -c "$n" -i 0.02 -W 1 192.168.241.1 >"$out" 2>&1 || true
	wait "$ip" || true
}

# flood: UDP as fast as iperf3 sends, RSS of both daemons every 0.5 s ("seconds kB_A kB_B").
run_flood() { # NSB JSON PA PB SAMPLES
	local nsb=$1 j=$2 pa=$3 pb=$4 out=$5 ip t0 now
	timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c 192.168.241.1 -t "$TIME" -u -b 0 -l 1380 -J >"$j" 2>>"$WORK/iperf-client.err" &
	ip=$!
	t0=$(date +%s%N)
	: >"$out"
	while kill -0 "$ip" 2>/dev/null; do
		now=$(date +%s%N)
		printf '%s %s %s\n' "$(((now - t0) / 1000000))" "$(rss_kb "$pa")" "$(rss_kb "$pb")" >>"$out"
		((now - t0 < (TIME + 25) * 1000000000)) || break # bounded even if kill -0 lies
		sleep 0.5
	done
	wait "$ip" || true
	now=$(date +%s%N)
	printf '%s %s %s\n' "$(((now - t0) / 1000000))" "$(rss_kb "$pa")" "$(rss_kb "$pb")" >>"$out"
}

# run_test IDX IMPL ROUND TEST: appends "round impl test key value" lines to $RES
run_test() {
	local idx=$1 impl=$2 round=$3 test=$4 v
	local nsa=NSA_$idx nsb=NSB_$idx pa=PA_$idx pb=PB_$idx
	nsa=${!nsa} nsb=${!nsb} pa=${!pa} pb=${!pb}
	local j="$WORK/r$round-$impl-$test.json" before after extra=() dst=192.168.241.1
	local d0 d1
	[[ $impl == veth ]] && dst=10.0.0.1
	read -r -a d0 <<<"$(drops "$idx")"
	before=$(snap "$pa" "$pb")
	local t0 t1
	t0=$(date +%s%N)
	case $test in
	tcp1) timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c $dst -t "$TIME" -J >"$j" || true ;;
	tcp1-rev) timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c $dst -t "$TIME" -R -J >"$j" || true ;;
	tcp4) timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c $dst -t "$TIME" -P 4 -J >"$j" || true ;;
	udp) timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c $dst -t "$TIME" -u -b "$UDP_RATE" -l 1380 -J >"$j" || true ;;
	udpmax) timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c $dst -t "$TIME" -u -b 0 -l 1380 -w 4M -J >"$j" || true ;;
	udp64) timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c $dst -t "$TIME" -u -b 0 -l 64 -w 4M -J >"$j" || true ;;
	ping) ip netns exec "$nsb" ping -n -c 50 -i 0.01 -W 1 $dst >"$j" 2>&1 || true ;;
	pingload)
		run_pingload "$nsb" "$j" "$WORK/r$round-$impl-$test.ping"
		extra=(--ping "$WORK/r$round-$impl-$test.ping")
		;;
	flood)
		run_flood "$nsb" "$j" "$pa" "$pb" "$WORK/r$round-$impl-$test.rss"
		extra=(--rss "$WORK/r$round-$impl-$test.rss")
		;;
	esac
	t1=$(date +%s%N)
	after=$(snap "$pa" "$pb")
	read -r -a d1 <<<"$(drops "$idx")"
	printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$impl" "$test" udp_rcvbuf_drops "$((d1[0] - d0[0]))" \
		"$round" "$impl" "$test" tun_queue_drops "$((d1[1] - d0[1]))" \
		"$round" "$impl" "$test" load1 "$(cut -d' ' -f1 /proc/loadavg)" >>"$RES"
	python3 "$HERE/tunnel_report.py" sample --round "$round" --impl "$impl" --test "$test" \
		--file "$j" --wall-ns $((t1 - t0)) --pids "$pa,$pb" "${extra[@]}" \
		--before <(printf '%s\n' "$before") --after <(printf '%s\n' "$after") >>"$RES"
	log "round $round $impl $test: $(grep -P "^$round\t$impl\t$test\t(mbps|kpps|avg_ms|rss_max_kb)\t" "$RES" | cut -f4,5 | tr '\t\n' '= ')"
}

RES="$WORK/results.tsv"
: >"$RES"

ver() { "$@" 2>/dev/null | head -1 || true; }
# Environment, for the header.
{
	printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf 'nproc\t%s\n' "$(nproc)"
	printf 'cpu\t%s\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	printf 'kernel\t%s\n' "$(uname -r)"
	printf 'load\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	for impl in "${IMPL_LIST[@]}"; do
		case $impl in
		rwg) printf 'rwg\trwg %s\n' "${RWG_REV:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || echo '+dirty')} ($RWG)" ;;
		rwg-base) printf 'rwg-base\trwg-base: rwg %s (%s)\n' "${RWG_BASE_REV:-?}" "$RWG_BASE" ;;
		rwg-*) printf '%s\t%s: the rwg above with %s\n' "$impl" "$impl" "${VARIANT_ENV[${impl#rwg-}]}" ;;
		wireguard-go) printf 'wireguard-go\tDebian %s\n' "$(ver wireguard-go --version)" ;;
		boringtun) printf 'boringtun\t%s, threads %s\n' "$(ver boringtun-cli --version)" "${BT_THREADS:-default (4)}" ;;
		gotatun) printf 'gotatun\t%s\n' "$(ver "$GOTATUN" --version)" ;;
		wireguard-go-upstream) printf 'wireguard-go-upstream\tupstream %s (%s; %s)\n' "$(ver "$WG_GO_UPSTREAM" --version)" \
			"$WG_GO_UPSTREAM" "$(grep -m1 '^source:' "$(dirname "$WG_GO_UPSTREAM")/BUILD-INFO" 2>/dev/null || echo 'source ?')" ;;
		esac
	done
	printf 'iperf3\t%s\n' "$(iperf3 --version | head -1)"
	printf 'params\trounds %s, -t %s s, UDP -b %s -l 1380, UDP max -b 0 -l 1380 -w 4M, UDP 64 B -b 0 -l 64 -w 4M, ping -c 50 -i 0.01, ping under load -c %s -i 0.02, flood -b 0 -l 1380; implementations in a rotating order, each test after the daemons went idle\n' \
		"$ROUNDS" "$TIME" "$UDP_RATE" $((TIME * 40))
} >"$WORK/env.tsv"

for i in "${!IMPL_LIST[@]}"; do setup_pair "$i" "${IMPL_LIST[$i]}"; done

# Waits (at most 5 s) until no daemon used CPU for 0.3 s: the previous test's backlog is done.
ALL_PIDS=()
settle() {
	local deadline=$(($(date +%s) + 5)) prev="" cur p t
	while (($(date +%s) < deadline)); do
		cur=0
		for p in "${ALL_PIDS[@]}"; do
			t=$(stat_ticks "/proc/$p/stat") || t="gone 0"
			cur=$((cur + ${t##* }))
		done
		[[ $cur == "$prev" ]] && return 0
		prev=$cur
		sleep 0.3
	done
	log "daemons still busy after 5 s; measuring anyway"
}

for i in "${!IMPL_LIST[@]}"; do
	v=PA_$i
	w=PB_$i
	ALL_PIDS+=("${!v}" "${!w}")
done
N=${#IMPL_LIST[@]}
for ((r = 1; r <= ROUNDS; r++)); do
	for t in "${TESTS[@]}"; do
		# The generator's ceiling: the same 64-byte UDP test over the first pair's bare veth.
		[[ $t == udp64 ]] && settle && run_test 0 veth "$r" udp64
		for ((k = 0; k < N; k++)); do
			i=$(((k + r - 1) % N))
			settle
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
