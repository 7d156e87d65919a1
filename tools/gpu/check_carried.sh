#!/usr/bin/env bash
# tools/gpu/check_carried.sh - proves, on this machine and without a GPU, that the device
# build works from the carried tree (.gpu-deps, made by tools/gpu/prepare.sh) alone.
#
# In a private mount namespace (unshare -m; needs root), the files of the system's LuaJIT,
# cJSON, OpenBLAS (with its BLAS/LAPACK alternatives), PCRE2, libedit and zlib development
# packages are hidden behind overlay whiteouts, so a build that still reached for one of them
# fails. There it configures and builds exactly as tools/gpu/run.sh does on the device (CUDA
# for sm_90 when nvcc is here, through tools/gpu/env.sh), checks that ldd finds every library
# and finds the hidden ones in .gpu-deps, and runs the CPU tests (the GPU tests skip).
#
#   tools/gpu/check_carried.sh [ctest args...]     build dir: build-carried (LT_CARRIED_BUILD)
# Nothing outside the namespace changes; the overlays vanish with it.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" != --inside ]; then
    [ "$(id -u)" -eq 0 ] || { echo "check_carried: needs root (a mount namespace)" >&2; exit 2; }
    [ -x .gpu-deps/root/usr/bin/luajit ] || bash tools/gpu/prepare.sh
    exec unshare -m --propagation private "$0" --inside "$@"
fi
shift

hide_pkgs=(luajit libluajit-5.1-2 libluajit-5.1-common libluajit-5.1-dev libcjson1 libcjson-dev
           libopenblas0-pthread libopenblas-pthread-dev libopenblas-dev libopenblas0
           libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libpcre2-dev
           libedit2 libedit-dev zlib1g-dev)
ovl="$(mktemp -d /tmp/lt_carried.XXXXXX)"
trap 'echo "check_carried: failed at line $LINENO" >&2' ERR
list="$ovl/hidden"
: > "$list"
for p in "${hide_pkgs[@]}"; do
    dpkg -L "$p" 2> /dev/null | while read -r f; do
        if [ -L "$f" ] || [ -f "$f" ]; then
            # /lib is a link to /usr/lib on merged-/usr systems: hide the real path
            echo "$(realpath -s "$(realpath "$(dirname "$f")")/$(basename "$f")")"
        fi
    done >> "$list"
done
# BLAS and LAPACK reach /usr/lib through update-alternatives links, which no package lists
for d in /usr/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/pkgconfig /usr/include/x86_64-linux-gnu /usr/include; do
    [ -d "$d" ] || continue
    find "$d" -maxdepth 1 -type l -lname '/etc/alternatives/*' \
        \( -name '*blas*' -o -name '*lapack*' \) >> "$list"
done
sort -u -o "$list" "$list"

# every program from here on, mount and mknod included, must run without the hidden
# libraries (PCRE2 is under libselinux): the carried ones come first
source tools/gpu/env.sh
# one overlay on /usr whose upper layer holds a whiteout (a 0/0 character device) at every
# hidden path; overlays do not nest deep enough for one per directory
up="$ovl/upper" work="$ovl/work"
mkdir -p "$up" "$work"
while read -r f; do
    case "$f" in
    /usr/*) ;;
    *) echo "check_carried: $f is outside /usr; cannot hide it" >&2; exit 1 ;;
    esac
    rel="${f#/usr/}"
    mkdir -p "$up/$(dirname "$rel")"
    mknod "$up/$rel" c 0 0
done < "$list"
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$up,workdir=$work" /usr
echo "check_carried: hid $(wc -l < "$list") files of ${#hide_pkgs[@]} packages"

for f in /usr/include/cjson/cJSON.h /usr/include/luajit-2.1/lua.h /usr/include/pcre2.h \
         /usr/include/histedit.h /usr/include/zlib.h /usr/bin/luajit \
         /usr/lib/x86_64-linux-gnu/libopenblas.so.0 /usr/lib/x86_64-linux-gnu/libcjson.so.1; do
    if [ -e "$f" ]; then echo "check_carried: $f is still visible" >&2; exit 1; fi
done

build="${LT_CARRIED_BUILD:-build-carried}"
cuda_args=(-DLT_CUDA=OFF)
if command -v nvcc > /dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
    cuda_args=(-DLT_CUDA=ON -DLT_CUDA_ARCHS=90)
fi
lt_gpu_configure "$build" "${cuda_args[@]}" > "$ovl/configure.log" 2>&1 ||
    { cat "$ovl/configure.log"; exit 1; }
grep "luatrain: CUDA backend" "$ovl/configure.log"
cmake --build "$build" -j "$(nproc)" > "$ovl/build.log" 2>&1 || { tail -40 "$ovl/build.log"; exit 1; }

# every library found, the hidden ones from the carried tree
missing=0
bins=("$build/luatrain" "$build/libluatrain.so")
# a CUDA build's backend, loaded by libluatrain.so on first use, must find its libraries too
[ -f "$build/libluatrain_cuda.so" ] && bins+=("$build/libluatrain_cuda.so")
for bin in "${bins[@]}"; do
    out="$(ldd "$bin")"
    if grep -q "not found" <<< "$out"; then
        echo "check_carried: ldd $bin: $(grep 'not found' <<< "$out")" >&2
        missing=1
    fi
    for l in libluajit-5.1 libcjson libopenblas libpcre2-8 libedit libz; do
        line="$(grep "$l" <<< "$out" || true)"
        [ -z "$line" ] && continue
        case "$line" in
        *"$lt_root"*) ;;
        *) echo "check_carried: $bin takes $l from outside .gpu-deps: $line" >&2; missing=1 ;;
        esac
    done
done
[ "$missing" = 0 ] || exit 1
echo "check_carried: ldd finds every library; LuaJIT, cJSON, OpenBLAS, PCRE2, libedit and zlib from .gpu-deps"

cd "$build"
ctest --output-on-failure --timeout 900 -j 2 "$@"
