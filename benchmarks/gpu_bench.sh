#!/usr/bin/env bash
# One command for a machine with one NVIDIA GPU and no network (about 6-8 minutes on an H100):
#   1. the machine: GPU, driver, python, torch and CUDA versions,
#   2. build: deepsound_rt._kernels in place with its CUDA kernels (setup.py build_ext --inplace: no
#      pip, no network) and which kernel paths are usable,
#   3. tests: the kernel tests (CUDA vs the C++ kernels vs the torch references) and the decoder
#      tests, then the speed levers' CUDA tests (tests/test_speed_levers.py -k cuda: the decoding
#      step as a CUDA graph, inductor + CUDA graph vs eager, the FP8 kernel vs its emulation,
#      full-size encoders in bf16 vs fp32),
#   4. pipeline: the whole pipeline at full size with random weights (large_44k_v2 generator, 7B
#      MLLM, BS-RoFormer) for a 10 s clip, every step of Engine.run: eager bf16 (the baseline),
#      each speed lever alone, all levers together without and with FP8, side by side, and a torch
#      profile of the all-levers run (top 15 kernels); prints the table,
#   5. kernels: the kernel benchmarks (fused SnakeBeta bandwidth vs the card's peak, speed-ups over
#      the torch ops, 44.1 kHz vocoder real-time factor with and without the kernel), if time is left,
#   6. memory (issue 16; not in the default STEPS: run STEPS="build memory"): the memory tests on
#      CUDA, then the pipeline in bf16 + CUDA graphs in tiers max, balanced and low, each in its own
#      process: peak allocated/reserved memory per step and end to end, each tier's time against
#      max (pytest_memory.log, memory/bench_memory.json/.md; needs the torchao wheel).
# Results go to $OUT (default: out/gpu): build.log, pytest.log, pytest_levers.log, bench.json/.md/.png
# (the profile is in bench.md and bench.json), bench.log, bench_kernels.json/.log. STEPS picks steps
# (default: "build tests pipeline kernels"). A failing step is reported and the later steps still
# run; the exit status is 1 if any failed. Every step has its own time cap, and all are cut short
# so that the whole run ends within $BUDGET seconds (default 475: under 8 minutes). Python packages
# the package needs beyond torch/transformers/timm/onnxruntime must be installed first (offline:
# benchmarks/gpu_prepare.sh fetches the wheels; see DEVELOPERS.md).
#
#   bash benchmarks/gpu_bench.sh            (from the repository root; PYTHON=python3.12 to choose)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-out/gpu}"
BUDGET="${BUDGET:-475}"
STEPS="${STEPS:-build tests pipeline kernels}"
mkdir -p "$OUT"
STATUS=0
started=$(date +%s)
deadline=$(( started + BUDGET ))
step() { echo; echo "=== [$(( $(date +%s) - started )) s] $* ==="; }
fail() { echo "!!! $*"; STATUS=1; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
# seconds a step may take: its own cap, or what is left before the deadline (at least 10)
cap() { local left=$(( deadline - $(date +%s) )); [ "$left" -lt 10 ] && left=10; echo $(( left < $1 ? left : $1 )); }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv,noheader || fail "nvidia-smi failed"
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPU', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
if ! command -v nvcc >/dev/null 2>&1; then
  for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    if [ -x "$candidate" ]; then export CUDACXX="$candidate"; export PATH="$(dirname "$candidate"):$PATH"; break; fi
  done
fi
echo "nvcc: $(command -v nvcc || echo "${CUDACXX:-not found}")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if want build; then
  step "build (in place; log: $OUT/build.log)"
  timeout "$(cap 150)" "$PYTHON" setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 || fail "build failed"
  grep -E "deepsound_rt:|CUDA compiler|error" "$OUT/build.log" | head -20
  "$PYTHON" - <<'PY' || fail "the CUDA kernels are not usable"
from deepsound_rt import kernels, _kernels
print("compiled with CUDA:", _kernels.has_cuda, "| kernel paths:", kernels.available_paths())
raise SystemExit(0 if "cuda" in kernels.available_paths() else 1)
PY
fi

if want tests; then
  step "kernel and decoder tests (log: $OUT/pytest.log)"
  if [ -z "${DEEPSOUND_REFERENCE:-}" ] && [ -d shared/reference/goldens ]; then export DEEPSOUND_REFERENCE="$PWD/shared/reference"; fi
  echo "goldens: ${DEEPSOUND_REFERENCE:-../shared/reference if present, else golden tests skip}"
  timeout "$(cap 90)" "$PYTHON" -m pytest -q -rs tests/test_kernels.py tests/test_decoders.py >"$OUT/pytest.log" 2>&1 \
    || fail "tests failed (or timed out)"
  tail -4 "$OUT/pytest.log"

  step "speed-lever tests on CUDA (log: $OUT/pytest_levers.log)"
  timeout "$(cap 100)" "$PYTHON" -m pytest -q -rs tests/test_speed_levers.py -k cuda >"$OUT/pytest_levers.log" 2>&1 \
    || fail "speed-lever tests failed (or timed out)"
  tail -6 "$OUT/pytest_levers.log"
fi

if want pipeline; then
  step "pipeline benchmark: baseline, each lever, all levers (large_44k_v2, 7B MLLM, BS-RoFormer; random weights; 10 s clip)"
  timeout "$(cap 340)" "$PYTHON" -m deepsound_rt.cli bench --preset large_44k_v2 --random-weights --duration 10 \
    --warmup 1 --runs 2 --profile --out "$OUT" 2>"$OUT/bench.log" || { fail "pipeline benchmark failed (or timed out)"; tail -20 "$OUT/bench.log"; }
fi

if want kernels; then
  if [ $(( deadline - $(date +%s) )) -ge 40 ]; then
    step "kernel benchmarks (log: $OUT/bench_kernels.log)"
    timeout "$(cap 110)" "$PYTHON" benchmarks/bench_kernels.py --skip-cpu --repeats 5 --json "$OUT/bench_kernels.json" \
      >"$OUT/bench_kernels.log" 2>&1 || fail "kernel benchmarks failed (or timed out)"
    tail -40 "$OUT/bench_kernels.log"
  else
    step "kernel benchmarks: skipped, under 40 s left"
  fi
fi

if want memory; then
  step "memory tests on CUDA (log: $OUT/pytest_memory.log)"
  timeout "$(cap 120)" "$PYTHON" -m pytest -q -rs tests/test_memory.py -k cuda >"$OUT/pytest_memory.log" 2>&1 \
    || fail "memory tests failed (or timed out)"
  tail -4 "$OUT/pytest_memory.log"
  step "memory tiers max, balanced, low (large_44k_v2, 7B MLLM, BS-RoFormer; random weights; 10 s clip)"
  timeout "$(cap 330)" "$PYTHON" -m deepsound_rt.cli bench --memory max,balanced,low --preset large_44k_v2 \
    --random-weights --duration 10 --cuda-graphs --warmup 1 --runs 2 --out "$OUT/memory" \
    || fail "memory-tier benchmark failed (or timed out)"
fi

step "done: status $STATUS, results in $OUT"
exit "$STATUS"
