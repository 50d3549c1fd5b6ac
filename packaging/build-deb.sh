#!/usr/bin/env bash
# Builds the Debian package of rwg with cargo-deb: the release binary, the manual pages and
# shell completions generated from it, the license files, README, CHANGELOG and the systemd
# drop-in example. Prints the path of the .deb (under <target>/debian/).
# Usage: packaging/build-deb.sh [--no-build]
#   --no-build   package the release binary already built (cargo build --release -p rwg)
# Needs cargo-deb (scripts/install-deps installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
case ${1:-} in
--no-build) build=0 ;;
"") ;;
*) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
esac
command -v cargo-deb >/dev/null || { echo "$0: cargo-deb is missing: cargo install --locked cargo-deb (or scripts/install-deps)" >&2; exit 1; }
((build == 0)) || cargo build --release -p rwg
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
# cargo-deb reads these as target/release/packaging/... (its name for the real target directory).
packaging/generate.sh "$target_dir/release/rwg" "$target_dir/release/packaging" >&2
# Debian wants manual pages gzipped; cargo-deb leaves files from the target directory as they are.
gzip -9n "$target_dir/release/packaging/man"/*.8
cargo deb -p rwg --no-build --quiet
