# shellcheck shell=bash
# Helpers for the end-to-end suite: namespaces, daemons of each implementation, bounded waits,
# transfers and checks. Sourced by run.sh; every scenario runs in its own subshell, and the
# cleanup below (installed as an EXIT trap there) tears down everything that subshell created.

# --- bookkeeping -------------------------------------------------------------------------------

# Set by run.sh for each scenario: SCDIR (scratch directory), SEQ (scenario number).
E2E_NAMESPACES=()
E2E_PIDS=()
E2E_PGIDS=()
E2E_IFACES=()
# Daemons started by start_wg, one "pid|impl|iface|log file" each: check_daemons looks at them.
E2E_DAEMONS=()
# What a panic looks like in a daemon's log: Rust ("thread 'x' panicked at"), Go ("panic: ",
# "fatal error: ").
E2E_PANIC_RE='panicked|^panic: |^fatal error: '

log() { printf '[%s] %s\n' "$(date +%T.%N | cut -c1-12)" "$*"; }

# Record why the scenario failed (first reason wins) and stop it. Called in a subshell (inside
# $(...) or a pipeline), it stops only that subshell, and the caller may go on: the marker file
# makes run.sh report FAIL anyway.
fail() {
	: >"$SCDIR/failed"
	[[ -s $SCDIR/reason ]] || printf '%s\n' "$*" >"$SCDIR/reason"
	log "FAIL: $*"
	exit 1
}

# The only way to SKIP: run.sh reports SKIP when the scenario exits 77 *and* this marker exists,
# so an exit status 77 that leaks out of some command is a failure, not a skip.
skip() {
	printf '%s\n' "$*" >"$SCDIR/reason"
	: >"$SCDIR/skipped"
	log "SKIP: $*"
	exit 77
}

# ERR trap: an unexpected command failure becomes the reason, with where it happened.
on_err() {
	local rc=$? cmd=$BASH_COMMAND where="" i
	for ((i = 1; i < ${#FUNCNAME[@]} && i < 5; i++)); do
		[[ ${FUNCNAME[i]} == main ]] && break
		where+="${where:+ <- }${FUNCNAME[i]}:${BASH_LINENO[i - 1]}"
	done
	[[ -s $SCDIR/reason ]] || printf 'unexpected failure (exit %s) in %s: %s\n' "$rc" "$where" "$cmd" >"$SCDIR/reason"
}

# Is the process alive (a zombie is not)?
pid_alive() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != [ZX] ]]
}

pid_gone() { ! pid_alive "$1"; }

# daemon_problems: print the first problem of the daemons this scenario started (a panic in a
# log, a daemon that is gone) and return 1; return 0 if there is none.
daemon_problems() {
	local d pid impl ifc logf
	for d in "${E2E_DAEMONS[@]}"; do
		IFS='|' read -r pid impl ifc logf <<<"$d"
		if grep -Eq -- "$E2E_PANIC_RE" "$logf" 2>/dev/null; then
			printf '%s daemon for %s panicked: %s\n' "$impl" "$ifc" "$(grep -Em1 -- "$E2E_PANIC_RE" "$logf" | cut -c1-200)"
			return 1
		fi
		if ! pid_alive "$pid"; then
			printf '%s daemon for %s (pid %s) died: %s\n' "$impl" "$ifc" "$pid" "$(tail -n 3 "$logf" | tr '\n' ' ' | cut -c1-200)"
			return 1
		fi
	done
}

# Fail the scenario if a daemon it started panicked or died. run.sh calls it after every
# scenario (before PASS); must_not_ping calls it, since silence from a dead daemon proves nothing.
check_daemons() {
	local why
	why=$(daemon_problems) || fail "$why"
}

cleanup() {
	local rc=$? pid ns ifc i why
	set +e
	trap - ERR
	# A failing scenario whose daemon panicked or died: say so next to the first reason.
	if ((rc != 0)) && [[ ! -e $SCDIR/skipped ]] && ! why=$(daemon_problems); then
		if grep -qF -- "$why" "$SCDIR/reason" 2>/dev/null; then
			:
		elif [[ -s $SCDIR/reason ]]; then
			printf '%s [also: %s]\n' "$(head -n 1 "$SCDIR/reason")" "$why" >"$SCDIR/reason.new"
			mv "$SCDIR/reason.new" "$SCDIR/reason"
		else
			printf '%s\n' "$why" >"$SCDIR/reason"
		fi
		log "$why"
	fi
	for pid in "${E2E_PGIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
	for pid in "${E2E_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${E2E_PIDS[@]}"; do
		for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
	done
	# Deleting a namespace destroys its TUN devices; daemons started by wg-quick notice that and exit.
	for ns in "${E2E_NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
	for ifc in "${E2E_IFACES[@]}"; do
		# A daemon that was SIGKILLed leaves its socket behind; a daemon we did not start
		# directly (wg-quick) gets a moment to exit on its own before we remove it.
		for ((i = 0; i < 30; i++)); do pgrep -f -- " $ifc\$" >/dev/null || break; sleep 0.1; done
		# Interface names carry this run's id, so whatever still ends in one is a daemon we started.
		for pid in $(pgrep -f -- " $ifc\$"); do kill -KILL "$pid" 2>/dev/null; done
		rm -f "/var/run/wireguard/$ifc.sock" "/var/run/wireguard/$ifc.name"
	done
}

