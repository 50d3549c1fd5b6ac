#!/usr/bin/env bash
# Builds current upstream wireguard-go (with its TUN offloads and UDP GSO/GRO) OUTSIDE this
# repository, as an optional comparison peer for benches/tunnel.sh (--impls ...,wireguard-go-upstream
# with WG_GO_UPSTREAM=<dest>/wireguard-go). Nothing of it is vendored or committed here.
#
# Usage: benches/peers/build-wireguard-go-upstream.sh [--install-deps] [--src GIT_DIR_OR_TREE] [DEST]
#   DEST   where the source tree, GOPATH and binary go (default /work/peers/wireguard-go-upstream);
#          the binary is DEST/wireguard-go.
#   --src  a bare git directory (its HEAD is exported) or an unpacked source tree of
#          WireGuard/wireguard-go (default: $WG_GO_SRC, else /work/.mirror/WireGuard+wireguard-go/repo).
#   --install-deps  install Go >= 1.23 from Debian bookworm-backports and the golang.org/x modules
#          from Debian's golang-golang-x-* packages (adds the backports source if missing).
#
# Go modules come from Debian's packages, not from a module proxy: the build runs in GOPATH mode
# (GO111MODULE=off) with GOPATH=DEST/gopath:/usr/share/gocode. The Linux binary needs only
# golang.org/x/{crypto,net,sys}; upstream's go.mod pins newer versions than Debian ships
# (bookworm-backports: crypto 0.25, sys 0.22; bookworm: net 0.7), and the build compiles with those.
# The versions used are printed and written to DEST/BUILD-INFO.
set -euo pipefail

DEST=/work/peers/wireguard-go-upstream
SRC=${WG_GO_SRC:-/work/.mirror/WireGuard+wireguard-go/repo}
INSTALL=0
while (($#)); do
	case $1 in
	--install-deps) INSTALL=1; shift ;;
	--src) SRC=$2; shift 2 ;;
	-h | --help) sed -n '2,19p' "$0"; exit 0 ;;
	-*) echo "unknown option $1" >&2; exit 2 ;;
	*) DEST=$1; shift ;;
	esac
done

X_PKGS=(golang-golang-x-crypto-dev golang-golang-x-net-dev golang-golang-x-sys-dev)

if ((INSTALL)); then
	((EUID == 0)) || { echo "--install-deps needs root" >&2; exit 1; }
	if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
		cat >/etc/apt/sources.list.d/bookworm-backports.sources <<-'EOF'
			Types: deb
			URIs: http://deb.debian.org/debian
			Suites: bookworm-backports
			Components: main
			Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
		EOF
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports golang-go "${X_PKGS[@]}"
fi

command -v go >/dev/null || { echo "no go: run with --install-deps (Go >= 1.23 from bookworm-backports)" >&2; exit 1; }
gov=$(go env GOVERSION) # go1.23.5
IFS=. read -r gmaj gmin _ <<<"${gov#go}"
((gmaj > 1 || (gmaj == 1 && gmin >= 23))) || { echo "$gov is too old: upstream needs Go >= 1.23 (--install-deps)" >&2; exit 1; }
for d in crypto net sys; do
	[[ -d /usr/share/gocode/src/golang.org/x/$d ]] ||
		{ echo "no golang.org/x/$d under /usr/share/gocode: run with --install-deps" >&2; exit 1; }
done

TREE=$DEST/gopath/src/golang.zx2c4.com/wireguard
rm -rf "$DEST/gopath"
mkdir -p "$TREE"
if git --git-dir="$SRC" rev-parse --verify -q HEAD >/dev/null 2>&1; then
	commit=$(git --git-dir="$SRC" rev-parse HEAD)
	git --git-dir="$SRC" archive HEAD | tar -x -C "$TREE"
elif [[ -f $SRC/go.mod && -f $SRC/main.go ]]; then
	commit="tree $SRC"
	cp -r "$SRC"/. "$TREE"/
else
	echo "no wireguard-go source at $SRC (a bare git dir or a source tree; the search tool's fetch of" \
		"github:WireGuard/wireguard-go makes one)" >&2
	exit 1
fi
grep -q '^module golang.zx2c4.com/wireguard$' "$TREE/go.mod" || { echo "$SRC is not wireguard-go" >&2; exit 1; }
# GOPATH mode: no go.mod, imports resolve through GOPATH (this tree first, then Debian's gocode).
rm -f "$TREE/go.mod" "$TREE/go.sum"

(
	cd "$TREE"
	env GO111MODULE=off GOPATH="$DEST/gopath:/usr/share/gocode" GOTOOLCHAIN=local GOFLAGS= \
		GOPROXY=off CGO_ENABLED=0 GOCACHE="$DEST/gocache" go build -trimpath -o "$DEST/wireguard-go" .
)
{
	echo "source: $commit"
	echo "version: $("$DEST/wireguard-go" --version | head -1)"
	echo "go: $gov"
	for p in "${X_PKGS[@]}"; do echo "$p: $(dpkg-query -W -f '${Version}' "$p" 2>/dev/null || echo '?')"; done
} | tee "$DEST/BUILD-INFO"
echo "built $DEST/wireguard-go"
