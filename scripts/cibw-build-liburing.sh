#!/usr/bin/env bash
# cibuildwheel's before-all on manylinux: build liburing from a pinned
# release, its checksum checked, and install it (headers, liburing.a and
# liburing.pc) under /usr/local, where setup.py finds it with pkg-config and
# links it statically.  The wheel then needs no liburing on the user's host.
set -euo pipefail

LIBURING_VERSION=2.9
LIBURING_SHA256=897b1153b55543e8b92a5a3eb9b906537a5fedcf8afaf241f8b8787940c79f8d
URL="https://github.com/axboe/liburing/archive/refs/tags/liburing-${LIBURING_VERSION}.tar.gz"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
curl -fsSL --retry 3 -o liburing.tar.gz "$URL"
echo "${LIBURING_SHA256}  liburing.tar.gz" | sha256sum -c -
tar -xzf liburing.tar.gz
cd "liburing-liburing-${LIBURING_VERSION}"
./configure --prefix=/usr/local --libdir=/usr/local/lib --libdevdir=/usr/local/lib
make -j"$(nproc)" -C src
make install
# Only the static library: nothing may link the shared one by accident.
rm -f /usr/local/lib/liburing*.so*
command -v pkg-config >/dev/null || { dnf install -y pkgconf-pkg-config || yum install -y pkgconfig; }
PKG_CONFIG_PATH=/usr/local/lib/pkgconfig pkg-config --modversion liburing
