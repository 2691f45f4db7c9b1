"""Peak memory and time of each memory tier, per DeepSound step and end to end
(``deepsound-rt bench --memory TIERS``).

Each tier runs in its own process (a fresh heap and CUDA context, so no tier inherits another's
memory), loads its Engine and runs the same clip through the
DeepSound steps (plan, generate, judge; then removal and the silence check on the step-1 audio,
whatever the judge decided, so that random weights time them too): warm-up runs, then timed runs.
Per step, the median time and the peak memory over all runs, measured after loading: on CUDA
torch's peak allocated and reserved bytes, on a CPU the resident set's high-water mark (both
restarted at every step). End to end: the sum of the steps' medians, the largest step peak, and
the time against tier ``max``. Writes bench_memory.json and bench_memory.md.

    deepsound-rt bench --memory max,balanced,low --preset large_44k_v2 --random-weights --duration 10 \
        --cuda-graphs --out $OUT/memory                                            (one GPU)
    deepsound-rt bench --memory max,balanced,low --preset dev --quick --wider-llm --judge qa \
        --out benchmarks/results/cpu-epyc-2core/memory                            (a CPU)

On a CPU host and device are one memory: ``balanced`` costs what ``max`` costs and ``low`` saves
what int8 saves, 3 bytes per decoder-layer weight (float32 to int8). ``--wider-llm`` gives the dev
preset a wider, deeper tiny LLM (6 layers of width 256, MLP 1024: 5.9M weights in its linear
layers) so that this saving stands out from the rest of the process. Large allocations are served
by mmap (``MALLOC_MMAP_THRESHOLD_``, set for the tier processes unless given), so freed memory
leaves the resident set at once and the high-water mark is the live peak: repeats agree within 1 MB.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepsound_rt.engine import Engine, EngineConfig
from deepsound_rt.errors import DeepSoundError
from deepsound_rt.io.sample import make_test_video
from deepsound_rt.models.mllm.quantize import llm_linears
from deepsound_rt.options import JUDGES, MEMORY_TIERS, default_of

GIB = 2**30
REPO = Path(__file__).resolve().parents[1]
STEPS = ("plan", "generate", "judge", "remove", "silence")
WIDER_LLM = {"hidden_size": 256, "hidden_size_a": 256, "intermediate_size": 1024, "num_hidden_layers": 6,
             "num_attention_heads": 4, "num_key_value_heads": 2}


class Peaks:
    """Peak memory since the last restart: CUDA allocated/reserved, or the resident set (Linux)."""

    def __init__(self, device: torch.device):
        self.device = device

    def restart(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts at the current RSS
        except OSError:
            pass  # elsewhere the peak accumulates

    def read(self) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
            return {"allocated_gib": torch.cuda.max_memory_allocated(self.device) / GIB,
                    "reserved_gib": torch.cuda.max_memory_reserved(self.device) / GIB}
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"rss_gib": int(line.split()[1]) * 1024 / GIB}
        return {"rss_gib": float("nan")}


def _higher(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {key: max(a.get(key, 0.0), value) for key, value in b.items()}


def one_run(engine: Engine, video: Path, args: argparse.Namespace, seed: int, peaks: Peaks) -> dict[str, tuple]:
    """step -> (seconds, peak memory) for one clip."""
    out: dict[str, tuple] = {}

    def add(step: str, seconds: float, peak: dict[str, float]) -> None:
        old_seconds, old_peak = out.get(step, (0.0, {}))
        out[step] = (old_seconds + seconds, _higher(old_peak, peak))

    result = None
    for event in engine.steps(video, judge=args.judge, duration=args.duration, seed=seed):
        if event.status == "started":
            peaks.restart()
        elif event.record is not None:
            add(event.step, event.record.seconds, peaks.read())
        result = event.result or result
    if "remove" not in out:  # the judge heard no voice-over: time removal and the check anyway
        generated = next(record.audio for record in result.steps if record.step == "generate")
        peaks.restart()
        started = time.perf_counter()
        instrumental, _ = engine.remove_voice_over(generated, engine.sample_rate)
        add("remove", time.perf_counter() - started, peaks.read())
        peaks.restart()
        started = time.perf_counter()
        engine.check_silence(instrumental)
        add("silence", time.perf_counter() - started, peaks.read())
    return out


def measure_tier(tier: str, args: argparse.Namespace, video: Path) -> dict:
    """Load an Engine in ``tier`` (the step models too), then warm-up and timed runs."""
    device = torch.device(args.device)
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc: hand the previous tier's heap back
    except AttributeError:
        pass
    if device.type == "cuda":
        torch.cuda.empty_cache()
    peaks = Peaks(device)
    peaks.restart()
    started = time.perf_counter()
    engine = Engine(EngineConfig(preset=args.preset, weights=args.weights, device=args.device,
                                 weights_source="full-random" if args.random_weights else "auto",
                                 num_steps=args.num_steps, cuda_graphs=args.cuda_graphs, memory=tier))
    if engine.has_planner:
        engine.reasoner, engine.judge_reasoner
    engine.separator
    load = {"seconds": time.perf_counter() - started, "peak": peaks.read()}
    runs = [one_run(engine, video, args, seed, peaks) for seed in range(args.warmup + args.runs)]
    timed = runs[args.warmup:]
    steps = {}
    for step in dict.fromkeys(step for run in runs for step in run):
        seconds = [run[step][0] for run in timed if step in run]
        peak: dict[str, float] = {}
        for run in runs:
            peak = _higher(peak, run[step][1]) if step in run else peak
        steps[step] = {"p50": statistics.median(seconds), "runs": seconds, "peak": peak}
    totals = [sum(seconds for seconds, _ in run.values()) for run in timed]
    end_to_end: dict[str, float] = {}
    for step in steps.values():
        end_to_end = _higher(end_to_end, step["peak"])
    result = {"tier": tier, "int8_llm": engine.int8_llm, "load": load, "steps": steps,
              "end_to_end": {"p50": statistics.median(totals), "runs": totals, "peak": end_to_end},
              "llm_linear_weights": sum(linear.weight.numel() for _, linear in llm_linears(engine.reasoner.model))
              if engine.has_planner else 0}
    del engine
    return result


def markdown(report: dict) -> str:
    tiers = report["tiers"]
    keys = list(tiers[0]["end_to_end"]["peak"])
    # CUDA in GiB; a CPU's resident set in MiB, where the tiers differ by megabytes
    scale, unit = (1024, "MiB") if keys == ["rss_gib"] else (1, "GiB")
    names = " / ".join(key.removesuffix("_gib") for key in keys)
    at_max = next((t["end_to_end"]["p50"] for t in tiers if t["tier"] == "max"), None)

    def memory(peak: dict) -> str:
        return " / ".join(f"{peak[key] * scale:.{1 if scale > 1 else 2}f}" for key in keys)

    def cell(figures: dict) -> str:
        return f"{figures['p50'] * 1e3:.0f} ms, {memory(figures['peak'])}"

    settings = report["settings"]
    lines = [f"# deepsound_rt memory tiers: {settings['preset']}, {settings['duration']} s clip", "",
             f"Machine: {report['machine']}; torch {torch.__version__}; {report['date']}", "",
             f"Command: `{report['command']}`", "",
             f"Per step: median time over {settings['runs']} runs after {settings['warmup']} warm-up, and peak "
             f"memory ({names}, {unit}) over all runs, after loading.", "",
             "| step | " + " | ".join(t["tier"] for t in tiers) + " |", "|---" * (len(tiers) + 1) + "|"]
    for step in [s for s in STEPS if any(s in t["steps"] for t in tiers)]:
        lines.append(f"| {step} | " + " | ".join(cell(t["steps"][step]) if step in t["steps"] else "-"
                                                 for t in tiers) + " |")
    lines.append("| **end to end** | " + " | ".join(f"**{cell(t['end_to_end'])}**" for t in tiers) + " |")
    if at_max:
        lines.append("| time vs tier max | " + " | ".join(f"{t['end_to_end']['p50'] / at_max:.2f}x" for t in tiers)
                     + " |")
    lines.append("| loading: s, peak | " + " | ".join(f"{t['load']['seconds']:.1f} s, {memory(t['load']['peak'])}"
                                                   for t in tiers) + " |")
    lines.append("| int8 LLM weights | " + " | ".join("yes" if t["int8_llm"] else "no" for t in tiers) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepsound-rt bench --memory", description=__doc__.splitlines()[0])
    parser.add_argument("--memory", required=True, help=f"comma-separated tiers ({', '.join(MEMORY_TIERS)})")
    parser.add_argument("--preset", default="dev")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--random-weights", action="store_true", help="full-size networks, random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of audio per run")
    parser.add_argument("--num-steps", "--steps", dest="num_steps", type=int,
                        default=default_of(EngineConfig, "num_steps"))
    parser.add_argument("--judge", default="cot", choices=JUDGES)
    parser.add_argument("--cuda-graphs", action="store_true", help="the flow step, VAE and vocoder as CUDA graphs")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--wider-llm", action="store_true", help="dev preset: a wider tiny LLM (see above)")
    parser.add_argument("--quick", action="store_true", help="1 s clip, 1 flow step, no warm-up, 1 run")
    parser.add_argument("--out", type=Path, help="directory for bench_memory.json/.md (default: print the JSON)")
    parser.add_argument("--tier-process", action="store_true", help=argparse.SUPPRESS)  # one tier, JSON out
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    tiers = [tier.strip() for tier in args.memory.split(",")]
    unknown = sorted(set(tiers) - set(MEMORY_TIERS))
    if unknown:
        raise DeepSoundError(f"unknown memory tier {', '.join(unknown)} (choose from {', '.join(MEMORY_TIERS)})")
    if args.quick:
        args.duration, args.num_steps, args.warmup, args.runs = 1.0, 1, 0, 1
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.wider_llm:
        from deepsound_rt.models.mllm import tiny

        small = tiny.tiny_config_json
        tiny.tiny_config_json = lambda vocab_size: small(vocab_size) | WIDER_LLM
    device = torch.device(args.device)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "deepsound-rt bench " + " ".join(argv),
              "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "tiers": []}
    if args.tier_process:
        with tempfile.TemporaryDirectory() as folder:
            video = make_test_video(Path(folder) / "bench.mp4", args.duration + 0.5, 25, (640, 360))
            print(json.dumps(measure_tier(tiers[0], args, video)))
        return 0
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for tier in tiers:
        print(f"bench: memory tier {tier} ...", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, *argv, "--memory", tier, "--tier-process"], env=env,
                              stdout=subprocess.PIPE, text=True)
        if done.returncode:
            raise DeepSoundError(f"memory tier {tier}: its process failed (exit {done.returncode}; see above)")
        report["tiers"].append(json.loads(done.stdout.strip().splitlines()[-1]))
        if args.out:  # after every tier: a cut-short run keeps what it measured
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "bench_memory.json").write_text(json.dumps(report, indent=2))
            (args.out / "bench_memory.md").write_text(markdown(report))
    print(markdown(report) if args.out else json.dumps(report))
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "CPU"


if __name__ == "__main__":
    sys.exit(main())
