"""Peak resident memory of each memory tier on a CPU: each tier runs the DeepSound steps in its own
process, and the peak is the resident set's high-water mark after loading (what running adds).

    python benchmarks/bench_memory_cpu.py --out benchmarks/results/cpu-epyc-2core/memory

The dev preset's networks, with a wider and deeper tiny LLM (6 decoder layers of width 256, MLP
1024: 5.9M weights in its linear layers) so that the tiers' difference stands out from the rest of
the process; the run is plan, generate (1 s), judge ``always``, remove, silence. Large allocations
go straight to mmap (``MALLOC_MMAP_THRESHOLD_``), so freed memory leaves the resident set at once
and the high-water mark is the live peak: repeated runs agree within 1 MB.

On a CPU host and device are one memory, so ``balanced`` should cost what ``max`` costs and
``low`` save what int8 saves: 3 bytes per decoder-layer weight (float32 to int8).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIDER_LLM = {"hidden_size": 256, "hidden_size_a": 256, "intermediate_size": 1024, "num_hidden_layers": 6,
             "num_attention_heads": 4, "num_key_value_heads": 2}


def child(tier: str) -> dict:
    """One tier, in this process: load, forget the loading peak, run, read the peak."""
    from deepsound_rt.models.mllm import tiny

    small = tiny.tiny_config_json
    tiny.tiny_config_json = lambda vocab_size: small(vocab_size) | WIDER_LLM
    from deepsound_rt.engine import Engine, EngineConfig
    from deepsound_rt.io.sample import sample_clip_path
    from deepsound_rt.models.mllm.quantize import llm_linears

    engine = Engine(EngineConfig(preset="dev", steps=2, memory=tier))
    engine.reasoner, engine.separator
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # restart the high-water mark
    result = engine.run(sample_clip_path(), judge="always", duration=1.0)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {"tier": tier, "peak_bytes": int(status["VmHWM"].split()[0]) * 1024,
            "llm_linear_weights": sum(linear.weight.numel() for _, linear in llm_linears(engine.reasoner.model)),
            "steps": [record.step for record in result.steps]}


def measure(tiers: list[str]) -> list[dict]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    runs = []
    for tier in tiers:
        done = subprocess.run([sys.executable, __file__, "--child", tier], env=env, capture_output=True, text=True,
                              check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def markdown(runs: list[dict], command: str) -> str:
    lines = ["# Peak RSS per memory tier on a CPU (dev preset, wider tiny LLM)", "", f"Command: `{command}`", "",
             "| tier | peak RSS after loading (MiB) | vs max (MiB) |", "|---|---|---|"]
    at_max = next((r["peak_bytes"] for r in runs if r["tier"] == "max"), None)
    for run in runs:
        versus = "-" if at_max is None else f"{(run['peak_bytes'] - at_max) / 2**20:+.1f}"
        lines.append(f"| {run['tier']} | {run['peak_bytes'] / 2**20:.1f} | {versus} |")
    saved = runs[0]["llm_linear_weights"] * 3 / 2**20
    lines += ["", f"int8 saves {saved:.1f} MiB of weights here (3 bytes for each of the LLM's "
              f"{runs[0]['llm_linear_weights']:,} decoder-layer weights). Run: {', '.join(runs[0]['steps'])}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", default="max,balanced,low")
    parser.add_argument("--out", type=Path, help="directory for bench_memory_cpu.json/.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    runs = measure(args.tiers.split(","))
    command = "python benchmarks/bench_memory_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_memory_cpu.json").write_text(json.dumps(runs, indent=2))
        (args.out / "bench_memory_cpu.md").write_text(markdown(runs, command))
    print(json.dumps(runs) if not args.out else markdown(runs, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
