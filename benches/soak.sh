#!/usr/bin/env bash
# Soak: two rwg daemons for a long time (default one hour) under mixed traffic and many
# handshakes, sampled all along; a verdict on leaks, stalls and counters at the end. A script to
# run by hand, not CI.
#
# Two namespaces of its own, "a" and "b" (veth 10.0.0.0/24, tunnel 192.168.241.0/24, MTU 1420),
# rwg in each, configured with `wg set`. For the whole duration, from "b" through the tunnel:
# one iperf3 TCP stream b->a and one a->b (-R), each paced at --tcp-rate, one UDP stream b->a at
# --udp-rate, and pings at every sample. Meanwhile, every --churn seconds: "b" removes its peer
# (`wg set ... peer A remove`) and adds it back, which forces a fresh handshake (the daemon is
# the release binary, unchanged: no short rekey timers), and "a" swaps --extra dummy peers (fresh
# random keys, allowed-ips in 10.99.0.0/16, an endpoint nobody answers, persistent keepalive 5 s)
# for new ones. With --churn under 120 s no session lives long enough for a timed rekey
# (REKEY_AFTER_TIME); --churn 150 lets those happen between the forced handshakes.
#
# Every --sample seconds, for both daemons: VmRSS, VmHWM, open fds (/proc/PID/fd), threads,
# the real peer's rx/tx bytes and latest handshake (`wg show dump`), whether pings b->a were
# answered and whether the three iperf3 clients still run. Then a quiet check: traffic stopped,
# a known transfer (iperf3 -n 20M each way): the bytes one side sent equal what the other got.
#
# Verdict (exit 1 on any failure):
#   rss        per daemon: max VmRSS of the last quarter <= max of the first quarter
#              * (1 + SOAK_RSS_PCT/100) + SOAK_RSS_SLACK_KIB (defaults 10 %, 2048 KiB)
#   fds, threads  per daemon: at the end (waited for up to 10 s) equal to the first sample
#              after the warm-up (min(60 s, a quarter of the run))
#   stall      every sample saw a ping reply and all iperf3 clients running; every forced
#              handshake completed within 20 s; in no sample was a side's latest handshake
#              older than 180 s (rekey after 120 s)
#   counters   a's counters never decrease (its peer is never removed); b's never decrease
#              between two re-adds; per handshake generation, b's tx since the generation's
#              first sample and a's rx over the same samples differ by at most
#              SOAK_FLIGHT_KIB (default 4096: in socket buffers, queues, or sent between the
#              two dumps), and likewise a->b; in the quiet check, sent == received within 1 %
#              + 64 KiB, and at least 10 MiB each way
#   panics     no "panicked" in either daemon's log, both daemons alive
#
# Needs root (netns), iperf3, wg, ping, socat, flock, python3. Usage:
#   sudo benches/soak.sh [--duration S] [--sample S] [--churn S] [--extra N]
#                        [--tcp-rate 50M] [--udp-rate 5M] [--out FILE] [--keep-logs DIR]
# RWG=path/to/rwg (default: $CARGO_TARGET_DIR or ./target, release/rwg).
set -euo pipefail
umask 077

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"
REPO=$(cd "$HERE/.." && pwd)

DURATION=3600
SAMPLE=10
CHURN=20
EXTRA=3
TCP_RATE=50M
UDP_RATE=5M
OUT=""
LOGDIR=""
need_arg() { (($# >= 2)) && [[ -n $2 ]] || { echo "$1 needs a value" >&2; exit 2; }; }
while (($#)); do
	case $1 in
	--duration) need_arg "$@"; DURATION=$2; shift 2 ;;
	--sample) need_arg "$@"; SAMPLE=$2; shift 2 ;;
	--churn) need_arg "$@"; CHURN=$2; shift 2 ;;
	--extra) need_arg "$@"; EXTRA=$2; shift 2 ;;
	--tcp-rate) need_arg "$@"; TCP_RATE=$2; shift 2 ;;
	--udp-rate) need_arg "$@"; UDP_RATE=$2; shift 2 ;;
	--out) need_arg "$@"; OUT=$2; shift 2 ;;
	--keep-logs) need_arg "$@"; LOGDIR=$2; shift 2 ;;
	-h | --help) sed -n '2,40p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
