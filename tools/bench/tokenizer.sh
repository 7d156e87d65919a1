#!/usr/bin/env bash
# tokenizer.sh - encode throughput of luatrain's tokenizers against transformers.js (and
# Hugging Face's Rust tokenizers when their npm package installs), in one job.
#
#   tools/bench/tokenizer.sh [mb=4 passes=3 threads=0 ...]   (tools/bench/tokenizer.lua --help)
#
# Builds luatrain (tools/run.sh build; LT_BUILD_DIR picks the build folder), installs the
# reference packages pinned in tools/tokenizer_ref/package-lock.json into
# $LT_BUILD_DIR/tokenizer_ref (the parity test's copy, reused when the lock file is
# unchanged), then runs tools/bench/tokenizer.lua: the Llama-2-style and Llama-3 tokenizers
# on a few MB of mixed text built from the parity corpus. Prints MB/s for one thread and all
# threads, and each engine's ratio to transformers.js.
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${LT_BUILD_DIR:-build}"
LT_BUILD_DIR="$build" tools/run.sh build > /dev/null

command -v node > /dev/null && command -v npm > /dev/null ||
    { echo "tokenizer.sh: node and npm are needed for the reference tokenizers" >&2; exit 1; }
ref="$build/tokenizer_ref"
if ! cmp -s tools/tokenizer_ref/package-lock.json "$ref/node_modules/.luatrain-lock"; then
    mkdir -p "$ref"
    cp tools/tokenizer_ref/package.json tools/tokenizer_ref/package-lock.json "$ref/"
    npm_ci() { (cd "$ref" && npm ci --no-audit --no-fund --loglevel=error --cache "$PWD/npm-cache" \
        --logs-dir "$PWD/npm-logs" "$@"); }
    # from the cache alone first (no network needed), then from the registry
    npm_ci --offline 2> /dev/null || npm_ci --prefer-offline --fetch-retry-maxtimeout=15000
    cp tools/tokenizer_ref/package-lock.json "$ref/node_modules/.luatrain-lock"
fi

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "kernel:  $(uname -r); $(luajit -v | cut -d' ' -f1-2); node $(node --version)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
echo
exec "$build/luatrain" tools/bench/tokenizer.lua modules="$ref/node_modules" "$@"