# Poll a command until it succeeds, at most $1 seconds. Returns non-zero on timeout.
wait_until() {
	local timeout=$1 deadline
	shift
	deadline=$(($(date +%s%N) + timeout * 1000000000))
	until "$@"; do
		(($(date +%s%N) < deadline)) || return 1
		sleep 0.1
	done
}

# --- namespaces and interface names ---------------------------------------------------------

# new_ns VAR ROLE: create a namespace, store its name in VAR. Names are unique per run and
# scenario: rwgt-<runner pid>-<seq>-<role>. (Not a $(...) function: it records what to clean up.)
new_ns() {
	local ns="rwgt-$RUN_ID-$SEQ-$2"
	ip netns add "$ns"
	E2E_NAMESPACES+=("$ns")
	ip -n "$ns" link set lo up
	# Fast, quiet IPv6: no DAD, no router solicitations.
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.router_solicitations=0
	printf -v "$1" '%s' "$ns"
}

# The UAPI socket lives in the file system (/var/run/wireguard/<iface>.sock), which namespaces
# do not separate, so interface names must be unique on the host, not just inside a namespace.
ifname() { printf 'rw%s%02d%s' "$((RUN_ID % 100000))" "$((SEQ % 100))" "$1"; }

# veth pair between two namespaces: veth_pair nsA ifA nsB ifB
veth_pair() {
	ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
	ip -n "$1" link set "$2" up
	ip -n "$3" link set "$4" up
}

# n NS COMMAND...: run a command in a namespace. `wg` gets a time limit: a daemon whose
# configuration side deadlocks fails the scenario instead of hanging the suite.
E2E_WG_TIMEOUT=${E2E_WG_TIMEOUT:-10}
n() {
	local ns=$1 rc=0
	shift
	if [[ $1 != wg ]]; then
		ip netns exec "$ns" "$@"
		return
	fi
	ip netns exec "$ns" timeout -k 2 "$E2E_WG_TIMEOUT" "$@" || rc=$?
	((rc != 124 && rc != 137)) || fail "'$*' in $ns did not finish within ${E2E_WG_TIMEOUT}s (configuration deadlock?)"
	return "$rc"
}
# The same limit for wg outside a namespace (genkey, pubkey, genpsk).
wg() {
	local rc=0
	timeout -k 2 "$E2E_WG_TIMEOUT" wg "$@" || rc=$?
	((rc != 124 && rc != 137)) || fail "'wg $*' did not finish within ${E2E_WG_TIMEOUT}s"
	return "$rc"
}

# --- WireGuard daemons -------------------------------------------------------------------------

impl_available() {
	case $1 in
	rwg) [[ -x $RWG ]] || { echo "rwg binary not found at $RWG (cargo build --release -p rwg, or set RWG)"; return 1; } ;;
	wireguard-go) command -v wireguard-go >/dev/null || { echo "wireguard-go not on PATH (scripts/install-deps)"; return 1; } ;;
	boringtun) command -v boringtun-cli >/dev/null || { echo "boringtun-cli not on PATH (scripts/install-deps)"; return 1; } ;;
	gotatun) command -v gotatun >/dev/null || { echo "gotatun not on PATH (scripts/install-deps: cargo install --locked gotatun-cli)"; return 1; } ;;
	*) echo "unknown implementation '$1' (rwg|wireguard-go|boringtun|gotatun)"; return 1 ;;
	esac
}

uapi_sock() { printf '/var/run/wireguard/%s.sock' "$1"; }

