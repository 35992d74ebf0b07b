#!/usr/bin/env bash
# The GPU checks and benchmarks in one go, for a machine with a CUDA GPU:
#   bash benchmarks/gpu_check.sh OUTDIR
# Runs tests/test_cuda.py, then the attention benchmark (batch 1 and 8) and the model
# benchmark (batch 1, then 8 clips: a GPU step at batch 1 is mostly launch overhead) on CUDA
# in bf16, and copies their `_cuda` tables and figure to OUTDIR (the batch-8 model table as
# compute_cuda_batch8), with one log of everything (gpu_check.log).
# Every step runs even if one before it failed; the exit status is the first failure's.
# PYTHON (default python3) is the interpreter; BENCH_ARGS are passed to both benchmarks.
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out"
log=$out/gpu_check.log
py=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0

step() {  # step NAME SECONDS COMMAND...: run under a time limit, log, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%T))" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "== $name failed with status $rc" | tee -a "$log"
        [ "$status" -ne 0 ] || status=$rc
    fi
}

step gpu 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
step versions 40 "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
step tests 100 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
step attention 200 "$py" -m benchmarks.attention --device cuda ${BENCH_ARGS:-}
# shellcheck disable=SC2086
step model 100 "$py" -m benchmarks.model --device cuda ${BENCH_ARGS:-}
# shellcheck disable=SC2086
step model_batch8 130 "$py" -m benchmarks.model --device cuda --batch 8 --reps 10 \
    --results results/batch8 ${BENCH_ARGS:-}
tables=results/synthetic/tables
cp $tables/compute_attention_cuda.* $tables/compute_cuda.* \
    results/synthetic/figures/compute_cuda.png "$out"/ 2>>"$log"
for ext in csv md; do
    cp results/batch8/synthetic/tables/compute_cuda.$ext "$out"/compute_cuda_batch8.$ext 2>>"$log"
done
echo "== done, status $status ($(date -u +%T))" | tee -a "$log"
exit "$status"
