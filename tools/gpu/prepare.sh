#!/usr/bin/env bash
# tools/gpu/prepare.sh - run HERE (the Debian dev machine) before a session on the GPU
# machine. The GPU image has CUDA, CMake, a C compiler and PyTorch, but not the Debian
# libraries luatrain builds against; this downloads them (LuaJIT, cJSON, OpenBLAS, PCRE2,
# libedit, zlib, pkg-config) and unpacks them into .gpu-deps/root, ignored by git. Name
# ".gpu-deps" in the device tool's `carry`; tools/gpu/run.sh builds and runs against it.
#
# The carried tree must work on an image that is not Debian bookworm and stay small:
#   - /lib is merged into /usr/lib (as on every current distribution), and every symbolic
#     link is made relative and must resolve inside the tree: an absolute link such as
#     bookworm's libz.so -> /lib/x86_64-linux-gnu/libz.so.1.2.13 points at nothing elsewhere;
#   - only what the build links or runs is kept: the shared libraries of the packages below
#     and their runtime needs (libgfortran and libquadmath behind OpenBLAS; libbsd, libmd and
#     libtinfo behind libedit), headers, .pc files, luajit and pkg-config. Static libraries,
#     LAPACK and the reference BLAS, PCRE2's 16/32-bit and POSIX variants, documentation and
#     manuals go;
#   - the working tree and .gpu-deps together stay under the 64 MiB a device call carries:
#     this script fails when they would not (LT_CARRY_LIMIT_MIB, default 60, leaves room).
set -euo pipefail
cd "$(dirname "$0")/../.."
pkgs=(luajit libluajit-5.1-2 libluajit-5.1-common libluajit-5.1-dev
      libcjson1 libcjson-dev
      libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0
      libpcre2-8-0 libpcre2-dev
      libedit2 libedit-dev libbsd0 libmd0 libtinfo6
      zlib1g zlib1g-dev
      pkgconf pkgconf-bin libpkgconf3 pkg-config)
deps=.gpu-deps
root="$deps/root"
rm -rf "$deps"
mkdir -p "$deps/debs" "$root"
# apt-get download as root warns that _apt cannot write here; the download still works
(cd "$deps/debs" && apt-get download "${pkgs[@]}" > /dev/null 2> "../download.log") ||
    { cat "$deps/download.log" >&2; exit 1; }
for f in "$deps"/debs/*.deb; do dpkg -x "$f" "$root"; done
rm -rf "$deps/debs" "$deps/download.log"

lib="$root/usr/lib/x86_64-linux-gnu"
# /lib/x86_64-linux-gnu (zlib, libtinfo, ...) joins /usr/lib/x86_64-linux-gnu
if [ -d "$root/lib/x86_64-linux-gnu" ]; then
    for f in "$root"/lib/x86_64-linux-gnu/*; do mv -f "$f" "$lib/"; done
fi
rm -rf "$root/lib"

# what the build does not use
find "$root" -name '*.a' -delete
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/lintian" \
       "$root/usr/share/bug"
rm -f "$lib"/openblas-pthread/liblapack.so* "$lib"/openblas-pthread/libblas.so* \
      "$lib"/openblas-pthread/pkgconfig/blas.pc "$lib"/openblas-pthread/pkgconfig/lapack.pc \
      "$lib"/libpcre2-16.so* "$lib"/libpcre2-32.so* "$lib"/libpcre2-posix.so* \
      "$lib"/pkgconfig/libpcre2-16.pc "$lib"/pkgconfig/libpcre2-32.pc "$lib"/pkgconfig/libpcre2-posix.pc \
      "$root"/usr/include/pcre2posix.h "$root"/usr/bin/pcre2-config

# every link relative, resolved inside the tree; an absolute target is looked up in the
# tree (with /lib read as /usr/lib), a link that resolves nowhere is removed
find "$root" -type l | while read -r l; do
    t="$(readlink "$l")"
    case "$t" in
    /*)
        t="${t#/lib/}"
        [ "$t" = "$(readlink "$l")" ] || t="/usr/lib/$t"
        target="$root$t"
        rm -f "$l"
        if [ -e "$target" ]; then
            ln -s "$(realpath --relative-to="$(dirname "$l")" "$target")" "$l"
        fi
        ;;
    esac
done
find "$root" -xtype l -delete # dangling (their targets were dropped above)

bad="$(find "$root" -type l -lname '/*')"
[ -z "$bad" ] || { echo "absolute links left in $root:" >&2; echo "$bad" >&2; exit 1; }
for need in usr/bin/luajit usr/bin/pkg-config usr/lib/x86_64-linux-gnu/libz.so \
            usr/lib/x86_64-linux-gnu/libluajit-5.1.so usr/lib/x86_64-linux-gnu/libcjson.so \
            usr/lib/x86_64-linux-gnu/libpcre2-8.so usr/lib/x86_64-linux-gnu/libedit.so \
            usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \
            usr/lib/x86_64-linux-gnu/libgfortran.so.5 usr/lib/x86_64-linux-gnu/libquadmath.so.0; do
    [ -e "$root/$need" ] || { echo "prepare: $need is missing from $root" >&2; exit 1; }
done

# the carry limit: tracked and untracked-not-ignored files travel with .gpu-deps
limit_mib="${LT_CARRY_LIMIT_MIB:-60}"
tree_bytes="$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)"
deps_bytes="$(du -sb "$deps" | cut -f1)"
total_mib=$(( (tree_bytes + deps_bytes) / 1048576 ))
printf 'prepare: %s holds %d MiB, the working tree %d MiB: %d MiB carried (limit %d)\n' \
    "$deps" $((deps_bytes / 1048576)) $((tree_bytes / 1048576)) "$total_mib" "$limit_mib"
if [ "$total_mib" -ge "$limit_mib" ]; then
    echo "prepare: the carried tree is over ${limit_mib} MiB" >&2
    exit 1
fi