# start_wg IMPL NS IFACE [extra daemon args...]: run a daemon in the foreground (in the
# background of this shell), wait until `wg show` answers through its socket.
# rwg gets RWG_DISABLE and RWG_WORKERS as this shell has them (unset: every offload on, the
# default number of workers), and its "data plane" log line must say that they took effect.
start_wg() {
	local impl=$1 ns=$2 ifc=$3 logf pid rwg_env
	shift 3
	logf="$SCDIR/daemon-$ifc.log"
	E2E_IFACES+=("$ifc")
	case $impl in
	rwg)
		rwg_env=(WG_PROCESS_FOREGROUND=1 LOG_LEVEL="${LOG_LEVEL:-verbose}" RWG_DISABLE="${RWG_DISABLE:-}")
		if [[ -n ${RWG_WORKERS:-} ]]; then rwg_env+=(RWG_WORKERS="$RWG_WORKERS"); else rwg_env=(-u RWG_WORKERS "${rwg_env[@]}"); fi
		ip netns exec "$ns" env "${rwg_env[@]}" "$RWG" -f "$@" "$ifc" >"$logf" 2>&1 &
		;;
	wireguard-go) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL="${LOG_LEVEL:-verbose}" wireguard-go -f "$@" "$ifc" >"$logf" 2>&1 & ;;
	# boringtun-cli logs to stdout in the foreground; 2 threads, the CI machine has 2 cores.
	boringtun) ip netns exec "$ns" boringtun-cli --foreground --disable-drop-privileges --threads 2 --verbosity "${BORINGTUN_VERBOSITY:-info}" "$@" "$ifc" >>"$logf" 2>&1 & ;;
	# gotatun logs to stdout in the foreground (its --log file is for the background); NO_COLOR
	# keeps escape codes out of the log.
	gotatun) ip netns exec "$ns" env NO_COLOR=1 gotatun --foreground --disable-drop-privileges --verbosity "${GOTATUN_VERBOSITY:-info}" "$@" "$ifc" >>"$logf" 2>&1 & ;;
	*) fail "unknown implementation $impl" ;;
	esac
	pid=$!
	E2E_PIDS+=("$pid")
	E2E_DAEMONS+=("$pid|$impl|$ifc|$logf")
	eval "PID_$ifc=$pid NS_OF_$ifc=$ns"
	# Ready when the socket answers a get; give up at once if the daemon dies meanwhile. The
	# polling uses socat, not wg: wg unlinks a socket that refuses a connection (it takes it
	# for stale), and a daemon between bind() and listen() refuses connections.
	if ! wait_until 10 bash -c "kill -0 $pid 2>/dev/null || exit 0; [[ -S $(uapi_sock "$ifc") ]] &&
		printf 'get=1\n\n' | timeout 2 socat -t 2 - UNIX-CONNECT:$(uapi_sock "$ifc") 2>/dev/null | grep -q '^errno=0\$'" ||
		! kill -0 "$pid" 2>/dev/null; then
		kill -0 "$pid" 2>/dev/null || fail "$impl daemon for $ifc exited early: $(tail -n 3 "$logf" | tr '\n' ' ')"
		fail "$impl daemon for $ifc: UAPI socket did not answer within 10s"
	fi
	n "$ns" wg show "$ifc" >/dev/null || fail "wg show $ifc failed although its socket answers"
	log "$impl serving $ifc in $ns (pid $pid)"
	[[ $impl != rwg ]] || check_data_plane "$ifc" "${RWG_DISABLE:-}" "${RWG_WORKERS:-}"
}

# stop_wg IFACE: stop the daemon start_wg started for IFACE with SIGTERM; it must exit 0
# within 5 s without a panic, and its TUN device and socket must go. Its log is kept as
# daemon-IFACE.log.N, so a later start_wg for IFACE starts a fresh one.
stop_wg() {
	local ifc=$1 v="PID_$1" nv="NS_OF_$1" d keep=() pid impl rest logf rc=0 k
	check_daemons
	pid=${!v}
	for d in "${E2E_DAEMONS[@]}"; do
		if [[ ${d%%|*} == "$pid" ]]; then IFS='|' read -r pid impl rest logf <<<"$d"; else keep+=("$d"); fi
	done
	[[ -n ${logf:-} ]] || fail "stop_wg $ifc: no daemon of this scenario serves it"
	kill -TERM "$pid"
	wait_until 5 pid_gone "$pid" || fail "$impl daemon for $ifc (pid $pid) still running 5s after SIGTERM"
	wait "$pid" || rc=$?
	if grep -Eq -- "$E2E_PANIC_RE" "$logf"; then fail "$impl daemon for $ifc panicked: $(grep -Em1 -- "$E2E_PANIC_RE" "$logf" | cut -c1-200)"; fi
	((rc == 0)) || fail "$impl daemon for $ifc exited $rc on SIGTERM: $(tail -n 2 "$logf" | tr '\n' ' ' | cut -c1-200)"
	E2E_DAEMONS=("${keep[@]}")
	for ((k = 1; ; k++)); do [[ -e $logf.$k ]] || break; done
	mv "$logf" "$logf.$k"
	wait_until 5 bash -c "! ip -n ${!nv} link show $ifc >/dev/null 2>&1 && [[ ! -e $(uapi_sock "$ifc") ]]" ||
		fail "$ifc or its socket still there 5s after its $impl daemon exited"
	log "$impl daemon for $ifc stopped (exit 0; log kept as $(basename "$logf.$k"))"
}

