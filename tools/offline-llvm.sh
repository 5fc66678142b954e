#!/usr/bin/env bash
# Installs Debian's LLVM 22 where burn-cuda's build looks for its LLVM, for
# a machine that reaches Debian's archive but not GitHub (burn-cuda 0.22
# compiles kernels through LLVM; its build script, tracel-llvm-bundler,
# otherwise downloads an LLVM 23.1 bundle from GitHub). Online, none of
# this is needed. Debian 12 or 13, x86_64, as root or with sudo:
#
#   bash tools/offline-llvm.sh
#
# What it does:
# - on Debian 12, adds Debian 13 (trixie) as a package source pinned below
#   Debian 12 (priority 100), so that only what is asked for comes from it:
#   LLVM 22 and what it needs (a newer libc6 and libstdc++6 among them);
# - installs llvm-22-dev, libpolly-22-dev, libz3-dev and libzstd-dev;
# - links /usr/lib/llvm-22 as the bundle's folder,
#   ${XDG_DATA_HOME:-~/.local/share}/tracel/tracel-llvm-23.1.0-4, and marks
#   it installed (.tracel-llvm-installed), so the build uses it;
# - adds liblibz3.so beside LLVM's libraries: llvm-config names libz3 by
#   its path, which the bundler turns into `-llibz3`.
#
# LLVM 22 stands in for the bundle's 23.1: it links and compiles, but
# whether kernels compiled through its NVPTX backend are right is for a
# GPU run to show (docs/gpu.md).
set -euo pipefail
bundle="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4"
if [ -e "$bundle/.tracel-llvm-installed" ]; then
    echo "LLVM for burn-cuda: already at $bundle"
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
. /etc/os-release
release=()
if [ "${VERSION_CODENAME:-}" = bookworm ]; then
    $SUDO tee /etc/apt/sources.list.d/bnorm-trixie-llvm.sources >/dev/null <<'SOURCES'
# Debian 13, for LLVM 22 (burn-cuda's kernel compiler): pinned below
# Debian 12 (preferences.d/bnorm-trixie-llvm) so nothing else comes from it.
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    $SUDO tee /etc/apt/preferences.d/bnorm-trixie-llvm >/dev/null <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
    release=(-t trixie)
fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${release[@]}" \
    llvm-22-dev libpolly-22-dev libz3-dev libzstd-dev
$SUDO ln -sf /usr/lib/x86_64-linux-gnu/libz3.so /usr/lib/llvm-22/lib/liblibz3.so
$SUDO touch /usr/lib/llvm-22/.tracel-llvm-installed
mkdir -p "$(dirname "$bundle")"
ln -sfn /usr/lib/llvm-22 "$bundle"
echo "LLVM for burn-cuda: $(/usr/lib/llvm-22/bin/llvm-config --version) at $bundle"
