#!/usr/bin/env bash
# Before a GPU session, on a machine with the network: what benchmarks/gpu_bench.sh needs on the
# device machine (Python 3.12, torch, transformers, timm, onnxruntime, cmake, nvcc; no network)
# beyond its own packages, into the two ignored folders the device tool carries:
#   .whl/                 cp312 wheels: av, open_clip_torch, ftfy, wcwidth, soundfile, cffi, pycparser,
#                         silero-vad, torchao (the low memory tier's int8 weights; about 55 MB)
#   .device_ref/goldens/  the four goldens tests/test_kernels.py reads (about 3 MB)
# Then one device call, carry [".whl", ".device_ref"]:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site \
#     DEEPSOUND_REFERENCE=$PWD/.device_ref PYTHON=python3 && bash benchmarks/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-python3 -m pip}"
REFERENCE="${DEEPSOUND_REFERENCE:-../shared/reference}"
rm -rf .whl
mkdir -p .whl .device_ref/goldens
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl av open_clip_torch ftfy wcwidth soundfile cffi pycparser silero-vad torchao==0.18.0
for name in snakebeta_activation1d mel_converter_16k mel_converter_44k beats_fbank; do
  cp "$REFERENCE/goldens/$name.json" "$REFERENCE/goldens/$name.safetensors" .device_ref/goldens/
done
ls .whl
du -sh .whl .device_ref
