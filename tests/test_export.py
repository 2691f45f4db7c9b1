"""Export the dev preset once, then: the manifest, ONNX Runtime parity per graph and for a whole
Engine run, and refusal of corrupt, stale and mismatched exports.

The full-size proof (``small_16k`` with random weights) takes minutes and gigabytes; it runs when
``DEEPSOUND_RT_SLOW=1``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile
import torch

from deepsound_rt.backends import GraphLoader, check_export_duration
from deepsound_rt.cli import main
from deepsound_rt.engine import Engine, EngineConfig
from deepsound_rt.export import ExportError, ExportManifest, export_preset
from deepsound_rt.export.manifest import MANIFEST_NAME
from deepsound_rt.models.detector import load_detector_module
from deepsound_rt.models.graphs import GENERATOR_GRAPHS, GENERATOR_SPECS, generator_graph_modules
from deepsound_rt.models.spec import default_graphs, graph_specs
from deepsound_rt.io.sample import sample_clip_path
from deepsound_rt.verify.export_parity import run_export_verify, verify_export
from deepsound_rt.weights_dir import WeightsSource

CPU = torch.device("cpu")
DEV_GRAPHS = default_graphs(WeightsSource.TINY_RANDOM)


def loader(export: Path | None, backend: str = "onnxruntime", preset: str = "dev", use_kernels: bool = False):
    return GraphLoader(backend, export, CPU, torch.float32, preset, use_kernels)


def test_cli_verify_export_passes(dev_export, capsys):
    assert main(["verify", "--export", str(dev_export)]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_cli_run_on_onnxruntime_gives_the_torch_waveform(dev_export, tmp_path, capsys):
    common = ["run", str(sample_clip_path()), "--preset", "dev", "--mode", "gen", "--num-steps", "4", "--seed", "3"]
    assert main([*common, "-o", str(tmp_path / "torch.wav"), "--backend", "torch"]) == 0
    assert main([*common, "-o", str(tmp_path / "ort.wav"), "--backend", "onnxruntime", "--export", str(dev_export)]) == 0
    assert "onnxruntime" in capsys.readouterr().out  # the timing table names each stage's backend
    on_torch, _ = soundfile.read(tmp_path / "torch.wav", dtype="float32")
    on_ort, _ = soundfile.read(tmp_path / "ort.wav", dtype="float32")
    np.testing.assert_allclose(on_ort, on_torch, atol=1e-4, rtol=0)


def test_cli_onnxruntime_without_an_export_is_a_user_error(tmp_path, capsys):
    code = main(["run", str(sample_clip_path()), "-o", str(tmp_path / "x.wav"), "--preset", "dev", "--mode", "gen",
                 "--backend", "onnxruntime"])
    assert code == 2 and "--export DIR" in capsys.readouterr().err


@pytest.fixture
def export_copy(dev_export, tmp_path) -> Path:
    """A copy to damage (the dev export is a few MB)."""
    return Path(shutil.copytree(dev_export, tmp_path / "copy"))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(preset="dev", num_steps=4))


def test_manifest_describes_every_graph(dev_export):
    manifest = ExportManifest.load(dev_export)
    assert manifest.preset == "dev" and manifest.duration_s == 8.0 and manifest.precision == "fp32"
    assert manifest.sequence_lengths == {"latent": 345, "clip": 64, "sync": 192} and manifest.opset >= 17
    assert manifest.source["weights_source"] == "tiny-random" and manifest.source["seed"] is not None
    assert list(manifest.graphs) == list(DEV_GRAPHS)
    for name, record in manifest.graphs.items():
        assert all((dev_export / file).is_file() for file in record.files), name
        assert record.onnx_file == f"{name}.onnx" and len(record.weights.sha256) == 64
        model = onnx.load(str(dev_export / record.onnx_file), load_external_data=False)
        assert [i.name for i in record.inputs] == [i.name for i in model.graph.input], name
        assert record.family == graph_specs()[name].family
        assert record.tensorrt_incompatibilities == [], (name, record.tensorrt_incompatibilities)
    clip = manifest.graphs["clip_image"]
    assert clip.inputs[0].shape == (1, "clip_frames", 3, 384, 384)
    assert (clip.dynamic_axes["clip_frames"].min, clip.dynamic_axes["clip_frames"].max) == (1, 64)
    velocity = manifest.graphs["flow_velocity"]
    assert [i.name for i in velocity.inputs][:3] == ["x", "t", "cfg_strength"] and velocity.dynamic_axes == {}
    assert all(isinstance(d, int) for spec in velocity.inputs for d in spec.shape)  # duration baked in


def test_every_graph_matches_torch_on_onnxruntime(dev_export, capsys):
    reports = verify_export(dev_export)
    assert [r.name for r in reports] == list(DEV_GRAPHS)
    assert all(r.passed for r in reports), [(r.name, r.max_abs, r.atol, r.error) for r in reports]
    assert run_export_verify(dev_export) == 0
    assert f"{len(DEV_GRAPHS)}/{len(DEV_GRAPHS)} graphs match torch" in capsys.readouterr().out


def test_an_engine_on_onnxruntime_gives_the_torch_waveform(engine, dev_export):
    torch_graphs = engine.graphs
    expected = engine.generate(sample_clip_path(), prompt="rain", duration=8.0, seed=3)
    engine.graphs = loader(dev_export).load(generator_graph_modules(engine.models))
    try:
        result = engine.generate(sample_clip_path(), prompt="rain", duration=8.0, seed=3)
    finally:
        engine.graphs = torch_graphs
    assert {t.backend for t in result.timings.stages if t.stage != "video decode"} == {"onnxruntime"}
    assert result.waveform.shape == expected.waveform.shape
    np.testing.assert_allclose(result.waveform, expected.waveform, atol=1e-4, rtol=0)


def test_every_network_of_every_step_runs_on_onnxruntime(dev_export):
    """Plan (MLLM vision + decoder), generation (seven graphs), the qa judge (MLLM vision, audio
    and decoder) and removal (separator core) of the dev export, with the timings naming the
    backend. Parity with torch is tested per stage in test_export_reasoning.py."""
    engine = Engine(EngineConfig(preset="dev", num_steps=2, backend="onnxruntime", export=dev_export))
    result = engine.run(sample_clip_path(), judge="qa", seed=3)
    assert [r.step for r in result.steps] == ["plan", "generate", "judge"]  # random weights: no voice-over
    generated = result.step("generate").details["timings"]
    assert {t.backend for t in generated.stages if t.stage != "video decode"} == {"onnxruntime"}
    assert {(t.stage, t.backend) for t in engine.reasoner.last_timings.stages} == {
        ("mllm_vision", "onnxruntime"), ("mllm_audio", "onnxruntime"), ("mllm_decoder", "onnxruntime")}
    instrumental, timings = engine.remove_voice_over(result.audio, result.sample_rate)
    assert instrumental.shape == result.audio.shape and np.isfinite(instrumental).all()
    assert [(t.stage, t.backend) for t in timings.stages] == [("separator", "onnxruntime")]


def test_the_detector_carries_its_state_the_same_way_on_both_backends(dev_export):
    from deepsound_rt.models.detector import CHUNK_SAMPLES, CONTEXT_SAMPLES, detector_example_inputs

    audio = detector_example_inputs(batch=1, seed=5)["chunk"].repeat(1, 12)  # ~0.4 s at 16 kHz
    results = []
    for backend in ("torch", "onnxruntime"):
        graph = loader(dev_export, backend).load({"detector": load_detector_module()})["detector"]
        state, context, probabilities = torch.zeros(2, 1, 128), torch.zeros(1, CONTEXT_SAMPLES), []
        for start in range(0, audio.shape[1] - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
            chunk = torch.cat([context, audio[:, start:start + CHUNK_SAMPLES]], dim=1)
            out = graph.run({"chunk": chunk, "state": state})
            state, context = out["next_state"], chunk[:, -CONTEXT_SAMPLES:]
            probabilities.append(out["speech_prob"])
        results.append(torch.cat(probabilities))
    assert len(results[0]) == 13
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=0)


def test_auto_mixes_backends_per_graph(engine, dev_export, export_copy):
    manifest = json.loads((export_copy / MANIFEST_NAME).read_text())
    del manifest["graphs"]["vae_decode"]
    (export_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    graphs = loader(export_copy, "auto", use_kernels=True).load(generator_graph_modules(engine.models))
    assert graphs["vae_decode"].backend == "torch"  # not exported
    kernel_graphs = tuple(name for name, spec in GENERATOR_SPECS.items() if spec.kernels)  # our kernels beat ORT there
    assert kernel_graphs == ("vocoder",) and graphs["vocoder"].backend == "torch"
    assert {graphs[n].backend for n in GENERATOR_GRAPHS if n not in kernel_graphs + ("vae_decode",)} == {"onnxruntime"}


def test_another_preset_or_duration_is_refused(engine, dev_export):
    modules = generator_graph_modules(engine.models)
    with pytest.raises(ExportError, match="preset 'dev', not 'small_16k'"):
        loader(dev_export, preset="small_16k").load(modules)
    graphs = loader(dev_export).load(modules)
    check_export_duration(graphs, "dev", 8.0)
    with pytest.raises(ExportError, match="--duration 5"):
        check_export_duration(graphs, "dev", 5.0)
    with pytest.raises(ExportError, match="8 s"):
        check_export_duration(graphs, "dev", 1.5)  # a clip shorter than the export's duration


def test_a_corrupt_graph_file_is_refused(engine, export_copy):
    data = export_copy / "flow_velocity.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    for check in (lambda: verify_export(export_copy),
                  lambda: loader(export_copy).load(generator_graph_modules(engine.models))):
        with pytest.raises(ExportError, match="flow_velocity.onnx.data does not match its manifest hash"):
            check()
    (export_copy / "vocoder.onnx").unlink()
    with pytest.raises(ExportError, match="lacks vocoder.onnx"):
        verify_export(export_copy, graphs=["vocoder"])


def test_an_export_of_other_weights_is_refused(engine, export_copy):
    manifest = json.loads((export_copy / MANIFEST_NAME).read_text())
    weights = manifest["graphs"]["vae_decode"]["weights"]
    weights["sha256"] = "0" * 64
    weights["buckets"] = [2 * b for b in weights["buckets"]]
    (export_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="stale"):
        verify_export(export_copy, graphs=["vae_decode"])
    with pytest.raises(ExportError, match="other weights"):
        loader(export_copy).load(generator_graph_modules(engine.models))


def test_a_missing_or_unreadable_manifest_is_refused(export_copy, tmp_path):
    (export_copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ExportError, match="corrupt"):
        verify_export(export_copy)
    (export_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ExportError, match="interrupted"):
        loader(export_copy).load({"detector": load_detector_module()})
    with pytest.raises(ExportError, match="not found"):
        verify_export(tmp_path / "nowhere")


def test_bad_export_requests_fail_before_any_work(tmp_path):
    with pytest.raises(ExportError, match="unknown preset"):
        export_preset("huge", tmp_path / "a")
    with pytest.raises(ExportError, match="fp32, bf16, fp16"):
        export_preset("dev", tmp_path / "a", dtype="int8")
    with pytest.raises(ExportError, match="too short"):
        export_preset("dev", tmp_path / "a", duration_s=0.3)
    with pytest.raises(ExportError, match="--weights"):
        export_preset("small_16k", tmp_path / "a")
    with pytest.raises(ExportError, match="unknown graphs"):
        export_preset("dev", tmp_path / "a", graphs=["separator"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="new or empty directory"):
        export_preset("dev", tmp_path / "b", graphs=["detector"])
    assert not (tmp_path / "a").exists()


def test_an_axis_the_code_fixes_is_refused_not_exported_static(tmp_path):
    from deepsound_rt.export.onnx import trace_to_onnx
    from deepsound_rt.models.spec import AxisRange, GraphSpec

    class FixesItsLength(torch.nn.Module):
        def forward(self, x):
            return x.reshape(1, 8, 2) * 2  # only valid for exactly 8 frames

    spec = GraphSpec("fixes_its_length", "test", ("x",), ("y",), lambda ctx: FixesItsLength(), lambda ctx, sizes: {},
                     dynamic_axes={"x": {1: "frames"}, "y": {1: "frames"}})
    with pytest.raises(ExportError, match="fixed axis 'frames' of input 'x' to 8"):
        trace_to_onnx(spec, FixesItsLength(), {"x": torch.ones(1, 8, 2)}, {"frames": AxisRange(1, 8, 16)},
                      tmp_path / "fixed.onnx")


def test_reexport_replaces_a_previous_export(export_copy):
    manifest = export_preset("dev", export_copy, graphs=["detector"])
    assert list(manifest.graphs) == ["detector"]
    assert sorted(p.name for p in export_copy.iterdir()) == ["detector.onnx", MANIFEST_NAME]


@pytest.mark.skipif(os.environ.get("DEEPSOUND_RT_SLOW") != "1", reason="full-size export: set DEEPSOUND_RT_SLOW=1")
def test_full_size_small_16k_exports_and_matches_torch(tmp_path):
    started = time.perf_counter()
    manifest = export_preset("small_16k", tmp_path / "small_16k", weights_source="full-random", graphs=GENERATOR_GRAPHS)
    export_s = time.perf_counter() - started
    sizes = {f.name: f.stat().st_size for f in (tmp_path / "small_16k").iterdir()}
    assert sizes["clip_image.onnx.data"] > 2**31  # over 2 GB: only possible with external data
    reports = verify_export(tmp_path / "small_16k")
    assert all(r.passed for r in reports), [(r.name, r.max_abs, r.atol, r.error) for r in reports]
    assert all(not r.tensorrt_incompatibilities for r in manifest.graphs.values())
    print(f"small_16k export {export_s:.0f} s, verify {time.perf_counter() - started - export_s:.0f} s, "
          f"{sum(sizes.values()) / 2**30:.2f} GiB")
