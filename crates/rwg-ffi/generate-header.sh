#!/usr/bin/env bash
# Writes include/rwg.h from the crate's extern "C" functions and types (cbindgen).
# With --check, writes nothing and fails if the committed header is not what cbindgen makes.
set -euo pipefail
cd "$(dirname "$0")"
# cargo install puts cbindgen under ~/.cargo/bin, which sudo's PATH usually lacks.
PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
command -v cbindgen >/dev/null || { echo "generate-header: cbindgen not found (scripts/install-deps installs it)" >&2; exit 1; }
if [[ ${1:-} == --check ]]; then
	fresh=$(mktemp)
	trap 'rm -f "$fresh"' EXIT
	cbindgen --quiet --config cbindgen.toml --crate rwg-ffi --output "$fresh"
	if ! diff -u include/rwg.h "$fresh"; then
		echo "generate-header: include/rwg.h is out of date: run crates/rwg-ffi/generate-header.sh and commit it" >&2
		echo "generate-header: (made with $(cbindgen --version); scripts/install-deps installs the version the header was made with)" >&2
		exit 1
	fi
	echo "generate-header: include/rwg.h is current"
else
	cbindgen --quiet --config cbindgen.toml --crate rwg-ffi --output include/rwg.h
fi
