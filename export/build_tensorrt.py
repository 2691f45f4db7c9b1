"""Build (or find in the cache) a TensorRT engine for every graph of an export, then time one run
of each on random inputs of the profile's opt shapes. Needs a CUDA GPU and TensorRT 10.x or 11.x
(``pip install 'deepsound_rt[gpu]'``). Engines take the export's precision
(``deepsound-rt export --dtype``); an fp32 export may also build ``tf32`` engines, and on TensorRT 10
``fp16``/``bf16`` ones through the deprecated builder flags:

    deepsound-rt export --preset large_44k_v2 --random-weights --dtype bf16 --out out/exports/large_bf16
    python export/build_tensorrt.py --export out/exports/large_bf16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from deepsound_rt.backends.tensorrt_backend import PRECISIONS, TensorRTBackend, optimization_profile
from deepsound_rt.errors import DeepSoundError
from deepsound_rt.export import ExportManifest
from deepsound_rt.export.manifest import ENGINE_CACHE_DIR


def opt_inputs(record, device: torch.device) -> dict[str, torch.Tensor]:
    """Inputs at the profile's opt shapes: uniform floats, zero token ids."""
    profile = optimization_profile(record)
    inputs = {}
    for spec in record.inputs:
        shape = profile[spec.name].opt if spec.name in profile else tuple(spec.shape)
        if spec.dtype.startswith("float"):
            inputs[spec.name] = torch.rand(shape, device=device)
        else:
            inputs[spec.name] = torch.zeros(shape, dtype=torch.int64, device=device)
    return inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True, help="export directory")
    parser.add_argument("--precision", choices=PRECISIONS, help="engine precision (default: the export's)")
    parser.add_argument("--cache", type=Path, help=f"engine cache (default: EXPORT/{ENGINE_CACHE_DIR})")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--refuse-corrupt", action="store_true", help="fail on a damaged cached engine instead of rebuilding")
    parser.add_argument("--graphs", nargs="+", help="only these graphs")
    args = parser.parse_args(argv)
    try:
        manifest = ExportManifest.load(args.export)
        manifest.check_files(args.export, args.graphs)
        device = torch.device(args.device)
        backend = TensorRTBackend(device, args.cache or args.export / ENGINE_CACHE_DIR, manifest.precision,
                                  args.precision, manifest.opset,
                                  on_corrupt="refuse" if args.refuse_corrupt else "rebuild")
        for name in args.graphs or manifest.graphs:
            started = time.perf_counter()
            graph = backend.load(name, args.export, manifest.graphs[name])
            build_s = time.perf_counter() - started
            inputs = opt_inputs(manifest.graphs[name], device)
            graph.run(inputs)
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            graph.run(inputs)
            torch.cuda.synchronize(device)
            print(f"{name:<16} {backend.precision} engine {graph.cache_status:<7} {build_s:7.1f} s   "
                  f"run {1e3 * (time.perf_counter() - started):8.2f} ms")
        return 0
    except DeepSoundError as exc:
        print(f"build_tensorrt: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
