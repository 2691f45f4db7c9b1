"""End-to-end Engine latency per stage: warm-up, repeated runs, median and p95, real-time factor.

Example (full-size shapes, random weights, one GPU):
    python benchmarks/bench_engine.py --preset large_44k_v2 --random-weights --duration 10 --dtype bf16
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepsound_rt.engine import Engine, EngineConfig
from deepsound_rt.options import default_of
from deepsound_rt.io.sample import make_test_video


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dev")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--num-steps", "--steps", dest="num_steps", type=int, default=default_of(EngineConfig, "num_steps"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    engine = Engine(EngineConfig(preset=args.preset, weights=args.weights, device=args.device, dtype=args.dtype,
                                 num_steps=args.num_steps,
                                 weights_source="full-random" if args.random_weights else "auto"))
    load_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        video = make_test_video(Path(folder) / "bench.mp4", args.duration + 0.5, 25, (640, 360))
        for _ in range(args.warmup):
            engine.generate(video, duration=args.duration)
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(engine.device)
        runs = [engine.generate(video, duration=args.duration).timings for _ in range(args.runs)]

    stages = list(runs[0].as_dict())
    per_stage = {s: [r.as_dict()[s] for r in runs] for s in stages}
    totals = [r.total for r in runs]
    report = {
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
                    "device": torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else
                    platform.processor() or "cpu", "threads": torch.get_num_threads()},
        "settings": {**vars(args), "weights": str(args.weights), "json": str(args.json),
                     "dtype_used": str(engine.dtype), "device_used": str(engine.device)},
        "load_seconds": load_s,
        "stages": {s: {"p50": statistics.median(v), "p95": percentile(v, 0.95)} for s, v in per_stage.items()},
        "total": {"p50": statistics.median(totals), "p95": percentile(totals, 0.95)},
        "real_time_factor": args.duration / statistics.median(totals),
    }
    if engine.device.type == "cuda":
        report["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated(engine.device) / 2**30

    print(f"{args.preset} {engine.device} {engine.dtype} {args.duration:.1f} s clip, {args.num_steps} steps, "
          f"median of {args.runs} (load {load_s:.1f} s)")
    for stage, figures in report["stages"].items():
        print(f"  {stage:<14} {figures['p50'] * 1e3:10.1f} ms  (p95 {figures['p95'] * 1e3:.1f})")
    print(f"  {'total':<14} {report['total']['p50'] * 1e3:10.1f} ms  = {report['real_time_factor']:.1f}x real time")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