# rwg_data_plane IFACE: what rwg's "data plane" log line for IFACE says, as
# "vnet_hdr tso uso workers udp_gso udp_gro" (e.g. "true true true 2 true false").
rwg_data_plane() {
	grep -m1 ' data plane ' "$SCDIR/daemon-$1.log" | sed -n \
		's/.* offloads=TunOffloads { vnet_hdr: \([a-z]*\), tso: \([a-z]*\), uso: \([a-z]*\) } workers=\([0-9]*\) udp_gso=\([a-z]*\) udp_gro=\([a-z]*\).*/\1 \2 \3 \4 \5 \6/p'
}

# check_data_plane IFACE DISABLE WORKERS: rwg's data plane for IFACE is what RWG_DISABLE=DISABLE
# and RWG_WORKERS=WORKERS (empty: unset) ask for. With the TUN offload on, the kernel must have
# granted TSO, and USO from Linux 6.2 (when TUN got it) on; unset workers: 1 to the cores.
check_data_plane() {
	local ifc=$1 disable=",$2," workers=$3 got want=() tun=true kv ncpu
	got=$(rwg_data_plane "$ifc")
	[[ -n $got ]] || fail "rwg's log for $ifc has no 'data plane offloads=TunOffloads { ... } workers=N udp_gso=.. udp_gro=..' line: $(grep -m1 'data plane' "$SCDIR/daemon-$ifc.log" | cut -c1-200)"
	[[ $disable != *,all,* && $disable != *,tun-offload,* ]] || tun=false
	kv=$(uname -r)
	kv=${kv%%[!0-9.]*}
	want=("$tun" "$tun" false)
	# (USO on TUN: Linux 6.2)
	if [[ $tun == true ]] && (( ${kv%%.*} > 6 || (${kv%%.*} == 6 && $(cut -d. -f2 <<<"$kv") >= 2) )); then want[2]=true; fi
	read -r -a got <<<"$got"
	[[ "${got[*]:0:3}" == "${want[*]}" ]] ||
		fail "$ifc: TUN offloads vnet_hdr/tso/uso are ${got[*]:0:3}, want ${want[*]} (RWG_DISABLE='$2', Linux $kv)"
	want=(true true)
	[[ $disable != *,all,* && $disable != *,udp-gso,* ]] || want[0]=false
	[[ $disable != *,all,* && $disable != *,udp-gro,* ]] || want[1]=false
	[[ "${got[*]:4:2}" == "${want[*]}" ]] || fail "$ifc: udp_gso/udp_gro are ${got[*]:4:2}, want ${want[*]} (RWG_DISABLE='$2')"
	if [[ -n $workers ]]; then
		[[ ${got[3]} == "$workers" ]] || fail "$ifc: ${got[3]} crypto workers, want $workers (RWG_WORKERS)"
	else
		ncpu=$(nproc)
		((got[3] >= 1 && got[3] <= ncpu)) || fail "$ifc: ${got[3]} crypto workers by default, want 1 to $ncpu (the cores)"
	fi
	log "rwg data plane for $ifc: vnet_hdr/tso/uso ${got[*]:0:3}, workers ${got[3]}, udp_gso/udp_gro ${got[*]:4:2} (RWG_DISABLE='$2' RWG_WORKERS='$3')"
}

daemon_alive() { local v="PID_$1"; pid_alive "${!v}"; }

# Key material, one file per name: genkey NAME -> $SCDIR/NAME.key, NAME.pub
genkey() {
	wg genkey >"$SCDIR/$1.key"
	wg pubkey <"$SCDIR/$1.key" >"$SCDIR/$1.pub"
}
pub() { cat "$SCDIR/$1.pub"; }

# Inner addressing shared by every scenario: 192.168.241.N/24 and fd00::N/64 on the tunnel.
tun_addr() {
	local ns=$1 ifc=$2 host=$3
	ip -n "$ns" link set "$ifc" mtu 1420
	ip -n "$ns" addr add "192.168.241.$host/24" dev "$ifc"
	ip -n "$ns" addr add "fd00::$host/64" dev "$ifc" nodad
	ip -n "$ns" link set "$ifc" up
}

# wg show IFACE dump, peer line fields: 1 pubkey 2 psk 3 endpoint 4 allowed 5 handshake 6 rx 7 tx 8 keepalive
peer_field() {
	local ns=$1 ifc=$2 peer=$3 field=$4
	n "$ns" wg show "$ifc" dump | awk -v p="$peer" -v f="$field" 'NR > 1 && $1 == p { print $f }'
}

# handshake_done NS IFACE PEER: does wg show report a handshake with PEER? (for wait_until)
handshake_done() { [[ $(peer_field "$1" "$2" "$3" 5) =~ ^[1-9] ]]; }

