"""Latency of every DeepSound stage and end to end, with every backend present side by side.

Each variant (a backend / precision / kernel setting) loads its own Engine and runs the same clip:
warm-up runs, then timed runs; per stage the median (p50) and p95, the real-time factor
(seconds of audio per second), and memory. Torch eager without our kernels is the baseline, and
every figure of the other variants comes from the same run. Writes bench.json (machine, versions,
settings, every timing), bench.md (tables) and bench.png (per-stage stacked bars per variant).

    deepsound-rt bench --preset dev --quick --out out/bench
    deepsound-rt bench --preset small_16k --random-weights --duration 8 --out benchmarks/results/cpu
    deepsound-rt bench --preset large_44k_v2 --random-weights --duration 10 --out $OUT/gpu   (one GPU)
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepsound_rt import kernels
from deepsound_rt.cli import OneLineParser
from deepsound_rt.engine import Engine, EngineConfig
from deepsound_rt.errors import DeepSoundError
from deepsound_rt.options import RunOptions, default_of, integer_in
from deepsound_rt.io.sample import make_test_video
from deepsound_rt.models.mllm.audio_input import audio_features
from deepsound_rt.models.mllm.decoding import new_cache
from deepsound_rt.models.mllm.prompt import VOICE_OVER_QUESTION
from deepsound_rt.models.mllm.vision import video_pixels
from deepsound_rt.stages.reason import to_16k_mono

STEP1_STAGES = ("video decode", "clip", "synchformer", "text", "conditions", "sampling", "vae", "vocoder")
REASONING_STAGES = ("mllm encoders", "mllm prefill", "mllm decode", "detector", "separator", "silence check")
DECODE_TOKENS = 16  # "mllm decode" times this many single-token steps after the prefill


@dataclass(frozen=True)
class Variant:
    """One way to run the pipeline; ``baseline`` marks the reference for speed-ups."""

    name: str
    dtype: str
    kernels: bool
    cuda_graphs: bool = False
    baseline: bool = False
    backend: str = "torch"  # onnxruntime/tensorrt run the generator graphs of --export


def select_variants(variants: list[Variant], names: str | None, device: torch.device) -> list[Variant]:
    """The variants named in ``names`` (comma-separated; None: all); an unknown name is refused."""
    if names is None:
        return variants
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in {v.name for v in variants}]
    if unknown or not wanted:
        raise DeepSoundError(f"unknown bench variant {', '.join(map(repr, unknown)) or repr(names)} "
                             f"(variants on {device.type}: {', '.join(v.name for v in variants)})")
    return [v for v in variants if v.name in wanted]


def check_settings(args: argparse.Namespace) -> None:
    """Every setting before any work: run counts, and the Engine's and the run's own checks."""
    integer_in("--runs", args.runs, 1)
    integer_in("--warmup", args.warmup, 0)
    EngineConfig(preset=args.preset, weights=args.weights, device=args.device, num_steps=args.num_steps,
                 weights_source="full-random" if args.random_weights else "auto")
    RunOptions(duration=args.duration)


def variants_for(device: torch.device, export: Path | None) -> list[Variant]:
    """CPU: eager fp32 vs our C++ kernels, and ONNX Runtime (the generator's graphs from
    ``export``; our kernels still serve the stages outside them). CUDA: eager bf16 (the baseline), bf16 with our CUDA
    kernels and CUDA graphs, with the kernels alone, and eager fp32 (most telling first, so a run
    cut short still has the comparison)."""
    if device.type == "cuda":
        return [
            Variant("eager bf16", "bf16", kernels=False, baseline=True),
            Variant("bf16 + kernels + CUDA graphs", "bf16", kernels=True, cuda_graphs=True),
            Variant("bf16 + kernels", "bf16", kernels=True),
            Variant("eager fp32", "fp32", kernels=False),
        ]
    variants = [Variant("eager fp32", "fp32", kernels=False, baseline=True)]
    if "cpp" in kernels.available_paths():
        variants.append(Variant("fp32 + C++ kernels", "fp32", kernels=True))
    if export is not None:
        variants.append(Variant("onnxruntime + C++ kernels", "fp32", kernels=True, backend="onnxruntime"))
    return variants


@dataclass
class Measurement:
    stages: dict[str, list[float]] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.stages.setdefault(stage, []).append(seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn):
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


def _reasoning_stages(engine: Engine, video: Path, audio: np.ndarray, duration: float) -> dict[str, float]:
    """Steps 0-4 beyond generation, each timed alone on the step-1 audio."""
    device, out = engine.device, {}
    reasoner = engine.reasoner
    model = reasoner.model

    def encoders():
        pixels = video_pixels(video, model.config.num_frames, duration).to(device, reasoner.dtype)
        fbank = audio_features(to_16k_mono(audio, engine.sample_rate).to(device), engine.use_kernels).to(device)
        return [model.encode_video(pixels), model.encode_audio(fbank)]

    with torch.inference_mode():
        media, out["mllm encoders"] = _timed(device, encoders)
        embeds = reasoner.prompt_embeds(VOICE_OVER_QUESTION, media)
        cache = new_cache(model)
        logits, out["mllm prefill"] = _timed(device, lambda: model.logits(embeds, cache))

        def decode():
            token = int(logits[-1].argmax())
            for _ in range(DECODE_TOKENS):
                step = model.logits(model.embed(torch.tensor([[token]], device=device)), cache)
                token = int(step[-1].argmax())

        _, out["mllm decode"] = _timed(device, decode)
    _, out["detector"] = _timed(device, lambda: engine.detector.detect(audio, engine.sample_rate))
    (instrumental, _), out["separator"] = _timed(device, lambda: engine.remove_voice_over(audio, engine.sample_rate))
    _, out["silence check"] = _timed(device, lambda: engine.check_silence(instrumental))
    return out


def measure(variant: Variant, args: argparse.Namespace, video: Path) -> dict:
    """Load an Engine for ``variant`` and time warm-up + timed runs of every stage."""
    device = torch.device(args.device)
    _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    engine = Engine(EngineConfig(preset=args.preset, weights=args.weights, device=args.device,
                                 weights_source="full-random" if args.random_weights else "auto",
                                 dtype=variant.dtype, num_steps=args.num_steps, cuda_graphs=variant.cuda_graphs,
                                 backend=variant.backend, export=args.export if variant.backend != "torch" else None,
                                 kernels="on" if variant.kernels else "off"))
    reasoning = args.pipeline and engine.has_planner
    if reasoning:  # build the lazily loaded step-0/2/3 models outside the timings
        for model in ("reasoner", "separator", "detector"):
            getattr(engine, model)
    load_seconds = time.perf_counter() - started
    measurement = Measurement()
    for run in range(args.warmup + args.runs):
        generated = engine.generate(video, duration=args.duration, seed=run)
        stages = dict(generated.timings.as_dict())
        if reasoning:
            stages |= _reasoning_stages(engine, video, generated.waveform, generated.duration_s)
        if run >= args.warmup:
            for stage, seconds in stages.items():
                measurement.add(stage, seconds)
    totals = [sum(values[i] for values in measurement.stages.values()) for i in range(args.runs)]
    result = {
        "variant": variant.__dict__,
        "backend": sorted({t.backend for t in generated.timings.stages if t.backend}),
        "load_seconds": load_seconds,
        "audio_seconds": generated.duration_s,
        "stages": {stage: _summary(values) for stage, values in measurement.stages.items()},
        "end_to_end": _summary(totals),
        "real_time_factor": generated.duration_s / statistics.median(totals),
        "peak_rss_gib": _peak_rss_gib(),
    }
    if device.type == "cuda":
        result["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del engine
    return result


def _summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50": statistics.median(values), "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "runs": values}


def _reset_peak_rss() -> None:
    """Hand the heap freed by earlier variants back to the OS and restart the peak count, so each
    variant's peak RSS is its own (Linux with glibc; elsewhere the peak accumulates)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except (AttributeError, OSError):
        pass


