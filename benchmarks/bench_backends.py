"""ONNX Runtime vs torch eager per graph (stage), on the CPU, for one or more presets in one run.

Each preset is exported once with random weights (or an existing export is reused), then every
graph runs on both backends with the same inputs: warm-up, then the median of ``--runs``. Torch
eager is plain torch ops; graphs where our kernels replace some of them (the vocoder's
activations) also run as torch + kernels, the Engine's torch backend. Inputs
have the shapes of a ``--duration`` clip, except where a cap shrinks a dynamic axis (full-size
CLIP on 64 frames takes minutes per run on a small CPU); the table prints the shapes used.

Example:
    python benchmarks/bench_backends.py --presets dev small_16k --json out/bench_backends.json \
        --markdown out/bench_backends.md
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from deepsound_rt import kernels
from deepsound_rt.backends.onnxruntime_backend import OnnxRuntimeBackend, default_threads
from deepsound_rt.config import PRESETS
from deepsound_rt.export import ExportError, ExportManifest, export_preset
from deepsound_rt.models.graphs import GENERATOR_GRAPHS, GENERATOR_SPECS
from deepsound_rt.models.spec import ExportContext
from deepsound_rt.weights_dir import WeightsSource

# Axis caps for full-size presets: the shapes stay real per frame/token, the counts shrink.
FULL_SIZE_CAPS = {"clip_frames": 2, "sync_frames": 24, "mel_frames": 64}


def timed(fn, warmup: int, runs: int, min_seconds: float = 2.0) -> list[float]:
    """At least ``runs`` timed calls, more for fast graphs (until ``min_seconds`` have passed)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < runs or sum(times) < min_seconds:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def ensure_export(preset: str, duration: float, root: Path) -> Path:
    """Reuse ``root/<preset>-<duration>s`` when it holds a matching export, else export there."""
    directory = root / f"{preset}-{duration:g}s"
    try:
        ExportManifest.load(directory).check_compatible(preset, duration)
        return directory
    except ExportError:
        export_preset(preset, directory, duration_s=duration, weights_source=random_source(preset),
                      graphs=GENERATOR_GRAPHS)
        return directory


def random_source(preset: str) -> WeightsSource:
    return WeightsSource.TINY_RANDOM if not PRESETS[preset].files else WeightsSource.FULL_RANDOM


def with_kernels(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose submodules with a fused path run our kernels (as an Engine with
    kernels on builds them)."""
    twin = copy.deepcopy(module)
    for submodule in twin.modules():
        if hasattr(submodule, "use_kernels"):
            submodule.use_kernels = True
    return twin


def bench_preset(preset: str, duration: float, root: Path, warmup: int, runs: int, caps: dict[str, int]) -> list[dict]:
    started = time.perf_counter()
    export_dir = ensure_export(preset, duration, root)
    export_s = time.perf_counter() - started
    manifest = ExportManifest.load(export_dir)
    ctx = ExportContext(PRESETS[preset], duration, manifest.sequence_lengths, random_source(preset))
    backend = OnnxRuntimeBackend(torch.device("cpu"))
    rows = []
    for name, spec in GENERATOR_SPECS.items():
        sizes = {axis: min(r.opt, caps.get(axis, r.opt)) for axis, r in spec.axes(ctx).items()}
        inputs = spec.sample_inputs(ctx, sizes)
        module = ctx.module(spec)  # torch ops only, as exported
        args = [inputs[n] for n in spec.inputs]
        graph = backend.load(name, export_dir / manifest.graphs[name].onnx_file)

        def run_torch(module=module):
            with torch.inference_mode():
                module(*args)

        torch_times = timed(run_torch, warmup, runs)
        ort_times = timed(lambda: graph.run(inputs), warmup, runs)
        torch_s, ort_s = statistics.median(torch_times), statistics.median(ort_times)
        row = {"preset": preset, "graph": name, "torch_ms": torch_s * 1e3, "onnxruntime_ms": ort_s * 1e3,
               "torch_min_ms": min(torch_times) * 1e3, "onnxruntime_min_ms": min(ort_times) * 1e3,
               "runs": [len(torch_times), len(ort_times)], "speedup": torch_s / ort_s,
               "speedup_of_min": min(torch_times) / min(ort_times),
               "shapes": {n: list(t.shape) for n, t in inputs.items() if t.ndim > 1},
               "capped": {a: s for a, s in sizes.items() if s != spec.axes(ctx)[a].opt}}
        if spec.kernels and kernels.path_for("cpu") is not None:
            fused = with_kernels(module)
            kernel_times = timed(lambda: run_torch(fused), warmup, runs)
            row["torch_kernels_ms"] = statistics.median(kernel_times) * 1e3
            row["torch_kernels_min_ms"] = min(kernel_times) * 1e3
        rows.append(row)
    rows.append({"preset": preset, "graph": "(export seconds)", "export_s": export_s})
    return rows


def markdown(rows: list[dict], machine: dict) -> str:
    lines = [f"ONNX Runtime vs torch eager, CPU ({machine['cpu']}, {machine['threads']} threads, "
             f"torch {machine['torch']}, onnxruntime {machine['onnxruntime']})", "",
             "Median (and fastest) of the timed runs; speed-up = torch eager / onnxruntime. Torch + kernels: "
             "the Engine's torch backend where our kernels replace torch ops in the graph.", "",
             "| preset | graph | torch eager ms | torch + kernels ms | onnxruntime ms | speed-up (median) | "
             "speed-up (fastest) | input shapes |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        if "speedup" not in row:
            continue
        shapes = "; ".join(f"{n} {tuple(s)}" for n, s in row["shapes"].items())
        capped = f" (capped: {row['capped']})" if row["capped"] else ""
        with_kernels = (f"{row['torch_kernels_ms']:.1f} ({row['torch_kernels_min_ms']:.1f})"
                        if "torch_kernels_ms" in row else "")
        lines.append(f"| {row['preset']} | {row['graph']} | {row['torch_ms']:.1f} ({row['torch_min_ms']:.1f}) | "
                     f"{with_kernels} | {row['onnxruntime_ms']:.1f} ({row['onnxruntime_min_ms']:.1f}) | {row['speedup']:.2f}x | "
                     f"{row['speedup_of_min']:.2f}x | {shapes}{capped} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["dev", "small_16k"])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--exports", type=Path, default=Path("out/exports"), help="where exports are kept and reused")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-caps", action="store_true", help="full duration shapes for full-size presets too")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)

    import onnxruntime

    machine = {"cpu": platform.processor() or platform.machine(), "threads": default_threads(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0]}
    rows = []
    for preset in args.presets:
        caps = {} if args.no_caps or not PRESETS[preset].files else FULL_SIZE_CAPS
        rows += bench_preset(preset, args.duration, args.exports, args.warmup, args.runs, caps)
    table = markdown(rows, machine)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "settings": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
