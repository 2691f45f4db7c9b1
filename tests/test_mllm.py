"""The VideoLLaMA2-AV MLLM: goldens and manifests, DeepSound's prompts and parsing rules, the
decoding shortcuts (each must give exactly what plain greedy decoding gives), the loader and the
reasoning stage."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import SiglipVisionModel

from deepsound_rt.errors import WeightsError
from deepsound_rt.models.mllm import decoding, prompt, vision
from deepsound_rt.models.mllm.decoding import DecodingSettings, generate
from deepsound_rt.models.mllm.prompt import CANONICAL_PLAN_STEPS, CANONICAL_PLAN_TEXT, IM_END
from deepsound_rt.models.mllm.quantize import llm_linears, quantize_llm_int8
from deepsound_rt.models.mllm.static_cache import StaticCacheDecoder
from deepsound_rt.models.mllm.tiny import tiny_config_json, tiny_mllm
from deepsound_rt.stages.reason import MLLMReasoner, to_16k_mono
from deepsound_rt.verify import check_golden
from deepsound_rt.verify.mllm import MANIFESTS, RUNNERS

SAMPLE_VIDEO = Path(__file__).resolve().parents[1] / "deepsound_rt" / "assets" / "sample.mp4"
COT_ANSWER = "<REASONING> The audio has a person speaking over the scene. </REASONING>\n<CONCLUSION> A </CONCLUSION>"


# --- goldens and manifests ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(RUNNERS))
def test_goldens_pass(goldens_dir: Path, kind: str) -> None:
    paths = [p for p in sorted(goldens_dir.glob("*.json")) if json.loads(p.read_text()).get("kind") == kind]
    assert paths, f"no golden of kind {kind}"
    for path in paths:
        report = check_golden(path, RUNNERS)
        assert report.error is None, report.error
        failing = [(c.tensor, c.max_abs, c.atol) for c in report.comparisons if not c.passed]
        assert report.passed, failing


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_matches_key_for_key(manifests_dir: Path, name: str) -> None:
    manifest = json.loads((manifests_dir / f"{name}.json").read_text())
    expected = {k: tuple(v) for k, v in manifest.items() if not k.startswith("_")}
    assert MANIFESTS[name]() == expected


# --- prompts and parsing -------------------------------------------------------------------------


def test_plan_parsing_follows_upstream_and_survives_its_crashes() -> None:
    full = prompt.parse_plan(CANONICAL_PLAN_TEXT)
    assert full.steps == CANONICAL_PLAN_STEPS and not full.defaulted
    # Upstream cuts each step at its first newline, so trailing commentary is ignored.
    chatty = prompt.parse_plan(CANONICAL_PLAN_TEXT.replace("\n", "\nbecause reasons\n"))
    assert chatty.steps == CANONICAL_PLAN_STEPS and not chatty.defaulted
    # No Step4: upstream crashes (KeyError 'is_silent'); ours keeps the three steps.
    three = prompt.parse_plan("\n".join(list(CANONICAL_PLAN_STEPS.values())[:3]))
    assert three.steps == {n: CANONICAL_PLAN_STEPS[n] for n in (1, 2, 3)} and not three.defaulted
    for garbled in ("", "I cannot do that.", "Step1: Make some noise.", CANONICAL_PLAN_TEXT.replace("Step2", "Step5"),
                    "\n".join([CANONICAL_PLAN_STEPS[1], CANONICAL_PLAN_STEPS[3]])):
        result = prompt.parse_plan(garbled)
        assert result.defaulted and result.steps == CANONICAL_PLAN_STEPS and result.text == garbled


def test_answer_parsing() -> None:
    assert prompt.parse_qa_answer(" A\n") and not prompt.parse_qa_answer("A.") and not prompt.parse_qa_answer("B")
    assert prompt.parse_cot_answer("<SUMMARY>x</SUMMARY><CONCLUSION> A </CONCLUSION>")
    assert not prompt.parse_cot_answer("<CONCLUSION> B </CONCLUSION>")
    assert not prompt.parse_cot_answer("<CONCLUSION>")  # upstream: IndexError
    assert prompt.cot_answer_letter("no tag") == "o"  # upstream reads the whole response then


# --- decoding: shortcuts against plain greedy ----------------------------------------------------


@pytest.fixture(scope="module")
def taught():
    """A tiny model taught (a few dozen Adam steps) to answer four prompts: the canonical plan,
    ``A``, ``B`` and a chain of thought ending in ``<CONCLUSION> A``."""
    model, tokenizer = tiny_mllm(seed=1)
    media = torch.randn(8, model.config.llm.hidden_size, generator=torch.Generator().manual_seed(0))
    eos = tokenizer.tokenizer.token_to_id(IM_END)
    questions = {
        "plan": (prompt.PLAN_QUESTION, CANONICAL_PLAN_TEXT),
        "qa_yes": (prompt.VOICE_OVER_QUESTION, "A"),
        "qa_no": (prompt.VOICE_OVER_QUESTION + " Now.", "B"),
        "cot": (prompt.VOICE_OVER_QUESTION + " Explain.", COT_ANSWER),
    }
    prompts, targets = {}, {}
    for name, (question, answer) in questions.items():
        ids = prompt.prompt_ids(question, tokenizer)
        with torch.no_grad():
            prompts[name], _ = model.splice(torch.tensor(ids.before), torch.tensor(ids.after), media)
        targets[name] = tokenizer.encode(answer) + [eos]

    def teacher_forced_logits(name: str) -> torch.Tensor:
        target = targets[name]
        inputs = torch.cat([prompts[name], model.embed(torch.tensor([target[:-1]]))], dim=1)
        return model.lm_head(model.model(inputs_embeds=inputs, use_cache=False).last_hidden_state[0, -len(target):])

    params = [p for n, p in model.named_parameters() if not n.startswith(("model.mm_projector", "model.audio_tower"))]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        for step in range(400):
            optimizer.zero_grad()
            sum(nn.functional.cross_entropy(teacher_forced_logits(n), torch.tensor(targets[n])) for n in targets).backward()
            optimizer.step()
            if step % 10 == 9 and all(teacher_forced_logits(n).argmax(-1).tolist() == targets[n] for n in targets):
                break
        for p in params:
            p.requires_grad_(False)
    assert all(teacher_forced_logits(n).argmax(-1).tolist() == targets[n] for n in targets), "teaching failed"
    return model, tokenizer, prompts, targets


def _settings(tokenizer, penalty: float = 1.0, max_new_tokens: int = 160) -> DecodingSettings:
    return DecodingSettings(tokenizer.stop_ids, max_new_tokens=max_new_tokens, repetition_penalty=penalty)


def _count_passes(model, monkeypatch) -> list[int]:
    passes: list[int] = []
    original = model.logits
    monkeypatch.setattr(model, "logits", lambda *a, **k: passes.append(1) or original(*a, **k))
    return passes


@pytest.mark.parametrize("penalty", [1.0, 1.05])
def test_plan_fast_path_equals_greedy(taught, penalty: float, monkeypatch) -> None:
    model, tokenizer, prompts, targets = taught
    settings = _settings(tokenizer, penalty)
    plain = generate(model, prompts["plan"], settings)
    assert plain.tokens == targets["plan"]
    passes = _count_passes(model, monkeypatch)
    fast = generate(model, prompts["plan"], settings, draft=tokenizer.encode(CANONICAL_PLAN_TEXT))
    assert fast.tokens == plain.tokens and fast.fast_path and len(passes) == 1
    result = decoding.plan(model, tokenizer, prompts["plan"], settings)
    assert result.fast_path and not result.defaulted and result.steps == CANONICAL_PLAN_STEPS


def test_plan_fast_path_falls_back_to_greedy(taught) -> None:
    model, tokenizer, prompts, targets = taught
    settings = _settings(tokenizer)
    wrong_plan = CANONICAL_PLAN_TEXT.replace("Remove voice-over", "Remove the voice-over")
    fallback = generate(model, prompts["plan"], settings, draft=tokenizer.encode(wrong_plan))
    assert fallback.tokens == targets["plan"] and not fallback.fast_path
    # A plan the model would not write at all, and a draft that runs on past the answer.
    for name in ("qa_yes", "cot"):
        plain = generate(model, prompts[name], settings)
        drafted = generate(model, prompts[name], settings, draft=tokenizer.encode(CANONICAL_PLAN_TEXT))
        assert drafted.tokens == plain.tokens == targets[name]


def test_fast_path_on_a_random_model_equals_greedy() -> None:
    model, tokenizer = tiny_mllm(seed=2)
    embeds = model.embed(torch.tensor([tokenizer.encode(prompt.render_chat(prompt.PLAN_QUESTION))]))
    for penalty in (1.0, 1.3):
        settings = _settings(tokenizer, penalty, max_new_tokens=24)
        plain = generate(model, embeds, settings)
        drafted = generate(model, embeds, settings, draft=tokenizer.encode(CANONICAL_PLAN_TEXT))
        assert drafted.tokens == plain.tokens and len(plain.tokens) == 24


@pytest.mark.parametrize("name, voice_over", [("qa_yes", True), ("qa_no", False)])
def test_qa_judge_answers_in_one_pass_like_greedy(taught, name: str, voice_over: bool, monkeypatch) -> None:
    model, tokenizer, prompts, _ = taught
    settings = _settings(tokenizer)
    plain_text = tokenizer.response_text(generate(model, prompts[name], settings).tokens)
    passes = _count_passes(model, monkeypatch)
    result = decoding.judge_qa(model, tokenizer, prompts[name], settings)
    assert len(passes) == 1
    assert result.text == plain_text and result.voice_over is voice_over is prompt.parse_qa_answer(plain_text)


@pytest.mark.parametrize("forced, passes_expected", [("A", 1), (" ", 12)])
def test_qa_judge_with_perturbed_logits_still_equals_greedy(taught, forced, passes_expected, monkeypatch, request) -> None:
    """A logit bias makes the model babble ``AAAA`` (settled as "not A" in the same single pass)
    or blanks (never settled: the judge decodes on, as greedy does, to max_new_tokens)."""
    model, tokenizer, prompts, _ = taught
    settings = _settings(tokenizer, max_new_tokens=12)
    (forced_id,) = tokenizer.encode(forced)
    bias = torch.zeros(model.lm_head.out_features)
    bias[forced_id] = 1e3
    hook = model.lm_head.register_forward_hook(lambda _module, _inputs, logits: logits + bias)
    request.addfinalizer(hook.remove)
    plain_text = tokenizer.response_text(generate(model, prompts["qa_yes"], settings).tokens)
    passes = _count_passes(model, monkeypatch)
    result = decoding.judge_qa(model, tokenizer, prompts["qa_yes"], settings)
    assert len(passes) == passes_expected
    assert result.voice_over is prompt.parse_qa_answer(plain_text) is False
    assert plain_text.startswith(result.text)


def test_cot_judge_stops_after_conclusion_letter(taught) -> None:
    model, tokenizer, prompts, targets = taught
    settings = _settings(tokenizer)
    full_text = tokenizer.response_text(generate(model, prompts["cot"], settings).tokens)
    assert full_text == COT_ANSWER
    result = decoding.judge_cot(model, tokenizer, prompts["cot"], settings)
    assert result.text == COT_ANSWER[: COT_ANSWER.index("<CONCLUSION>") + len("<CONCLUSION> A")]
    assert result.voice_over is prompt.parse_cot_answer(full_text) is True


def test_static_cache_decoder_takes_the_same_shortcuts(taught) -> None:
    """The plan's one-prefill fast path and its fall-back, the qa judge's one pass and the cot
    judge's stop after the conclusion letter give through the static-cache decoder (issue 17's
    decoding lever) exactly what they give through the dynamic cache."""
    model, tokenizer, prompts, targets = taught
    static = StaticCacheDecoder(model, tokens_per_sync=3)
    settings = _settings(tokenizer, penalty=1.05)
    with torch.inference_mode():
        plan = decoding.plan(static, tokenizer, prompts["plan"], settings)
        assert plan.fast_path and plan.steps == CANONICAL_PLAN_STEPS
        wrong_plan = tokenizer.encode(CANONICAL_PLAN_TEXT.replace("Remove voice-over", "Remove the voice-over"))
        fallback = generate(static, prompts["plan"], settings, draft=wrong_plan)
        assert fallback.tokens == targets["plan"] and not fallback.fast_path
        for name in ("qa_yes", "qa_no"):
            assert decoding.judge_qa(static, tokenizer, prompts[name], settings) == \
                decoding.judge_qa(model, tokenizer, prompts[name], settings)
        cot = decoding.judge_cot(static, tokenizer, prompts["cot"], settings)
        assert cot == decoding.judge_cot(model, tokenizer, prompts["cot"], settings) and cot.voice_over


# --- loading -------------------------------------------------------------------------------------


def _write_dirs(root: Path, model, tokenizer, drop: tuple[str, ...] = (), add: dict | None = None) -> tuple[Path, Path]:
    """HF-style directories for a tiny model: the LLM in two shards + index (the shared BEATs bias
    stored once, as safetensors does), and a SiglipModel-style vision checkpoint."""
    llm_dir, siglip_dir = root / "llm", root / "siglip"
    llm_dir.mkdir()
    siglip_dir.mkdir()
    state = {k: v.clone() for k, v in model.state_dict().items() if "layers.0.self_attn.relative_attention_bias" in k
             or "relative_attention_bias" not in k}
    state = {k: v for k, v in state.items() if k not in drop} | (add or {})
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    for file, names in shards.items():
        save_file({k: state[k] for k in names}, str(llm_dir / file))
    weight_map = {k: file for file, names in shards.items() for k in names}
    (llm_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (llm_dir / "config.json").write_text(json.dumps(tiny_config_json(tokenizer.vocab_size)))
    tokenizer.tokenizer.save(str(llm_dir / "tokenizer.json"))
    (llm_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": IM_END, "chat_template": tokenizer.chat_template}))
    (llm_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0], "repetition_penalty": 1.05}))
    vision_config = vision.siglip_tiny_config().to_dict()
    (siglip_dir / "config.json").write_text(json.dumps({"model_type": "siglip", "vision_config": vision_config}))
    tower_state = {vision.CHECKPOINT_PREFIX + k: v.clone() for k, v in model.vision_tower.state_dict().items()}
    save_file(tower_state | {"logit_scale": torch.ones(1)}, str(siglip_dir / "model.safetensors"))
    return llm_dir, siglip_dir


def test_loader_reads_shards_tokenizer_and_generation_config(tmp_path: Path) -> None:
    model, tokenizer = tiny_mllm(seed=3)
    llm_dir, siglip_dir = _write_dirs(tmp_path, model, tokenizer)
    reasoner = MLLMReasoner.from_dirs(llm_dir, siglip_dir, dtype=torch.float32)
    loaded = reasoner.model
    assert not any(p.is_meta for p in [*loaded.parameters(), *loaded.vision_tower.parameters()])
    assert reasoner.settings.repetition_penalty == 1.05 and reasoner.settings.stop_ids == {0, 2}
    pixels = torch.rand(4, 3, 384, 384) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(loaded.encode_video(pixels), model.encode_video(pixels))
        embeds = model.embed(torch.tensor([tokenizer.encode(CANONICAL_PLAN_TEXT)]))
        cache_a, cache_b = decoding.new_cache(model), decoding.new_cache(loaded)
        assert torch.equal(loaded.logits(embeds, cache_b, 5), model.logits(embeds, cache_a, 5))
    shared = [m.self_attn.relative_attention_bias for m in loaded.model.audio_tower.encoder.layers]
    assert all(s is shared[0] for s in shared)
    assert reasoner.tokenizer.encode(CANONICAL_PLAN_TEXT) == tokenizer.encode(CANONICAL_PLAN_TEXT)


@pytest.mark.parametrize("drop, add, named", [
    (("model.layers.1.mlp.up_proj.weight",), None, "model.layers.1.mlp.up_proj.weight"),
    ((), {"model.mm_projector.extra.weight": torch.zeros(2)}, "model.mm_projector.extra.weight"),
    ((), {"lm_head.weight": torch.zeros(3, 64)}, "lm_head.weight"),
])
def test_loader_errors_name_the_keys(tmp_path: Path, drop, add, named: str) -> None:
    model, tokenizer = tiny_mllm(seed=3)
    llm_dir, siglip_dir = _write_dirs(tmp_path, model, tokenizer, drop=drop, add=add)
    with pytest.raises(WeightsError, match=named.replace(".", r"\.")):
        MLLMReasoner.from_dirs(llm_dir, siglip_dir, dtype=torch.float32)


# --- video, audio and the stage ------------------------------------------------------------------


def test_frame_sampling_and_preprocessing_match_upstream() -> None:
    assert vision.uniform_frame_indices(212) == [7, 20, 33, 46, 59, 73, 86, 99, 112, 125, 138, 152, 165, 178, 191, 204]
    assert vision.uniform_frame_indices(1) == [0] * 16
    with av.open(str(SAMPLE_VIDEO)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    frames = vision.read_sampled_frames(SAMPLE_VIDEO)
    assert np.array_equal(frames, decoded[vision.uniform_frame_indices(len(decoded))])
    # The step-1 video holds the frames shown up to the duration (25 fps: frames 0..50 for 2 s).
    short = vision.read_sampled_frames(SAMPLE_VIDEO, until_s=2.0)
    assert np.array_equal(short, decoded[vision.uniform_frame_indices(51)])
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    reference = SiglipImageProcessorPil(size={"height": 384, "width": 384})
    expected = reference([Image.fromarray(f) for f in frames[:2]], return_tensors="pt")["pixel_values"]
    assert torch.equal(vision.preprocess_frames(frames[:2]), expected)


def test_patch_features_are_the_second_to_last_hidden_state() -> None:
    torch.manual_seed(0)
    tower = SiglipVisionModel(vision.siglip_tiny_config()).eval()
    pixels = torch.rand(2, 3, 384, 384) * 2 - 1
    with torch.inference_mode():
        expected = tower(pixels, output_hidden_states=True).hidden_states[-2]
        assert torch.allclose(vision.patch_features(tower, pixels), expected, atol=1e-6)


def test_audio_conversion_to_16k_mono() -> None:
    tone = np.sin(np.arange(44100) / 44100 * 2 * np.pi * 440).astype(np.float32) * 0.5
    mono = to_16k_mono(tone, 44100)
    assert mono.shape == (16000,) and abs(float(mono.abs().max()) - 0.5) < 0.02
    assert torch.equal(mono * 32768, (mono * 32768).round())  # s16 samples, as ffmpeg gives
    stereo = to_16k_mono(np.stack([tone, tone]), 44100)
    assert torch.allclose(stereo, mono, atol=2 / 32768)


def test_reasoner_stage_on_the_sample_video() -> None:
    reasoner = MLLMReasoner.random(seed=0, max_new_tokens=8)
    plan = reasoner.plan(SAMPLE_VIDEO)
    assert plan.defaulted and plan.steps == CANONICAL_PLAN_STEPS and not plan.fast_path
    audio = np.random.default_rng(0).standard_normal(2 * 44100).astype(np.float32) * 0.1
    for mode in ("qa", "cot"):
        answer = reasoner.judge_voice_over(SAMPLE_VIDEO, audio, 44100, mode=mode, duration_s=4.0)
        assert isinstance(answer.voice_over, bool) and isinstance(answer.text, str)
    with pytest.raises(ValueError):
        reasoner.judge_voice_over(SAMPLE_VIDEO, audio, 44100, mode="vad")


# --- int8 language-model weights -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_weights_are_per_output_channel_within_half_a_step(dtype) -> None:
    """Every weight within half its row's step max|w_i| / 127.5 (computed here in float64), every
    row reaching the int8 extremes (so the step is per channel, not per tensor), the rest of the
    model untouched. bf16 weights are where a step rounded to bf16 would overshoot the clamp."""
    model, _ = tiny_mllm(seed=3, dtype=dtype)
    linears = dict(llm_linears(model))
    before = {name: linear.weight.detach().double() for name, linear in linears.items()}
    others = {k: v.clone() for k, v in model.state_dict().items() if k.removesuffix(".weight") not in linears}
    tower = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
    quantize_llm_int8(model)
    assert set(before) == {name for name, _ in llm_linears(model)} and len(before) == 2 * 7  # 2 layers
    for name, linear in llm_linears(model):
        weight, original = linear.weight, before[name]
        assert weight.qdata.dtype == torch.int8 and weight.shape == original.shape and weight.dtype == dtype
        step = original.abs().amax(dim=1, keepdim=True) / 127.5
        assert ((_dequantized(weight) - original).abs() <= step * (0.5 + 2e-5)).all(), name
        assert set(weight.qdata.int().abs().amax(dim=1).tolist()) <= {127, 128}, name
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in others.items())
    assert all(torch.equal(model.vision_tower.state_dict()[k], v) for k, v in tower.items())


def test_int8_layers_stay_within_half_a_step_times_the_input_norm() -> None:
    """On the real judge prompt (the sample video, 1352 video and 1496 audio tokens, then decoding;
    the plan's prompt is its video part): every int8 layer's output is the float64 product with
    its int8 weights (up to float32 rounding), and within (step_i / 2) · ‖x‖₁ of the
    full-precision layer's, the stated bound. The greedy answer, hence the judge's decision, is the
    full-precision model's (the taught plan and decisions: the next test)."""
    reference = MLLMReasoner.random(seed=5, max_new_tokens=8)
    quantized = MLLMReasoner.random(seed=5, max_new_tokens=8)
    weights = {name: linear.weight.detach().double() for name, linear in llm_linears(reference.model)}
    quantize_llm_int8(quantized.model)
    calls = []
    hooks = [linear.register_forward_hook(lambda _m, inputs, output, name=name: calls.append((name, inputs[0], output)))
             for name, linear in llm_linears(quantized.model)]
    audio = np.random.default_rng(0).standard_normal(2 * 44100).astype(np.float32) * 0.1
    try:
        judge = quantized.judge_voice_over(SAMPLE_VIDEO, audio, 44100, mode="qa", duration_s=2.0)
    finally:
        for hook in hooks:
            hook.remove()
    assert {name for name, _, _ in calls} == set(weights)
    for name, x, y in calls:
        x, y = x.double().reshape(-1, x.shape[-1]), y.double().reshape(-1, y.shape[-1])
        original, dequantized = weights[name], _dequantized(dict(llm_linears(quantized.model))[name].weight)
        rounding = 1e-5 * (x.abs() @ original.abs().T) + 1e-30
        assert ((y - x @ dequantized.T).abs() <= rounding).all(), name
        step = original.abs().amax(dim=1) / 127.5
        assert ((y - x @ original.T).abs() <= step / 2 * x.abs().sum(dim=1, keepdim=True) + rounding).all(), name
    assert judge == reference.judge_voice_over(SAMPLE_VIDEO, audio, 44100, mode="qa", duration_s=2.0)


def _dequantized(weight) -> torch.Tensor:
    """int8 values times their row's step, in float64 (symmetric: the zero points are 0)."""
    assert not weight.zero_point.any()
    return weight.qdata.double() * weight.scale.double()


def test_int8_keeps_the_taught_answers(taught) -> None:
    """The judge's A/B decisions and the plan of a model taught to give them do not flip."""
    model, tokenizer, prompts, targets = taught
    quantized = copy.deepcopy(model)
    quantize_llm_int8(quantized)
    settings = _settings(tokenizer)
    for name in targets:
        assert generate(quantized, prompts[name], settings).tokens == targets[name], name
    assert decoding.judge_qa(quantized, tokenizer, prompts["qa_yes"], settings).voice_over is True
    assert decoding.judge_qa(quantized, tokenizer, prompts["qa_no"], settings).voice_over is False
    assert decoding.judge_cot(quantized, tokenizer, prompts["cot"], settings).voice_over is True
