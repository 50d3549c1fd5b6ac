#!/usr/bin/env bash
# End-to-end tests of `rwg proxy`'s (rwg-netstack's) proxy features against real WireGuard
# peers (wireguard-go on TUN devices in namespaces): what tests/e2e/proxy_cli.sh does not cover
# (several peers, a small path MTU, bad HTTP requests, memory under many connections).
#
#   root namespace                                    namespace P (rwgfp-<pid>)
#   rwg proxy --config wg.conf                        wireguard-go 10.66.0.1/24
#     HTTP proxy, SOCKS5, forwards, /metrics  veth      HTTP :8000, echo :7008, DNS :53, sshd :22
#     UDP 10.214.N.1  <---------------------------->    10.214.N.2:51820   (forwards 10.88.0.0/24)
#                                                        | veth, MTU 1280 on P's side
#                                                      namespace H: 10.88.0.2, a TCP sink
#                     <---------------------------->  namespace Q: wireguard-go 10.77.0.1/24, HTTP
#   namespace C: rwg proxy with Endpoint = moving.test (C's own hosts file)
#                     <---------------------------->  namespace M: wireguard-go 10.99.0.1/24,
#                                                     its address moves from .2 to .3
#
# Checks: HTTP proxy (curl -x, --proxytunnel, basic auth, names through the tunnel's DNS,
# malformed / oversized / abandoned requests answered and nothing else disturbed), stdio with
# real ssh/sshd, a 1280-byte path behind a peer, two peers routed by AllowedIPs, metrics and
# readiness, endpoint re-resolution when the peer moves, RSS under 1000 SOCKS connections.
#
# Needs root, /dev/net/tun, wireguard-go, wg, curl, python3, ssh, sshd, socat.
# Usage: tests/e2e/proxy_features.sh   (RWG=path/to/rwg, default target/release/rwg)
# Output: PASS/FAIL per check, then exactly "N passed, N failed". Exit status 1 on failure.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RWG=${RWG:-$ROOT/target/release/rwg}
[[ $RWG == /* ]] || RWG=$PWD/$RWG

ID=$$
S=$((ID % 100000))
NSP=rwgfp-$ID NSQ=rwgfq-$ID NSH=rwgfh-$ID NSC=rwgfc-$ID NSM=rwgfm-$ID
N=$((ID % 250))
WORK=$(mktemp -d /tmp/rwg-proxy-features.XXXXXX)
PIDS=()
passed=0 failed=0

# shellcheck source=tests/e2e/checks.sh
source "$HERE/checks.sh"

cleanup() {
	local pid ns
	set +e
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	sleep 0.3
	for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
	for ns in "$NSP" "$NSQ" "$NSH" "$NSC" "$NSM"; do
		ip netns pids "$ns" 2>/dev/null | while read -r pid; do kill -KILL "$pid" 2>/dev/null; done
		ip netns del "$ns" 2>/dev/null
	done
	ip link del "vfp$S" 2>/dev/null
	ip link del "vfq$S" 2>/dev/null
	rm -rf "/etc/netns/$NSC"
	rm -f /var/run/wireguard/wfp"$S".* /var/run/wireguard/wfq"$S".* /var/run/wireguard/wfm"$S".*
	if ((failed == 0)) && [[ -z ${E2E_KEEP:-} ]]; then rm -rf "$WORK"; else echo "scratch directory: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # wait_for SECONDS COMMAND...: poll until the command succeeds
	local deadline=$(($(date +%s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		(($(date +%s) < deadline)) || return 1
		sleep 0.2
	done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SSHD=$(command -v sshd || echo /usr/sbin/sshd)

for tool in wireguard-go wg curl python3 ssh ssh-keygen socat ip sha256sum; do
	command -v "$tool" >/dev/null || abort "$tool is not installed"
done
[[ -x $SSHD ]] || abort "sshd is not installed (Debian: openssh-server)"
[[ -x $RWG ]] || abort "no rwg binary at $RWG (cargo build --release -p rwg, or set RWG)"
[[ $(id -u) == 0 ]] || abort "needs root (network namespaces, TUN)"
log "scratch $WORK, namespaces *-$ID, rwg $RWG"
wg() { timeout -k 2 10 wg "$@"; }

# --- namespaces and links -------------------------------------------------------------------
for ns in "$NSP" "$NSQ" "$NSH" "$NSC" "$NSM"; do
	ip netns add "$ns" || abort "cannot create namespace $ns"
	ip -n "$ns" link set lo up
done
# root <-> P and root <-> Q
ip link add "vfp$S" type veth peer name eth0 netns "$NSP"
ip addr add "10.214.$N.1/30" dev "vfp$S"
ip link set "vfp$S" up
ip -n "$NSP" addr add "10.214.$N.2/30" dev eth0
ip -n "$NSP" link set eth0 up
ip link add "vfq$S" type veth peer name eth0 netns "$NSQ"
ip addr add "10.215.$N.1/30" dev "vfq$S"
ip link set "vfq$S" up
ip -n "$NSQ" addr add "10.215.$N.2/30" dev eth0
ip -n "$NSQ" link set eth0 up
# P <-> H: the 1280-byte hop (P's side; H's side keeps 1500, so H announces a large MSS).
ip -n "$NSP" link add toh type veth peer name eth0 netns "$NSH"
ip -n "$NSP" addr add 10.88.0.1/24 dev toh
ip -n "$NSP" link set toh mtu 1280 up
ip -n "$NSH" addr add 10.88.0.2/24 dev eth0
ip -n "$NSH" link set eth0 up
ip -n "$NSH" route add default via 10.88.0.1
ip netns exec "$NSP" sysctl -qw net.ipv4.ip_forward=1
# C <-> M: M answers at .2 now and at .3 later.
ip -n "$NSC" link add tom type veth peer name eth0 netns "$NSM"
ip -n "$NSC" addr add 10.216.0.1/24 dev tom
ip -n "$NSC" link set tom up
ip -n "$NSM" addr add 10.216.0.2/24 dev eth0
ip -n "$NSM" link set eth0 up

# --- keys and peers -------------------------------------------------------------------------
umask 077
for k in p q m proxy stdio mover; do
	wg genkey >"$WORK/$k.key"
	wg pubkey <"$WORK/$k.key" >"$WORK/$k.pub"
done
key() { cat "$WORK/$1.key"; }
pub() { cat "$WORK/$1.pub"; }

start_wgo() { # start_wgo NS IFACE KEYNAME ADDRESS PEER-ARGS...
	local ns=$1 ifc=$2 k=$3 addr=$4
	shift 4
	ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 wireguard-go "$ifc" >"$WORK/$ifc.log" 2>&1 &
	PIDS+=($!)
	wait_for 10 test -S "/var/run/wireguard/$ifc.sock" || abort "wireguard-go $ifc did not start"
	ip netns exec "$ns" timeout -k 2 10 wg set "$ifc" private-key "$WORK/$k.key" listen-port 51820 "$@" ||
		abort "wg set $ifc"
	ip -n "$ns" addr add "$addr" dev "$ifc"
	ip -n "$ns" link set "$ifc" mtu 1420 up
}
start_wgo "$NSP" "wfp$S" p 10.66.0.1/24 \
	peer "$(pub proxy)" allowed-ips 10.66.0.2/32 peer "$(pub stdio)" allowed-ips 10.66.0.5/32
start_wgo "$NSQ" "wfq$S" q 10.77.0.1/24 peer "$(pub proxy)" allowed-ips 10.66.0.2/32
ip -n "$NSQ" route add 10.66.0.0/24 dev "wfq$S"
start_wgo "$NSM" "wfm$S" m 10.99.0.1/24 peer "$(pub mover)" allowed-ips 10.99.0.2/32

# --- services -------------------------------------------------------------------------------
mkdir -p "$WORK/www-p" "$WORK/www-q" "$WORK/www-m"
echo "page of peer P $ID" >"$WORK/www-p/index.html"
echo "page of peer Q $ID" >"$WORK/www-q/index.html"
echo "page of peer M $ID" >"$WORK/www-m/index.html"
head -c 20000000 /dev/urandom >"$WORK/www-p/big.bin"
BIG_SUM=$(sha256sum <"$WORK/www-p/big.bin" | cut -d' ' -f1)
cat >"$WORK/sink.py" <<'EOF'
# Accepts one TCP connection at a time and answers with the SHA-256 of what it received.
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
while True:
    c, _ = s.accept()
    h = hashlib.sha256()
    while data := c.recv(65536):
        h.update(data)
    c.sendall(h.hexdigest().encode() + b"\n")
    c.close()
EOF
ip netns exec "$NSP" python3 "$HERE/servers/httpd.py" 10.66.0.1 8000 "$WORK/www-p" >"$WORK/http-p.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NSP" python3 "$HERE/servers/dns1.py" 10.66.0.1 web.test 10.66.0.1 >"$WORK/dns.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NSP" bash -c "ulimit -n 8192; exec python3 '$HERE/servers/tcp_echo.py' 10.66.0.1 7008" >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NSQ" python3 "$HERE/servers/httpd.py" 10.77.0.1 8000 "$WORK/www-q" >"$WORK/http-q.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NSH" python3 "$WORK/sink.py" 10.88.0.2 9000 >"$WORK/sink.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NSM" python3 "$HERE/servers/httpd.py" 10.99.0.1 8000 "$WORK/www-m" >"$WORK/http-m.log" 2>&1 &
PIDS+=($!)

# sshd in P, for the stdio tunnel.
sshd_setup "$WORK/ssh" 10.66.0.1:22
ip netns exec "$NSP" "$SSHD" -D -e -f "$WORK/ssh/sshd_config" >"$WORK/sshd.log" 2>&1 &
PIDS+=($!)

# --- the proxy under test -------------------------------------------------------------------
cat >"$WORK/wg.conf" <<EOF
[Interface]
PrivateKey = $(key proxy)
Address = 10.66.0.2/32
DNS = 10.66.0.1

[Peer]
PublicKey = $(pub p)
Endpoint = 10.214.$N.2:51820
AllowedIPs = 10.66.0.0/24, 10.88.0.0/24

[Peer]
PublicKey = $(pub q)
Endpoint = 10.215.$N.2:51820
AllowedIPs = 10.77.0.0/24
EOF
chmod 600 "$WORK/wg.conf"
P_HTTP=$(free_port) P_SOCKS=$(free_port) P_METRICS=$(free_port) P_SINK=$(free_port)
# (The RSS check below is what the rwg binary's allocator, rwg_device::process::MapLarge, is for:
# it gives each 512 KiB socket buffer a mapping of its own. From glibc's heap they climbed to
# 0.47, 0.93 and 1.07 GB over three rounds of 1000 connections; with glibc's mmap threshold
# fixed, still 32.6, 41.6 and 45.6 MiB, as buffers were carved out of the heap space earlier rounds
# had freed and zeroed whole.)
# The HTTP proxy's connect timeout is rwg proxy's default (15 s): "nobody there: 504" waits it out.
(
	ulimit -n 8192
	exec "$RWG" proxy --config "$WORK/wg.conf" --http "127.0.0.1:$P_HTTP" --socks5 "127.0.0.1:$P_SOCKS" \
		--http-auth alice:s3cret --socks5-auth alice:s3cret --health "127.0.0.1:$P_METRICS" \
		--forward "tcp:127.0.0.1:$P_SINK:10.88.0.2:9000"
) >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_for 15 grep -q ready "$WORK/proxy.log" || {
	cat "$WORK/proxy.log"
	abort "rwg proxy did not start"
}
log "proxy up (pid $PROXY_PID): HTTP 127.0.0.1:$P_HTTP, SOCKS5 127.0.0.1:$P_SOCKS"
metrics() { curl -s --max-time 5 "http://127.0.0.1:$P_METRICS/metrics"; }
metric() { metrics | awk -v m="$1" '$1 == m {print $2}'; }
readyz() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$P_METRICS/readyz"; }

HTTP=(-x "http://127.0.0.1:$P_HTTP" -U alice:s3cret --max-time 60 -sS)

# Before any traffic no handshake has happened: not ready.
check "readyz is 503 before any handshake" test "$(readyz)" = 503

# --- HTTP proxy -----------------------------------------------------------------------------
page_is() { # page_is WANT CURL-ARGS...: the body fetched is WANT
	local want=$1 got
	shift
	got=$(curl "$@") && [[ $got == "$want" ]]
}
status_is() { # status_is CODE CURL-ARGS...: the status of the answer is CODE
	local want=$1
	shift
	[[ $(curl -s -o /dev/null -w '%{http_code}' "$@") == "$want" ]]
}
PAGE_P="page of peer P $ID" PAGE_Q="page of peer Q $ID" PAGE_M="page of peer M $ID"
check "curl -x: plain request to peer P" page_is "$PAGE_P" "${HTTP[@]}" http://10.66.0.1:8000/index.html
check "curl --proxytunnel: CONNECT to peer P" page_is "$PAGE_P" --proxytunnel "${HTTP[@]}" http://10.66.0.1:8000/index.html
check "host name resolved by the tunnel's DNS" page_is "$PAGE_P" "${HTTP[@]}" http://web.test:8000/index.html
no_credentials() {
	local out
	out=$(curl -si -x "http://127.0.0.1:$P_HTTP" --max-time 10 http://10.66.0.1:8000/index.html)
	[[ $out == "HTTP/1.1 407"* && $out == *"Proxy-Authenticate: Basic"* ]]
}
check "no credentials: 407 with Proxy-Authenticate" no_credentials
check "wrong credentials: 407" status_is 407 -x "http://127.0.0.1:$P_HTTP" -U alice:wrong --max-time 10 http://10.66.0.1:8000/
check "refused port: 502" status_is 502 "${HTTP[@]}" http://10.66.0.1:1/
check "nobody there: 504" status_is 504 "${HTTP[@]}" http://10.66.0.99:80/

# Bad input while a big download runs through the same proxy: each bad request gets its
# status, and the download is intact.
curl "${HTTP[@]}" -o "$WORK/big.http" http://10.66.0.1:8000/big.bin >"$WORK/big.log" 2>&1 &
BIG=$!
AUTH="Proxy-Authorization: Basic YWxpY2U6czNjcmV0"
raw_status() { # raw_status WANT FILE: send FILE's bytes to the HTTP proxy; the status is WANT
	local line
	line=$(timeout 15 socat -t 5 - "TCP:127.0.0.1:$P_HTTP" <"$2" 2>/dev/null | head -n 1 | tr -d '\r')
	echo "$line"
	[[ $line == "HTTP/1.1 $1 "* ]]
}
printf 'hello there\r\n\r\n' >"$WORK/req-garbage"
printf 'GET http://10.66.0.1:8000/ HTTP/1.1\r\n%s\r\nno colon here\r\n\r\n' "$AUTH" >"$WORK/req-badheader"
python3 -c 'import sys; sys.stdout.write("GET http://10.66.0.1:8000/ HTTP/1.1\r\n" + sys.argv[1] + "\r\nX-Big: " + "a" * 20000 + "\r\n\r\n")' "$AUTH" >"$WORK/req-big"
check "malformed request line: 400" raw_status 400 "$WORK/req-garbage"
check "bad header line: 400" raw_status 400 "$WORK/req-badheader"
check "oversized headers: 431" raw_status 431 "$WORK/req-big"
abandon() { # clients that vanish in the middle of their request head
	local _
	for _ in 1 2 3 4 5; do
		printf 'GET http://10.66.0.1:8000/ HTTP/1.1\r\nHo' | timeout 2 socat -t 0 - "TCP:127.0.0.1:$P_HTTP" >/dev/null 2>&1
	done
	page_is "$PAGE_P" "${HTTP[@]}" http://10.66.0.1:8000/index.html
}
check "clients gone in the middle of their request: nothing breaks" abandon
big_intact() { wait "$BIG" && [[ $(sha256sum <"$WORK/big.http" | cut -d' ' -f1) == "$BIG_SUM" ]]; }
check "big download through the HTTP proxy intact meanwhile" big_intact

# --- two peers ------------------------------------------------------------------------------
check "second peer Q reached through its AllowedIPs" page_is "$PAGE_Q" "${HTTP[@]}" http://10.77.0.1:8000/index.html
SOCKS=(-sS --max-time 30 --socks5-hostname "alice:s3cret@127.0.0.1:$P_SOCKS")
check "SOCKS5 to peer P" page_is "$PAGE_P" "${SOCKS[@]}" http://10.66.0.1:8000/index.html
check "SOCKS5 to peer Q" page_is "$PAGE_Q" "${SOCKS[@]}" http://10.77.0.1:8000/index.html
ready() { [[ $(readyz) == 200 ]]; }
check "readyz is 200 once both peers have handshaken" wait_for 10 ready

# --- MTU: H is behind a 1280-byte hop that only P knows about --------------------------------
head -c 8000000 /dev/urandom >"$WORK/upload.bin"
UP_SUM=$(sha256sum <"$WORK/upload.bin" | cut -d' ' -f1)
upload() {
	local got
	got=$(timeout 60 socat -t 30 - "TCP:127.0.0.1:$P_SINK,shut-down" <"$WORK/upload.bin")
	[[ $got == "$UP_SUM" ]]
}
check "upload to a host behind a 1280-byte path completes intact" upload
split_some() { (($(metric rwg_netstack_segments_split_total) > 0)); }
check "the stack split segments after ICMP fragmentation-needed" split_some

# --- stdio: ssh through the tunnel ----------------------------------------------------------
cat >"$WORK/stdio.conf" <<EOF
[Interface]
PrivateKey = $(key stdio)
Address = 10.66.0.5/32

[Peer]
PublicKey = $(pub p)
Endpoint = 10.214.$N.2:51820
AllowedIPs = 10.66.0.0/24
EOF
chmod 600 "$WORK/stdio.conf"
SSH=(ssh -i "$WORK/ssh/client_key" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
	-o LogLevel=ERROR -o ConnectTimeout=30 -o "ProxyCommand=$RWG proxy --config $WORK/stdio.conf --stdio %h:%p")
ssh_echo() { [[ $(timeout 60 "${SSH[@]}" root@10.66.0.1 echo through the tunnel) == "through the tunnel" ]]; }
check "ssh with ProxyCommand --stdio runs a command" ssh_echo
head -c 3000000 /dev/urandom >"$WORK/ssh.bin"
SSH_SUM=$(sha256sum <"$WORK/ssh.bin" | cut -d' ' -f1)
ssh_sum() { [[ $(timeout 60 "${SSH[@]}" root@10.66.0.1 sha256sum <"$WORK/ssh.bin" | cut -d' ' -f1) == "$SSH_SUM" ]]; }
check "ssh: stdin's EOF reaches the remote and its output comes back whole" ssh_sum
no_stdio_left() { ! pgrep -f -- "--config $WORK/stdio.conf --stdio" >/dev/null; }
check "no stdio proxy left behind" wait_for 5 no_stdio_left

# --- metrics --------------------------------------------------------------------------------
metrics >"$WORK/metrics.txt"
metrics_complete() {
	local pat
	for pat in 'rwg_proxy_http_requests_total{code="400"} [1-9]' 'rwg_proxy_http_requests_total{code="407"} [1-9]' \
		'rwg_proxy_http_requests_total{code="431"} 1' 'rwg_proxy_http_requests_total{code="502"} [1-9]' \
		'rwg_proxy_http_requests_total{code="504"} [1-9]' 'rwg_proxy_http_requests_total{code="200"} [1-9]' \
		'rwg_proxy_socks5_requests_total{result="succeeded"} [1-9]' 'rwg_proxy_open_connections{service="http"} ' \
		'rwg_peer_tx_bytes_total{peer=' 'rwg_netstack_transmitted_packets_total [1-9]'; do
		grep -q "^$pat" "$WORK/metrics.txt" || { echo "missing: $pat"; return 1; }
	done
}
check "metrics: HTTP requests by status, SOCKS5 results, peers, stack" metrics_complete

# --- RSS under 1000 concurrent SOCKS5 connections -------------------------------------------
cat >"$WORK/socks_many.py" <<'EOF'
# Opens N SOCKS5 CONNECTs to the echo server, round-trips a message on each, holds them all
# open, prints "open", waits for a line on stdin, closes them, prints "closed".
import socket, struct, sys
proxy_port, n = int(sys.argv[1]), int(sys.argv[2])
target = socket.inet_aton("10.66.0.1") + struct.pack(">H", 7008)
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
    s.sendall(b"\x05\x01\x02")
    assert s.recv(2) == b"\x05\x02"
    s.sendall(b"\x01\x05alice\x06s3cret")
    assert s.recv(2) == b"\x01\x00"
    s.sendall(b"\x05\x01\x00\x01" + target)
    reply = b""
    while len(reply) < 10:
        reply += s.recv(10 - len(reply))
    assert reply[1] == 0, reply
    msg = b"connection %d " % i * 20
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += s.recv(65536)
    assert got == msg
    conns.append(s)
print("open", flush=True)
sys.stdin.readline()
for s in conns:
    s.close()
print("closed", flush=True)
EOF
rss() { awk '/^VmRSS/ {print $2}' "/proc/$PROXY_PID/status"; }
socks_idle() { [[ $(metric 'rwg_proxy_open_connections{service="socks5"}') == 0 ]]; }
many() { # many ROUND: open 1000, measure, close, wait until the proxy has none open
	local round=$1
	coproc MANY { ulimit -n 8192; exec python3 "$WORK/socks_many.py" "$P_SOCKS" 1000 2>&1; }
	local line
	read -r -t 300 line <&"${MANY[0]}" || { echo "round $round: no answer from the client" >&2; return 1; }
	[[ $line == open ]] || { echo "round $round: $line" >&2; cat <&"${MANY[0]}" >&2; return 1; }
	RSS_OPEN[round]=$(rss)
	echo >&"${MANY[1]}"
	read -r -t 60 line <&"${MANY[0]}"
	wait "$MANY_PID" 2>/dev/null
	wait_for 60 socks_idle || { echo "round $round: SOCKS5 connections stay open" >&2; return 1; }
	RSS_CLOSED[round]=$(rss)
}
declare -a RSS_OPEN RSS_CLOSED
RSS_BASE=$(rss)
if many 1 && many 2 && many 3; then
	log "RSS (KiB): before $RSS_BASE; 1000 open ${RSS_OPEN[1]}, ${RSS_OPEN[2]}, ${RSS_OPEN[3]}; closed ${RSS_CLOSED[1]}, ${RSS_CLOSED[2]}, ${RSS_CLOSED[3]}"
	# Flat: the third round costs no more than the first (10 % or 8 MiB of slack).
	check "RSS flat over three rounds of 1000 SOCKS5 connections" test "${RSS_OPEN[3]}" -le $((RSS_OPEN[1] * 11 / 10 + 8192))
	check "the proxy still works after them" page_is "$PAGE_P" "${HTTP[@]}" http://10.66.0.1:8000/index.html
else
	failc "1000 concurrent SOCKS5 connections"
fi

# --- endpoint re-resolution: the peer behind moving.test moves ------------------------------
mkdir -p "/etc/netns/$NSC"
printf '127.0.0.1 localhost\n10.216.0.2 moving.test\n' >"/etc/netns/$NSC/hosts"
cat >"$WORK/mover.conf" <<EOF
[Interface]
PrivateKey = $(key mover)
Address = 10.99.0.2/32

[Peer]
PublicKey = $(pub m)
Endpoint = moving.test:51820
AllowedIPs = 10.99.0.0/24
PersistentKeepalive = 1
EOF
chmod 600 "$WORK/mover.conf"
ip netns exec "$NSC" "$RWG" proxy --config "$WORK/mover.conf" --socks5 127.0.0.1:1080 \
	--reresolve-after 3 >"$WORK/mover.log" 2>&1 &
PIDS+=($!)
wait_for 15 grep -q ready "$WORK/mover.log" || { cat "$WORK/mover.log"; abort "the moving client did not start"; }
in_c() { page_is "$PAGE_M" -sS --max-time 5 --socks5-hostname 127.0.0.1:1080 http://10.99.0.1:8000/index.html; }
through_c() { ip netns exec "$NSC" bash -c "$(declare -f page_is in_c); PAGE_M='$PAGE_M' in_c"; }
check "reaches peer M by its name" wait_for 20 through_c
# M moves: its old address goes away, a new one comes, the name follows. M itself never
# sends first (no keepalive), so only a new resolution can find it.
ip -n "$NSM" addr del 10.216.0.2/24 dev eth0
ip -n "$NSM" addr add 10.216.0.3/24 dev eth0
printf '127.0.0.1 localhost\n10.216.0.3 moving.test\n' >"/etc/netns/$NSC/hosts"
check "reaches peer M again after it moved (its name resolved again)" wait_for 60 through_c

check "the proxy is still alive" kill -0 "$PROXY_PID"
echo "$passed passed, $failed failed"
((failed == 0))
