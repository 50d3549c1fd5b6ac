#!/usr/bin/env bash
# End-to-end tests of `rwg proxy`'s HTTP proxy, stdio tunnel, health endpoint, connection cap,
# idle timeout, endpoint re-resolution and --check, against a real WireGuard peer (wireguard-go
# on a TUN device).
#
#   root namespace                                  namespace rwgc-<pid>
#   rwg proxy --config wg.conf                      wireguard-go wgc<pid>  10.66.0.1/24
#     --http 127.0.0.1:P_HTTP (basic auth)            HTTP 10.66.0.1:8000 (page, 24 MB file)
#     --health 127.0.0.1:P_HEALTH      veth         TCP echo :7008, sshd :22 (Debian openssh)
#     --max-connections 3 --idle-timeout 3
#     UDP 10.218.N.1  <-------------------------->  10.218.N.2:51820
#   ssh -o ProxyCommand='rwg proxy --config stdio.conf --stdio %h:%p' root@10.66.0.1
#   rwg proxy --config mover.conf (Endpoint = moving.test, its own /etc/hosts through a mount
#     namespace): the peer's second address 10.219.N.2 goes away, the name moves to 10.218.N.2
#
# Needs root, /dev/net/tun, wireguard-go, wg, curl, socat, python3, ssh, sshd, unshare.
# Usage: tests/e2e/proxy_cli.sh        (RWG=path/to/rwg, default target/release/rwg)
# Output: PASS/FAIL per check, then exactly "N passed, N failed". Exit status 1 on failure.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RWG=${RWG:-$ROOT/target/release/rwg}
[[ $RWG == /* ]] || RWG=$PWD/$RWG

ID=$$
S=$((ID % 100000))
NS=rwgc-$ID
WGIF=wgc$S
VETH=vgc$S
NET=10.218.$((ID % 250))
WORK=$(mktemp -d /tmp/rwg-proxy-cli.XXXXXX)
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
	ip link del "$VETH" 2>/dev/null
	rm -f /var/run/wireguard/"$WGIF".*
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

for tool in wireguard-go wg curl python3 ssh ssh-keygen socat ip sha256sum unshare; do
	command -v "$tool" >/dev/null || abort "$tool is not installed"
done
[[ -x $SSHD ]] || abort "sshd is not installed (Debian: openssh-server)"
[[ -x $RWG ]] || abort "no rwg binary at $RWG"
[[ $(id -u) == 0 ]] || abort "needs root (network namespaces, TUN)"
log "scratch $WORK, namespace $NS, rwg $RWG"

# --- --check: no network needed ---------------------------------------------------------------
umask 077
for k in peer proxy stdio mover; do
	wg genkey >"$WORK/$k.key"
	wg pubkey <"$WORK/$k.key" >"$WORK/$k.pub"
done
key() { cat "$WORK/$1.key"; }
pub() { cat "$WORK/$1.pub"; }
# Four mistakes, on lines 3, 4, 6 and 11 (counted in this text, not taken from rwg).
cat >"$WORK/broken.conf" <<EOF
[Interface]
PrivateKey = $(key proxy)
MTU = 9
Addres = 10.66.0.2/32

[Peer]
Endpoint = 10.0.0.1:51820

[Peer]
PublicKey = $(pub peer)
AllowedIPs = 10.66.0.0/33
EOF
P_CHECK=$(free_port)
check_broken() {
	local rc=0
	timeout 10 "$RWG" proxy --config "$WORK/broken.conf" --check --http "127.0.0.1:$P_CHECK" \
		>"$WORK/check-broken.out" 2>"$WORK/check-broken.err" || rc=$?
	cat "$WORK/check-broken.out" "$WORK/check-broken.err"
	((rc == 1)) || { echo "exit status $rc, want 1"; return 1; }
	local f=$WORK/broken.conf
	diff <(cut -d' ' -f1 "$WORK/check-broken.out") <(printf '%s\n' "$f:3:" "$f:4:" "$f:6:" "$f:11:") &&
		grep -q "^$f:3: invalid MTU" "$WORK/check-broken.out" &&
		grep -q "^$f:4: unknown key Addres" "$WORK/check-broken.out" &&
		grep -q "^$f:6: .*PublicKey" "$WORK/check-broken.out" &&
		grep -q "^$f:11: invalid AllowedIPs" "$WORK/check-broken.out"
}
check "--check lists every problem as file:line: problem and exits 1" check_broken
printf '[Interface]\nPrivateKey = %s\nAddress = 10.66.0.2/32\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 10.66.0.0/24\n' \
	"$(key proxy)" "$(pub peer)" >"$WORK/good.conf"
check_good() { # a proxy that started would serve --http until timeout kills it (status 124)
	local out rc=0
	out=$(timeout 10 "$RWG" proxy --config "$WORK/good.conf" --check --http "127.0.0.1:$P_CHECK") || rc=$?
	echo "status $rc: $out"
	((rc == 0)) && [[ $out == "$WORK/good.conf: ok (1 peer)" ]]
}
check "--check on a valid file: exit 0, starts nothing" check_good
printf '[Interface]\nPrivateKey = %s\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 10.66.0.0/24\n' \
	"$(key proxy)" "$(pub peer)" >"$WORK/noaddr.conf"
check_noaddr() {
	local out rc=0
	out=$(timeout 10 "$RWG" proxy --config "$WORK/noaddr.conf" --check 2>/dev/null) || rc=$?
	echo "$out"
	((rc == 1)) && [[ $out == "$WORK/noaddr.conf:1: "*Address* ]]
}
check "--check: a file without Address is a problem for the proxy, at [Interface]" check_noaddr

# --- namespace, peer, services ----------------------------------------------------------------
ip netns add "$NS" || abort "cannot create namespace $NS"
ip -n "$NS" link set lo up
ip link add "$VETH" type veth peer name eth0 netns "$NS"
ip addr add "$NET.1/30" dev "$VETH"
ip link set "$VETH" up
ip -n "$NS" addr add "$NET.2/30" dev eth0
ip -n "$NS" link set eth0 up
ip netns exec "$NS" env WG_PROCESS_FOREGROUND=1 wireguard-go "$WGIF" >"$WORK/wireguard-go.log" 2>&1 &
PIDS+=($!)
wait_for 10 test -S "/var/run/wireguard/$WGIF.sock" || abort "wireguard-go did not start"
ip netns exec "$NS" timeout -k 2 10 wg set "$WGIF" private-key "$WORK/peer.key" listen-port 51820 \
	peer "$(pub proxy)" allowed-ips 10.66.0.2/32 peer "$(pub stdio)" allowed-ips 10.66.0.5/32 \
	peer "$(pub mover)" allowed-ips 10.66.0.6/32 ||
	abort "wg set"
ip -n "$NS" addr add 10.66.0.1/24 dev "$WGIF"
ip -n "$NS" link set "$WGIF" mtu 1420 up

mkdir -p "$WORK/www"
echo "page of the peer $ID" >"$WORK/www/index.html"
head -c 24000000 /dev/urandom >"$WORK/www/big.bin"
BIG_SUM=$(sha256sum <"$WORK/www/big.bin" | cut -d' ' -f1)
ip netns exec "$NS" python3 "$HERE/servers/httpd.py" 10.66.0.1 8000 "$WORK/www" >"$WORK/httpd.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS" python3 "$HERE/servers/tcp_echo.py" 10.66.0.1 7008 >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
sshd_setup "$WORK/ssh" 10.66.0.1:22

# --- the proxy under test ---------------------------------------------------------------------
cat >"$WORK/wg.conf" <<EOF
[Interface]
PrivateKey = $(key proxy)
Address = 10.66.0.2/32

[Peer]
PublicKey = $(pub peer)
Endpoint = $NET.2:51820
AllowedIPs = 10.66.0.0/24
EOF
P_HTTP=$(free_port) P_HEALTH=$(free_port)
IDLE=3
LOG_LEVEL=debug "$RWG" proxy --config "$WORK/wg.conf" --http "127.0.0.1:$P_HTTP" --http-auth alice:s3cret \
	--health "127.0.0.1:$P_HEALTH" --max-connections 3 --idle-timeout "$IDLE" >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_for 15 grep -q 'ready' "$WORK/proxy.log" || {
	cat "$WORK/proxy.log"
	abort "rwg proxy did not start"
}
# sshd needs the wg interface address, which exists by now.
ip netns exec "$NS" "$SSHD" -D -e -f "$WORK/ssh/sshd_config" >"$WORK/sshd.log" 2>&1 &
PIDS+=($!)
log "proxy up (pid $PROXY_PID): HTTP 127.0.0.1:$P_HTTP, health 127.0.0.1:$P_HEALTH"
metrics() { curl -s --max-time 5 "http://127.0.0.1:$P_HEALTH/metrics"; }
readyz() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$P_HEALTH/readyz"; }
page_is() { # page_is WANT CURL-ARGS...: the body fetched is WANT
	local want=$1 got
	shift
	got=$(curl "$@") && [[ $got == "$want" ]]
}
status_is() { # status_is CODE CURL-ARGS...: the status of the answer is CODE
	local want=$1 got
	shift
	got=$(curl -s -o /dev/null -w '%{http_code}' "$@")
	echo "status $got"
	[[ $got == "$want" ]]
}
HTTP=(-x "http://127.0.0.1:$P_HTTP" -U alice:s3cret --max-time 60 -sS)
PAGE="page of the peer $ID"

check "/readyz is 503 before any handshake" test "$(readyz)" = 503

# --- HTTP proxy -------------------------------------------------------------------------------
check "curl -x: absolute-URI request through the tunnel" page_is "$PAGE" "${HTTP[@]}" http://10.66.0.1:8000/index.html
check "curl --proxytunnel: CONNECT through the tunnel" page_is "$PAGE" --proxytunnel "${HTTP[@]}" http://10.66.0.1:8000/index.html
check "no credentials: 407" status_is 407 -x "http://127.0.0.1:$P_HTTP" --max-time 10 http://10.66.0.1:8000/index.html
check "wrong password: 407" status_is 407 -x "http://127.0.0.1:$P_HTTP" -U alice:wrong --max-time 10 http://10.66.0.1:8000/
ready() { [[ $(readyz) == 200 ]]; }
check "/readyz is 200 after the handshake" wait_for 10 ready

# Bad input while a download runs through the same proxy: each gets its status, the download
# stays intact. The download is paced at 2.5 MB/s (24 MB: about 10 s, longer than the idle
# timeout of 3 s, which once cut plain-HTTP responses at 3 s whether or not they moved), so
# that it is still running when the bad input has been sent (checked). Not curl --limit-rate:
# it reads a burst, then sleeps for seconds, and the proxy rightly closes an idle client.
timeout 60 python3 "$HERE/slow_get.py" "$P_HTTP" http://10.66.0.1:8000/big.bin "$WORK/big.http" 2500000 alice:s3cret >"$WORK/big.log" 2>&1 &
BIG=$!
log "download started"
AUTH="Proxy-Authorization: Basic YWxpY2U6czNjcmV0"
# Sends a file's bytes, prints the first line of the answer and hangs up at once (not waiting
# for the proxy to close).
cat >"$WORK/raw.py" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(open(sys.argv[2], "rb").read())
answer = b""
while b"\n" not in answer:
    chunk = s.recv(4096)
    if not chunk:
        break
    answer += chunk
print(answer.split(b"\n")[0].decode(errors="replace").rstrip("\r"))
EOF
raw_status() { # raw_status WANT FILE: send FILE's bytes to the HTTP proxy; the status is WANT
	local line
	line=$(timeout 15 python3 "$WORK/raw.py" "$P_HTTP" "$2" 2>&1)
	echo "got: $line"
	[[ $line == "HTTP/1.1 $1 "* ]]
}
printf 'hello there\r\n\r\n' >"$WORK/req-garbage"
printf 'GET http://10.66.0.1:8000/ HTTP/1.1\r\n%s\r\nno colon here\r\n\r\n' "$AUTH" >"$WORK/req-badheader"
python3 -c 'import sys; sys.stdout.write("GET http://10.66.0.1:8000/ HTTP/1.1\r\n" + sys.argv[1] + "\r\nX-Big: " + "a" * 20000 + "\r\n\r\n")' "$AUTH" >"$WORK/req-big"
log "requests written"
check "malformed request line: 400" raw_status 400 "$WORK/req-garbage"
check "malformed header line: 400" raw_status 400 "$WORK/req-badheader"
check "oversized headers: 431" raw_status 431 "$WORK/req-big"
log "statuses read"
abandon() { # clients that hang up in the middle of their request head
	local _
	for _ in 1 2 3; do
		printf 'GET http://10.66.0.1:8000/ HTTP/1.1\r\nHo' | timeout 2 socat -t 0 - "TCP:127.0.0.1:$P_HTTP" >/dev/null 2>&1
	done
	page_is "$PAGE" "${HTTP[@]}" http://10.66.0.1:8000/index.html
}
check "clients gone in the middle of their request: the next one is served" abandon
kill -0 "$BIG" 2>/dev/null && BIG_RUNNING=1 || BIG_RUNNING=0
log "bad input sent"
big_intact() {
	((BIG_RUNNING)) || { echo "the download had ended before the bad input was sent"; return 1; }
	wait "$BIG" || { echo "the download failed: $(cat "$WORK/big.log")"; return 1; }
	[[ $(sha256sum <"$WORK/big.http" | cut -d' ' -f1) == "$BIG_SUM" ]]
}
check "download through the HTTP proxy intact meanwhile" big_intact

# --- connection cap and idle timeout ----------------------------------------------------------
cat >"$WORK/hold.py" <<'EOF'
# Opens N CONNECT tunnels to the echo server through the HTTP proxy, round-trips a message on
# each, prints "open", then waits (at most 30 s) until the proxy closes every one of them for
# being idle, and prints "closed".
import socket, sys, time
port, n, auth = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"CONNECT 10.66.0.1:7008 HTTP/1.1\r\nHost: 10.66.0.1:7008\r\n" + auth.encode() + b"\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    msg = b"hello %d" % i
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += s.recv(100)
    assert got == msg, got
    conns.append(s)
print("open", flush=True)
deadline = time.monotonic() + 30
for s in conns:
    s.settimeout(max(0.1, deadline - time.monotonic()))
    assert s.recv(100) == b"", "data instead of the close"
print("closed", flush=True)
EOF
coproc HOLD { exec python3 "$WORK/hold.py" "$P_HTTP" 3 "$AUTH" 2>&1; }
hold_pid=$HOLD_PID # bash unsets HOLD_PID once the coprocess has ended
read -r -t 30 line <&"${HOLD[0]}" || line="no answer"
if [[ $line == open ]]; then
	pass "three CONNECT tunnels open (--max-connections 3)"
	check "a fourth client over the cap: 503" status_is 503 "${HTTP[@]}" http://10.66.0.1:8000/index.html
	refused() { metrics | grep -q '^rwg_proxy_refused_connections_total{service="http"} [1-9]'; }
	check "metrics count the refused connection" refused
	read -r -t 40 line <&"${HOLD[0]}" || line="no answer within 40 s"
	check "idle tunnels closed by the proxy after --idle-timeout $IDLE ($line)" test "$line" = closed
	check "served again once they are gone" page_is "$PAGE" "${HTTP[@]}" http://10.66.0.1:8000/index.html
else
	failc "three CONNECT tunnels open: $line $(cat <&"${HOLD[0]}")"
fi
wait "$hold_pid" 2>/dev/null

# --- health: metrics ----------------------------------------------------------------------------
metrics >"$WORK/metrics.txt"
metrics_complete() {
	local pat
	for pat in 'rwg_proxy_http_requests_total{code="400"} [1-9]' 'rwg_proxy_http_requests_total{code="407"} [1-9]' \
		'rwg_proxy_http_requests_total{code="431"} 1' 'rwg_proxy_http_requests_total{code="503"} 1' \
		'rwg_proxy_http_requests_total{code="200"} [1-9]' 'rwg_proxy_open_connections{service="http"} ' \
		"rwg_peer_tx_bytes_total{peer=\"$(pub peer)\"} [1-9]" 'rwg_netstack_transmitted_packets_total [1-9]'; do
		grep -q "^$pat" "$WORK/metrics.txt" || { echo "missing: $pat"; return 1; }
	done
	! grep -q "$(key proxy)" "$WORK/metrics.txt"
}
check "/metrics: HTTP requests by status, refusals, peer bytes, stack; never the key" metrics_complete

# --- stdio: ssh through the tunnel --------------------------------------------------------------
cat >"$WORK/stdio.conf" <<EOF
[Interface]
PrivateKey = $(key stdio)
Address = 10.66.0.5/32

[Peer]
PublicKey = $(pub peer)
Endpoint = $NET.2:51820
AllowedIPs = 10.66.0.0/24
EOF
SSH=(ssh -i "$WORK/ssh/client_key" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
	-o LogLevel=ERROR -o ConnectTimeout=30 -o "ProxyCommand=$RWG proxy --config $WORK/stdio.conf --stdio %h:%p")
ssh_echo() { [[ $(timeout 60 "${SSH[@]}" root@10.66.0.1 echo through the tunnel) == "through the tunnel" ]]; }
check "ssh with ProxyCommand='rwg proxy --stdio %h:%p' runs a command" ssh_echo
head -c 3000000 /dev/urandom >"$WORK/ssh.bin"
SSH_SUM=$(sha256sum <"$WORK/ssh.bin" | cut -d' ' -f1)
ssh_sum() { [[ $(timeout 60 "${SSH[@]}" root@10.66.0.1 sha256sum <"$WORK/ssh.bin" | cut -d' ' -f1) == "$SSH_SUM" ]]; }
check "ssh: 3 MB up, the remote's checksum back" ssh_sum
no_stdio_left() { ! pgrep -f -- "--config $WORK/stdio.conf --stdio" >/dev/null; }
check "no stdio proxy left behind" wait_for 5 no_stdio_left
stdio_refused() {
	local rc=0
	timeout 60 "$RWG" proxy --config "$WORK/stdio.conf" --stdio 10.66.0.1:1 </dev/null >"$WORK/refused.out" 2>&1 || rc=$?
	cat "$WORK/refused.out"
	((rc == 1)) && grep -q "cannot connect to 10.66.0.1:1" "$WORK/refused.out"
}
check "--stdio to a closed port: exit 1 with the reason" stdio_refused

# --- endpoint re-resolution: the peer's name moves to another address ---------------------------
# This proxy reads its own hosts file (bound over /etc/hosts in a private mount namespace, and
# rewritten in place so that the mount keeps showing it). The peer answers at NET2.2 first; then
# that address goes away and the name points at NET.2. The peer never sends first, so only a new
# resolution finds it.
NET2=10.219.$((ID % 250))
ip addr add "$NET2.1/30" dev "$VETH"
ip -n "$NS" addr add "$NET2.2/30" dev eth0
printf '127.0.0.1 localhost\n%s moving.test\n' "$NET2.2" >"$WORK/hosts"
printf '[Interface]\nPrivateKey = %s\nAddress = 10.66.0.6/32\n\n[Peer]\nPublicKey = %s\nEndpoint = moving.test:51820\nAllowedIPs = 10.66.0.0/24\nPersistentKeepalive = 1\n' \
	"$(key mover)" "$(pub peer)" >"$WORK/mover.conf"
P_MOVER=$(free_port)
# shellcheck disable=SC2016 # expanded by the inner shell
unshare -m sh -c 'mount --bind "$1" /etc/hosts && exec "$2" proxy --config "$3" --http "127.0.0.1:$4" --reresolve-after 3' \
	sh "$WORK/hosts" "$RWG" "$WORK/mover.conf" "$P_MOVER" >"$WORK/mover.log" 2>&1 &
PIDS+=($!)
if wait_for 15 grep -q ready "$WORK/mover.log"; then
	MOVER=(-x "http://127.0.0.1:$P_MOVER" --max-time 5 -sS)
	check "--reresolve-after: reaches the peer by its name" wait_for 20 page_is "$PAGE" "${MOVER[@]}" http://10.66.0.1:8000/index.html
	ip -n "$NS" addr del "$NET2.2/30" dev eth0
	printf '127.0.0.1 localhost\n%s moving.test\n' "$NET.2" >"$WORK/hosts"
	check "--reresolve-after: reaches the peer again after its name moved" wait_for 40 page_is "$PAGE" "${MOVER[@]}" http://10.66.0.1:8000/index.html
else
	failc "the proxy with Endpoint = moving.test did not start: $(tail -n 3 "$WORK/mover.log")"
fi

check "the proxy is still alive" kill -0 "$PROXY_PID"
echo "$passed passed, $failed failed"
((failed == 0))
