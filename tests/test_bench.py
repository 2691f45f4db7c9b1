"""`deepsound-rt bench --quick`: the report's structure (timings themselves belong in benchmarks/)."""
from __future__ import annotations

import json

from deepsound_rt.cli import main


def test_quick_bench_writes_json_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "dev", "--quick", "--variants", "eager fp32", "--memory", "max,low",
                 "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert {"date", "command", "machine", "settings", "variants"} <= set(report)
    assert {"torch", "python", "cpu", "kernel_paths"} <= set(report["machine"])
    assert report["settings"]["preset"] == "dev" and report["settings"]["duration"] == 2.0
    variants = report["variants"]
    assert sum(v["variant"]["baseline"] for v in variants) == 1
    expected_stages = {"video decode", "clip", "synchformer", "text", "conditions", "sampling", "vae", "vocoder",
                       "mllm encoders", "mllm prefill", "mllm decode", "detector", "separator", "silence check"}
    for variant in variants:
        assert set(variant["stages"]) == expected_stages
        for figures in [*variant["stages"].values(), variant["end_to_end"]]:
            assert 0 < figures["p50"] <= figures["p95"] and len(figures["runs"]) == 1
        assert variant["real_time_factor"] > 0 and variant["peak_rss_gib"] > 0 and variant["audio_seconds"] == 2.0
        assert 0 < variant["run_peak_rss_gib"] <= variant["peak_rss_gib"]
    assert [(v["memory"], v["label"]) for v in variants] == [("max", "eager fp32"), ("low", "eager fp32, low")]
    table = (out / "bench.md").read_text()
    assert "| stage | eager fp32 | eager fp32, low |" in table and "speed-up vs baseline" in table
    assert "| time vs tier max | 1.00x |" in table and "| peak RSS, run (GiB) |" in table
    assert "deepsound-rt bench" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "end to end" in capsys.readouterr().out
