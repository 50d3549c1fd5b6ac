#!/usr/bin/env bash
# End-to-end tests of `rwg proxy` against a real WireGuard peer (wireguard-go on a TUN).
#
#   root namespace                                  namespace rwgp-<pid>
#   rwg proxy --config wg.conf                      wireguard-go wgp<pid>  10.66.0.1/24
#     SOCKS5 127.0.0.1:P_SOCKS                        HTTP 10.66.0.1:8000 (page, 20 MB file)
#     forwards, reverse forward        veth         TCP echo :7008, UDP echo :7007, DNS :53
#     UDP 10.213.N.1  <-------------------------->  10.213.N.2:51820
#
# Needs root, /dev/net/tun, wireguard-go, wg, socat, curl, python3.
# Usage: tests/e2e/proxy.sh        (RWG=path/to/rwg, default target/release/rwg)
# Output: PASS/FAIL per check, then exactly "N passed, N failed". Exit status 1 on failure.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RWG=${RWG:-$ROOT/target/release/rwg}
[[ $RWG == /* ]] || RWG=$PWD/$RWG

ID=$$
NS=rwgp-$ID
WGIF=wgp$((ID % 100000))
VETH_H=vph$((ID % 100000))
VETH_N=vpn$((ID % 100000))
NET=10.213.$((ID % 250))
PEER_IP=10.66.0.1
OWN_IP=10.66.0.2
UNREACHABLE_IP=10.99.0.1
WORK=$(mktemp -d /tmp/rwg-proxy-e2e.XXXXXX)
PIDS=()
passed=0 failed=0

# shellcheck source=tests/e2e/checks.sh
source "$HERE/checks.sh"

cleanup() {
	local pid
	set +e
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	sleep 0.3
	for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
	ip netns pids "$NS" 2>/dev/null | while read -r pid; do kill -KILL "$pid" 2>/dev/null; done
	ip netns del "$NS" 2>/dev/null
	ip link del "$VETH_H" 2>/dev/null
	rm -f "/var/run/wireguard/$WGIF.sock" "/var/run/wireguard/$WGIF.name"
	if ((failed == 0)) && [[ -z ${E2E_KEEP:-} ]]; then rm -rf "$WORK"; else echo "scratch directory: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS COMMAND...: poll until the command succeeds.
wait_for() {
	local deadline=$(($(date +%s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		(($(date +%s) < deadline)) || return 1
		sleep 0.2
	done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for tool in wireguard-go wg socat curl python3 ip sha256sum; do
	command -v "$tool" >/dev/null || { echo "FAIL: $tool is not installed"; echo "0 passed, 1 failed"; exit 1; }
done
[[ -x $RWG ]] || { echo "FAIL: no rwg binary at $RWG (cargo build --release -p rwg)"; echo "0 passed, 1 failed"; exit 1; }
[[ $(id -u) == 0 ]] || { echo "FAIL: needs root (network namespaces, TUN)"; echo "0 passed, 1 failed"; exit 1; }

log "scratch $WORK, namespace $NS, interface $WGIF, rwg $RWG"

# --- the peer: wireguard-go in a namespace, reached over a veth ------------------------------
ip netns add "$NS"
ip -n "$NS" link set lo up
ip link add "$VETH_H" type veth peer name "$VETH_N"
ip link set "$VETH_N" netns "$NS"
ip addr add "$NET.1/30" dev "$VETH_H"
ip link set "$VETH_H" up
ip -n "$NS" addr add "$NET.2/30" dev "$VETH_N"
ip -n "$NS" link set "$VETH_N" up

# Every wg call has a time limit: a configuration deadlock fails instead of hanging.
wg() { timeout -k 2 10 wg "$@"; }
PEER_KEY=$(wg genkey)
PEER_PUB=$(wg pubkey <<<"$PEER_KEY")
OWN_KEY=$(wg genkey)
OWN_PUB=$(wg pubkey <<<"$OWN_KEY")
PSK=$(wg genpsk)

ip netns exec "$NS" env WG_PROCESS_FOREGROUND=1 wireguard-go "$WGIF" >"$WORK/wireguard-go.log" 2>&1 &
PIDS+=($!)
wait_for 10 test -S "/var/run/wireguard/$WGIF.sock" || { echo "FAIL: wireguard-go did not start"; cat "$WORK/wireguard-go.log"; echo "0 passed, 1 failed"; exit 1; }
printf '%s\n' "$PEER_KEY" >"$WORK/peer.key"
printf '%s\n' "$PSK" >"$WORK/psk"
ip netns exec "$NS" timeout -k 2 10 wg set "$WGIF" private-key "$WORK/peer.key" listen-port 51820 \
	peer "$OWN_PUB" preshared-key "$WORK/psk" allowed-ips "$OWN_IP/32"
ip -n "$NS" addr add "$PEER_IP/24" dev "$WGIF"
ip -n "$NS" link set "$WGIF" mtu 1420 up

# --- services on the tunnel side --------------------------------------------------------------
mkdir -p "$WORK/www" "$WORK/local"
echo "hello from the far side of the tunnel $ID" >"$WORK/www/index.html"
head -c 20000000 /dev/urandom >"$WORK/www/big.bin"
BIG_SUM=$(sha256sum <"$WORK/www/big.bin" | cut -d' ' -f1)

ip netns exec "$NS" python3 "$HERE/servers/httpd.py" "$PEER_IP" 8000 "$WORK/www" >"$WORK/http.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS" python3 "$HERE/servers/dns1.py" "$PEER_IP" web.test "$PEER_IP" >"$WORK/dns.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS" socat UDP4-RECVFROM:7007,bind="$PEER_IP",fork PIPE >"$WORK/udpecho.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS" python3 "$HERE/servers/tcp_echo.py" "$PEER_IP" 7008 >"$WORK/tcpecho.log" 2>&1 &
PIDS+=($!)

# A local service for the reverse forward: a TCP echo in the root namespace.
P_SOCKS=$(free_port) P_FWD=$(free_port) P_UDP=$(free_port) P_LOCAL=$(free_port) P_BAD=$(free_port) P_REFUSED=$(free_port)
python3 "$HERE/servers/tcp_echo.py" 127.0.0.1 "$P_LOCAL" >"$WORK/localecho.log" 2>&1 &
PIDS+=($!)

# --- rwg proxy ----------------------------------------------------------------------------------
cat >"$WORK/wg.conf" <<EOF
# rwg proxy e2e
[Interface]
PrivateKey = $OWN_KEY
Address = $OWN_IP/32
DNS = $PEER_IP

[Peer]
PublicKey = $PEER_PUB
PresharedKey = $PSK
Endpoint = $NET.2:51820
AllowedIPs = 10.66.0.0/24
EOF
chmod 600 "$WORK/wg.conf"
LOG_LEVEL=debug "$RWG" proxy --config "$WORK/wg.conf" --socks5 "127.0.0.1:$P_SOCKS" \
	--forward "tcp:127.0.0.1:$P_FWD:$PEER_IP:7008" \
	--forward "udp:127.0.0.1:$P_UDP:$PEER_IP:7007" \
	--reverse "tcp:9000:127.0.0.1:$P_LOCAL" \
	--forward "tcp:127.0.0.1:$P_BAD:$UNREACHABLE_IP:80" \
	--forward "tcp:127.0.0.1:$P_REFUSED:$PEER_IP:1" \
	>"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
if ! wait_for 15 grep -q ready "$WORK/proxy.log"; then
	echo "FAIL: rwg proxy did not start"
	cat "$WORK/proxy.log"
	echo "0 passed, 1 failed"
	exit 1
fi
log "rwg proxy up (pid $PROXY_PID); SOCKS5 127.0.0.1:$P_SOCKS"

SOCKS=(--socks5-hostname "127.0.0.1:$P_SOCKS")
URL=http://$PEER_IP:8000

# The unreachable forward takes the stack's connect timeout to fail: start it now, check it last.
(
	start=$(date +%s)
	curl -sS --max-time 60 "http://127.0.0.1:$P_BAD/" >"$WORK/bad.body" 2>"$WORK/bad.err"
	echo "rc=$? seconds=$(($(date +%s) - start))" >"$WORK/bad.result"
) &
BAD_PID=$!

# --- checks -------------------------------------------------------------------------------------
page_via_socks() { curl -sS --max-time 20 "${SOCKS[@]}" "$URL/index.html" | grep -qx "hello from the far side of the tunnel $ID"; }
check "SOCKS5 CONNECT: first page (handshake included)" page_via_socks

big_via_socks() {
	local sum
	sum=$(curl -sS --max-time 120 "${SOCKS[@]}" "$URL/big.bin" | sha256sum | cut -d' ' -f1)
	[[ $sum == "$BIG_SUM" ]] || { echo "sha256 $sum, expected $BIG_SUM"; return 1; }
}
check "SOCKS5 CONNECT: 20 MB file, sha256 matches" big_via_socks

hostname_via_socks() { curl -sS --max-time 20 "${SOCKS[@]}" "http://web.test:8000/index.html" | grep -q "far side"; }
check "SOCKS5 host name resolved by the tunnel's DNS (socks5h)" hostname_via_socks

unknown_host() { ! curl -sS --max-time 20 "${SOCKS[@]}" "http://nosuch.test:8000/" 2>&1 && page_via_socks; }
check "SOCKS5 unknown host name fails for that client only" unknown_host

cat >"$WORK/udp_assoc.py" <<'EOF'
import os, socket, struct, sys
proxy_port, target, target_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
c.sendall(b"\x05\x01\x00")
assert c.recv(2) == b"\x05\x00", "no-auth refused"
c.sendall(b"\x05\x03\x00\x01" + bytes(6))
reply = b""
while len(reply) < 10:
    chunk = c.recv(10 - len(reply))
    assert chunk, "closed"
    reply += chunk
assert reply[1] == 0, "UDP ASSOCIATE refused: %d" % reply[1]
relay_ip = socket.inet_ntoa(reply[4:8])
relay = ("127.0.0.1" if relay_ip == "0.0.0.0" else relay_ip, struct.unpack("!H", reply[8:10])[0])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
header = b"\x00\x00\x00\x01" + socket.inet_aton(target) + struct.pack("!H", target_port)
for attempt in range(5):
    payload = os.urandom(512)
    u.sendto(header + payload, relay)
    try:
        data, _ = u.recvfrom(4096)
    except socket.timeout:
        continue
    assert data[3] == 1 and data[10:] == payload, "echo differs"
    print("ok after", attempt + 1, "attempt(s)")
    sys.exit(0)
sys.exit("no echo")
EOF
check "SOCKS5 UDP ASSOCIATE: echo through the tunnel" timeout 30 python3 "$WORK/udp_assoc.py" "$P_SOCKS" "$PEER_IP" 7007

head -c 3000000 /dev/urandom >"$WORK/echo.in"
ECHO_SUM=$(sha256sum <"$WORK/echo.in" | cut -d' ' -f1)
tcp_forward() {
	local sum
	sum=$(timeout 60 socat -t 20 -T 30 STDIO "TCP4:127.0.0.1:$P_FWD" <"$WORK/echo.in" | sha256sum | cut -d' ' -f1)
	[[ $sum == "$ECHO_SUM" ]] || { echo "sha256 $sum, expected $ECHO_SUM"; return 1; }
}
check "TCP forward: 3 MB both ways through the tunnel's TCP echo" tcp_forward

cat >"$WORK/echo_client.py" <<'EOF'
# Sends the file while reading the echo; each transfer must come back whole within 20 s.
import socket, sys, threading
port, path, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
data = open(path, "rb").read()
for i in range(rounds):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    def send():
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send, daemon=True)
    t.start()
    got = bytearray()
    try:
        while b := s.recv(65536):
            got += b
    except OSError as e:
        sys.exit("transfer %d: %r after %d of %d bytes" % (i + 1, e, len(got), len(data)))
    t.join(20)
    s.close()
    if bytes(got) != data:
        sys.exit("transfer %d: %d bytes back, differing" % (i + 1, len(got)))
print(rounds, "transfers whole")
EOF
# A stall that strikes one transfer in ten or twenty (as a deadlocked echo server did, or a
# lost wakeup would) shows up here far more often than in a single transfer.
check "TCP forward: 8 transfers of 3 MB in a row, none stalls" timeout 200 python3 "$WORK/echo_client.py" "$P_FWD" "$WORK/echo.in" 8

udp_forward() {
	python3 - "$P_UDP" <<'EOF'
import os, socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
for attempt in range(5):
    payload = os.urandom(700)
    u.sendto(payload, ("127.0.0.1", int(sys.argv[1])))
    try:
        data = u.recv(4096)
    except socket.timeout:
        continue
    sys.exit(0 if data == payload else "echo differs")
sys.exit("no echo")
EOF
}
check "UDP forward: echo through the tunnel" udp_forward

reverse_forward() {
	local sum
	sum=$(timeout 60 ip netns exec "$NS" socat -t 20 -T 30 STDIO "TCP4:$OWN_IP:9000" <"$WORK/echo.in" | sha256sum | cut -d' ' -f1)
	[[ $sum == "$ECHO_SUM" ]] || { echo "sha256 $sum, expected $ECHO_SUM"; return 1; }
}
check "reverse forward: peer connects to $OWN_IP:9000, 3 MB both ways to a local echo" reverse_forward

concurrent() {
	local ok
	ok=$(seq 100 | xargs -P 100 -I{} curl -s -o /dev/null --max-time 60 -w '%{http_code}\n' "${SOCKS[@]}" "$URL/index.html?{}" | grep -c '^200$')
	[[ $ok == 100 ]] || { echo "$ok of 100 succeeded"; return 1; }
}
check "100 concurrent SOCKS5 connections all succeed" concurrent

garbage() {
	head -c 4096 /dev/urandom | timeout 15 socat -t 3 - "TCP4:127.0.0.1:$P_SOCKS" >/dev/null 2>&1
	printf '\x05\x01\x00\x05\x09\x00\x07garbage' | timeout 15 socat -t 3 - "TCP4:127.0.0.1:$P_SOCKS" >/dev/null 2>&1
	# A client that says nothing, held open while others are served.
	timeout 8 socat -u /dev/zero,readbytes=0 "TCP4:127.0.0.1:$P_SOCKS" >/dev/null 2>&1 &
	page_via_socks && kill -0 "$PROXY_PID"
}
check "garbage on the SOCKS5 port does not stop service for others" garbage

refused() {
	! curl -sS --max-time 20 "http://127.0.0.1:$P_REFUSED/" && page_via_socks && kill -0 "$PROXY_PID" &&
		grep -q "cannot connect to $PEER_IP:1" "$WORK/proxy.log"
}
check "forward to a closed tunnel port: that client is closed, reason logged, others served" refused

bad_config() {
	local out
	printf '[Interface]\nPrivateKey = %s\nAddress = 10.0.0.2/33\n' "$OWN_KEY" >"$WORK/broken.conf"
	out=$("$RWG" proxy --config "$WORK/broken.conf" --socks5 127.0.0.1:0 2>&1) && { echo "exit 0"; return 1; }
	echo "$out"
	grep -q "broken.conf:3:" <<<"$out" && ! grep -q "$OWN_KEY" <<<"$out"
}
check "broken config file: file:line error, non-zero exit, no key echoed" bad_config

bad_flags() {
	local out
	out=$("$RWG" proxy --config "$WORK/wg.conf" --forward "tcp:127.0.0.1:1" 2>&1) && return 1
	echo "$out"
	grep -q -- "--forward" <<<"$out" || return 1
	out=$("$RWG" proxy --config "$WORK/wg.conf" 2>&1) && return 1
	grep -q "at least one of" <<<"$out"
}
check "bad flags: clear message, non-zero exit" bad_flags

unreachable() {
	wait "$BAD_PID"
	cat "$WORK/bad.result" "$WORK/bad.err"
	grep -q "rc=0" "$WORK/bad.result" && return 1
	[[ ! -s $WORK/bad.body ]] && grep -q "cannot connect to $UNREACHABLE_IP:80" "$WORK/proxy.log" &&
		page_via_socks && kill -0 "$PROXY_PID"
}
check "forward to an unreachable tunnel address: that client only, reason logged" unreachable

check "no secret in the proxy's log" bash -c "! grep -q -e '$OWN_KEY' -e '$PSK' '$WORK/proxy.log'"

# Every check above may have passed while a thread of the proxy panicked (a connection's task
# dies, the others go on): the log says so.
alive_no_panic() {
	kill -0 "$PROXY_PID" || { echo "rwg proxy (pid $PROXY_PID) is gone"; return 1; }
	! grep -E 'panicked' "$WORK/proxy.log" || return 1
	! grep -E '^panic: |^fatal error: ' "$WORK/wireguard-go.log"
}
check "rwg proxy still running; no panic in its log or wireguard-go's" alive_no_panic

echo "$passed passed, $failed failed"
((failed == 0))
