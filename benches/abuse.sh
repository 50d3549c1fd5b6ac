#!/usr/bin/env bash
# Under attack, side by side: rwg vs wireguard-go (Debian) vs boringtun-cli vs gotatun-cli, each
# as the victim of a handshake flood and of a junk storm while a legitimate peer moves a TCP
# transfer through the tunnel.
#
# For each implementation, three network namespaces: the victim "a", the legitimate peer "b"
# (the same implementation; a veth 10.0.0.0/24, tunnel MTU 1420) and the attacker "x" (a second
# veth into "a": 10.0.1.0/24 and fd01::/48, with --v4-sources IPv4 addresses and --v6-sources
# IPv6 addresses spread over --v6-prefixes /64s). The attacker is target/release/rwg-abuse
# (crates/rwg-abuse). All setups are built first and then measured round-robin, as in
# benches/tunnel.sh. Tests (iperf3 client in "b", server in "a", b->a; S = --time):
#   base   one TCP stream for S seconds, nothing else: the unflooded throughput
#   flood  `rwg-abuse flood` from every attacker address (one socket each) at the victim's
#          port, as fast as it sends (or --flood-rate): initiations with a correct mac1 for the
#          victim's public key, answering cookie replies with mac2 like a real initiator. One TCP
#          stream for S seconds meanwhile (ratio = flood / base of the same round). Then, the
#          flood still running, "b" forgets and re-adds its peer and pings: the seconds until a
#          new handshake completes (under load a first cookie reply, then the retry with mac2).
#          Cookie replies: what the flood received (type-3 messages). The victim's VmRSS every
#          0.5 s from before the flood to 2 s after it.
#   junk   `rwg-abuse junk` likewise: every message type with wrong lengths, unknown indices,
#          the victim's real receiver index with a bad tag, bad macs, truncated, empty, random
#          and oversized datagrams (one in 32, up to 65 507 bytes). One TCP stream meanwhile;
#          afterwards the victim must be alive and the tunnel must answer a ping.
# rwg runs with RWG_METRICS on the victim's loopback: its drop counters by reason, cookie
# replies and rate-limited messages over each test are in the raw results and the report.
#
# Needs root (netns), iperf3, wg, python3, socat. Usage:
#   benches/abuse.sh [--impls rwg,wireguard-go,boringtun,gotatun] [--tests base,flood,junk]
#                    [--rounds N] [--quick] [--time S] [--flood-rate PPS] [--attack-threads N]
#                    [--v4-sources N] [--v6-sources N] [--v6-prefixes N] [--tcp-rate RATE]
#                    [--out FILE] [--raw FILE] [--keep-logs DIR]
# RWG=path/to/rwg and ABUSE=path/to/rwg-abuse (default: $CARGO_TARGET_DIR or ./target, release);
# RWG_REV names rwg's commit in the header (default: this checkout's HEAD); GOTATUN=path.
set -euo pipefail
umask 077

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"
REPO=$(cd "$HERE/.." && pwd)

IMPLS=rwg,wireguard-go,boringtun,gotatun
ALL_TESTS=base,flood,junk
TESTS_ARG=$ALL_TESTS
ROUNDS=3
TIME=10
FLOOD_RATE=""
# --tcp-rate: the legitimate transfer paced (iperf3 -b, e.g. 300M) instead of as fast as it goes.
TCP_RATE=""
ATTACK_THREADS=1
V4_SOURCES=16
V6_SOURCES=16
V6_PREFIXES=2
OUT=""
RAW=""
LOGDIR=""
need_arg() { (($# >= 2)) && [[ -n $2 ]] || { echo "$1 needs a value" >&2; exit 2; }; }
while (($#)); do
	case $1 in
	--impls) need_arg "$@"; IMPLS=$2; shift 2 ;;
	--tests) need_arg "$@"; TESTS_ARG=$2; shift 2 ;;
	--rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
	--quick) TIME=4; shift ;;
	--time) need_arg "$@"; TIME=$2; shift 2 ;;
	--flood-rate) need_arg "$@"; FLOOD_RATE=$2; shift 2 ;;
	--tcp-rate) need_arg "$@"; TCP_RATE=$2; shift 2 ;;
	--attack-threads) need_arg "$@"; ATTACK_THREADS=$2; shift 2 ;;
	--v4-sources) need_arg "$@"; V4_SOURCES=$2; shift 2 ;;
	--v6-sources) need_arg "$@"; V6_SOURCES=$2; shift 2 ;;
	--v6-prefixes) need_arg "$@"; V6_PREFIXES=$2; shift 2 ;;
	--out) need_arg "$@"; OUT=$2; shift 2 ;;
	--raw) need_arg "$@"; RAW=$2; shift 2 ;;
	--keep-logs) need_arg "$@"; LOGDIR=$2; shift 2 ;;
	-h | --help) sed -n '2,32p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
