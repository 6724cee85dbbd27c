#!/usr/bin/env bash
# Prepares .gpu/ for the GPU machine (which has no Rust toolchain): a stripped release binary
# and the PTB files, small enough to travel with the checkout (the device tool carries at most
# 64 MiB; the unstripped binary, with line tables, is about 100 MiB). Run it from the checkout
# root on a development machine, then name `.gpu` in the device call's `carry`:
#
#   bash bench/gpu_prepare.sh [PTB_DIR]      # default ../shared/data/ptb
set -euo pipefail
DATA=${1:-../shared/data/ptb}
cargo build --release
mkdir -p .gpu
grep -qxF '.gpu/' .git/info/exclude 2>/dev/null || echo '.gpu/' >> .git/info/exclude
cp target/release/diagc .gpu/diagc
strip .gpu/diagc
rm -rf .gpu/ptb
cp -r "$DATA" .gpu/ptb
size=$(du -sb .gpu | cut -f1)
echo ".gpu: $((size / 1048576)) MiB"
if [ "$size" -ge $((64 * 1048576)) ]; then
    echo "gpu_prepare: .gpu is over the 64 MiB the device tool carries" >&2
    exit 1
fi
