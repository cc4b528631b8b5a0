#!/bin/sh
# wrk and nginx for `make bench`: installed with apt-get when missing and we may, else a clear
# message and a non-zero exit.
set -eu

PATH="$PATH:/usr/sbin:/sbin"  # nginx lives in sbin, which a non-root PATH often lacks
missing=""
for tool in wrk nginx; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
[ -z "$missing" ] && exit 0

packages="wrk nginx-light"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "make bench needs$missing, and this machine has no apt-get: install wrk and nginx with" \
        "your package manager, then run make bench again." >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "make bench needs$missing. Install them as root, then run make bench again:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y $packages" >&2
    exit 1
fi
echo "• installing$missing: apt-get install -y $packages"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q >/dev/null && apt-get install -y -q $packages >/dev/null; }; then
    echo "make bench: apt-get could not install $packages (offline? no package lists?)." >&2
    echo "Install wrk and nginx by hand, then run make bench again." >&2
    exit 1
fi
