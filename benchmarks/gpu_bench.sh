#!/usr/bin/env bash
# One command for a machine with one NVIDIA GPU and no network (about 9-12 minutes on an H100):
#   1. builds deepsound_rt._kernels with CUDA and runs the CUDA kernel tests (benchmarks/gpu_check.sh's
#      build, then tests/test_kernels.py: CUDA vs the C++ kernels vs the torch reference),
#   2. the kernel benchmarks on the GPU: fused SnakeBeta bandwidth vs the card's peak, speed-ups
#      over the torch ops, 44.1 kHz vocoder real-time factor with and without the kernel,
#   3. the whole pipeline at full size with random weights (large_44k_v2 generator, 7B MLLM,
#      BS-RoFormer) for a 10 s clip: eager fp32, eager bf16 (the baseline), bf16 + our kernels,
#      bf16 + kernels + CUDA graphs, side by side; prints the table.
#   4. memory tiers: the memory tests on CUDA, then the same pipeline in bf16 + kernels + CUDA
#      graphs in tiers max, balanced and low: peak allocated/reserved memory per stage and end to
#      end, and each tier's time against max (about 3 minutes).
# Results go to $OUT (default: out/gpu): bench_kernels.json, pytest.log, bench.json/.md/.png,
# pytest_memory.log, memory/bench.json/.md/.png. STEPS picks steps (default: all, "build kernels
# pipeline memory"); e.g. STEPS="build memory" for the memory table alone.
# Python packages the package needs beyond torch/transformers/timm/onnxruntime must be installed
# first (offline: pip install --no-index wheels; see the README).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
STEPS="${STEPS:-build kernels pipeline memory}"
STATUS=0
started=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - started )) s] $* ==="; }
want() { [[ " $STEPS " == *" $1 "* ]]; }

step "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || STATUS=1
if ! command -v nvcc >/dev/null 2>&1; then
  for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    [ -x "$candidate" ] && { export PATH="$(dirname "$candidate"):$PATH"; break; }
  done
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if want build; then
  step "build (in place: no pip, no network; log: $OUT/build.log)"
  timeout 180 "$PYTHON" setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 || STATUS=1
  "$PYTHON" -c "from deepsound_rt import kernels; print('kernel paths:', kernels.available_paths())" || STATUS=1
fi

if want kernels; then
  step "CUDA kernel tests"
  timeout 75 "$PYTHON" -m pytest -q -rs tests/test_kernels.py >"$OUT/pytest.log" 2>&1 || STATUS=1
  tail -4 "$OUT/pytest.log"

  step "kernel benchmarks"
  timeout 110 "$PYTHON" benchmarks/bench_kernels.py --skip-cpu --repeats 5 --json "$OUT/bench_kernels.json" \
    2>&1 | tail -40 || STATUS=1
fi

if want pipeline; then
  step "pipeline benchmark (large_44k_v2, 7B MLLM, BS-RoFormer; random weights; 10 s clip)"
  timeout 240 "$PYTHON" -m deepsound_rt.cli bench --preset large_44k_v2 --random-weights --duration 10 \
    --warmup 1 --runs 2 --out "$OUT" || STATUS=1
fi

if want memory; then
  # ---- memory tiers (issue 16): the table for the README's memory section -----------------------
  step "memory tests on CUDA (residency on the device, tiers agree, no device memory held between steps)"
  timeout 150 "$PYTHON" -m pytest -q -rs tests/test_memory.py -k cuda >"$OUT/pytest_memory.log" 2>&1 || STATUS=1
  tail -4 "$OUT/pytest_memory.log"

  step "memory tiers max, balanced, low (large_44k_v2, 7B MLLM, BS-RoFormer; random weights; 10 s clip)"
  timeout 330 "$PYTHON" -m deepsound_rt.cli bench --preset large_44k_v2 --random-weights --duration 10 \
    --warmup 1 --runs 2 --variants "bf16 + kernels + CUDA graphs" --memory max,balanced,low \
    --out "$OUT/memory" || STATUS=1
fi

step "done: status $STATUS"
exit "$STATUS"
