#!/usr/bin/env bash
# One-command check of the kernels on a machine with an NVIDIA GPU and no network:
#   1. builds deepsound_rt._kernels with its CUDA kernels (pip editable install, else CMake directly),
#   2. says which compute paths are available,
#   3. runs the kernel tests (CUDA vs C++ kernel vs torch reference) and the decoder tests,
#   4. benchmarks: fused activation bandwidth vs the card's peak, speed-ups over the torch ops,
#      44.1 kHz vocoder real-time factor with and without the kernel (bf16, fp32).
# Results go to $OUT (when set): build.log, pytest.log, bench_kernels.json, bench_kernels.log.
# A failing step is reported and the later steps still run; the exit status is 1 if any failed.
# Expected run time: 3-5 minutes; every step is capped so that the whole run ends within 10 minutes.
#
#   bash benchmarks/gpu_check.sh            (from the repository root; PYTHON=python3.12 to choose)
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
LOGS="${OUT:-$(mktemp -d)}"
mkdir -p "$LOGS"
STATUS=0
started=$(date +%s)
deadline=$(( started + 570 ))  # every step is cut short so that the whole run stays under 10 minutes
step() { echo; echo "=== [$(( $(date +%s) - started )) s] $* ==="; }
fail() { echo "!!! $*"; [ "$STATUS" -ne 0 ] || STATUS=1; }
# seconds a step may take: its own cap, or what is left before the deadline (at least 10)
cap() { local left=$(( deadline - $(date +%s) )); [ "$left" -lt 10 ] && left=10; echo $(( left < $1 ? left : $1 )); }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv || fail "nvidia-smi failed"
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPU', torch.cuda.is_available() and torch.cuda.get_device_name(0))"

step "build (log: $LOGS/build.log)"
if ! command -v nvcc >/dev/null 2>&1; then
  for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    if [ -x "$candidate" ]; then export CUDACXX="$candidate"; export PATH="$(dirname "$candidate"):$PATH"; break; fi
  done
fi
echo "nvcc: $(command -v nvcc || echo "${CUDACXX:-not found}")"
rm -f deepsound_rt/_kernels*.so
timeout "$(cap 240)" "$PYTHON" -m pip install -v --no-deps --no-build-isolation -e . >"$LOGS/build.log" 2>&1 \
  || echo "pip install failed (see build.log); building with CMake directly"
if ! "$PYTHON" -c "import deepsound_rt._kernels" 2>/dev/null; then
  build_dir=build/gpu_check
  generator=(); command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  { timeout "$(cap 120)" cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/deepsound_rt" -DPython_EXECUTABLE="$(command -v "$PYTHON")" \
      -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)" \
    && timeout "$(cap 240)" cmake --build "$build_dir" --parallel "$(nproc)"; } >>"$LOGS/build.log" 2>&1 \
    || fail "CMake build failed"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
grep -E "deepsound_rt:|CUDA compiler|error" "$LOGS/build.log" | head -20
"$PYTHON" - <<'EOF' || fail "the CUDA kernels are not usable"
from deepsound_rt import kernels, _kernels
print("compiled with CUDA:", _kernels.has_cuda)
print("compute paths available:", kernels.available_paths())
print("auto path: cpu ->", kernels.default_path("cpu"), "| cuda ->", kernels.default_path("cuda"))
raise SystemExit(0 if "cuda" in kernels.available_paths() else 1)
EOF

step "tests (log: $LOGS/pytest.log)"
if [ -z "${DEEPSOUND_REFERENCE:-}" ] && [ -d shared/reference/goldens ]; then export DEEPSOUND_REFERENCE="$PWD/shared/reference"; fi
echo "goldens: ${DEEPSOUND_REFERENCE:-../shared/reference if present, else golden tests skip}"
tests=(tests/test_kernels.py)
[ -f tests/test_decoders.py ] && tests+=(tests/test_decoders.py)
timeout "$(cap 150)" "$PYTHON" -m pytest -q -rs "${tests[@]}" 2>&1 | tee "$LOGS/pytest.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "tests failed (or timed out)"

step "benchmarks (log: $LOGS/bench_kernels.log)"
timeout "$(cap 240)" "$PYTHON" benchmarks/bench_kernels.py --repeats 5 --json "$LOGS/bench_kernels.json" 2>&1 \
  | tee "$LOGS/bench_kernels.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "benchmarks failed (or timed out)"

step "done: status $STATUS, results in $LOGS"
exit "$STATUS"
