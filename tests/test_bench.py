"""`deepsound-rt bench`: the report's structure (timings themselves belong in benchmarks/), with
the GPU's speed-lever variants run here in the CPU dry-run mode, as ``gpu_bench.sh`` runs them."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import torch

from deepsound_rt.cli import main

BENCH = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"))


def test_the_gpu_variants_are_the_baseline_each_lever_alone_and_all_together() -> None:
    variants = BENCH["variants_for"](torch.device("cuda"), None)
    levers = ("static_decode", "compile", "fp8", "overlap", "sdpa_encoders")
    baseline = [v for v in variants if v.baseline]
    assert len(baseline) == 1 and baseline[0].dtype == "bf16" and not baseline[0].kernels
    assert not any(getattr(baseline[0], lever) for lever in levers)
    for lever in levers:  # alone: that lever and nothing else
        assert sum(getattr(v, lever) and sum(getattr(v, other) for other in levers) == 1 for v in variants) == 1
    together = [v for v in variants if all(getattr(v, lever) or lever == "fp8" for lever in levers)]
    assert {v.fp8 for v in together} == {False, True} and all(v.kernels and v.cuda_graphs for v in together)
    assert sum(v.profile for v in variants) == 1
    assert BENCH["variants_for"](torch.device("cpu"), None, dry_run=True) == variants


def test_quick_dry_run_writes_json_markdown_plot_and_profile(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "dev", "--quick", "--dry-run", "--profile",
                 "--variants", "eager bf16,all levers", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert {"date", "command", "machine", "settings", "variants"} <= set(report)
    assert {"torch", "python", "cpu", "kernel_paths"} <= set(report["machine"])
    assert report["settings"]["preset"] == "dev" and report["settings"]["duration"] == 2.0
    variants = report["variants"]
    assert [v["variant"]["name"] for v in variants] == ["eager bf16", "all levers"]
    expected_stages = {"video decode", "clip", "synchformer", "text", "conditions", "sampling", "vae", "vocoder",
                       "plan: mllm encoders", "plan: mllm decoder", "judge: mllm encoders", "judge: mllm decoder",
                       "separator", "silence check"}
    for variant in variants:
        assert set(variant["stages"]) == expected_stages
        for figures in [*variant["stages"].values(), variant["end_to_end"], variant["sum_of_stages"]]:
            assert 0 < figures["p50"] <= figures["p95"] and len(figures["runs"]) == 1
        assert variant["real_time_factor"] > 0 and variant["peak_rss_gib"] > 0 and variant["audio_seconds"] == 2.0
        assert variant["decode_ms_per_token"] > 0
    baseline, levers = variants
    assert baseline["step1_audio_rel_error"] == 0.0 and 0 <= levers["step1_audio_rel_error"] < 1e-3
    assert "torch+static-cache" in levers["backend"] and "torch+compile(eager)" in levers["backend"]
    assert len(levers["profile"]) == 15 and "profile" not in baseline
    table = (out / "bench.md").read_text()
    assert "| stage |" in table and "speed-up vs baseline" in table and "deepsound-rt bench" in table
    assert "## Profile of one run: all levers" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "end to end" in capsys.readouterr().out
