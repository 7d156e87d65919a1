#!/usr/bin/env bash
# tools/gpu/prepare.sh - run HERE (the Debian dev machine) before a session on the GPU
# machine: downloads the Debian packages luatrain builds against, which that machine's
# image lacks (LuaJIT, cJSON, OpenBLAS, PCRE2, libedit, pkg-config), and unpacks them into
# .gpu-deps/root (ignored by git; pass ".gpu-deps" in the device tool's `carry`).
# tools/gpu/run.sh on the GPU machine builds and runs against that folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
pkgs=(luajit libluajit-5.1-2 libluajit-5.1-common libluajit-5.1-dev
      libcjson1 libcjson-dev
      libopenblas0 libopenblas0-pthread libopenblas-dev libopenblas-pthread-dev libgfortran5
      libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libpcre2-dev
      libedit2 libedit-dev libbsd0 libbsd-dev libmd0 libmd-dev libtinfo6 libncurses-dev libncurses6
      zlib1g zlib1g-dev
      pkgconf pkgconf-bin libpkgconf3 pkg-config)
rm -rf .gpu-deps
mkdir -p .gpu-deps/debs .gpu-deps/root
(cd .gpu-deps/debs && apt-get download "${pkgs[@]}" > /dev/null)
for f in .gpu-deps/debs/*.deb; do dpkg -x "$f" .gpu-deps/root; done
rm -rf .gpu-deps/debs
# the device tool carries at most 64 MiB: static libraries, documentation and manuals are
# not needed to build the shared library and run it
find .gpu-deps/root -name '*.a' -delete
rm -rf .gpu-deps/root/usr/share/doc .gpu-deps/root/usr/share/man .gpu-deps/root/usr/share/info
du -sh .gpu-deps