# file_size_at_least FILE BYTES (for wait_until)
file_size_at_least() { (($(stat -c %s "$1" 2>/dev/null || echo 0) >= $2)); }

# --- traffic -----------------------------------------------------------------------------------

# Bounded wait until an address answers ping (first packets may trigger a handshake).
wait_ping() {
	local ns=$1 dst=$2 timeout=${3:-15}
	shift 3 2>/dev/null || shift $#
	wait_until "$timeout" n "$ns" ping -n -q -c 1 -W 1 "$@" "$dst" >/dev/null 2>&1
}

# ping_counts OUTPUT: "SENT RECEIVED" from ping's summary line (nothing if there is none).
ping_counts() {
	sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) received.*/\1 \2/p' <<<"$1"
}

# ping that must succeed: once the path is up (first packets may trigger a handshake), three
# more packets, every one answered (ping itself exits 0 when only one is).
# must_ping NS DST [WHAT [PING OPTIONS...]]
must_ping() {
	local ns=$1 dst=$2 what=${3:-} out counts
	shift 3 2>/dev/null || shift $#
	wait_ping "$ns" "$dst" 15 "$@" || fail "no ping reply from $dst in $ns within 15s${what:+ ($what)}"
	out=$(n "$ns" ping -n -q -c 3 -i 0.2 -W 2 "$@" "$dst" 2>&1) || true
	counts=$(ping_counts "$out")
	[[ $counts == "3 3" ]] ||
		fail "ping $dst from $ns: ${counts#* } of ${counts% *} answered, want 3 of 3${what:+ ($what)}: $(tr '\n' ' ' <<<"$out" | cut -c1-200)"
	log "ping $dst from $ns ok, 3 of 3${what:+ ($what)}"
}

# ping that must NOT be answered: ping must run, send its packets and get no reply (exit 1,
# "0 received"). A ping that cannot send (exit 2, local errors) proves nothing, nor does
# silence from a dead daemon: both fail.
must_not_ping() {
	local ns=$1 dst=$2 what=$3 out rc=0 counts
	shift 3
	check_daemons
	out=$(n "$ns" ping -n -q -c 3 -i 0.3 -W 1 "$@" "$dst" 2>&1) || rc=$?
	counts=$(ping_counts "$out")
	case $rc in
	0) fail "$dst answered ping from $ns but should not ($what)" ;;
	1) [[ $counts == "3 0" ]] && ! grep -Eq 'sendmsg|connect:|bind:' <<<"$out" ||
		fail "ping $dst from $ns: not a clean 'no reply' ($what): $(tr '\n' ' ' <<<"$out" | cut -c1-200)" ;;
	*) fail "ping $dst from $ns could not run (exit $rc), so its silence means nothing ($what): $(tr '\n' ' ' <<<"$out" | cut -c1-200)" ;;
	esac
	check_daemons
	log "ping $dst from $ns not answered, as expected ($what)"
}

# --- packet captures -----------------------------------------------------------------------------

# capture_start NAME NS DEV FILTER: tcpdump on DEV in NS in the background until capture_stop
# NAME; returns once tcpdump is listening. One line per packet in $SCDIR/NAME.cap.
capture_start() {
	capture_spawn "$@"
	capture_listening "$1"
}
# The two halves of capture_start, to start several captures at once: capture_spawn NAME NS
# DEV FILTER starts tcpdump; capture_listening NAME... returns once each of them listens.
capture_spawn() {
	local name=$1 ns=$2 dev=$3 filter=$4 pid
	ip netns exec "$ns" timeout 300 tcpdump -l -n -i "$dev" "$filter" >"$SCDIR/$name.cap" 2>"$SCDIR/$name.cap.log" &
	pid=$!
	E2E_PIDS+=("$pid")
	eval "CAP_$name=$pid"
}
capture_listening() {
	local name
	for name in "$@"; do
		wait_until 10 grep -q "listening on" "$SCDIR/$name.cap.log" ||
			fail "tcpdump for capture $name did not start: $(tr '\n' ' ' <"$SCDIR/$name.cap.log")"
	done
}
# capture_count NAME: packets seen so far.
capture_count() { grep -c . "$SCDIR/$1.cap" || true; }
# captured NAME MIN: has the capture seen at least MIN packets? (for wait_until)
captured() { (($(capture_count "$1") >= $2)); }
# capture_stop NAME: stop the capture; print how many packets it saw.
capture_stop() {
	local v="CAP_$1"
	kill -INT "${!v}" 2>/dev/null || true
	wait "${!v}" 2>/dev/null || true
	# (tcpdump writes an empty line when interrupted; packets are the non-empty lines)
	capture_count "$1"
}

