#!/usr/bin/env bash
# Installs rwg from a build tree without a package manager: the binary, the manual pages and
# shell completions generated from it, the licenses and the systemd drop-in example.
# Usage: packaging/install.sh [--prefix DIR] [--destdir DIR] [--binary PATH]
#   --prefix DIR   where it goes (default /usr/local): DIR/bin/rwg, DIR/share/man/man8/rwg.8, ...
#   --destdir DIR  stage under DIR (for packagers); the layout under it is the same
#   --binary PATH  the rwg to install (default: the release build, built if missing)
# Uninstall: packaging/install.sh --uninstall [--prefix DIR] [--destdir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local destdir="" binary="" uninstall=0
while (($#)); do
	case $1 in
	--prefix) prefix=$2; shift 2 ;;
	--destdir) destdir=$2; shift 2 ;;
	--binary) binary=$2; shift 2 ;;
	--uninstall) uninstall=1; shift ;;
	-h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
done
root=$destdir$prefix
files=(
	"bin/rwg"
	"share/bash-completion/completions/rwg"
	"share/zsh/vendor-completions/_rwg"
	"share/fish/vendor_completions.d/rwg.fish"
	"share/doc/rwg/LICENSE-MIT"
	"share/doc/rwg/LICENSE-APACHE"
	"share/doc/rwg/examples/wg-quick-rwg.conf"
)
if ((uninstall)); then
	for f in "${files[@]}"; do rm -f "$root/$f"; done
	rm -f "$root"/share/man/man8/rwg.8 "$root"/share/man/man8/rwg-*.8
	echo "install.sh: removed rwg from $root"
	exit 0
fi
if [[ -z $binary ]]; then
	target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
	binary=$target_dir/release/rwg
	[[ -x $binary ]] || cargo build --release -p rwg
fi
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
packaging/generate.sh "$binary" "$gen"
install -D -m 755 "$binary" "$root/bin/rwg"
install -d "$root/share/man/man8"
install -m 644 "$gen"/man/*.8 "$root/share/man/man8/"
install -D -m 644 "$gen/completions/rwg.bash" "$root/share/bash-completion/completions/rwg"
install -D -m 644 "$gen/completions/_rwg" "$root/share/zsh/vendor-completions/_rwg"
install -D -m 644 "$gen/completions/rwg.fish" "$root/share/fish/vendor_completions.d/rwg.fish"
install -D -m 644 LICENSE-MIT "$root/share/doc/rwg/LICENSE-MIT"
install -D -m 644 LICENSE-APACHE "$root/share/doc/rwg/LICENSE-APACHE"
install -D -m 644 packaging/systemd/wg-quick-rwg.conf "$root/share/doc/rwg/examples/wg-quick-rwg.conf"
echo "install.sh: installed $("$root/bin/rwg" --version) under $root"