for v in DURATION SAMPLE CHURN; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "--${v,,} must be a positive integer (seconds)" >&2; exit 2; }
done
[[ $EXTRA =~ ^[0-9]+$ ]] && ((EXTRA <= 200)) || { echo "--extra must be 0 to 200" >&2; exit 2; }
((DURATION >= 8 * SAMPLE)) || { echo "--duration must be at least 8 samples (quarters of the run are compared)" >&2; exit 2; }
for v in TCP_RATE UDP_RATE; do
	[[ ${!v} =~ ^[1-9][0-9]*[KMG]?$ ]] || { echo "--${v,,} wants a rate as iperf3 -b takes it (e.g. 50M)" >&2; exit 2; }
done
: "${SOAK_RSS_PCT:=10}" "${SOAK_RSS_SLACK_KIB:=2048}" "${SOAK_FLIGHT_KIB:=4096}"
for v in SOAK_RSS_PCT SOAK_RSS_SLACK_KIB SOAK_FLIGHT_KIB; do
	[[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer" >&2; exit 2; }
done
: "${RWG:=${CARGO_TARGET_DIR:-$REPO/target}/release/rwg}"

((EUID == 0)) || { echo "needs root (network namespaces)" >&2; exit 1; }
for c in ip iperf3 wg python3 ping socat flock timeout; do
	command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }
done
[[ -x $RWG ]] || { echo "no rwg at $RWG: cargo build --release -p rwg, or set RWG" >&2; exit 1; }

WORK=$(mktemp -d /tmp/soak.XXXXXX)
TAG=$(($$ % 100000))
NSA=sk$TAG-a NSB=sk$TAG-b IFA=sk${TAG}a IFB=sk${TAG}b
NSLIST=()
LOCK=$WORK/lock # held around every UAPI use and every /proc sample: fds are counted between them

cleanup() {
	set +e
	local p ifc
	touch "$WORK/stop"
	for p in $(jobs -p); do kill -TERM "$p" 2>/dev/null; done
	local pids=()
	for ifc in "$IFA" "$IFB"; do [[ -s $WORK/pid-$ifc ]] && pids+=("$(cat "$WORK/pid-$ifc")"); done
	stop_pids "${pids[@]}"
	remove_run "${NSLIST[@]}" -- "$IFA" "$IFB"
	if [[ -n $LOGDIR ]]; then mkdir -p "$LOGDIR" && cp -r "$WORK"/. "$LOGDIR"/; fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


start_daemon() { # NS IFACE -> echoes pid (`ip netns exec` execs: $! is rwg itself)
	local pid
	ip netns exec "$1" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "$RWG" -f "$2" >"$WORK/daemon-$2.log" 2>&1 &
	pid=$!
	echo "$pid" >"$WORK/pid-$2"
	wait_until 10 sock_ready "$2" "$pid" || { echo "$2: socket not ready" >&2; exit 1; }
	kill -0 "$pid" 2>/dev/null || { echo "$2 exited: $(tail -3 "$WORK/daemon-$2.log")" >&2; exit 1; }
	echo "$pid"
}

wgx() { # NS ARGS...: wg in a namespace, holding the lock
	local ns=$1
	shift
	flock "$LOCK" ip netns exec "$ns" wg "$@"
}

readd_b() { wgx "$NSB" set "$IFB" peer "$PUB_A" allowed-ips 192.168.241.1/32 endpoint 10.0.0.1:51820; }

# setup
for ns in "$NSA" "$NSB"; do
	ip netns add "$ns"
	NSLIST+=("$ns")
	ip -n "$ns" link set lo up
done
ip link add va netns "$NSA" mtu 1500 type veth peer name vb netns "$NSB" mtu 1500
ip -n "$NSA" addr add 10.0.0.1/24 dev va
ip -n "$NSB" addr add 10.0.0.2/24 dev vb
ip -n "$NSA" link set va up
ip -n "$NSB" link set vb up
wg genkey >"$WORK/a.key"
wg genkey >"$WORK/b.key"
PUB_A=$(wg pubkey <"$WORK/a.key")
PUB_B=$(wg pubkey <"$WORK/b.key")
PA=$(start_daemon "$NSA" "$IFA")
PB=$(start_daemon "$NSB" "$IFB")
wgx "$NSA" set "$IFA" private-key "$WORK/a.key" listen-port 51820 peer "$PUB_B" allowed-ips 192.168.241.2/32
wgx "$NSB" set "$IFB" private-key "$WORK/b.key" listen-port 51821
readd_b
ip -n "$NSA" addr add 192.168.241.1/24 dev "$IFA"
ip -n "$NSB" addr add 192.168.241.2/24 dev "$IFB"
ip -n "$NSA" link set "$IFA" mtu 1420 up
ip -n "$NSB" link set "$IFB" mtu 1420 up
wait_until 15 ip netns exec "$NSB" ping -c1 -W1 -q 192.168.241.1 >/dev/null 2>&1 ||
	{ echo "no ping through the tunnel" >&2; exit 1; }
for port in 5201 5202 5203; do
	ip netns exec "$NSA" iperf3 -s -p "$port" >"$WORK/iperf-server-$port.log" 2>&1 &
done
for port in 5201 5202 5203; do
	wait_until 5 bash -c "ip netns exec $NSA ss -Hltn 'sport = :$port' | grep -q ." ||
		{ echo "iperf3 server on $port not listening" >&2; exit 1; }
done
log "a: $IFA (pid $PA), b: $IFB (pid $PB), tunnel up; load average $(cut -d' ' -f1-3 /proc/loadavg)"

{
	printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf 'nproc\t%s\n' "$(nproc)"
	printf 'kernel\t%s\n' "$(uname -r)"
	printf 'rwg\t%s\n' "$RWG"
	printf 'load_start\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf 'params\tduration %s s, sample %s s, churn %s s, %s dummy peers, TCP %s each way, UDP %s\n' \
		"$DURATION" "$SAMPLE" "$CHURN" "$EXTRA" "$TCP_RATE" "$UDP_RATE"
} >"$WORK/env.tsv"

# The traffic: it runs longer than the sampling and is stopped after it; each must still be
# running at every sample.
T0=$(date +%s)
ITIME=$((DURATION + 60))
timeout $((ITIME + 30)) ip netns exec "$NSB" iperf3 -c 192.168.241.1 -p 5201 -t "$ITIME" -b "$TCP_RATE" \
	>"$WORK/iperf-tcp-up.log" 2>&1 &
IPERF_PIDS=($!)
timeout $((ITIME + 30)) ip netns exec "$NSB" iperf3 -c 192.168.241.1 -p 5202 -R -t "$ITIME" -b "$TCP_RATE" \
	>"$WORK/iperf-tcp-down.log" 2>&1 &
IPERF_PIDS+=($!)
timeout $((ITIME + 30)) ip netns exec "$NSB" iperf3 -c 192.168.241.1 -p 5203 -u -l 1200 -t "$ITIME" -b "$UDP_RATE" \
	>"$WORK/iperf-udp.log" 2>&1 &
IPERF_PIDS+=($!)

# The churn, in the background: b re-adds its peer (generation g: "pending g" while the handshake
# is under way, "g" once it completed and a second passed, for the counters' comparisons), and a
# swaps its dummy peers. events.tsv: "t gen handshake_seconds|fail".
b_handshaked() {
	[[ $(flock "$LOCK" ip netns exec "$NSB" wg show "$IFB" latest-handshakes |
		awk -v k="$PUB_A" '$1 == k { print $2 }') =~ ^[1-9] ]]
}
churn() {
	local g=0 t next hs0 h d i key dummies=() new=()
	echo 0 >"$WORK/gen"
	# Half a sample after the samples' own schedule, so that samples rarely land on a re-add.
	next=$((T0 + CHURN + (SAMPLE + 1) / 2))
	while [[ ! -e $WORK/stop ]]; do
		if (($(date +%s) < next)); then sleep 1; continue; fi
		next=$((next + CHURN))
		g=$((g + 1))
		echo "pending $g" >"$WORK/gen"
		hs0=$(date +%s%N)
		wgx "$NSB" set "$IFB" peer "$PUB_A" remove
		readd_b
		if wait_until 20 b_handshaked; then
			h=$(date +%s%N)
			d=$(awk -v d=$((h - hs0)) 'BEGIN { printf "%.2f", d / 1e9 }')
		else
			d=fail
		fi
		printf '%s\t%s\t%s\n' "$(($(date +%s) - T0))" "$g" "$d" >>"$WORK/events.tsv"
		new=()
		for ((i = 0; i < EXTRA; i++)); do
			key=$(wg genkey | wg pubkey)
			new+=("$key")
			wgx "$NSA" set "$IFA" peer "$key" allowed-ips "10.99.$((g % 256)).$((i + 1))/32" \
				endpoint 10.0.0.3:51820 persistent-keepalive 5
		done
		for key in "${dummies[@]}"; do wgx "$NSA" set "$IFA" peer "$key" remove; done
		dummies=("${new[@]}")
		sleep 1 # sessions switched over on both sides before the generation counts
		echo "$g" >"$WORK/gen"
	done
}
churn &
CHURN_PID=$!

status_of() { # PID -> "rss hwm fds threads" (kB)
	kill -0 "$1" 2>/dev/null || return 1
	awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} /^Threads/ {t=$2} END {printf "%s %s ", r, h; printf "%s", t}' "/proc/$1/status" |
		{ read -r r h t; printf '%s\t%s\t%s\t%s' "$r" "$h" "$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l)" "$t"; }
}
peer_of() { # NS IFACE PUBKEY -> "rx tx latest_handshake peers" ("-" when the peer is absent)
	ip netns exec "$1" wg show "$2" dump | awk -F'\t' -v k="$3" '
		NR > 1 { n++ } NR > 1 && $1 == k { rx = $6; tx = $7; hs = $5 }
		END { if (rx == "") printf "-\t-\t-\t%d", n; else printf "%s\t%s\t%s\t%d", rx, tx, hs, n }'
}
alive_iperf() {
	local p n=0
	for p in "${IPERF_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done
	echo "$n"
}

printf 't\tnow\tping_tx\tping_rx\tiperf\ta_rss\ta_hwm\ta_fds\ta_thr\tb_rss\tb_hwm\tb_fds\tb_thr\ta_rx\ta_tx\ta_hs\ta_peers\tb_rx\tb_tx\tb_hs\tb_peers\tgen0\tgen1\tload1\n' >"$WORK/samples.tsv"
log "soaking for $DURATION s (sample every $SAMPLE s, churn every $CHURN s)"
next=$((T0 + SAMPLE))
while :; do
	now=$(date +%s)
	((now >= T0 + DURATION + 1)) && break
	if ((now < next)); then sleep 0.5; continue; fi
	next=$((next + SAMPLE))
	pr=$(ip netns exec "$NSB" ping -c 5 -i 0.2 -W 3 -q 192.168.241.1 2>/dev/null |
		awk '/packets transmitted/ {print $1 "\t" $4}') || true
	[[ -n $pr ]] || pr=$'5\t0'
	exec 9>>"$LOCK"
	flock 9
	g0=$(cat "$WORK/gen")
	sa=$(status_of "$PA" || printf -- '-\t-\t-\t-')
	sb=$(status_of "$PB" || printf -- '-\t-\t-\t-')
	da=$(peer_of "$NSA" "$IFA" "$PUB_B" || printf -- '-\t-\t-\t-')
	db=$(peer_of "$NSB" "$IFB" "$PUB_A" || printf -- '-\t-\t-\t-')
	g1=$(cat "$WORK/gen")
	flock -u 9
	exec 9>&-
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$((now - T0))" "$(date +%s)" "$pr" "$(alive_iperf)" \
		"$sa" "$sb" "$da" "$db" "${g0// /_}" "${g1// /_}" "$(cut -d' ' -f1 /proc/loadavg)" >>"$WORK/samples.tsv"
	if (((now - T0) % (SAMPLE * 30) < SAMPLE)); then
		log "t=$((now - T0)) s: $(tail -1 "$WORK/samples.tsv" | cut -f3-13 | tr '\t' ' ')"
	fi
done

# Stop the churn and the traffic; were the iperf3 clients still running until now?
touch "$WORK/stop"
wait "$CHURN_PID" || true
for p in "${IPERF_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${IPERF_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done

# Quiet check: wait until b's counters stand still, then a known transfer each way.
counters() { printf '%s\t%s\n' "$(peer_of "$NSA" "$IFA" "$PUB_B" | cut -f1,2)" "$(peer_of "$NSB" "$IFB" "$PUB_A" | cut -f1,2)"; }
still() {
	local c1 c2
	c1=$(counters)
	sleep 0.5
	c2=$(counters)
	[[ $c1 == "$c2" ]]
}
quiet=ok
wait_until 20 still || quiet="traffic did not stop"
q0=$(counters)
# (the servers may need a moment to see their soak clients gone: a busy server refuses at once)
wait_until 15 timeout 60 ip netns exec "$NSB" iperf3 -c 192.168.241.1 -p 5201 -n 20M --logfile "$WORK/iperf-quiet.log" ||
	quiet="iperf3 -n failed"
wait_until 15 timeout 60 ip netns exec "$NSB" iperf3 -c 192.168.241.1 -p 5202 -n 20M -R --logfile "$WORK/iperf-quiet.log" ||
	quiet="iperf3 -n -R failed"
wait_until 20 still || quiet="traffic did not stop after the transfer"
q1=$(counters)
printf 'q0\t%s\nq1\t%s\nstatus\t%s\n' "$q0" "$q1" "$quiet" >"$WORK/quiet.tsv"

# fds and threads at the end: given 10 s to settle to the warm-up values.
WARM=$((DURATION / 4 < 60 ? DURATION / 4 : 60))
warm_row=$(awk -F'\t' -v w="$WARM" 'NR > 1 && $1 >= w { print; exit }' "$WORK/samples.tsv")
IFS=$'\t' read -r -a W <<<"$warm_row"
end_matches() {
	local sa sb
	sa=$(status_of "$PA") && sb=$(status_of "$PB") || return 1
	IFS=$'\t' read -r -a EA <<<"$sa"
	IFS=$'\t' read -r -a EB <<<"$sb"
	[[ ${EA[2]} == "${W[7]}" && ${EA[3]} == "${W[8]}" && ${EB[2]} == "${W[11]}" && ${EB[3]} == "${W[12]}" ]]
}
EA=() EB=()
wait_until 10 end_matches || true
{
	printf 'warm_t\t%s\n' "${W[0]}"
	printf 'end_a\t%s\t%s\n' "${EA[2]:--}" "${EA[3]:--}"
	printf 'end_b\t%s\t%s\n' "${EB[2]:--}" "${EB[3]:--}"
	printf 'alive_a\t%s\n' "$(kill -0 "$PA" 2>/dev/null && echo 1 || echo 0)"
	printf 'alive_b\t%s\n' "$(kill -0 "$PB" 2>/dev/null && echo 1 || echo 0)"
	printf 'panics\t%s\n' "$(cat "$WORK"/daemon-*.log | grep -c panicked || true)"
	printf 'load_end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$WORK/end.tsv"
touch "$WORK/events.tsv"

set +e
python3 - "$WORK" "$DURATION" "$SOAK_RSS_PCT" "$SOAK_RSS_SLACK_KIB" "$SOAK_FLIGHT_KIB" <<'PY' | if [[ -n $OUT ]]; then tee "$OUT"; else cat; fi
import sys

work, duration, rss_pct, rss_slack, flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
flight *= 1024
env = dict(l.rstrip("\n").split("\t", 1) for l in open(f"{work}/env.tsv"))
end = {l.split("\t", 1)[0]: l.rstrip("\n").split("\t")[1:] for l in open(f"{work}/end.tsv")}
lines = open(f"{work}/samples.tsv").read().split("\n")
head = lines[0].split("\t")
rows = [dict(zip(head, l.split("\t"))) for l in lines[1:] if l]
events = [l.split("\t") for l in open(f"{work}/events.tsv").read().split("\n") if l]
quiet = {l.split("\t", 1)[0]: l.rstrip("\n").split("\t")[1:] for l in open(f"{work}/quiet.tsv")}

def num(v):
    return None if v in ("-", "", None) else int(v)

fails = []
checks = []  # (name, ok, detail)

def check(name, ok, detail):
    checks.append((name, ok, detail))
    if not ok:
        fails.append(name)

n = len(rows)
check("samples", n >= 8, f"{n} samples over {duration} s")
q = max(n // 4, 1)
mib = lambda kb: f"{kb / 1024:.1f}"
rss_cells = {}
for side in "ab":
    rss = [num(r[f"{side}_rss"]) for r in rows]
    first, last = [x for x in rss[:q] if x], [x for x in rss[-q:] if x]
    if not first or not last:
        check(f"rss {side}", False, "no samples")
        continue
    limit = max(first) * (1 + rss_pct / 100) + rss_slack
    rss_cells[side] = (min(x for x in rss if x), max(first), max(last), num(rows[-1][f"{side}_hwm"]))
    check(f"rss {side}", max(last) <= limit,
          f"first quarter max {mib(max(first))} MiB, last quarter max {mib(max(last))} MiB (limit {mib(limit)})")

warm_t = end["warm_t"][0]
w = next(r for r in rows if r["t"] == warm_t)
for side in "ab":
    e = end[f"end_{side}"]
    for k, i in (("fds", 0), ("thr", 1)):
        series = [num(r[f"{side}_{k}"]) for r in rows if int(r["t"]) >= int(warm_t)]
        check(f"{'fds' if k == 'fds' else 'threads'} {side}", e[i] == w[f"{side}_{k}"],
              f"{w[f'{side}_{k}']} at t={warm_t} s, {e[i]} at the end (range after warm-up {min(series)}..{max(series)})")

noping = [r["t"] for r in rows if int(r["ping_rx"]) == 0]
pings = sum(int(r["ping_rx"]) for r in rows), sum(int(r["ping_tx"]) for r in rows)
check("ping", not noping, f"{pings[0]}/{pings[1]} replies; samples without any: {noping or 'none'}")
noiperf = [r["t"] for r in rows if r["iperf"] != "3"]
check("iperf3", not noiperf, f"3 clients running in every sample" if not noiperf else f"fewer than 3 at t = {noiperf[:10]}")
hs = [e[2] for e in events]
ok_hs = sorted(float(x) for x in hs if x != "fail")
check("handshakes", bool(events) and "fail" not in hs,
      f"{len(events)} forced, {hs.count('fail')} failed; seconds median {ok_hs[len(ok_hs) // 2] if ok_hs else '-'}, max {ok_hs[-1] if ok_hs else '-'}")
old = []
for r in rows:
    for side in "ab":
        h = num(r[f"{side}_hs"])
        pending = r["gen0"].startswith("pending") or r["gen1"].startswith("pending") or r["gen0"] != r["gen1"]
        if h is None or h == 0:
            if not pending:
                old.append(f"{side}@{r['t']}:none")
        elif int(r["now"]) - h > 180:
            old.append(f"{side}@{r['t']}:{int(r['now']) - h}s")
a_hs = len({r["a_hs"] for r in rows})
check("handshake age", not old, f"latest handshake <= 180 s old in every sample ({a_hs} distinct on a)" if not old else f"too old or missing: {old[:8]}")

# Counters.
dec = []
prev = None
for r in rows:
    if prev:
        for k in ("a_rx", "a_tx"):
            if num(r[k]) is None or num(r[k]) < num(prev[k]):
                dec.append(f"{k}@{r['t']}")
        if r["gen0"] == r["gen1"] == prev["gen0"] == prev["gen1"] and not r["gen0"].startswith("pending"):
            for k in ("b_rx", "b_tx"):
                if num(r[k]) is not None and num(prev[k]) is not None and num(r[k]) < num(prev[k]):
                    dec.append(f"{k}@{r['t']}")
    prev = r
check("monotonic", not dec, "a's never decreased, b's never within a generation" if not dec else f"decreased: {dec[:8]}")
worst = [0, 0]
bad = []
pairs = 0
gens = {}
for r in rows:
    if r["gen0"] == r["gen1"] and not r["gen0"].startswith("pending") and num(r["b_rx"]) is not None:
        gens.setdefault(r["gen0"], []).append(r)
for g, rs in gens.items():
    f = rs[0]
    for r in rs[1:]:
        pairs += 1
        d_ba = (num(r["b_tx"]) - num(f["b_tx"])) - (num(r["a_rx"]) - num(f["a_rx"]))
        d_ab = (num(r["a_tx"]) - num(f["a_tx"])) - (num(r["b_rx"]) - num(f["b_rx"]))
        for i, d in enumerate((d_ba, d_ab)):
            if abs(d) > abs(worst[i]):
                worst[i] = d
            if abs(d) > flight:
                bad.append(f"gen {g} t={r['t']}: {'b->a' if i == 0 else 'a->b'} {d} B")
check("tx ~ rx", pairs > 0 and not bad,
      f"{pairs} comparisons in {len(gens)} generations; largest (sent - received) b->a {worst[0] / 1024:.0f} KiB, a->b {worst[1] / 1024:.0f} KiB (limit {flight // 1024} KiB)" if not bad else "; ".join(bad[:4]))
q0 = [int(x) for x in quiet["q0"]] if "-" not in quiet["q0"] else None
q1 = [int(x) for x in quiet["q1"]] if "-" not in quiet["q1"] else None
if q0 and q1 and quiet["status"][0] == "ok":
    a_rx, a_tx, b_rx, b_tx = (q1[i] - q0[i] for i in range(4))
    tol = lambda x: 0.01 * x + 65536
    # At least half of each 20 MiB crossed: iperf3's server stops reading when the client says
    # it is done, so not all of an upload's -n need cross (its report shows that too).
    check("quiet transfer", abs(b_tx - a_rx) <= tol(b_tx) and abs(a_tx - b_rx) <= tol(a_tx) and min(a_rx, b_rx) > 10 * 2**20,
          f"b sent {b_tx} B, a received {a_rx} B; a sent {a_tx} B, b received {b_rx} B")
else:
    check("quiet transfer", False, quiet["status"][0])
check("panics", end["panics"][0] == "0" and end["alive_a"][0] == "1" and end["alive_b"][0] == "1",
      f"'panicked' in logs: {end['panics'][0]}; alive: a {end['alive_a'][0]}, b {end['alive_b'][0]}")

# Throughput from the counters, over the whole run (what a received + what b received).
span = int(rows[-1]["now"]) - int(rows[0]["now"]) or 1
mbps = lambda k: (num(rows[-1][k]) - num(rows[0][k])) * 8 / span / 1e6
loads = [float(r["load1"]) for r in rows]

print(f"## Soak: {'PASS' if not fails else 'FAIL (' + ', '.join(fails) + ')'}\n")
print(f"{env['date']}, {env['nproc']} CPUs, Linux {env['kernel']}; {env['params']}; rwg {env['rwg']}")
print(f"load average at the start {env['load_start']}, at the end {end['load_end'][0]}; 1-min load over the samples {min(loads):.1f}..{max(loads):.1f}")
print(f"through the tunnel (a's counters, first to last sample): a received {mbps('a_rx'):.0f} Mbit/s, sent {mbps('a_tx'):.0f} Mbit/s\n")
print("| | a | b |\n|---|---:|---:|")
if len(rss_cells) == 2:
    print("| VmRSS min / first-quarter max / last-quarter max, MiB | " + " | ".join(
        f"{mib(rss_cells[s][0])} / {mib(rss_cells[s][1])} / {mib(rss_cells[s][2])}" for s in "ab") + " |")
    print("| VmHWM at the last sample, MiB | " + " | ".join(mib(rss_cells[s][3]) for s in "ab") + " |")
print(f"| fds after warm-up (t={warm_t} s) / end | {w['a_fds']} / {end['end_a'][0]} | {w['b_fds']} / {end['end_b'][0]} |")
print(f"| threads after warm-up / end | {w['a_thr']} / {end['end_a'][1]} | {w['b_thr']} / {end['end_b'][1]} |")
print(f"| peers at the last sample (real + dummies) | {rows[-1]['a_peers']} | {rows[-1]['b_peers']} |\n")
print("| check | | detail |\n|---|---|---|")
for name, ok, detail in checks:
    print(f"| {name} | {'ok' if ok else '**FAIL**'} | {detail} |")
sys.exit(1 if fails else 0)
PY
rc=${PIPESTATUS[0]}
exit "$rc"