for v in ROUNDS TIME ATTACK_THREADS V6_PREFIXES; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "--${v,,} must be a positive integer" >&2; exit 2; }
done
for v in V4_SOURCES V6_SOURCES; do
	[[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} <= 200)) || { echo "--${v,,} must be 0 to 200" >&2; exit 2; }
done
((V4_SOURCES + V6_SOURCES > 0)) || { echo "no attacker address (--v4-sources and --v6-sources are 0)" >&2; exit 2; }
[[ -z $FLOOD_RATE || $FLOOD_RATE =~ ^[1-9][0-9]*$ ]] || { echo "--flood-rate must be a positive integer" >&2; exit 2; }
[[ -z $TCP_RATE || $TCP_RATE =~ ^[1-9][0-9]*[KMG]?$ ]] || { echo "--tcp-rate must be a rate like 300M (iperf3 -b)" >&2; exit 2; }
: "${RWG:=${CARGO_TARGET_DIR:-$REPO/target}/release/rwg}"
: "${ABUSE:=${CARGO_TARGET_DIR:-$REPO/target}/release/rwg-abuse}"
: "${GOTATUN:=$(command -v gotatun || echo "${HOME:-/root}/.cargo/bin/gotatun")}"
IFS=, read -r -a IMPL_LIST <<<"$IMPLS"
IFS=, read -r -a TESTS <<<"$TESTS_ARG"
((${#IMPL_LIST[@]})) || { echo "--impls is empty" >&2; exit 2; }
((${#TESTS[@]})) || { echo "--tests is empty" >&2; exit 2; }
for t in "${TESTS[@]}"; do
	[[ ,$ALL_TESTS, == *",$t,"* ]] || { echo "unknown test $t (known: $ALL_TESTS)" >&2; exit 2; }
done

((EUID == 0)) || { echo "needs root (network namespaces)" >&2; exit 1; }
for c in ip iperf3 wg python3 ping socat timeout; do
	command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }
done
[[ -x $ABUSE ]] || { echo "no rwg-abuse at $ABUSE: cargo build --release -p rwg-abuse, or set ABUSE" >&2; exit 1; }
declare -A SEEN=()
for impl in "${IMPL_LIST[@]}"; do
	[[ -z ${SEEN[$impl]:-} ]] || { echo "$impl given twice in --impls" >&2; exit 2; }
	SEEN[$impl]=1
	case $impl in
	rwg) [[ -x $RWG ]] || { echo "no rwg at $RWG: cargo build --release -p rwg, or set RWG" >&2; exit 1; } ;;
	wireguard-go) command -v wireguard-go >/dev/null || { echo "wireguard-go not on PATH: apt-get install wireguard-go" >&2; exit 1; } ;;
	boringtun) command -v boringtun-cli >/dev/null || { echo "boringtun-cli not on PATH: cargo install --locked boringtun-cli" >&2; exit 1; } ;;
	gotatun) [[ -x $GOTATUN ]] || { echo "no gotatun at $GOTATUN: cargo install --locked gotatun-cli, or set GOTATUN" >&2; exit 1; } ;;
	*) echo "unknown implementation $impl (known: rwg, wireguard-go, boringtun, gotatun)" >&2; exit 2 ;;
	esac
done

WORK=$(mktemp -d /tmp/abusebench.XXXXXX)
TAG=$(($$ % 10000))
NSLIST=()
PIDLIST=()
IFLIST=()
METRICS_PORT=9586