# One random payload per run, shared by all scenarios.
payload() {
	local mb=${1:-$E2E_TRANSFER_MB} f="$RUN_DIR/payload-${1:-$E2E_TRANSFER_MB}M" lock
	# Scenarios run side by side (run.sh, E2E_JOBS): one makes the file, the others wait for it.
	exec {lock}>"$f.lock"
	flock "$lock"
	if [[ ! -s $f ]]; then
		head -c "$((mb * 1024 * 1024))" /dev/urandom >"$f.tmp"
		sha256sum <"$f.tmp" | cut -d' ' -f1 >"$f.sha256"
		mv "$f.tmp" "$f"
	fi
	exec {lock}>&-
	printf '%s\n' "$f"
}

# shape NS DEV RATE: limit a veth's egress so a transfer lasts long enough to act during it.
shape() {
	ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$3" burst 64kb latency 400ms ||
		log "warning: cannot shape $2 (no sch_tbf?); the transfer may be too quick for this test"
}

# qdisc_empty NS DEV: nothing waits in DEV's egress queue (for wait_until)
qdisc_empty() { ip netns exec "$1" tc -s qdisc show dev "$2" | grep -q 'backlog 0b 0p'; }

listening() { n "$1" ss -Hltn "sport = :$2" | grep -q .; }

# start_transfer SRC_NS DST_NS DST_ADDR PORT FILE NAME: the receiver listens in DST_NS and
# writes to $SCDIR/NAME.out; the sender sends FILE. Both run in the background; their pids
# are left in XFER_RX_<NAME> / XFER_TX_<NAME>.
start_transfer() {
	local src=$1 dst=$2 addr=$3 port=$4 file=$5 name=$6 out rxp txp
	out="$SCDIR/$name.out"
	rm -f "$out"
	ip netns exec "$dst" timeout "$E2E_XFER_TIMEOUT" socat -u "TCP6-LISTEN:$port,reuseaddr,ipv6only=0" "CREATE:$out" \
		>"$SCDIR/$name.rx.log" 2>&1 &
	rxp=$!
	E2E_PIDS+=("$rxp")
	wait_until 5 listening "$dst" "$port" || fail "transfer $name: receiver did not listen on port $port"
	local target=$addr
	[[ $addr == *:* ]] && target="[$addr]"
	ip netns exec "$src" timeout "$E2E_XFER_TIMEOUT" socat -u "OPEN:$file" "TCP:$target:$port,connect-timeout=10" \
		>"$SCDIR/$name.tx.log" 2>&1 &
	txp=$!
	E2E_PIDS+=("$txp")
	eval "XFER_RX_$name=$rxp XFER_TX_$name=$txp XFER_FILE_$name=$file"
	log "transfer $name started: $(basename "$file") to $target:$port"
}

# finish_transfer NAME: wait for both ends, compare sha256 of what arrived with what was sent.
finish_transfer() {
	local name=$1 rxv="XFER_RX_$1" txv="XFER_TX_$1" fv="XFER_FILE_$1" rc_tx=0 rc_rx=0 want got t0
	t0=$(date +%s%N)
	wait "${!txv}" || rc_tx=$?
	wait "${!rxv}" || rc_rx=$?
	((rc_tx == 0)) || fail "transfer $name: sender exited $rc_tx ($( (cat "$SCDIR/$name.tx.log") | tail -n 2 | tr '\n' ' '))"
	((rc_rx == 0)) || fail "transfer $name: receiver exited $rc_rx ($( (cat "$SCDIR/$name.rx.log") | tail -n 2 | tr '\n' ' '))"
	want=$(cat "${!fv}.sha256")
	got=$(sha256sum <"$SCDIR/$name.out" | cut -d' ' -f1)
	[[ $want == "$got" ]] || fail "transfer $name: sha256 mismatch ($(stat -c %s "$SCDIR/$name.out") of $(stat -c %s "${!fv}") bytes arrived)"
	log "transfer $name ok: $(stat -c %s "$SCDIR/$name.out") bytes, sha256 matches"
	rm -f "$SCDIR/$name.out"
}

transfer() { # SRC_NS DST_NS DST_ADDR PORT FILE NAME
	local t0 t1
	t0=$(date +%s%N)
	start_transfer "$@"
	finish_transfer "$6"
	t1=$(date +%s%N)
	log "transfer $6: $(((t1 - t0) / 1000000)) ms, $(($(stat -c %s "$5") * 8 / ((t1 - t0) / 1000 + 1))) Mbit/s"
}

# --- the standard two-peer topology ------------------------------------------------------------