def _peak_rss_gib() -> float:
    """The process's peak resident memory since the variant started (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def machine_info(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "kernel_paths": kernels.available_paths(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def markdown(report: dict) -> str:
    """Per-stage p50 (ms) per variant, then end to end, real-time factor and speed-up."""
    variants = report["variants"]
    baseline = next(v for v in variants if v["variant"]["baseline"])
    stages = [s for s in (*STEP1_STAGES, *REASONING_STAGES) if any(s in v["stages"] for v in variants)]
    names = [v["variant"]["name"] for v in variants]
    lines = [
        f"# deepsound_rt bench: {report['settings']['preset']}, {report['settings']['duration']} s clip",
        "",
        f"Machine: {report['machine'].get('gpu') or report['machine']['cpu']} "
        f"({report['machine']['platform']}); torch {report['machine']['torch']}; {report['date']}",
        "",
        f"Command: `{report['command']}`",
        "",
        "Median (p50) milliseconds per stage over "
        f"{report['settings']['runs']} runs after {report['settings']['warmup']} warm-up.",
        "",
        "| stage | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for stage in stages:
        cells = [f"{v['stages'][stage]['p50'] * 1e3:.1f}" if stage in v["stages"] else "-" for v in variants]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| **end to end** | " + " | ".join(f"**{v['end_to_end']['p50'] * 1e3:.1f}**" for v in variants) + " |")
    lines.append("| p95 end to end | " + " | ".join(f"{v['end_to_end']['p95'] * 1e3:.1f}" for v in variants) + " |")
    lines.append("| real-time factor | " + " | ".join(f"{v['real_time_factor']:.2f}x" for v in variants) + " |")
    speedups = [baseline["end_to_end"]["p50"] / v["end_to_end"]["p50"] for v in variants]
    lines.append("| speed-up vs baseline | " + " | ".join(f"{s:.2f}x" for s in speedups) + " |")
    memory_key = "cuda_max_allocated_gib" if "cuda_max_allocated_gib" in variants[0] else "peak_rss_gib"
    lines.append(f"| {memory_key} | " + " | ".join(f"{v[memory_key]:.2f}" for v in variants) + " |")
    lines.append("")
    lines.append(f"Baseline: {baseline['variant']['name']}. Load time is not included.")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Stacked bars: per-stage p50 seconds for each variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = report["variants"]
    stages = [s for s in (*STEP1_STAGES, *REASONING_STAGES) if any(s in v["stages"] for v in variants)]
    figure, axis = plt.subplots(figsize=(4.0 + 1.6 * len(variants), 5))
    bottoms = np.zeros(len(variants))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, len(stages)))
    for stage, colour in zip(stages, colours):
        heights = np.array([v["stages"].get(stage, {"p50": 0.0})["p50"] for v in variants])
        axis.bar(range(len(variants)), heights, bottom=bottoms, label=stage, color=colour)
        bottoms += heights
    axis.set_xticks(range(len(variants)), [v["variant"]["name"] for v in variants], rotation=15, ha="right")
    axis.set_ylabel("seconds (p50)")
    title = report["machine"].get("gpu") or report["machine"]["cpu"]
    axis.set_title(f"{report['settings']['preset']}, {report['settings']['duration']} s clip: {title}", fontsize=9)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="deepsound-rt bench", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dev")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--random-weights", action="store_true", help="full-size networks, random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of audio per run")
    parser.add_argument("--num-steps", "--steps", dest="num_steps", type=int, default=default_of(EngineConfig, "num_steps"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                        help="time step 1 only (no MLLM, detector, separator, silence check)")
    parser.add_argument("--variants", help="comma-separated variant names to run (default: all for the device)")
    parser.add_argument("--export", type=Path,
                        help="a `deepsound-rt export` of this preset and duration: adds the ONNX Runtime variant")
    parser.add_argument("--quick", action="store_true", help="2 s clip, 2 steps, no warm-up, 1 run: a smoke test")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="directory for bench.json/.md/.png")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_settings(args)  # the values given, before --quick replaces them
    if args.quick:
        args.duration, args.num_steps, args.warmup, args.runs = 2.0, 2, 0, 1
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    variants = select_variants(variants_for(device, args.export), args.variants, device)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "deepsound-rt bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "variants": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        video = make_test_video(Path(folder) / "bench.mp4", args.duration + 0.5, 25, (640, 360))
        for variant in variants:
            print(f"bench: {variant.name} ...", file=sys.stderr, flush=True)
            report["variants"].append(measure(variant, args, video))
            write_report(report, args.out)  # after every variant: a cut-short run keeps what it measured
    print(markdown(report) if _has_baseline(report) else json.dumps(report["variants"], indent=1))
    return 0


def _has_baseline(report: dict) -> bool:
    return any(v["variant"]["baseline"] for v in report["variants"])


def write_report(report: dict, out: Path) -> None:
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    if _has_baseline(report):  # the tables compare with it
        (out / "bench.md").write_text(markdown(report))
        plot(report, out / "bench.png")


if __name__ == "__main__":
    sys.exit(main())