cleanup() {
	set +e
	local p ifc
	touch "$WORK/stop" # any attacker still running stops
	for p in $(jobs -p); do kill -TERM "$p" 2>/dev/null; done
	for ifc in "${IFLIST[@]}"; do [[ -s $WORK/pid-$ifc ]] && PIDLIST+=("$(cat "$WORK/pid-$ifc")"); done
	stop_pids "${PIDLIST[@]}"
	remove_run "${NSLIST[@]}" -- "${IFLIST[@]}"
	if [[ -n $LOGDIR ]]; then mkdir -p "$LOGDIR" && cp -r "$WORK"/. "$LOGDIR"/; fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# start_daemon IMPL NS IFACE -> echoes pid. rwg serves metrics on the namespace's loopback.
start_daemon() {
	local impl=$1 ns=$2 ifc=$3 logf="$WORK/daemon-$3.log" pid
	case $impl in
	rwg) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error RWG_METRICS="127.0.0.1:$METRICS_PORT" \
		"$RWG" -f "$ifc" >"$logf" 2>&1 & ;;
	wireguard-go) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error wireguard-go -f "$ifc" >"$logf" 2>&1 & ;;
	boringtun) ip netns exec "$ns" boringtun-cli --foreground --disable-drop-privileges --verbosity error \
		"$ifc" >"$logf" 2>&1 & ;;
	gotatun) ip netns exec "$ns" "$GOTATUN" --foreground --disable-drop-privileges --verbosity error \
		"$ifc" >"$logf" 2>&1 & ;;
	esac
	pid=$!
	echo "$pid" >"$WORK/pid-$ifc"
	wait_until 10 sock_ready "$ifc" "$pid" || { echo "$impl $ifc: socket not ready" >&2; exit 1; }
	kill -0 "$pid" 2>/dev/null || { echo "$impl $ifc exited: $(tail -3 "$logf")" >&2; exit 1; }
	echo "$pid"
}

# The attacker's addresses on its veth: V4_SOURCES IPv4 addresses from 10.0.1.2, and V6_SOURCES
# IPv6 addresses dealt over V6_PREFIXES /64s (fd01:0:0:P::H).
attacker_addrs() {
	local i
	for ((i = 0; i < V4_SOURCES; i++)); do echo "10.0.1.$((i + 2))"; done
	for ((i = 0; i < V6_SOURCES; i++)); do printf 'fd01:0:0:%x::%x\n' $((i % V6_PREFIXES + 1)) $((i / V6_PREFIXES + 2)); done
}

