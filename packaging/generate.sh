#!/usr/bin/env bash
# Writes what an rwg binary generates from its command-line definition: the manual pages
# (man/rwg.8, man/rwg-proxy.8, ...) and the shell completions (completions/rwg.bash, _rwg,
# rwg.fish) under DIR.
# Usage: packaging/generate.sh RWG_BINARY DIR
set -euo pipefail
if (($# != 2)); then
	echo "usage: $0 RWG_BINARY DIR" >&2
	exit 2
fi
rwg=$1 dir=$2
[[ -x $rwg ]] || { echo "$0: $rwg is not an executable (build it: cargo build --release -p rwg)" >&2; exit 1; }
rm -rf "$dir/man" "$dir/completions"
mkdir -p "$dir/man" "$dir/completions"
"$rwg" man --dir "$dir/man" >/dev/null
"$rwg" completions bash >"$dir/completions/rwg.bash"
"$rwg" completions zsh >"$dir/completions/_rwg"
"$rwg" completions fish >"$dir/completions/rwg.fish"
