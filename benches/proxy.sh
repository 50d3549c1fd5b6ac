#!/usr/bin/env bash
# Throughput of one TCP connection through a userspace WireGuard proxy, against the same
# wireguard-go peer in a namespace: rwg proxy vs onetun (both forward a local port to the
# peer's iperf3), and the rwg TUN daemon in a client namespace (iperf3 straight through the
# kernel's TCP over rwg's TUN) as the upper reference.
#
#   root ns: rwg proxy / onetun  --veth-->  ns P: wireguard-go wgb<pid> 10.66.0.1, iperf3 -s
#   ns C:    rwg -f wgc<pid>     --veth-->  ns P
#
# Usage: benches/proxy.sh   (root; RWG=target/release/rwg, ONETUN=onetun, RUNS=3, SECONDS_PER_RUN=5,
#                           LOSS="0 1")
#   LOSS: the loss rates to measure, in percent: nftables in P drops that share of the
#         WireGuard datagrams at random, in each direction, for every contender alike.
#   PROXY: the userspace proxy to measure, "rwg" (rwg proxy --forward, the default) or the
#         path of rwg-netstack's example netstack-proxy (same --config/--forward options);
#         PROXY_ARGS: extra options for it (e.g. "--cc reno --tx-buffer 262144").
#   BENCH_DEBUG=1: after each run of netstack-proxy, print its counters (from its --metrics)
#         and the peer namespace's UDP and veth drop counters.
# Prints one line per run, then the medians and the ratios; each ratio compares runs of the
# same invocation on the same machine. Notes the load average, which skews everything on a
# shared machine.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RWG=${RWG:-$ROOT/target/release/rwg}
ONETUN=${ONETUN:-$(command -v onetun || echo "${CARGO_HOME:-$HOME/.cargo}/bin/onetun")}
RUNS=${RUNS:-3}
SECS=${SECONDS_PER_RUN:-5}
LOSS=${LOSS:-0 1}
PROXY=${PROXY:-rwg}
read -r -a PROXY_ARGS <<<"${PROXY_ARGS:-}"

ID=$$
NSP=rwgbp-$ID
NSC=rwgbc-$ID
WGP=wgb$((ID % 100000))
WGC=wgc$((ID % 100000))
N=$((ID % 250))
PEER_IP=10.66.0.1
PROXY_IP=10.66.0.2
DAEMON_IP=10.66.0.3
# onetun gets its own key: its TAI64N timestamps (boringtun) run 27 s ahead of wireguard-go's
# and rwg's (+37 instead of +10 s), so after an onetun run the peer would refuse rwg's
# handshakes with the same key for that long.
ONETUN_IP=10.66.0.4
WORK=$(mktemp -d /tmp/rwg-proxy-bench.XXXXXX)
PIDS=()