# setup IDX IMPL: namespaces ab<tag>-<idx>a/b/x, ifaces ab<tag><idx>a/b
setup() {
	local idx=$1 impl=$2 nsa="ab$TAG-$1a" nsb="ab$TAG-$1b" nsx="ab$TAG-$1x" ifa="ab$TAG${1}a" ifb="ab$TAG${1}b" ns a
	for ns in "$nsa" "$nsb" "$nsx"; do
		ip netns add "$ns"
		NSLIST+=("$ns")
		ip -n "$ns" link set lo up
		ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
	done
	ip link add va netns "$nsa" mtu 1500 type veth peer name vb netns "$nsb" mtu 1500
	ip link add vx netns "$nsa" mtu 1500 type veth peer name vy netns "$nsx" mtu 1500
	ip -n "$nsa" addr add 10.0.0.1/24 dev va
	ip -n "$nsb" addr add 10.0.0.2/24 dev vb
	ip -n "$nsa" addr add 10.0.1.1/24 dev vx
	ip -n "$nsa" addr add fd01::1/48 dev vx nodad
	while read -r a; do
		if [[ $a == *:* ]]; then ip -n "$nsx" addr add "$a/64" dev vy nodad; else ip -n "$nsx" addr add "$a/24" dev vy; fi
	done < <(attacker_addrs)
	for ns in "$nsa:va" "$nsa:vx" "$nsb:vb" "$nsx:vy"; do ip -n "${ns%%:*}" link set "${ns#*:}" up; done
	ip -n "$nsx" route add fd01::/48 dev vy
	wg genkey >"$WORK/$idx-a.key"
	wg genkey >"$WORK/$idx-b.key"
	wg pubkey <"$WORK/$idx-a.key" >"$WORK/$idx-a.pub"
	IFLIST+=("$ifa" "$ifb")
	local pa pb
	pa=$(start_daemon "$impl" "$nsa" "$ifa")
	pb=$(start_daemon "$impl" "$nsb" "$ifb")
	ip netns exec "$nsa" wg set "$ifa" private-key "$WORK/$idx-a.key" listen-port 51820 \
		peer "$(wg pubkey <"$WORK/$idx-b.key")" allowed-ips 192.168.241.2/32
	conf_b "$idx" "$nsb" "$ifb"
	ip -n "$nsa" addr add 192.168.241.1/24 dev "$ifa"
	ip -n "$nsb" addr add 192.168.241.2/24 dev "$ifb"
	ip -n "$nsa" link set "$ifa" mtu 1420 up
	ip -n "$nsb" link set "$ifb" mtu 1420 up
	wait_until 15 ip netns exec "$nsb" ping -c1 -W1 -q 192.168.241.1 >/dev/null 2>&1 ||
		{ echo "$impl: no ping through the tunnel" >&2; exit 1; }
	# Every attacker address reaches the victim (neighbour discovery done before the clock runs).
	while read -r a; do
		ip netns exec "$nsx" ping -c1 -W2 -q -I "$a" "$([[ $a == *:* ]] && echo fd01::1 || echo 10.0.1.1)" >/dev/null ||
			{ echo "attacker address $a cannot reach the victim" >&2; exit 1; }
	done < <(attacker_addrs)
	ip netns exec "$nsa" iperf3 -s -D -I "$WORK/iperf-$idx.pid" --logfile "$WORK/iperf-$idx.log"
	wait_until 5 test -s "$WORK/iperf-$idx.pid"
	PIDLIST+=("$(cat "$WORK/iperf-$idx.pid")")
	wait_until 5 bash -c "ip netns exec $nsa ss -Hltn 'sport = :5201' | grep -q ."
	eval "NSA_$idx=$nsa NSB_$idx=$nsb NSX_$idx=$nsx IFA_$idx=$ifa IFB_$idx=$ifb PA_$idx=$pa PB_$idx=$pb"
	log "$impl: victim $ifa (pid $pa), peer $ifb (pid $pb), attacker $nsx with $V4_SOURCES IPv4 and $V6_SOURCES IPv6 addresses up"
}

