# shellcheck shell=bash
# The verdict helpers of the standalone proxy tests (proxy.sh, proxy_cli.sh, proxy_features.sh):
# each check prints PASS or FAIL with its name, the failures' output is shown, and the caller
# prints "N passed, N failed" at the end. Uses $WORK, $passed and $failed of the caller.

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
