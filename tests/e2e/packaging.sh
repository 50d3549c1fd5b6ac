#!/usr/bin/env bash
# The daemon on real hosts, end to end: the Debian package as a user installs it, and hosts
# without one address family. Checks (all by default, in this order):
#   deb       build the .deb with cargo-deb from the release binary, check what it holds, install
#             it with dpkg
#   docs      man 8 rwg and man rwg-proxy from the installed pages; completion from the installed
#             files in real bash, zsh and fish; the license files
#   dropin    the installed systemd drop-in example read by systemd-analyze with the installed
#             wg-quick@.service: no warnings, and it names rwg
#   wgquick   what wg-quick@IFACE.service runs with the drop-in (its ExecStart/ExecStop and
#             Environment=, in systemd's bare environment), with the installed /usr/bin/rwg,
#             against wireguard-go:
#
#               netns A                                        netns B
#               wg-quick up IFACE -> /usr/bin/rwg IFACE        wireguard-go
#                 192.168.241.1/24 fd00::1/64                    192.168.241.2/24 fd00::2/64
#               va 10.0.0.1/24  <---------- veth ---------->   vb 10.0.0.2/24
#
#   noipv6    rwg in a namespace with net.ipv6.conf.all.disable_ipv6=1: one IPv4 socket, one
#             warning (also after a listen-port change), the tunnel works (peer wireguard-go)
#   noipv4    rwg without IPv4 sockets (no-ipv4.py: the seccomp filter of systemd's
#             RestrictAddressFamilies=, since Linux cannot lose IPv4 otherwise) over an
#             IPv6-only underlay: one IPv6 socket, one warning, IPv4 and IPv6 inside the tunnel
#
# Needs root, dpkg, cargo-deb, wg, wg-quick, wireguard-go, systemd-analyze, man, bash, zsh, fish,
# python3, socat (scripts/install-deps). The package is removed again afterwards if it was not
# installed before (E2E_KEEP_PACKAGE=1 keeps it).
# Usage: tests/e2e/packaging.sh [CHECK...]   RWG=the binary for noipv6/noipv4 (default
#        target/release/rwg; the .deb always packages <target>/release/rwg)
# Output: PASS/FAIL per check, then exactly "N passed, N failed". Exit status 1 on failure.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RWG=${RWG:-$ROOT/target/release/rwg}
[[ $RWG == /* ]] || RWG=$PWD/$RWG
for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
	[[ -d $d && :$PATH: != *:$d:* ]] && PATH=$PATH:$d
done
export RWG PATH
source "$HERE/lib.sh"

ALL_CHECKS=(install deb docs dropin wgquick noipv6 noipv4)
CHECK_TIMEOUT=180
# What systemd gives a service: no inherited environment but this PATH.
SYSTEMD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
UNIT=/lib/systemd/system/wg-quick@.service
DROPIN=/usr/share/doc/rwg/examples/wg-quick-rwg.conf

if [[ $(id -u) != 0 ]]; then
	echo "tests/e2e/packaging.sh must run as root (dpkg, namespaces, TUN devices)" >&2
	echo "0 passed, 1 failed"
	exit 1
fi
selected=("$@")
((${#selected[@]})) || selected=("${ALL_CHECKS[@]}")
for c in "${selected[@]}"; do
	[[ " ${ALL_CHECKS[*]} " == *" $c "* ]] || { echo "unknown check '$c' (${ALL_CHECKS[*]})" >&2; exit 2; }
done

umask 077
RUN_ID=$$
RUN_DIR=$(mktemp -d /tmp/rwg-packaging.XXXXXX)
SEQ=0
export RUN_ID RUN_DIR
passed=0 failed=0
# Files outside the scratch directory that a check created (removed by its EXIT trap).
E2E_EXTRA_FILES=()

installed() { dpkg-query -W -f='${Status}' rwg 2>/dev/null | grep -q '^install ok installed$'; }
was_installed=0
installed && was_installed=1

# --- install -------------------------------------------------------------------------------------

ck_install() {
	local stage=$SCDIR/stage root f left
	"$ROOT/packaging/install.sh" --destdir "$stage" --prefix /usr/local --binary "$RWG" >"$SCDIR/install.log" 2>&1 ||
		fail "packaging/install.sh failed: $(tail -n 3 "$SCDIR/install.log" | tr '\n' ' ')"
	root=$stage/usr/local
	for f in bin/rwg share/man/man8/rwg.8 share/man/man8/rwg-proxy.8 share/bash-completion/completions/rwg \
		share/zsh/vendor-completions/_rwg share/fish/vendor_completions.d/rwg.fish share/doc/rwg/LICENSE-MIT \
		share/doc/rwg/LICENSE-APACHE share/doc/rwg/examples/wg-quick-rwg.conf; do
		[[ -s $root/$f ]] || fail "install.sh did not install $f"
	done
	[[ $("$root/bin/rwg" --version) == "$("$RWG" --version)" ]] || fail "the staged rwg is not \$RWG"
	MANWIDTH=250 man -l "$root/share/man/man8/rwg.8" 2>"$SCDIR/man.err" | grep -q ENVIRONMENT || fail "the installed rwg.8 does not render"
	[[ ! -s $SCDIR/man.err ]] || fail "man warns about the installed page: $(head -n 2 "$SCDIR/man.err")"
	"$ROOT/packaging/install.sh" --uninstall --destdir "$stage" --prefix /usr/local >>"$SCDIR/install.log" 2>&1 ||
		fail "install.sh --uninstall failed"
	left=$(find "$stage" -type f | head -n 3)
	[[ -z $left ]] || fail "install.sh --uninstall left $left"
	log "install.sh installs and uninstalls the binary, pages, completions and docs"
}

# --- deb -----------------------------------------------------------------------------------------

# The files the package must install (besides dpkg's own /usr/share/doc/rwg/copyright).
PACKAGE_FILES=(
	/usr/bin/rwg
	/usr/share/man/man8/rwg.8.gz
	/usr/share/man/man8/rwg-proxy.8.gz
	/usr/share/man/man8/rwg-demo.8.gz
	/usr/share/man/man8/rwg-genkey.8.gz
	/usr/share/man/man8/rwg-pubkey.8.gz
	/usr/share/man/man8/rwg-genpsk.8.gz
	/usr/share/man/man8/rwg-completions.8.gz
	/usr/share/bash-completion/completions/rwg
	/usr/share/zsh/vendor-completions/_rwg
	/usr/share/fish/vendor_completions.d/rwg.fish
	/usr/share/doc/rwg/LICENSE-MIT
	/usr/share/doc/rwg/LICENSE-APACHE
	/usr/share/doc/rwg/copyright
	/usr/share/doc/rwg/examples/wg-quick-rwg.conf
)

ck_deb() {
	local deb contents f version
	command -v cargo-deb >/dev/null || fail "cargo-deb is not installed (scripts/install-deps)"
	deb=$("$ROOT/packaging/build-deb.sh" --no-build 2>"$SCDIR/build-deb.err" | tail -n 1) ||
		fail "packaging/build-deb.sh failed: $(tail -n 3 "$SCDIR/build-deb.err" | tr '\n' ' ')"
	[[ -f $deb ]] || fail "build-deb.sh printed '$deb', which is not a file"
	log "built $deb"
	version=$("$ROOT/target/release/rwg" --version | sed 's/^rwg v//')
	[[ $(dpkg-deb -f "$deb" Package) == rwg ]] || fail "package name: $(dpkg-deb -f "$deb" Package)"
	# Upstream version, then cargo-deb's Debian revision.
	[[ $(dpkg-deb -f "$deb" Version) =~ ^${version//./\.}-[0-9]+$ ]] || fail "package version $(dpkg-deb -f "$deb" Version), binary says $version"
	[[ $(dpkg-deb -f "$deb" Section) == net ]] || fail "section: $(dpkg-deb -f "$deb" Section)"
	contents=$(dpkg-deb --contents "$deb" | awk '{ print $6 }' | sed 's|^\./|/|')
	for f in "${PACKAGE_FILES[@]}"; do
		grep -qx -- "$f" <<<"$contents" || fail "the .deb lacks $f"
	done
	log "the .deb holds all ${#PACKAGE_FILES[@]} expected files"
	dpkg -i "$deb" >"$SCDIR/dpkg.log" 2>&1 || fail "dpkg -i failed: $(tail -n 3 "$SCDIR/dpkg.log" | tr '\n' ' ')"
	installed || fail "dpkg -i returned 0 but rwg is not 'install ok installed'"
	for f in "${PACKAGE_FILES[@]}"; do
		[[ -e $f ]] || fail "$f missing after dpkg -i"
		dpkg -S "$f" 2>/dev/null | grep -q '^rwg: ' || fail "$f is not owned by the rwg package"
	done
	[[ $(/usr/bin/rwg --version) == "rwg v$version" ]] || fail "installed rwg says $(/usr/bin/rwg --version)"
	log "installed: $(dpkg-query -W -f='${Package} ${Version} ${Status}' rwg)"
}

need_package() { installed || fail "the rwg package is not installed (the deb check failed or did not run)"; }

# --- docs ----------------------------------------------------------------------------------------

ck_docs() {
	local page text got
	need_package
	page=$(man -w 8 rwg) || fail "man -w 8 rwg finds no page"
	[[ $page == /usr/share/man/man8/rwg.8.gz ]] || fail "man 8 rwg is $page, not the package's"
	text=$(MANWIDTH=250 LC_ALL=C.UTF-8 man 8 rwg 2>"$SCDIR/man.err" | tr -s ' \n' '  ') || fail "man 8 rwg failed"
	[[ ! -s $SCDIR/man.err ]] || fail "man 8 rwg warned: $(head -n 2 "$SCDIR/man.err")"
	for want in "rwg [-f|--foreground]" ENVIRONMENT WG_PROCESS_FOREGROUND WG_TUN_FD WG_UAPI_FD RWG_METRICS "rwg proxy"; do
		grep -qF -- "$want" <<<"$text" || fail "man 8 rwg does not mention '$want'"
	done
	text=$(MANWIDTH=250 LC_ALL=C.UTF-8 man rwg-proxy | tr -s ' \n' '  ')
	grep -qF -- "--socks5-auth" <<<"$text" || fail "man rwg-proxy lacks --socks5-auth"
	log "man pages ok"

	# bash, as bash-completion loads the installed file: COMP_WORDS, then the function.
	got=$(bash --norc -c 'source /usr/share/bash-completion/completions/rwg
		COMP_WORDS=(rwg proxy --so); COMP_CWORD=2; _rwg rwg --so proxy; echo "${COMPREPLY[*]}"')
	[[ $got == "--socks5 --socks5-auth" ]] || fail "bash completes 'rwg proxy --so' to '$got'"
	# fish loads vendor completions by itself (not with --no-config: an empty configuration instead).
	got=$(HOME=$SCDIR XDG_CONFIG_HOME=$SCDIR/config fish -c 'complete -C "rwg proxy --so"' | cut -f1 | tr '\n' ' ')
	[[ $got == "--socks5 --socks5-auth " ]] || fail "fish completes 'rwg proxy --so' to '$got'"
	# zsh finds _rwg on its fpath (vendor-completions is on Debian's default fpath).
	got=$(zsh -f -c "fpath=(/usr/share/zsh/vendor-completions \$fpath); autoload -Uz compinit;
		compinit -u -d $SCDIR/zcompdump; print -r -- \$_comps[rwg]")
	[[ $got == _rwg ]] || fail "zsh's compinit does not register _rwg for rwg (got '$got')"
	log "bash, fish and zsh complete from the installed files"

	grep -q "Permission is hereby granted" /usr/share/doc/rwg/LICENSE-MIT || fail "LICENSE-MIT is not the MIT license"
	grep -q "Apache License" /usr/share/doc/rwg/LICENSE-APACHE || fail "LICENSE-APACHE is not the Apache license"
	grep -q "MIT OR Apache-2.0" /usr/share/doc/rwg/copyright || fail "the copyright file does not state the license"
}

# --- dropin --------------------------------------------------------------------------------------

# dropin_env FILE...: the Environment= assignments of unit files, one per line.
dropin_env() { sed -n 's/^Environment=//p' "$@" | tr ' ' '\n' | grep .; }

ck_dropin() {
	local dir ifc
	need_package
	[[ -f $UNIT ]] || fail "$UNIT missing (wireguard-tools installs it)"
	ifc=$(ifname q)
	dir=$SCDIR/units
	mkdir -p "$dir/wg-quick@$ifc.service.d"
	cp "$UNIT" "$dir/"
	cp "$DROPIN" "$dir/wg-quick@$ifc.service.d/rwg.conf"
	SYSTEMD_UNIT_PATH=$dir: systemd-analyze verify "$dir/wg-quick@$ifc.service" >"$SCDIR/verify.log" 2>&1 ||
		fail "systemd-analyze verify failed: $(head -n 3 "$SCDIR/verify.log" | tr '\n' ' ')"
	! grep -q . "$SCDIR/verify.log" || fail "systemd-analyze warns: $(head -n 3 "$SCDIR/verify.log" | tr '\n' ' ')"
	dropin_env "$DROPIN" | grep -qx 'WG_QUICK_USERSPACE_IMPLEMENTATION=rwg' ||
		fail "the drop-in does not set WG_QUICK_USERSPACE_IMPLEMENTATION=rwg"
	log "systemd-analyze verify reads the drop-in without a warning"
}

# --- wgquick -------------------------------------------------------------------------------------

# as_systemd NS COMMAND...: run in NS as wg-quick@.service would: the unit's and the drop-in's
# Environment=, systemd's PATH, nothing else inherited.
as_systemd() {
	local ns=$1 envs
	shift
	mapfile -t envs < <(dropin_env "$UNIT" "$DROPIN")
	ip netns exec "$ns" env -i PATH="$SYSTEMD_PATH" "${envs[@]}" timeout 30 "$@"
}

ck_wgquick() {
	local ifq conf start stop pid exe
	need_package
	new_ns NS_A a
	new_ns NS_B b
	ifq=$(ifname q)
	IF_B=$(ifname b)
	E2E_IFACES+=("$ifq")
	veth_pair "$NS_A" va "$NS_B" vb
	ip -n "$NS_A" addr add 10.0.0.1/24 dev va
	ip -n "$NS_B" addr add 10.0.0.2/24 dev vb
	genkey a
	genkey b
	# wg-quick@IFACE.service reads /etc/wireguard/IFACE.conf; the name is unique to this run.
	conf=/etc/wireguard/$ifq.conf
	mkdir -p /etc/wireguard
	E2E_EXTRA_FILES+=("$conf")
	cat >"$conf" <<-EOF
		[Interface]
		PrivateKey = $(cat "$SCDIR/a.key")
		ListenPort = 51820
		Address = 192.168.241.1/24, fd00::1/64

		[Peer]
		PublicKey = $(pub b)
		AllowedIPs = 192.168.241.2/32, fd00::2/128
	EOF
	chmod 600 "$conf"
	start=$(sed -n 's/^ExecStart=//p' "$UNIT" | sed "s/%i/$ifq/g")
	stop=$(sed -n 's/^ExecStop=//p' "$UNIT" | sed "s/%i/$ifq/g")
	[[ $start == *"wg-quick up $ifq" ]] || fail "unexpected ExecStart in $UNIT: $start"
	log "ExecStart: $start; environment: $(dropin_env "$UNIT" "$DROPIN" | tr '\n' ' ')"
	# shellcheck disable=SC2086 # ExecStart is split into words, as systemd does
	as_systemd "$NS_A" $start >"$SCDIR/wg-quick-up.log" 2>&1 ||
		fail "wg-quick up failed: $(tail -n 3 "$SCDIR/wg-quick-up.log" | tr '\n' ' ')"
	pid=$(pgrep -f -- " $ifq\$" | head -n 1)
	[[ -n $pid ]] || fail "no daemon for $ifq after wg-quick up"
	E2E_PIDS+=("$pid")
	exe=$(readlink "/proc/$pid/exe")
	[[ $exe == /usr/bin/rwg ]] || fail "wg-quick started $exe, not the installed /usr/bin/rwg"
	log "wg-quick started /usr/bin/rwg as pid $pid"
	[[ $(n "$NS_A" wg show "$ifq" listen-port) == 51820 ]] || fail "wg show $ifq: wrong listen port"
	start_wg wireguard-go "$NS_B" "$IF_B"
	n "$NS_B" wg set "$IF_B" private-key "$SCDIR/b.key" peer "$(pub a)" \
		allowed-ips 192.168.241.1/32,fd00::1/128 endpoint 10.0.0.1:51820
	tun_addr "$NS_B" "$IF_B" 2
	must_ping "$NS_B" 192.168.241.1 "to the installed rwg started by wg-quick"
	must_ping "$NS_A" fd00::2 "from the installed rwg"
	handshake_done "$NS_A" "$ifq" "$(pub b)" || fail "wg show reports no handshake with B"
	# shellcheck disable=SC2086
	as_systemd "$NS_A" $stop >"$SCDIR/wg-quick-down.log" 2>&1 ||
		fail "wg-quick down failed: $(tail -n 3 "$SCDIR/wg-quick-down.log" | tr '\n' ' ')"
	wait_until 10 bash -c "! kill -0 $pid 2>/dev/null" || fail "rwg (pid $pid) still runs 10 s after wg-quick down"
	[[ ! -e $(uapi_sock "$ifq") ]] || fail "$(uapi_sock "$ifq") remains after wg-quick down"
	if ip -n "$NS_A" link show "$ifq" >/dev/null 2>&1; then fail "$ifq remains after wg-quick down"; fi
}

# --- noipv6 / noipv4 -----------------------------------------------------------------------------

# udp_sockets NS PORT: the local addresses of the UDP sockets bound to PORT in NS.
udp_sockets() { n "$1" ss -Hun state all "sport = :$2" | awk '{ print $4 }' | sort; }

ck_noipv6() {
	local logf warnings
	new_ns NS_A a
	new_ns NS_B b
	# Off for every interface there and to come, as the sysctl or ipv6.disable_ipv6=1 does.
	n "$NS_A" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
	IF_A=$(ifname a)
	IF_B=$(ifname b)
	veth_pair "$NS_A" va "$NS_B" vb
	ip -n "$NS_A" addr add 10.0.0.1/24 dev va
	ip -n "$NS_B" addr add 10.0.0.2/24 dev vb
	genkey a
	genkey b
	start_wg rwg "$NS_A" "$IF_A"
	start_wg wireguard-go "$NS_B" "$IF_B"
	n "$NS_A" wg set "$IF_A" private-key "$SCDIR/a.key" listen-port 51820 \
		peer "$(pub b)" allowed-ips 192.168.241.2/32
	n "$NS_B" wg set "$IF_B" private-key "$SCDIR/b.key" \
		peer "$(pub a)" allowed-ips 192.168.241.1/32 endpoint 10.0.0.1:51820
	ip -n "$NS_A" addr add 192.168.241.1/24 dev "$IF_A"
	ip -n "$NS_A" link set "$IF_A" up
	tun_addr "$NS_B" "$IF_B" 2
	must_ping "$NS_B" 192.168.241.1 "rwg without IPv6"
	[[ $(udp_sockets "$NS_A" 51820) == "0.0.0.0:51820" ]] ||
		fail "rwg's sockets on port 51820 without IPv6: $(udp_sockets "$NS_A" 51820 | tr '\n' ' ') (want 0.0.0.0:51820 alone)"
	# A listen-port change binds again: still IPv4 alone, still working, no second warning.
	n "$NS_A" wg set "$IF_A" listen-port 51822
	n "$NS_B" wg set "$IF_B" peer "$(pub a)" endpoint 10.0.0.1:51822
	must_ping "$NS_B" 192.168.241.1 "after a listen-port change"
	[[ $(udp_sockets "$NS_A" 51822) == "0.0.0.0:51822" ]] ||
		fail "after the port change: $(udp_sockets "$NS_A" 51822 | tr '\n' ' ')"
	logf=$SCDIR/daemon-$IF_A.log
	warnings=$(grep -c "IPv6 unavailable on this host" "$logf" || true)
	[[ $warnings == 1 ]] || fail "want one warning about IPv6 in rwg's log, got $warnings"
	grep "IPv6 unavailable on this host" "$logf" | grep -q "disable_ipv6 = 1" ||
		fail "the warning does not say why: $(grep "IPv6 unavailable" "$logf")"
	log "rwg: $(grep -m1 "IPv6 unavailable on this host" "$logf")"
}

ck_noipv4() {
	local logf pid wrapper
	command -v python3 >/dev/null || fail "python3 is missing (scripts/install-deps)"
	new_ns NS_A a
	new_ns NS_B b
	IF_A=$(ifname a)
	IF_B=$(ifname b)
	veth_pair "$NS_A" va "$NS_B" vb
	ip -n "$NS_A" addr add fc00::1/64 dev va nodad
	ip -n "$NS_B" addr add fc00::2/64 dev vb nodad
	genkey a
	genkey b
	# start_wg runs "$RWG -f IFACE"; the wrapper execs (same pid) rwg under the filter.
	wrapper=$SCDIR/rwg-without-ipv4
	printf '#!/bin/sh\nexec python3 %q %q "$@"\n' "$HERE/no-ipv4.py" "$RWG" >"$wrapper"
	chmod 755 "$wrapper"
	RWG=$wrapper start_wg rwg "$NS_A" "$IF_A"
	eval "pid=\$PID_$IF_A"
	grep -q '^Seccomp:[[:space:]]*2' "/proc/$pid/status" || fail "rwg (pid $pid) runs without the seccomp filter"
	[[ $(readlink "/proc/$pid/exe") == "$(readlink -f "$RWG")" ]] || fail "pid $pid is $(readlink "/proc/$pid/exe"), not rwg"
	start_wg wireguard-go "$NS_B" "$IF_B"
	n "$NS_A" wg set "$IF_A" private-key "$SCDIR/a.key" listen-port 51820 \
		peer "$(pub b)" allowed-ips 192.168.241.2/32,fd00::2/128
	n "$NS_B" wg set "$IF_B" private-key "$SCDIR/b.key" \
		peer "$(pub a)" allowed-ips 192.168.241.1/32,fd00::1/128 endpoint "[fc00::1]:51820"
	tun_addr "$NS_A" "$IF_A" 1
	tun_addr "$NS_B" "$IF_B" 2
	must_ping "$NS_B" 192.168.241.1 "IPv4 inside, rwg without IPv4 sockets"
	must_ping "$NS_B" fd00::1 "IPv6 inside, rwg without IPv4 sockets"
	[[ $(udp_sockets "$NS_A" 51820) == "[::]:51820" ]] ||
		fail "rwg's sockets on port 51820 without IPv4: $(udp_sockets "$NS_A" 51820 | tr '\n' ' ') (want [::]:51820 alone)"
	logf=$SCDIR/daemon-$IF_A.log
	grep "IPv4 unavailable on this host" "$logf" | grep -q "Address family not supported" ||
		fail "no warning about IPv4 with its reason in rwg's log"
	log "rwg: $(grep -m1 "IPv4 unavailable on this host" "$logf")"
}

# --- runner --------------------------------------------------------------------------------------

run_check() {
	local name=$1 pid rc reason i
	SEQ=$((SEQ + 1))
	SCDIR=$RUN_DIR/$(printf '%02d' "$SEQ")-$name
	mkdir -p "$SCDIR"
	(
		set -eE
		trap on_err ERR
		trap 'cleanup; rm -f -- "${E2E_EXTRA_FILES[@]}"' EXIT
		trap 'echo "stopped after ${CHECK_TIMEOUT}s or interrupted" >"$SCDIR/reason"; exit 124' TERM
		log "check $name in $SCDIR"
		"ck_$name"
		check_daemons
		log "check $name passed"
	) >"$SCDIR/log" 2>&1 &
	pid=$!
	for ((i = 0; i < CHECK_TIMEOUT * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && kill -TERM "$pid"
	wait "$pid"
	rc=$?
	[[ $rc != 0 || ! -e $SCDIR/failed ]] || rc=1
	if ((rc == 0)); then
		echo "PASS: $name"
		passed=$((passed + 1))
	else
		reason=$(head -n 1 "$SCDIR/reason" 2>/dev/null || true)
		echo "FAIL: $name: ${reason:-exit status $rc}"
		tail -n 15 "$SCDIR/log" | sed 's/^/    | /'
		failed=$((failed + 1))
	fi
}

echo "rwg packaging e2e: RWG=$RWG, checks: ${selected[*]}, scratch: $RUN_DIR"
for c in "${selected[@]}"; do run_check "$c"; done
if ((was_installed == 0)) && installed && [[ ${E2E_KEEP_PACKAGE:-0} != 1 ]]; then
	dpkg --purge rwg >/dev/null 2>&1 || echo "warning: dpkg --purge rwg failed"
	echo "removed the rwg package again (it was not installed before; E2E_KEEP_PACKAGE=1 keeps it)"
fi
if ((failed == 0)) && [[ ${E2E_KEEP:-0} != 1 ]]; then rm -rf "$RUN_DIR"; else echo "logs: $RUN_DIR"; fi
echo "$passed passed, $failed failed"
((failed == 0))