# conf_b IDX NSB IFB: the legitimate peer's view of the victim (also to re-add it).
conf_b() {
	ip netns exec "$2" wg set "$3" private-key "$WORK/$1-b.key" listen-port 51821 \
		peer "$(cat "$WORK/$1-a.pub")" allowed-ips 192.168.241.1/32 endpoint 10.0.0.1:51820
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { # PID: utime+stime of the whole process
	local s rest a
	s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
	rest=${s##*) }
	read -r -a a <<<"$rest"
	echo $((a[11] + a[12]))
}

# rwg's metrics as "name{labels} value" lines (nothing for the others).
metrics() { # IMPL NSA
	[[ $1 == rwg ]] || return 0
	ip netns exec "$2" timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$METRICS_PORT
		printf 'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n' >&3; cat <&3" 2>/dev/null | grep -E '^rwg_(dropped|cookie|rate|handshake)' || true
}

# The victim's receiver index for B: the index in B's transport messages to A (hex), read off
# B's veth while B pings, for junk that carries it.
victim_index() { # NSB
	local cap=$WORK/index.cap p
	ip netns exec "$1" timeout 10 tcpdump -l -n -c 1 -x -i vb 'udp and dst port 51820 and udp[8] = 4' >"$cap" 2>"$cap.log" &
	p=$!
	wait_until 5 grep -q 'listening on' "$cap.log" || true
	ip netns exec "$1" ping -c 3 -i 0.2 -q 192.168.241.1 >/dev/null 2>&1 || true
	wait "$p" || true
	# IPv4 and UDP headers are 28 bytes: the type word is at 0x1c, the index at 0x20 (little-endian).
	awk '/0x0020:/ { print $2 $3; exit }' "$cap" | sed -E 's/^(..)(..)(..)(..)$/\4\3\2\1/'
}

# RSS of the victim every 0.5 s into FILE ("ms kB") until STOPFILE exists (bounded).
sample_rss() { # PID FILE STOPFILE LIMIT_S
	local t0 now
	t0=$(date +%s%N)
	: >"$2"
	while [[ ! -e $3 ]]; do
		now=$(date +%s%N)
		printf '%s %s\n' "$(((now - t0) / 1000000))" "$(rss_kb "$1")" >>"$2"
		((now - t0 < $4 * 1000000000)) || break
		sleep 0.5
	done
}

# run_test IDX IMPL ROUND TEST: appends "round impl test key value" lines to $RES
run_test() {
	local idx=$1 impl=$2 round=$3 test=$4
	local nsa=NSA_$idx nsb=NSB_$idx nsx=NSX_$idx ifb=IFB_$idx pa=PA_$idx
	nsa=${!nsa} nsb=${!nsb} nsx=${!nsx} ifb=${!ifb} pa=${!pa}
	local pre="$WORK/r$round-$impl-$test" j srcs atk=() atk_pid="" rss_pid="" c0 c1 t0 t1 m0 m1 hs="" alive=1 idxhex
	j="$pre.json"
	rm -f "$WORK/stop" "$WORK/rss-stop"
	mapfile -t srcs < <(attacker_addrs)
	local common=(--key "$(cat "$WORK/$idx-a.pub")" --target 10.0.1.1:51820 --target '[fd01::1]:51820'
		--source "$(IFS=,; echo "${srcs[*]}")" --threads "$ATTACK_THREADS" --stop-file "$WORK/stop"
		--duration $((TIME + 45)))
	[[ -z $FLOOD_RATE ]] || common+=(--rate "$FLOOD_RATE")
	case $test in
	flood) atk=(flood "${common[@]}") ;;
	junk)
		idxhex=$(victim_index "$nsb" || true)
		atk=(junk "${common[@]}" ${idxhex:+--known-index "$idxhex"})
		printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$impl" "$test" known_index "${idxhex:-none}" >>"$RES"
		;;
	esac
	m0=$(metrics "$impl" "$nsa")
	sample_rss "$pa" "$pre.rss" "$WORK/rss-stop" $((TIME + 60)) &
	rss_pid=$!
	sleep 1 # an RSS sample or two before the attack
	c0=$(cpu_ticks "$pa")
	t0=$(date +%s%N)
	if ((${#atk[@]})); then
		ip netns exec "$nsx" "$ABUSE" "${atk[@]}" >"$pre.attack" 2>"$pre.attack.err" &
		atk_pid=$!
		sleep 1
	fi
	local pace=()
	[[ -z $TCP_RATE ]] || pace=(-b "$TCP_RATE")
	timeout $((TIME + 20)) ip netns exec "$nsb" iperf3 -c 192.168.241.1 -t "$TIME" "${pace[@]}" -J >"$j" 2>>"$WORK/iperf-client.err" || true
	if [[ $test == flood ]]; then
		# A new handshake from the legitimate peer while the flood goes on.
		local h0 h1
		h0=$(date +%s%N)
		ip netns exec "$nsb" wg set "$ifb" peer "$(cat "$WORK/$idx-a.pub")" remove
		conf_b "$idx" "$nsb" "$ifb"
		if wait_until 30 ip netns exec "$nsb" ping -c1 -W1 -q 192.168.241.1 >/dev/null 2>&1; then
			h1=$(date +%s%N)
			hs=$(awk -v d=$((h1 - h0)) 'BEGIN { printf "%.1f", d / 1e9 }')
		else
			hs=fail
		fi
	fi
	touch "$WORK/stop"
	[[ -z $atk_pid ]] || wait "$atk_pid" || log "$impl $test: attacker exited $?: $(tail -2 "$pre.attack.err")"
	t1=$(date +%s%N)
	c1=$(cpu_ticks "$pa")
	sleep 2 # the victim after the attack
	touch "$WORK/rss-stop"
	wait "$rss_pid" || true
	m1=$(metrics "$impl" "$nsa")
	kill -0 "$pa" 2>/dev/null || alive=0
	if ((alive)) && ! wait_until 10 ip netns exec "$nsb" ping -c1 -W1 -q 192.168.241.1 >/dev/null 2>&1; then alive=0; fi
	{
		printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$impl" "$test" alive "$alive" \
			"$round" "$impl" "$test" cpu_pct "$(awk -v c=$((c1 - c0)) -v w=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", 100 * c / hz / (w / 1e9) }')" \
			"$round" "$impl" "$test" load1 "$(cut -d' ' -f1 /proc/loadavg)"
		[[ -z $hs ]] || printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$impl" "$test" handshake_s "$hs"
	} >>"$RES"
	python3 "$HERE/abuse_report.py" sample --round "$round" --impl "$impl" --test "$test" --iperf "$j" \
		--rss "$pre.rss" ${atk_pid:+--attack "$pre.attack"} \
		--metrics-before <(printf '%s\n' "$m0") --metrics-after <(printf '%s\n' "$m1") >>"$RES"
	log "round $round $impl $test: $(grep -P "^$round\t$impl\t$test\t(mbps|sent_per_s|cookie_replies|handshake_s|rss_max_kb|alive)\t" "$RES" | cut -f4,5 | tr '\t\n' '= ')"
	if ((!alive)); then
		log "$impl died or its tunnel stopped in the $test test: $(tail -3 "$WORK/daemon-$(eval echo "\$IFA_$idx").log" | tr '\n' ' ')"
	fi
}

RES="$WORK/results.tsv"
: >"$RES"

ver() { "$@" 2>/dev/null | head -1 || true; }
{
	printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf 'nproc\t%s\n' "$(nproc)"
	printf 'cpu\t%s\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	printf 'kernel\t%s\n' "$(uname -r)"
	printf 'load\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	for impl in "${IMPL_LIST[@]}"; do
		case $impl in
		rwg) printf 'rwg\trwg %s (%s)\n' "${RWG_REV:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || echo '+dirty')}" "$RWG" ;;
		wireguard-go) printf 'wireguard-go\tDebian %s\n' "$(ver wireguard-go --version)" ;;
		boringtun) printf 'boringtun\t%s\n' "$(ver boringtun-cli --version)" ;;
		gotatun) printf 'gotatun\t%s\n' "$(ver "$GOTATUN" --version)" ;;
		esac
	done
	printf 'iperf3\t%s\n' "$(iperf3 --version | head -1)"
	printf 'params\trounds %s, iperf3 TCP -t %s s b->a%s; attacker: %s IPv4 + %s IPv6 addresses in %s /64s, one socket each, %s thread(s), rate %s\n' \
		"$ROUNDS" "$TIME" "${TCP_RATE:+ paced at $TCP_RATE bit/s}" "$V4_SOURCES" "$V6_SOURCES" "$V6_PREFIXES" "$ATTACK_THREADS" "${FLOOD_RATE:-as fast as it sends}"
} >"$WORK/env.tsv"

