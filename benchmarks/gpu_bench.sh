#!/usr/bin/env bash
# One command for a machine with one NVIDIA GPU and no network (about 6-7 minutes on an H100; every
# step is capped so that the whole run ends within 8 minutes):
#   1. builds deepsound_rt._kernels with CUDA and runs the CUDA kernel tests (tests/test_kernels.py:
#      CUDA vs the C++ kernels vs the torch reference),
#   2. [issue 17] the speed levers' CUDA tests (tests/test_speed_levers.py -k cuda: the decoding
#      step as a CUDA graph, inductor + CUDA graph vs eager, the FP8 kernel vs its emulation,
#      full-size encoders in bf16 vs fp32),
#   3. [issue 17] the whole pipeline at full size with random weights (large_44k_v2 generator, 7B
#      MLLM, BS-RoFormer) for a 10 s clip, every step of Engine.run: eager bf16 (the baseline),
#      each speed lever alone, all levers together without and with FP8, side by side, and a
#      torch profile of the all-levers run (top 15 kernels); prints the table,
#   4. the kernel benchmarks (SnakeBeta bandwidth, vocoder real-time factor), if time is left.
# Results go to $OUT (default: out/gpu): build.log, pytest.log, pytest_levers.log, bench.json/.md/.png
# (the profile is in bench.md and bench.json), bench.log, bench_kernels.json.
# Python packages the package needs beyond torch/transformers/timm/onnxruntime must be installed
# first (offline: pip install --no-index wheels; see DEVELOPERS.md).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
STATUS=0
started=$(date +%s)
deadline=$(( started + 475 ))  # steps are cut short so that the whole run stays under 8 minutes
step() { echo; echo "=== [$(( $(date +%s) - started )) s] $* ==="; }
# seconds a step may take: its own cap, or what is left before the deadline (at least 10)
cap() { local left=$(( deadline - $(date +%s) )); [ "$left" -lt 10 ] && left=10; echo $(( left < $1 ? left : $1 )); }

step "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || STATUS=1
if ! command -v nvcc >/dev/null 2>&1; then
  for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    [ -x "$candidate" ] && { export PATH="$(dirname "$candidate"):$PATH"; break; }
  done
fi

step "build (in place: no pip, no network; log: $OUT/build.log)"
timeout "$(cap 150)" "$PYTHON" setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 || STATUS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "from deepsound_rt import kernels; print('kernel paths:', kernels.available_paths())" || STATUS=1

step "CUDA kernel tests"
timeout "$(cap 60)" "$PYTHON" -m pytest -q -rs tests/test_kernels.py >"$OUT/pytest.log" 2>&1 || STATUS=1
tail -4 "$OUT/pytest.log"

# ---- issue 17: speed levers -------------------------------------------------------------------
step "speed-lever tests on CUDA (log: $OUT/pytest_levers.log)"
timeout "$(cap 100)" "$PYTHON" -m pytest -q -rs tests/test_speed_levers.py -k cuda >"$OUT/pytest_levers.log" 2>&1 \
  || STATUS=1
tail -6 "$OUT/pytest_levers.log"

step "pipeline benchmark: baseline, each lever, all levers (large_44k_v2, 7B MLLM, BS-RoFormer; random weights; 10 s clip)"
timeout "$(cap 340)" "$PYTHON" -m deepsound_rt.cli bench --preset large_44k_v2 --random-weights --duration 10 \
  --warmup 1 --runs 2 --profile --out "$OUT" 2>"$OUT/bench.log" || { STATUS=1; tail -20 "$OUT/bench.log"; }
# ---- end of issue 17 ---------------------------------------------------------------------------

if [ $(( deadline - $(date +%s) )) -ge 40 ]; then
  step "kernel benchmarks"
  timeout "$(cap 110)" "$PYTHON" benchmarks/bench_kernels.py --skip-cpu --repeats 5 --json "$OUT/bench_kernels.json" \
    2>&1 | tail -40 || STATUS=1
fi

step "done: status $STATUS"
exit "$STATUS"
