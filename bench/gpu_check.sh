#!/usr/bin/env bash
# The GPU check of issue 5, for the GPU machine (CUDA 13.0, PyTorch, no Rust): the selftest,
# the benchmark table against PyTorch (eager and torch.compile), and one epoch of M1 training on
# the GPU. Prepare .gpu/ on a development machine first (a stripped release binary and the PTB
# files; .gpu/ is ignored through .git/info/exclude):
#
#   bash bench/gpu_prepare.sh                         # here
#   bash bench/gpu_check.sh PART [quick]              # on the GPU machine; logs in $OUT
#
# PART is one of `selftest`, `bench1` (the 1-layer rows), `bench5` (the 5-layer rows), `fusion`
# (1 layer with attention not fused, diagc only, to see what fusion buys), `train`, or `all`.
# The device tool stops a command after 10 minutes, so run the parts as separate calls (each
# fits within that); `all` is for a machine without that limit.
# `quick`: the selftest's quick mode and the benchmarks at batch 20 only.
# Every command of a part runs even when an earlier one fails; each one's exit status is in
# summary.txt.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
BIN=${DIAGC_BIN:-.gpu/diagc}
DATA=${DIAGC_DATA:-.gpu/ptb}
PART=${1:-}
QUICK=${2:-}
case "$PART" in
    selftest | bench1 | bench5 | fusion | train | all) ;;
    *)
        echo "usage: bash bench/gpu_check.sh selftest|bench1|bench5|fusion|train|all [quick]" >&2
        exit 2
        ;;
esac
if [ ! -x "$BIN" ]; then
    echo "gpu_check: no binary at $BIN (run bench/gpu_prepare.sh on a development machine)" >&2
    exit 2
fi
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

want() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }
if want selftest; then
    if [ -n "$QUICK" ]; then
        part selftest 240 "$BIN" selftest --device cuda --quick
    else
        part selftest 540 "$BIN" selftest --device cuda
    fi
fi
batches="20 256"
[ -n "$QUICK" ] && batches="20"
for layers in 1 5; do
    want "bench$layers" || continue
    for mech in m1 m0; do
        for batch in $batches; do
            # Four rows share a call's 10 minutes: diagc, PyTorch eager and torch.compile each.
            part "bench-$mech-${layers}l-b$batch" 140 "$BIN" bench "$mech" --device cuda \
                --layers "$layers" --batch-size "$batch" --steps 50 --pytorch \
                --pytorch-script bench/pytorch_lm_step.py
        done
    done
done
if want fusion; then
    for mech in m1 m0; do
        for batch in $batches; do
            part "bench-$mech-1l-b$batch-unfused" 120 "$BIN" bench "$mech" --device cuda \
                --layers 1 --batch-size "$batch" --steps 50 --fuse-attention no
        done
    done
fi
if want train; then
    part train-m1 540 "$BIN" train m1 --layers 1 --epochs 1 --device cuda --data "$DATA" \
        --out "$OUT/run-m1-1l-seed0"
fi
cat "$summary"