for i in "${!IMPL_LIST[@]}"; do setup "$i" "${IMPL_LIST[$i]}"; done

for ((r = 1; r <= ROUNDS; r++)); do
	for t in "${TESTS[@]}"; do
		for i in "${!IMPL_LIST[@]}"; do
			v=PA_$i
			if ! kill -0 "${!v}" 2>/dev/null; then
				log "${IMPL_LIST[$i]}: victim gone, not measured"
				printf '%s\t%s\t%s\t%s\t%s\n' "$r" "${IMPL_LIST[$i]}" "$t" alive 0 >>"$RES"
				continue
			fi
			run_test "$i" "${IMPL_LIST[$i]}" "$r" "$t"
		done
	done
done
printf 'load_end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/env.tsv"
for i in "${!IMPL_LIST[@]}"; do
	v=PA_$i
	printf '0\t%s\tall\thwm_kb\t%s\n' "${IMPL_LIST[$i]}" "$(awk '/^VmHWM/ {print $2}' "/proc/${!v}/status" 2>/dev/null || echo '')" >>"$RES"
done

[[ -z $RAW ]] || cp "$RES" "$RAW"
python3 "$HERE/abuse_report.py" report --env "$WORK/env.tsv" --results "$RES" --impls "$IMPLS" |
	if [[ -n $OUT ]]; then tee "$OUT"; else cat; fi
