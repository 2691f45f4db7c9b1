"""The separator and MLLM graphs (``separator_core``, ``mllm_vision``, ``mllm_audio``,
``mllm_decoder``): exported once for the dev preset, then their manifest records, ONNX Runtime
parity, greedy decoding over the exported decoder's cache, the stages running them inside an
Engine, and refusal of a damaged or foreign export.

``DEEPSOUND_RT_SLOW=1`` adds the full-size separator (random weights).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deepsound_rt.backends.onnxruntime_backend import OnnxRuntimeBackend
from deepsound_rt.config import PRESETS
from deepsound_rt.engine import Engine, EngineConfig
from deepsound_rt.export import ExportError, ExportManifest, export_preset
from deepsound_rt.export.manifest import MANIFEST_NAME, sequence_lengths_for
from deepsound_rt.errors import WeightsError
from deepsound_rt.io.sample import sample_clip_path
from deepsound_rt.models.mllm import prompt
from deepsound_rt.models.mllm.decoding import DecodingSettings, generate
from deepsound_rt.models.mllm.graphs import CACHE_SLOTS, MLLM_GRAPHS, ExportedDecoder
from deepsound_rt.models.mllm.tiny import tiny_mllm
from deepsound_rt.models.spec import ExportContext, default_graphs, graph_spec
from deepsound_rt.verify.export_parity import verify_export
from deepsound_rt.weights_dir import DEV_SEED, WeightsSource

STEP_GRAPHS = ("separator_core", *MLLM_GRAPHS)

CLIP_S = 2.0  # the generator runs on torch in these tests: a short clip keeps them fast


@pytest.fixture(scope="module")
def step_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "dev_steps"
    export_preset("dev", out, graphs=STEP_GRAPHS)
    return out


@pytest.fixture
def export_copy(step_export, tmp_path) -> Path:
    return Path(shutil.copytree(step_export, tmp_path / "copy"))


def test_dev_exports_them_by_default_and_full_size_presets_on_request():
    always = default_graphs(WeightsSource.OFFICIAL)
    assert default_graphs(WeightsSource.TINY_RANDOM) == (*always, *STEP_GRAPHS)
    assert default_graphs(WeightsSource.FULL_RANDOM) == always and not set(always) & set(STEP_GRAPHS)


def test_manifest_records(step_export):
    manifest = ExportManifest.load(step_export)
    assert list(manifest.graphs) == list(STEP_GRAPHS)
    manifest.check_files(step_export)
    for name, record in manifest.graphs.items():
        assert record.family == graph_spec(name).family and len(record.weights.sha256) == 64
        assert list(record.files) == [f"{name}.onnx", f"{name}.onnx.data"]
        model = onnx.load(str(step_export / record.onnx_file), load_external_data=False)
        assert [i.name for i in record.inputs] == [i.name for i in model.graph.input], name
        assert record.tensorrt_incompatibilities == [], (name, record.tensorrt_incompatibilities)
    graphs = manifest.graphs
    core = graphs["separator_core"]
    assert core.inputs[0].shape == ("chunks", 2, 1025, "frames", 2)
    assert core.outputs[0].shape == ("chunks", 1, 2, 1025, "frames", 2)
    assert (core.dynamic_axes["frames"].opt, core.dynamic_axes["frames"].max) == (801, 801)  # one 8 s demix chunk
    assert graphs["mllm_vision"].inputs[0].shape == (16, 3, 384, 384) and graphs["mllm_vision"].dynamic_axes == {}
    assert graphs["mllm_vision"].outputs[0].shape == (1352, 64)
    assert graphs["mllm_audio"].inputs[0].shape == (1, 2998, 128)
    assert graphs["mllm_audio"].outputs[0].shape == (1496, 64)
    decoder = graphs["mllm_decoder"]
    assert [i.name for i in decoder.inputs] == ["inputs_embeds", "logit_positions", "past_key_0", "past_value_0",
                                                "past_key_1", "past_value_1"]
    assert [o.name for o in decoder.outputs][:2] == ["logits", "present_key_0"]
    assert decoder.inputs[0].shape == (1, "new_tokens", 64) and decoder.inputs[2].shape == (1, 2, "past_tokens", 16)
    assert decoder.outputs[0].shape == ("logit_rows", 400)
    assert set(decoder.dynamic_axes) == {"new_tokens", "past_tokens", "logit_rows"}
    assert all(axis.min >= 1 for axis in decoder.dynamic_axes.values())  # no empty tensors anywhere


def test_all_four_match_torch_on_onnxruntime(step_export):
    reports = verify_export(step_export)
    assert [r.name for r in reports] == list(STEP_GRAPHS)
    assert all(r.passed for r in reports), [(r.name, r.max_abs, r.atol, r.error) for r in reports]
    decoder = reports[-1]
    assert set(decoder.outputs) == {"prefill_logits", "step_logits"} and decoder.shapes["prefill_logits"][0] == 3


def test_greedy_decoding_over_the_exported_cache_equals_torch(step_export):
    """Plain greedy decoding and draft verification whose draft goes wrong after a few tokens (the
    cache is cropped back, then decoding goes on), on the exported decoder and on torch."""
    model, tokenizer = tiny_mllm(DEV_SEED)
    graph = OnnxRuntimeBackend().load("mllm_decoder", step_export / "mllm_decoder.onnx")
    exported = ExportedDecoder(model, graph)
    embeds = model.embed(torch.tensor([tokenizer.encode(prompt.render_chat(prompt.PLAN_QUESTION))]))
    settings = DecodingSettings(tokenizer.stop_ids, max_new_tokens=16)
    plain = generate(model, embeds, settings)
    draft = plain.tokens[:5] + [(plain.tokens[5] + 1) % tokenizer.vocab_size] + plain.tokens[6:10]
    for draft_tokens in ((), draft):
        on_torch = generate(model, embeds, settings, draft=draft_tokens)
        on_graph = generate(exported, embeds, settings, draft=draft_tokens)
        assert on_graph.tokens == on_torch.tokens == plain.tokens
        assert on_graph.decode_steps == on_torch.decode_steps
    cache = exported.new_cache()
    exported.logits(embeds, cache, 2)
    assert cache.get_seq_length() == embeds.shape[1] and cache.tensors[0].shape[2] == embeds.shape[1] + CACHE_SLOTS
    cache.crop(-3)
    assert cache.get_seq_length() == embeds.shape[1] - 3


@pytest.fixture(scope="module")
def runs(step_export) -> dict[str, tuple[Engine, object]]:
    """DeepSound's steps with the qa judge, on torch and with the export (its four graphs on ONNX
    Runtime; the generator, which it lacks, on torch)."""
    results = {}
    for backend, export in (("torch", None), ("auto", step_export)):
        engine = Engine(EngineConfig(preset="dev", num_steps=2, backend=backend, export=export))
        results[backend] = engine, engine.run(sample_clip_path(), judge="qa", duration=CLIP_S, seed=3)
    return results


def test_an_engine_runs_the_mllm_on_onnxruntime_with_the_torch_decisions(runs):
    (torch_engine, expected), (engine, result) = runs["torch"], runs["auto"]
    assert [(r.step, r.decision) for r in result.steps] == [(r.step, r.decision) for r in expected.steps]
    assert [r.step for r in result.steps] == ["plan", "generate", "judge"]  # random weights: no voice-over
    def decisions(step: str, run) -> dict:
        return {k: v for k, v in run.step(step).details.items() if k != "timings"}

    assert decisions("plan", result) == decisions("plan", expected)
    assert decisions("judge", result) == decisions("judge", expected)  # the same answer text
    assert {t.backend for t in result.step("judge").details["timings"].stages} == {"onnxruntime"}
    np.testing.assert_array_equal(result.audio, expected.audio)
    on_graphs = {(t.stage, t.backend) for t in engine.reasoner.last_timings.stages}  # the judge's call
    assert on_graphs == {("mllm_vision", "onnxruntime"), ("mllm_audio", "onnxruntime"), ("mllm_decoder", "onnxruntime")}
    assert {t.backend for t in torch_engine.reasoner.last_timings.stages} == {"torch"}


def test_an_engine_removes_vocals_on_onnxruntime_like_torch(runs):
    (torch_engine, expected), (engine, _) = runs["torch"], runs["auto"]
    audio = expected.step("generate").audio
    reference, _ = torch_engine.remove_voice_over(audio, expected.sample_rate)
    instrumental, timings = engine.remove_voice_over(audio, expected.sample_rate)
    assert [(t.stage, t.backend) for t in timings.stages] == [("separator", "onnxruntime")]
    assert torch_engine.separator.backend == "torch"
    assert instrumental.shape == reference.shape == audio.shape
    np.testing.assert_allclose(instrumental, reference, atol=1e-5, rtol=0)


def test_a_damaged_graph_file_is_refused(export_copy):
    data = export_copy / "mllm_decoder.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ExportError, match="mllm_decoder.onnx.data does not match its manifest hash"):
        verify_export(export_copy, graphs=["mllm_decoder"])
    # Every graph file of the export is checked when the Engine first reads the manifest, the
    # graphs this run would load later (the MLLM's) included: refused before any work.
    with pytest.raises(ExportError, match="mllm_decoder.onnx.data does not match its manifest hash"):
        Engine(EngineConfig(preset="dev", backend="auto", export=export_copy))


def test_an_export_of_other_weights_is_refused(export_copy):
    manifest = json.loads((export_copy / MANIFEST_NAME).read_text())
    weights = manifest["graphs"]["separator_core"]["weights"]
    weights["sha256"] = "0" * 64
    weights["buckets"] = [2 * b for b in weights["buckets"]]
    (export_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="stale"):
        verify_export(export_copy, graphs=["separator_core"])
    with pytest.raises(ExportError, match="other weights"):
        Engine(EngineConfig(preset="dev", backend="auto", export=export_copy)).separator  # noqa: B018


def test_the_mllm_exports_from_random_weights_only(tmp_path):
    ctx = ExportContext(PRESETS["small_16k"], 8.0, sequence_lengths_for("small_16k", 8.0), WeightsSource.OFFICIAL,
                        weights=tmp_path)
    with pytest.raises(WeightsError, match="random weights only"):
        ctx.module(graph_spec("mllm_vision"))


@pytest.mark.skipif(os.environ.get("DEEPSOUND_RT_SLOW") != "1", reason="full-size export: set DEEPSOUND_RT_SLOW=1")
def test_full_size_separator_core_exports_and_matches_torch(tmp_path):
    manifest = export_preset("large_44k_v2", tmp_path / "separator", weights_source="full-random",
                             graphs=["separator_core"])
    assert manifest.graphs["separator_core"].tensorrt_incompatibilities == []
    reports = verify_export(tmp_path / "separator")
    assert all(r.passed for r in reports), [(r.name, r.max_abs, r.atol, r.error) for r in reports]
