# tools/gpu/env.sh - sourced (not run) by tools/gpu/run.sh and tools/gpu/check_carried.sh:
# points the build and the programs it makes at the Debian libraries that
# tools/gpu/prepare.sh unpacked into .gpu-deps/root, and defines lt_gpu_configure.
#
# Expects the working directory to be the repository root.
lt_root="$PWD/.gpu-deps/root"
if [ ! -x "$lt_root/usr/bin/luajit" ]; then
    echo "tools/gpu: $lt_root has no luajit: run tools/gpu/prepare.sh here and carry .gpu-deps" >&2
    return 1 2> /dev/null || exit 1
fi
lt_libdir="$lt_root/usr/lib/x86_64-linux-gnu"
export PATH="$lt_root/usr/bin:$PATH"
# the carried libraries come first for every program (luajit, the tests, ldd)
export LD_LIBRARY_PATH="$lt_libdir:$lt_libdir/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PKG_CONFIG_PATH="$lt_libdir/pkgconfig:$lt_libdir/openblas-pthread/pkgconfig:$lt_root/usr/share/pkgconfig"
export PKG_CONFIG_LIBDIR="$PKG_CONFIG_PATH"
# the .pc files say prefix=/usr: pkg-config prefixes every -I and -L with the carried root,
# and must keep the ones it would otherwise drop as the system's own (-I/usr/include)
export PKG_CONFIG_SYSROOT_DIR="$lt_root"
export PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1
export PYTHONUNBUFFERED=1

# lt_gpu_configure BUILD_DIR [cmake args...]: a Release configure against the carried tree.
lt_gpu_configure() {
    local dir="$1"
    shift
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release \
        -DLUAJIT_EXECUTABLE="$lt_root/usr/bin/luajit" -DPKG_CONFIG_EXECUTABLE="$lt_root/usr/bin/pkg-config" \
        -DCMAKE_PREFIX_PATH="$lt_root/usr" -DZLIB_ROOT="$lt_root/usr" "$@"
}
