#!/bin/sh
# Install the Debian packages listed in the given lists (default: .ci/apt/*.txt)
# that are missing. `make run` needs only .ci/apt/core.txt; `make test` and CI all.
# Does nothing, and needs no root, when everything is already installed.
set -eu
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- .ci/apt/*.txt
wanted=$(grep -hv '^[[:space:]]*\(#\|$\)' "$@" | sort -u)
missing=""
for pkg in $wanted; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages:$missing" >&2
    echo "install-deps: run as root (sudo make ...) or: sudo apt-get install$missing" >&2
    exit 1
fi
echo "install-deps: apt-get install$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
