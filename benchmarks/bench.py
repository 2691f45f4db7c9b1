"""Latency of every DeepSound stage and end to end, with every backend and speed lever side by side.

Each variant (a backend / precision / kernel / speed-lever setting) loads its own Engine and runs
the same clip through every DeepSound step (``Engine.run``: plan, generate, judge, remove,
silence check): warm-up runs, then timed runs; per stage the median (p50) and p95, the wall time
of the whole run (with ``overlap`` less than the sum of its stages), the real-time factor (seconds
of audio per second), memory, and how far the step-1 audio lies from the baseline's (same seed).
The baseline (torch eager, bf16 on a GPU, fp32 on a CPU) and every other figure come from the
same run. Writes bench.json (machine, versions, settings, every timing), bench.md (tables),
bench.png (per-stage stacked bars per variant) and, with ``--profile``, a section of bench.md: the
top kernels by device time of one run of the chosen variant.

With random weights the MLLM never writes the canonical plan nor hears voice-over, so the
harness makes it decode ``DECODE_TOKENS`` tokens for the plan and for the judge (real weights:
the plan takes the one-prefill fast path; the judge decodes its chain of thought) and takes
DeepSound's voice-over branch after the judge has run, so that removal and the silence check are
timed too.

    deepsound-rt bench --preset dev --quick --out out/bench
    deepsound-rt bench --preset dev --quick --dry-run --out out/bench   (the GPU variants, on a CPU)
    deepsound-rt bench --preset small_16k --random-weights --duration 8 --out benchmarks/results/cpu
    deepsound-rt bench --preset large_44k_v2 --random-weights --duration 10 --profile --out $OUT/gpu
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
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from deepsound_rt import kernels
from deepsound_rt.cli import OneLineParser
from deepsound_rt.engine import Engine, EngineConfig
from deepsound_rt.errors import DeepSoundError
from deepsound_rt.io.sample import make_test_video
from deepsound_rt.models.mllm import decoding
from deepsound_rt.models.mllm.prompt import PLAN_QUESTION
from deepsound_rt.options import RunOptions, default_of, integer_in
from deepsound_rt.results import DeepSoundResult

STEP1_STAGES = ("video decode", "clip", "synchformer", "text", "conditions", "sampling", "vae", "vocoder")
REASONING_STAGES = ("plan: mllm encoders", "plan: mllm decoder", "judge: mllm encoders", "judge: mllm decoder",
                    "separator", "silence check")
MLLM_STAGES = {"mllm_vision": "mllm encoders", "mllm_audio": "mllm encoders", "mllm_decoder": "mllm decoder"}
DECODE_TOKENS = 16  # tokens the random-weight MLLM decodes for the plan and for the judge
JUDGE = "cot"
PROFILED_KERNELS = 15


@dataclass(frozen=True)
class Variant:
    """One way to run the pipeline; ``baseline`` marks the reference for speed-ups."""

    name: str
    dtype: str
    kernels: bool
    cuda_graphs: bool = False
    baseline: bool = False
    backend: str = "torch"  # onnxruntime/tensorrt run the generator graphs of --export
    static_decode: bool = False
    compile: bool = False
    fp8: bool = False
    overlap: bool = False
    sdpa_encoders: bool = False
    profile: bool = False  # with --profile: the variant whose run is profiled


ALL_LEVERS = dict(kernels=True, cuda_graphs=True, static_decode=True, compile=True, overlap=True, sdpa_encoders=True)


def lever_variants() -> list[Variant]:
    """Eager bf16 (the baseline), all levers (with our kernels and CUDA graphs) and each lever
    alone, most telling first so that a run cut short keeps them; the variants that compile cost
    the most and come last but for "all levers"."""
    return [
        Variant("eager bf16", "bf16", kernels=False, baseline=True),
        Variant("all levers", "bf16", **ALL_LEVERS, profile=True),
        Variant("static decode", "bf16", kernels=False, static_decode=True),
        Variant("overlap", "bf16", kernels=False, overlap=True),
        Variant("sdpa encoders", "bf16", kernels=False, sdpa_encoders=True),
        Variant("fp8", "bf16", kernels=False, fp8=True),
        Variant("all levers + fp8", "bf16", **ALL_LEVERS, fp8=True),
        Variant("compile", "bf16", kernels=False, compile=True),
    ]


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


def variants_for(device: torch.device, export: Path | None, dry_run: bool = False) -> list[Variant]:
    """CUDA (or ``dry_run``): :func:`lever_variants`. CPU: eager fp32 vs our C++ kernels, and
    ONNX Runtime (the generator's graphs from ``export``; our kernels still serve the stages
    outside them)."""
    if device.type == "cuda" or dry_run:
        return lever_variants()
    variants = [Variant("eager fp32", "fp32", kernels=False, baseline=True)]
    if "cpp" in kernels.available_paths():
        variants.append(Variant("fp32 + C++ kernels", "fp32", kernels=True))
    if export is not None:
        variants.append(Variant("onnxruntime + C++ kernels", "fp32", kernels=True, backend="onnxruntime"))
    return variants


@dataclass
class Measurement:
    stages: dict[str, list[float]] = field(default_factory=dict)
    walls: list[float] = field(default_factory=list)

    def add(self, stage: str, seconds: float) -> None:
        self.stages.setdefault(stage, []).append(seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _take_voice_over_branch(engine: Engine) -> None:
    """Random weights: the MLLM decodes ``DECODE_TOKENS`` tokens at most, and the judge (which
    still runs) is taken to have heard voice-over, so removal and the silence check follow."""
    for reasoner in {id(r): r for r in (engine.reasoner, engine.judge_reasoner)}.values():
        reasoner.settings = replace(reasoner.settings, max_new_tokens=DECODE_TOKENS)
    judge = engine.judge_voice_over

    def voice_over(*args, **kwargs):
        _, details = judge(*args, **kwargs)
        return True, details

    engine.judge_voice_over = voice_over


def pipeline_stages(result: DeepSoundResult) -> dict[str, float]:
    """Seconds per stage of one ``Engine.run``: step 1's stages, the MLLM's encoders and decoder
    for the plan and the judge, the separator and the silence check."""
    stages: dict[str, float] = {}
    for record in result.steps:
        timings = record.details.get("timings")
        if record.step == "generate":
            stages |= timings.as_dict()
        elif record.step in ("plan", "judge") and timings is not None:
            for stage, seconds in timings.as_dict().items():
                name = f"{record.step}: {MLLM_STAGES[stage]}"
                stages[name] = stages.get(name, 0.0) + seconds
        elif record.step == "remove":
            stages |= timings.as_dict()
        elif record.step == "silence":
            stages["silence check"] = record.seconds
    return stages


def decode_ms_per_token(engine: Engine) -> float:
    """Milliseconds per greedy decoding step after a prefill (the plan's prompt without video):
    (time for 1 + DECODE_TOKENS tokens - time for 1 token) / DECODE_TOKENS."""
    reasoner = engine.reasoner
    device = engine.device
    with torch.inference_mode():
        embeds = reasoner.prompt_embeds(PLAN_QUESTION, [reasoner.model.embed(torch.zeros(64, dtype=torch.long,
                                                                                          device=device))])
        seconds = []
        for tokens in (1, 1 + DECODE_TOKENS):
            settings = decoding.DecodingSettings(frozenset(), max_new_tokens=tokens)
            _sync(device)
            started = time.perf_counter()
            decoding.generate(reasoner.language_model, embeds, settings)
            _sync(device)
            seconds.append(time.perf_counter() - started)
    return (seconds[1] - seconds[0]) / DECODE_TOKENS * 1e3


def engine_for(variant: Variant, args: argparse.Namespace) -> Engine:
    """The variant's Engine; a dry run computes in float32, only traces what it compiles and takes
    our kernels where they are built."""
    compile_backend = ("eager" if args.dry_run else "inductor") if variant.compile else None
    dtype = "fp32" if args.dry_run else variant.dtype
    use_kernels = ("auto" if args.dry_run else "on") if variant.kernels else "off"
    return Engine(EngineConfig(preset=args.preset, weights=args.weights, device=args.device, dtype=dtype,
                               num_steps=args.num_steps, weights_source="full-random" if args.random_weights else "auto",
                               cuda_graphs=variant.cuda_graphs, backend=variant.backend,
                               export=args.export if variant.backend != "torch" else None, kernels=use_kernels,
                               static_decode=variant.static_decode, compile=compile_backend, fp8=variant.fp8,
                               overlap=variant.overlap, sdpa_encoders=variant.sdpa_encoders))


def measure(variant: Variant, args: argparse.Namespace, video: Path, baseline_audio: dict) -> dict:
    """Load an Engine for ``variant`` and time warm-up + timed runs of every stage.

    ``baseline_audio`` holds the baseline's last step-1 audio; other variants report their
    distance from it (the baseline fills it in)."""
    device = torch.device(args.device)
    _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    engine = engine_for(variant, args)
    reasoning = args.pipeline and engine.has_planner
    if reasoning:  # build the lazily loaded step-0/2/3 models outside the timings
        for model in ("reasoner", "judge_reasoner", "separator"):
            getattr(engine, model)
        _take_voice_over_branch(engine)
    load_seconds = time.perf_counter() - started
    measurement = Measurement()
    for run in range(args.warmup + args.runs):
        _sync(device)
        started = time.perf_counter()
        if reasoning:
            result = engine.run(video, judge=JUDGE, duration=args.duration, seed=run)
            stages, audio = pipeline_stages(result), result.step("generate").audio
            backends = {t.backend for r in result.steps for t in getattr(r.details.get("timings"), "stages", [])}
        else:
            generated = engine.generate(video, duration=args.duration, seed=run)
            stages, audio = generated.timings.as_dict(), generated.waveform
            backends = {t.backend for t in generated.timings.stages}
        _sync(device)
        wall = time.perf_counter() - started
        if run >= args.warmup:
            for stage, seconds in stages.items():
                measurement.add(stage, seconds)
            measurement.walls.append(wall)
    profile = None
    if args.profile and variant.profile and reasoning:
        try:
            profile = profile_run(engine, args, video)
        except Exception as error:  # the timings stand without it
            profile = [{"name": f"profiling failed: {error!r}", "calls": 0, "ms": 0.0, "share": 0.0}]
    ms_per_token = decode_ms_per_token(engine) if reasoning else None
    if variant.baseline:
        baseline_audio["audio"] = audio
    reference = baseline_audio.get("audio")
    audio_error = (float(np.linalg.norm(audio - reference) / max(np.linalg.norm(reference), 1e-12))
                   if reference is not None and len(reference) == len(audio) else None)
    result = {
        "variant": variant.__dict__,
        "backend": sorted(b for b in backends if b),
        "load_seconds": load_seconds,
        "audio_seconds": args.duration,
        "stages": {stage: _summary(values) for stage, values in measurement.stages.items()},
        "end_to_end": _summary(measurement.walls),
        "sum_of_stages": _summary([sum(v[i] for v in measurement.stages.values()) for i in range(args.runs)]),
        "real_time_factor": args.duration / statistics.median(measurement.walls),
        "decode_ms_per_token": ms_per_token,
        "step1_audio_rel_error": audio_error,
        "peak_rss_gib": _peak_rss_gib(),
    }
    if profile is not None:
        result["profile"] = profile
    if device.type == "cuda":
        result["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del engine
    if variant.compile:
        torch._dynamo.reset()  # its compiled graphs hold this variant's weights (inductor's disk cache stays)
    return result


def profile_run(engine: Engine, args: argparse.Namespace, video: Path) -> list[dict]:
    """One more run under the torch profiler: the kernels (CPU ops on a CPU) that took the most
    device time, with their share of it."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        engine.run(video, judge=JUDGE, duration=args.duration, seed=0)
        _sync(device)
    events = profiler.key_averages()
    if device.type == "cuda":
        kernels_only = [e for e in events if _self_device_us(e) > 0 and e.device_type == torch.autograd.DeviceType.CUDA]
        by_time = sorted(kernels_only or events, key=_self_device_us, reverse=True)
        total = sum(_self_device_us(e) for e in kernels_only) or 1.0
        timed = [(e, _self_device_us(e)) for e in by_time[:PROFILED_KERNELS]]
    else:
        by_time = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        timed = [(e, e.self_cpu_time_total) for e in by_time[:PROFILED_KERNELS]]
    return [{"name": e.key, "calls": e.count, "ms": us / 1e3, "share": us / total} for e, us in timed]


def _self_device_us(event) -> float:
    """Self device time of a profiler event (renamed from ``self_cuda_time_total`` in torch 2.4+)."""
    return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0))


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
        "transformers": _version("transformers"),
        "triton": _version("triton"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def markdown(report: dict) -> str:
    """Per-stage p50 (ms) per variant, then end to end (wall), the sum of the stages, real-time
    factor, speed-up, decoding speed, distance from the baseline's audio, memory; the profile."""
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
    lines.append("| **end to end (wall)** | " + " | ".join(f"**{v['end_to_end']['p50'] * 1e3:.1f}**" for v in variants)
                 + " |")
    lines.append("| p95 end to end | " + " | ".join(f"{v['end_to_end']['p95'] * 1e3:.1f}" for v in variants) + " |")
    lines.append("| sum of the stages | " + " | ".join(f"{v['sum_of_stages']['p50'] * 1e3:.1f}" for v in variants) + " |")
    lines.append("| real-time factor | " + " | ".join(f"{v['real_time_factor']:.2f}x" for v in variants) + " |")
    speedups = [baseline["end_to_end"]["p50"] / v["end_to_end"]["p50"] for v in variants]
    lines.append("| speed-up vs baseline | " + " | ".join(f"{s:.2f}x" for s in speedups) + " |")
    lines.append("| MLLM ms/token | " + " | ".join(_cell(v.get("decode_ms_per_token"), "{:.1f}") for v in variants) + " |")
    lines.append("| step-1 audio vs baseline (rel. L2) | "
                 + " | ".join(_cell(v.get("step1_audio_rel_error"), "{:.1e}") for v in variants) + " |")
    memory_key = "cuda_max_allocated_gib" if "cuda_max_allocated_gib" in variants[0] else "peak_rss_gib"
    lines.append(f"| {memory_key} | " + " | ".join(f"{v[memory_key]:.2f}" for v in variants) + " |")
    lines.append("")
    lines.append(f"Baseline: {baseline['variant']['name']}. Load time is not included. End to end is the wall "
                 "time of the whole run; the stages overlap with `overlap`, so their sum can exceed it.")
    for failed in report.get("failed", []):
        lines.append(f"\nFailed: {failed['variant']['name']}: `{failed['error'][:300]}`")
    for v in variants:
        if "profile" in v:
            unit = "device" if "gpu" in report["machine"] else "CPU"
            lines += ["", f"## Profile of one run: {v['variant']['name']} (top {len(v['profile'])} by self {unit} time)",
                      "", "| kernel | calls | ms | share |", "|---|---|---|---|"]
            lines += [f"| `{k['name'][:90]}` | {k['calls']} | {k['ms']:.1f} | {k['share']:.1%} |" for k in v["profile"]]
    return "\n".join(lines) + "\n"


def _cell(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


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
                        help="time step 1 only (no MLLM, separator, silence check)")
    parser.add_argument("--variants", help="comma-separated variant names to run (default: all for the device)")
    parser.add_argument("--export", type=Path,
                        help="a `deepsound-rt export` of this preset and duration: adds the ONNX Runtime variant")
    parser.add_argument("--quick", action="store_true", help="2 s clip, 2 steps, no warm-up, 1 run: a smoke test")
    parser.add_argument("--dry-run", action="store_true",
                        help="the GPU's speed-lever variants on this device in float32: compile only traces "
                             "(dynamo, no inductor), FP8 is emulated; exercises the harness, its timings mean nothing")
    parser.add_argument("--profile", action="store_true",
                        help="profile one more run of the 'all levers' variant: top kernels by device time")
    parser.add_argument("--memory", metavar="TIERS",
                        help="instead: peak memory and time per memory tier (benchmarks/bench_memory.py, "
                             "its own options)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="directory for bench.json/.md/.png")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg == "--memory" or arg.startswith("--memory=") for arg in argv):  # the memory-tier table
        import runpy

        return runpy.run_path(str(Path(__file__).with_name("bench_memory.py")))["main"](argv)
    args = build_parser().parse_args(argv)
    check_settings(args)  # the values given, before --quick replaces them
    if args.quick:
        args.duration, args.num_steps, args.warmup, args.runs = 2.0, 2, 0, 1
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    variants = select_variants(variants_for(device, args.export, args.dry_run), args.variants, device)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "deepsound-rt bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "variants": [],
    }
    baseline_audio: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        video = make_test_video(Path(folder) / "bench.mp4", args.duration + 0.5, 25, (640, 360))
        for variant in variants:
            print(f"bench: {variant.name} ...", file=sys.stderr, flush=True)
            try:
                report["variants"].append(measure(variant, args, video, baseline_audio))
            except Exception as error:  # one variant's failure must not cost the others (one GPU run)
                traceback.print_exc()
                report.setdefault("failed", []).append({"variant": variant.__dict__, "error": repr(error)})
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
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
