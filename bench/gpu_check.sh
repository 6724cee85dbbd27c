#!/usr/bin/env bash
# The whole GPU check of issue 5 in one command, for the GPU machine (CUDA 13.0, PyTorch, no
# Rust): the selftest, the benchmark table against PyTorch (eager and torch.compile), and one
# epoch of M1 training on the GPU. Run it from the checkout root with a release binary built on
# a development machine and the PTB files copied beside it:
#
#   cargo build --release && mkdir -p .gpu && cp target/release/diagc .gpu/ \
#       && cp -r ../shared/data/ptb .gpu/ptb          # .gpu/ is ignored (.git/info/exclude)
#   bash bench/gpu_check.sh [quick]                  # on the GPU machine; logs in $OUT
#
# `quick`: the selftest's quick mode, the benchmarks at batch 20 only, no training run.
# Every part runs even when an earlier one fails; each one's exit status is in summary.txt.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
BIN=${DIAGC_BIN:-.gpu/diagc}
DATA=${DIAGC_DATA:-.gpu/ptb}
QUICK=${1:-}
# The machine's own CUDA 13.0: NVRTC and cuBLAS from the toolkit, the driver from the system.
for d in /usr/local/cuda/lib64 /usr/local/cuda-13.0/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export DIAGC_CACHE_DIR=${DIAGC_CACHE_DIR:-/tmp/diagc-cuda-cache}
summary="$OUT/summary.txt"
: > "$summary"
part() { # part NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc, $((SECONDS - t0)) s" | tee -a "$summary"
}
{
    nvidia-smi
    echo
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    ls -l "$BIN"
} > "$OUT/machine.txt" 2>&1

if [ -n "$QUICK" ]; then
    part selftest 240 "$BIN" selftest --device cuda --quick
else
    part selftest 420 "$BIN" selftest --device cuda
fi
batches="20 256"
[ -n "$QUICK" ] && batches="20"
for mech in m1 m0; do
    for layers in 1 5; do
        for batch in $batches; do
            part "bench-$mech-${layers}l-b$batch" 300 "$BIN" bench "$mech" --device cuda \
                --layers "$layers" --batch-size "$batch" --steps 50 --pytorch
        done
    done
done
if [ -z "$QUICK" ]; then
    part train-m1 540 "$BIN" train m1 --layers 1 --epochs 1 --device cuda --data "$DATA" \
        --out "$OUT/run-m1-1l-seed0"
fi
cat "$summary"
