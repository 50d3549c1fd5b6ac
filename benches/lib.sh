# shellcheck shell=bash
# Helpers shared by the benchmark scripts (tunnel.sh, abuse.sh, soak.sh, scale.sh): waiting
# with a bound, a daemon's configuration socket, stopping daemons and removing what a run made.

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

wait_until() { # SECONDS CMD...: run CMD every 0.1 s until it succeeds; fail after SECONDS
	local deadline=$(($(date +%s) + $1))
	shift
	until "$@"; do
		(($(date +%s) < deadline)) || return 1
		sleep 0.1
	done
}

sock_ready() { # IFACE PID: the daemon answers on its socket (or it died: checked by the caller)
	kill -0 "$2" 2>/dev/null || return 0
	[[ -S /var/run/wireguard/$1.sock ]] || return 1
	# socat rather than wg: wg unlinks a socket that refuses connections.
	printf 'get=1\n\n' | timeout 2 socat -t 2 - "UNIX-CONNECT:/var/run/wireguard/$1.sock" 2>/dev/null | grep -q '^errno=0$'
}

stop_pids() { # PID...: SIGTERM to all, then up to 3 s each to exit, then SIGKILL
	local p i
	for p in "$@"; do kill -TERM "$p" 2>/dev/null; done
	for p in "$@"; do
		for ((i = 0; i < 30; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null
	done
	return 0
}

remove_run() { # NS... -- IFACE...: delete the namespaces and the interfaces' socket files
	local x ifaces=0
	for x in "$@"; do
		if [[ $x == -- ]]; then
			ifaces=1
		elif ((ifaces)); then
			rm -f "/var/run/wireguard/$x.sock" "/var/run/wireguard/$x.name"
		else
			ip netns del "$x" 2>/dev/null
		fi
	done
	return 0
}