cleanup() {
	local pid
	set +e
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	sleep 0.3
	for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
	for ns in "$NSP" "$NSC"; do
		ip netns pids "$ns" 2>/dev/null | while read -r pid; do kill -KILL "$pid" 2>/dev/null; done
		ip netns del "$ns" 2>/dev/null
	done
	ip link del "vbh$((ID % 100000))" 2>/dev/null
	rm -f /var/run/wireguard/"$WGP".sock /var/run/wireguard/"$WGP".name /var/run/wireguard/"$WGC".sock /var/run/wireguard/"$WGC".name
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {
	local deadline=$(($(date +%s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		(($(date +%s) < deadline)) || return 1
		sleep 0.2
	done
}
die() { echo "bench: $*" >&2; exit 1; }
# Listening, checked without connecting: a probe connection would be forwarded to iperf3's
# control port and could collide with the next test.
listening() { ss -Hltn "sport = :$1" | grep -q LISTEN; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

[[ $(id -u) == 0 ]] || die "needs root"
for t in wireguard-go wg iperf3 python3 ip ss nft; do command -v "$t" >/dev/null || die "$t missing"; done
[[ -x $RWG ]] || die "no rwg at $RWG (cargo build --release -p rwg)"
if [[ $PROXY == rwg ]]; then PROXY_CMD=("$RWG" proxy); else
	[[ -x $PROXY ]] || die "no proxy at $PROXY"
	PROXY_CMD=("$PROXY")
fi
HAVE_ONETUN=1
[[ -x $ONETUN ]] || { HAVE_ONETUN=0; echo "bench: onetun not found (cargo install onetun --locked); skipping it"; }

# --- peer namespace P, root <-> P veth, C <-> P veth ------------------------------------------
ip netns add "$NSP"
ip netns add "$NSC"
ip -n "$NSP" link set lo up
ip -n "$NSC" link set lo up
ip link add "vbh$((ID % 100000))" type veth peer name vbp
ip link set vbp netns "$NSP"
ip addr add "10.213.$N.1/30" dev "vbh$((ID % 100000))"
ip link set "vbh$((ID % 100000))" up
ip -n "$NSP" addr add "10.213.$N.2/30" dev vbp
ip -n "$NSP" link set vbp up
ip -n "$NSC" link add vbc type veth peer name vbq netns "$NSP"
ip -n "$NSC" addr add "10.214.$N.1/30" dev vbc
ip -n "$NSC" link set vbc up
ip -n "$NSP" addr add "10.214.$N.2/30" dev vbq
ip -n "$NSP" link set vbq up

PEER_KEY=$(wg genkey) PROXY_KEY=$(wg genkey) DAEMON_KEY=$(wg genkey) ONETUN_KEY=$(wg genkey)
PEER_PUB=$(wg pubkey <<<"$PEER_KEY") PROXY_PUB=$(wg pubkey <<<"$PROXY_KEY") DAEMON_PUB=$(wg pubkey <<<"$DAEMON_KEY")
ONETUN_PUB=$(wg pubkey <<<"$ONETUN_KEY")
printf '%s\n' "$PEER_KEY" >"$WORK/peer.key"
printf '%s\n' "$DAEMON_KEY" >"$WORK/daemon.key"

ip netns exec "$NSP" env WG_PROCESS_FOREGROUND=1 wireguard-go "$WGP" >"$WORK/wireguard-go.log" 2>&1 &
PIDS+=($!)
wait_for 10 test -S "/var/run/wireguard/$WGP.sock" || die "wireguard-go did not start"
ip netns exec "$NSP" wg set "$WGP" private-key "$WORK/peer.key" listen-port 51820 \
	peer "$PROXY_PUB" allowed-ips "$PROXY_IP/32" peer "$DAEMON_PUB" allowed-ips "$DAEMON_IP/32" \
	peer "$ONETUN_PUB" allowed-ips "$ONETUN_IP/32"
ip -n "$NSP" addr add "$PEER_IP/24" dev "$WGP"
ip -n "$NSP" link set "$WGP" mtu 1420 up
ip netns exec "$NSP" iperf3 -s -B "$PEER_IP" >"$WORK/iperf3-server.log" 2>&1 &
PIDS+=($!)

# rwg daemon in C.
ip netns exec "$NSC" env WG_PROCESS_FOREGROUND=1 "$RWG" -f "$WGC" >"$WORK/rwg-daemon.log" 2>&1 &
PIDS+=($!)
wait_for 10 test -S "/var/run/wireguard/$WGC.sock" || die "rwg daemon did not start"
ip netns exec "$NSC" wg set "$WGC" private-key "$WORK/daemon.key" \
	peer "$PEER_PUB" endpoint "10.214.$N.2:51820" allowed-ips 10.66.0.0/24
ip -n "$NSC" addr add "$DAEMON_IP/24" dev "$WGC"
ip -n "$NSC" link set "$WGC" mtu 1420 up

cat >"$WORK/wg.conf" <<EOF
[Interface]
PrivateKey = $PROXY_KEY
Address = $PROXY_IP/32

[Peer]
PublicKey = $PEER_PUB
Endpoint = 10.213.$N.2:51820
AllowedIPs = 10.66.0.0/24
EOF

# iperf3 -c ADDR PORT [-R] in the given namespace prefix; prints Mbit/s received.
iperf() {
	local host=$1 port=$2 reverse=$3
	shift 3
	"$@" timeout $((SECS + 30)) iperf3 -J -c "$host" -p "$port" -t "$SECS" ${reverse:+"$reverse"} 2>/dev/null |
		python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.0f" % (d["end"]["sum_received"]["bits_per_second"]/1e6))' 2>/dev/null ||
		echo 0
}

start_rwg() {
	PF=$(free_port)
	local debug=()
	if [[ -n ${BENCH_DEBUG:-} && $PROXY != rwg ]]; then
		PM=$(free_port)
		debug=(--metrics "127.0.0.1:$PM")
	fi
	LOG_LEVEL=${LOG_LEVEL:-error} "${PROXY_CMD[@]}" --config "$WORK/wg.conf" --forward "tcp:127.0.0.1:$PF:$PEER_IP:5201" "${PROXY_ARGS[@]}" "${debug[@]}" >"$WORK/rwg-proxy.log" 2>&1 &
	CUR=$!
	wait_for 10 listening "$PF" || die "rwg proxy did not listen"
}
start_onetun() {
	PF=$(free_port)
	ONETUN_PRIVATE_KEY=$ONETUN_KEY "$ONETUN" "127.0.0.1:$PF:$PEER_IP:5201" --endpoint-addr "10.213.$N.2:51820" \
		--endpoint-public-key "$PEER_PUB" --source-peer-ip "$ONETUN_IP" \
		--keep-alive 10 --log error >"$WORK/onetun.log" 2>&1 &
	CUR=$!
	wait_for 10 listening "$PF" || die "onetun did not listen"
}
stop_cur() {
	if [[ -n ${BENCH_DEBUG:-} && $PROXY != rwg ]]; then
		curl -s "http://127.0.0.1:$PM/metrics" | grep -E '^rwg_(netstack|proxy_udp)' | grep -v ' 0$' | sed 's/^/    proxy: /'
		ip netns exec "$NSP" nstat -a 2>/dev/null | grep -E 'UdpRcvbufErrors|UdpInErrors|UdpSndbufErrors' | sed 's/^/    peer: /'
		ip -n "$NSP" -s link show vbp | awk '/RX:/{getline; print "    peer veth rx dropped " $4}'
	fi
	kill -TERM "$CUR" 2>/dev/null
	wait "$CUR" 2>/dev/null
}
# After a failed run, show what the proxies and the peer said.
diagnose() {
	local f
	for f in rwg-proxy.log onetun.log; do [[ -s $WORK/$f ]] && tail -n 5 "$WORK/$f" | sed "s/^/    $f: /"; done
	ip netns exec "$NSP" wg show "$WGP" | sed 's/^/    wg: /'
}

# set_loss PERCENT: drop that share of WireGuard datagrams entering and leaving P.
set_loss() {
	ip netns exec "$NSP" nft delete table inet benchloss 2>/dev/null
	(($1 > 0)) || return 0
	ip netns exec "$NSP" nft -f - <<NFT || die "nftables refused the loss rule"
table inet benchloss {
	chain in { type filter hook input priority 0; udp dport 51820 numgen random mod 100 < $1 drop; }
	chain out { type filter hook output priority 0; udp sport 51820 numgen random mod 100 < $1 drop; }
}
NFT
}

declare -A results
record() {
	results[$1]+="$2 "
	printf '%-34s run %d: %6s Mbit/s\n' "$1" "$3" "$2"
	[[ $2 != 0 ]] || diagnose
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); proxy: ${PROXY_CMD[*]} ${PROXY_ARGS[*]}"
for loss in $LOSS; do
	set_loss "$loss"
	for ((r = 1; r <= RUNS; r++)); do
		for dir in up down; do
			rev=""
			[[ $dir == down ]] && rev=-R
			start_rwg
			record "rwg-proxy $dir loss $loss%" "$(iperf 127.0.0.1 "$PF" "$rev")" "$r"
			stop_cur
			if ((HAVE_ONETUN)); then
				start_onetun
				record "onetun $dir loss $loss%" "$(iperf 127.0.0.1 "$PF" "$rev")" "$r"
				stop_cur
			fi
			record "rwg-daemon $dir loss $loss%" "$(iperf "$PEER_IP" 5201 "$rev" ip netns exec "$NSC")" "$r"
		done
	done
done
set_loss 0

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "medians of $RUNS runs, one TCP connection, iperf3 -t $SECS (up = client sends through the proxy, down = -R):"
for loss in $LOSS; do
	for dir in up down; do
		k="$dir loss $loss%"
		p=$(median <<<"${results["rwg-proxy $k"]}")
		d=$(median <<<"${results["rwg-daemon $k"]}")
		line="$k: rwg proxy $p Mbit/s, rwg daemon $d Mbit/s, proxy/daemon $(python3 -c "print('%.2f' % ($p / max($d, 1)))")"
		if ((HAVE_ONETUN)); then
			o=$(median <<<"${results["onetun $k"]}")
			line+=", onetun $o Mbit/s, rwg/onetun $(python3 -c "print('%.2f' % ($p / max($o, 1)))")"
		fi
		echo "$line"
	done
done
