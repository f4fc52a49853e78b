#!/usr/bin/env bash
# Install the Debian packages pvc needs for tests and the demo, only those missing.
# A first argument --no-install-recommends is passed on to apt-get.
set -euo pipefail
opts=()
if [ "${1:-}" = "--no-install-recommends" ]; then opts+=("$1"); shift; fi
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq -o Dpkg::Options::=--force-confnew "${opts[@]}" "${missing[@]}"
