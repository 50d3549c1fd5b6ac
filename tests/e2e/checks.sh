# shellcheck shell=bash
# Shared by the standalone proxy tests (proxy.sh, proxy_cli.sh, proxy_features.sh): the verdict
# helpers (each check prints PASS or FAIL with its name, the failures' output is shown, and the
# caller prints "N passed, N failed" at the end; they use $WORK, $passed and $failed of the
# caller) and the setup of a throwaway sshd. The servers the tests start are in servers/.

log() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
failc() { echo "FAIL: $*"; failed=$((failed + 1)); }
check() { # check NAME COMMAND...: PASS if the command succeeds
	local name=$1
	shift
	if "$@" >"$WORK/check.out" 2>&1; then pass "$name"; else
		failc "$name"
		sed 's/^/    | /' "$WORK/check.out" | tail -n 15
	fi
}
abort() { # abort REASON: a setup step failed; nothing after it can be checked
	echo "FAIL: $*"
	echo "$passed passed, $((failed + 1)) failed"
	exit 1
}

# sshd_setup DIR LISTEN: host and client keys and an sshd_config in DIR for a throwaway sshd
# (key login only, no PAM, no pid file) listening on LISTEN; run it with
# `sshd -D -e -f DIR/sshd_config`, log in with `ssh -i DIR/client_key`.
sshd_setup() {
	local dir=$1 listen=$2
	mkdir -p "$dir" /run/sshd
	ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
	ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key"
	cp "$dir/client_key.pub" "$dir/authorized_keys"
	cat >"$dir/sshd_config" <<-CONF
		ListenAddress $listen
		HostKey $dir/host_key
		AuthorizedKeysFile $dir/authorized_keys
		PermitRootLogin prohibit-password
		PasswordAuthentication no
		KbdInteractiveAuthentication no
		UsePAM no
		StrictModes no
		PidFile none
	CONF
}