# setup_pair IMPL_A IMPL_B
#
#  ┌──────────────────────────┐                      ┌──────────────────────────┐
#  │ $NS_A                    │                      │ $NS_B                    │
#  │  $IF_A  192.168.241.1/24 │                      │  $IF_B  192.168.241.2/24 │
#  │         fd00::1/64       │                      │         fd00::2/64       │
#  │  (impl A, listens :51820)│                      │  (impl B, endpoint = A)  │
#  │  va  10.0.0.1/24 ────────┼──────── veth ────────┼─ vb  10.0.0.2/24         │
#  │      fc00::1/64          │                      │      fc00::2/64          │
#  └──────────────────────────┘                      └──────────────────────────┘
#
# A knows B's key but no endpoint (it learns it); B has A's endpoint. Each allows only the
# other's tunnel addresses. Optional knobs, set as variables for the call:
#   UNDERLAY=6        B reaches A over fc00::1 instead of 10.0.0.1
#   PSK_A=file PSK_B=file   preshared keys
#   B_KEEPALIVE=N     persistent keepalive from B to A
#   B_ALLOWED=list    what B routes to A (default 192.168.241.1/32,fd00::1/128)
#   B_EXTRA=(...)     more `wg set` arguments for B (e.g. a second peer)
#   B_DAEMON_ARGS=(...) more command line arguments for B's daemon
# Sets NS_A NS_B IF_A IF_B PORT_A PORT_B EP_A.
setup_pair() {
	local impl_a=$1 impl_b=$2
	new_ns NS_A a
	new_ns NS_B b
	IF_A=$(ifname a)
	IF_B=$(ifname b)
	PORT_A=51820
	PORT_B=51821
	veth_pair "$NS_A" va "$NS_B" vb
	ip -n "$NS_A" addr add 10.0.0.1/24 dev va
	ip -n "$NS_B" addr add 10.0.0.2/24 dev vb
	ip -n "$NS_A" addr add fc00::1/64 dev va nodad
	ip -n "$NS_B" addr add fc00::2/64 dev vb nodad
	if [[ ${UNDERLAY:-4} == 6 ]]; then EP_A="[fc00::1]:$PORT_A"; else EP_A="10.0.0.1:$PORT_A"; fi
	genkey a
	genkey b
	start_wg "$impl_a" "$NS_A" "$IF_A"
	start_wg "$impl_b" "$NS_B" "$IF_B" "${B_DAEMON_ARGS[@]}"
	local opt_a=() opt_b=()
	[[ -z ${PSK_A:-} ]] || opt_a+=(preshared-key "$PSK_A")
	[[ -z ${PSK_B:-} ]] || opt_b+=(preshared-key "$PSK_B")
	[[ -z ${B_KEEPALIVE:-} ]] || opt_b+=(persistent-keepalive "$B_KEEPALIVE")
	n "$NS_A" wg set "$IF_A" private-key "$SCDIR/a.key" listen-port "$PORT_A" \
		peer "$(pub b)" "${opt_a[@]}" allowed-ips 192.168.241.2/32,fd00::2/128
	n "$NS_B" wg set "$IF_B" private-key "$SCDIR/b.key" listen-port "$PORT_B" \
		peer "$(pub a)" "${opt_b[@]}" allowed-ips "${B_ALLOWED:-192.168.241.1/32,fd00::1/128}" endpoint "$EP_A" \
		"${B_EXTRA[@]}"
	tun_addr "$NS_A" "$IF_A" 1
	tun_addr "$NS_B" "$IF_B" 2
}

# --- a relay in the path: loss, duplication, reordering, replays (rwg-abuse relay) ---------------

# need_abuse: the scenario needs the rwg-abuse binary ($RWG_ABUSE); without it, SKIP (FAIL under
# E2E_STRICT), like a missing implementation.
need_abuse() {
	[[ -x $RWG_ABUSE ]] && return 0
	local why="no rwg-abuse at $RWG_ABUSE (cargo build -p rwg-abuse, or set RWG_ABUSE)"
	[[ ${E2E_STRICT:-0} != 1 ]] || fail "cannot run (E2E_STRICT): $why"
	skip "$why"
}

