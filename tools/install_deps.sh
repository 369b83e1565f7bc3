#!/bin/sh
# Installs the Debian packages coin builds and tests with, if any is missing.
# Runs apt-get as root, or through sudo.
set -eu
pkgs="build-essential clang libclang-rt-14-dev pkg-config python3 python3-pip
      libopenblas-dev libopenblas-openmp-dev libcjson-dev libutf8proc-dev zlib1g-dev libpng-dev
      libncurses-dev libsixel-dev libsqlite3-dev libstb-dev tmux"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing Debian packages:$missing"
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq $missing >/dev/null
