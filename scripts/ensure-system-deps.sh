#!/usr/bin/env bash
# Make sure the system packages the build needs are present: liburing-dev
# (headers and the static liburing.a), pkg-config and a C compiler.
# Installs them with apt-get when missing and running as root; otherwise stops
# with a message naming the packages.
set -euo pipefail

missing=()
pkg-config --exists liburing 2>/dev/null || missing+=(liburing-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v cc >/dev/null || missing+=(gcc)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "fastsock: missing system packages: ${missing[*]}" >&2
    echo "install them first, e.g.: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "fastsock: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}"
