"""Export a preset's graphs to ONNX and prove them on ONNX Runtime (what `deepsound-rt export` and
`deepsound-rt verify --export` do), e.g.:

    python export/export_onnx.py --preset dev --out out/exports/dev
    python export/export_onnx.py --preset small_16k --random-weights --out out/exports/small_16k
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepsound_rt.config import PRESETS
from deepsound_rt.errors import DeepSoundError
from deepsound_rt.export import export_preset
from deepsound_rt.export.registry import GRAPH_SPECS
from deepsound_rt.progress import ConsoleProgress
from deepsound_rt.verify.export_parity import run_export_verify


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--out", type=Path, required=True, help="export directory (new, empty or a previous export)")
    parser.add_argument("--weights", type=Path, help="directory with the official checkpoint files")
    parser.add_argument("--random-weights", action="store_true", help="full-size graphs with random weights")
    parser.add_argument("--dtype", default="fp32", choices=["fp32"], help="graph precision (TensorRT picks its own)")
    parser.add_argument("--duration", type=float, default=8.0, help="clip seconds baked into the flow graphs")
    parser.add_argument("--graphs", nargs="+", choices=sorted(GRAPH_SPECS), help="only these graphs")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime parity check")
    args = parser.parse_args(argv)
    try:
        with ConsoleProgress() as progress:
            export_preset(args.preset, args.out, weights=args.weights, dtype=args.dtype, duration_s=args.duration,
                          random_weights=args.random_weights, progress=progress, graphs=args.graphs)
        return 0 if args.no_verify else run_export_verify(args.out, args.weights)
    except DeepSoundError as exc:
        print(f"export_onnx: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