# setup_relayed IMPL_A IMPL_B [LOSS DUP REORDER]
#
#  ┌──── $NS_A ─────────┐        ┌───────────── $NS_R ──────────────┐        ┌──── $NS_B ─────────┐
#  │ $IF_A .241.1       │        │  rwg-abuse relay                 │        │ $IF_B .241.2       │
#  │ (impl A, :51820)   │        │  listen 10.0.1.1:51830           │        │ (impl B, endpoint  │
#  │ va 10.0.0.1/24 ────┼─ veth ─┼─ ra 10.0.0.2 (+ .3)  rb 10.0.1.1 ┼─ veth ─┼─ 10.0.1.1:51830)   │
#  │                    │        │     (+ 10.0.1.3)                 │        │ vb 10.0.1.2/24     │
#  └────────────────────┘        └──────────────────────────────────┘        └────────────────────┘
#
# B's endpoint for A is the relay; the relay forwards to A from 10.0.0.2 (so A learns B at
# 10.0.0.2:<port>) and replays "from elsewhere" from 10.0.0.3 (towards A) and 10.0.1.3 (towards
# B). No route joins 10.0.0.0/24 and 10.0.1.0/24 except through the relay. The relay starts with
# LOSS DUP REORDER (default none) and records the first 4096 datagrams. B_KEEPALIVE as in
# setup_pair. Sets NS_A NS_B NS_R IF_A IF_B PORT_A PORT_B RELAY_CTL RELAY_PID.
setup_relayed() {
	local impl_a=$1 impl_b=$2
	need_abuse
	new_ns NS_A a
	new_ns NS_R r
	new_ns NS_B b
	IF_A=$(ifname a)
	IF_B=$(ifname b)
	PORT_A=51820
	PORT_B=51821
	veth_pair "$NS_A" va "$NS_R" ra
	veth_pair "$NS_R" rb "$NS_B" vb
	ip -n "$NS_A" addr add 10.0.0.1/24 dev va
	ip -n "$NS_R" addr add 10.0.0.2/24 dev ra
	ip -n "$NS_R" addr add 10.0.0.3/24 dev ra
	ip -n "$NS_R" addr add 10.0.1.1/24 dev rb
	ip -n "$NS_R" addr add 10.0.1.3/24 dev rb
	ip -n "$NS_B" addr add 10.0.1.2/24 dev vb
	RELAY_CTL=127.0.0.1:7700
	ip netns exec "$NS_R" "$RWG_ABUSE" relay --listen 10.0.1.1:51830 --upstream "10.0.0.1:$PORT_A" \
		--bind 10.0.0.2 --other-bind 10.0.0.3 --other-listen 10.0.1.3 \
		--loss "${3:-0}" --dup "${4:-0}" --reorder "${5:-0}" --control "$RELAY_CTL" --duration 280 \
		>"$SCDIR/relay.out" 2>"$SCDIR/relay.log" &
	RELAY_PID=$!
	E2E_PIDS+=("$RELAY_PID")
	wait_until 10 relay_ctl stats >/dev/null || fail "the relay did not answer on its control socket: $(tail -n 2 "$SCDIR/relay.log" | tr '\n' ' ')"
	genkey a
	genkey b
	start_wg "$impl_a" "$NS_A" "$IF_A"
	start_wg "$impl_b" "$NS_B" "$IF_B" "${B_DAEMON_ARGS[@]}"
	n "$NS_A" wg set "$IF_A" private-key "$SCDIR/a.key" listen-port "$PORT_A" \
		peer "$(pub b)" allowed-ips 192.168.241.2/32,fd00::2/128
	relay_conf_b
	tun_addr "$NS_A" "$IF_A" 1
	tun_addr "$NS_B" "$IF_B" 2
}

# relay_conf_b: B's peer A, through the relay (also to re-add it: a fresh handshake).
relay_conf_b() {
	local opt_b=()
	[[ -z ${B_KEEPALIVE:-} ]] || opt_b+=(persistent-keepalive "$B_KEEPALIVE")
	n "$NS_B" wg set "$IF_B" private-key "$SCDIR/b.key" listen-port "$PORT_B" \
		peer "$(pub a)" "${opt_b[@]}" allowed-ips 192.168.241.1/32,fd00::1/128 endpoint 10.0.1.1:51830
}

# relay_ctl COMMAND...: one command to the relay; prints its answer (fails if none, or an error).
relay_ctl() {
	local out
	out=$(ip netns exec "$NS_R" "$RWG_ABUSE" ctl --control "$RELAY_CTL" "$@" 2>&1) || return 1
	[[ $out != error=* ]] || { log "relay: $* -> $out"; return 1; }
	printf '%s\n' "$out"
}

# relay_stat STATS KEY: one counter from a `stats` answer.
relay_stat() {
	local v
	v=$(tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p")
	[[ -n $v ]] || fail "the relay's stats have no $2"
	printf '%s\n' "$v"
}

# renew_b: B forgets its peer A and is given it again: its next packet starts a new handshake
# with a newer timestamp, which A takes as the peer's new session (as after a rekey).
renew_b() {
	n "$NS_B" wg set "$IF_B" peer "$(pub a)" remove
	relay_conf_b
}

# Tear down what the scenario created so far, to build a fresh topology in the same scenario.
teardown() {
	check_daemons
	cleanup
	E2E_NAMESPACES=() E2E_PIDS=() E2E_PGIDS=() E2E_IFACES=() E2E_DAEMONS=()
	set -e
	trap on_err ERR
}

# Keys on the configuration socket are hex; wg prints base64.
b64hex() { base64 -d <<<"$1" | od -An -v -tx1 | tr -d ' \n'; }
