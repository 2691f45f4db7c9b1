"""The speed levers of issue 17, each against the plain path it replaces: the static-cache decoder
against transformers' dynamic cache (greedy tokens), compiled against eager values, FP8 against a
float64 restatement of its rounding, bf16 encoders against their float32 selves, and the
overlapped steps against the serial order (bit for bit on a CPU). Timings live in benchmarks/.

Tests marked ``cuda`` run on a GPU only (``benchmarks/gpu_bench.sh`` runs this file there).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from transformers import Qwen2Config, SiglipVisionModel

from deepsound_rt import pipeline
from deepsound_rt.backends import fp8
from deepsound_rt.backends.compiled import CompiledTorchGraph
from deepsound_rt.backends.cuda_graphs import CudaGraphTorchGraph
from deepsound_rt.engine import Engine, EngineConfig
from deepsound_rt.errors import InputError
from deepsound_rt.io.sample import make_test_video, sample_clip_path
from deepsound_rt.io.video import VideoStream, load_video
from deepsound_rt.models.bs_roformer import BSROFORMER_TINY, BSROFORMER_VIPERX_317, BSRoformer
from deepsound_rt.models.bs_roformer_graph import SEPARATOR_CORE_SPEC
from deepsound_rt.models.clip import CLIP_DFN5B_H14_384, CLIP_TINY, ClipEncoder
from deepsound_rt.models.mllm import prompt
from deepsound_rt.models.mllm.beats import BEATS_TINY, BEATs, BEATsConfig
from deepsound_rt.models.mllm.decoding import DecodingSettings, generate
from deepsound_rt.models.mllm.static_cache import StaticCacheDecoder
from deepsound_rt.models.mllm.stc import STCConfig
from deepsound_rt.models.mllm.tiny import tiny_config_json, tiny_mllm
from deepsound_rt.models.mllm.videollama2 import VIDEOLLAMA2_1_7B_AV, VideoLLaMA2AV, VideoLLaMA2Config
from deepsound_rt.models.mllm.vision import patch_features, siglip_so400m_config, siglip_tiny_config
from deepsound_rt.models.mmaudio.layers import ChannelLastConv1d
from deepsound_rt.stages import features
from deepsound_rt.timing import Timings

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# --- 1. static KV cache and fixed-shape greedy steps ------------------------------------------


def _plan_prompt(model, tokenizer) -> torch.Tensor:
    ids = tokenizer.encode(prompt.render_chat(prompt.PLAN_QUESTION))
    return model.embed(torch.tensor([ids], device=model.device))


@pytest.mark.parametrize("penalty, tokens_per_sync", [(1.0, 1), (1.3, 5)])
def test_static_cache_gives_the_greedy_tokens_of_the_dynamic_cache(penalty: float, tokens_per_sync: int) -> None:
    """Plain and drafted (the draft is cut back at the first token) decoding, from a cache too
    small for the prompt (grown on the way), with stops checked every token or every 5."""
    model, tokenizer = tiny_mllm(seed=2)
    embeds = _plan_prompt(model, tokenizer)
    settings = DecodingSettings(tokenizer.stop_ids, max_new_tokens=23, repetition_penalty=penalty)
    with torch.inference_mode():
        plain = generate(model, embeds, settings)
        for draft in ((), tokenizer.encode(prompt.CANONICAL_PLAN_TEXT)):
            static = StaticCacheDecoder(model, capacity=16, tokens_per_sync=tokens_per_sync)
            fast = generate(static, embeds, settings, draft=draft)
            assert fast.tokens == plain.tokens and len(fast.tokens) == 23
            assert fast.decode_steps == plain.decode_steps == 22 and fast.stop_reason == "max_new_tokens"
            assert static.cache.capacity >= embeds.shape[1] + 23 and static.cache.length == embeds.shape[1] + 22


def test_static_cache_stops_where_greedy_stops() -> None:
    """A stop token and a stop condition met mid-way through a run of unsynchronised steps: the
    steps beyond are discarded."""
    model, tokenizer = tiny_mllm(seed=2)
    embeds = _plan_prompt(model, tokenizer)
    with torch.inference_mode():
        reference = generate(model, embeds, DecodingSettings(frozenset(), max_new_tokens=12)).tokens
        static = StaticCacheDecoder(model, tokens_per_sync=8)
        stop = DecodingSettings(frozenset({reference[6]}), max_new_tokens=12)
        stopped = generate(static, embeds, stop)
        assert stopped.tokens == reference[: reference.index(reference[6]) + 1] and stopped.stop_reason == "stop_token"
        settings = DecodingSettings(frozenset(), max_new_tokens=12)
        conditioned = generate(static, embeds, settings, stop_when=lambda tokens: len(tokens) == 4)
        assert conditioned.tokens == reference[:4] and conditioned.stop_reason == "condition"


def _geometry_model(seed: int) -> VideoLLaMA2AV:
    """VideoLLaMA2.1-7B-AV's LLM geometry per layer (28 query and 4 kv heads of 128, the 152,064
    vocabulary) at a width of 224 and a depth of 2 (the layers are alike), with the tiny media towers."""
    full = VIDEOLLAMA2_1_7B_AV
    llm = Qwen2Config(**{k: full[k] for k in ("vocab_size", "num_attention_heads", "num_key_value_heads",
                                               "rms_norm_eps", "rope_theta")},
                      num_hidden_layers=2, hidden_size=224, intermediate_size=448, head_dim=128,
                      tie_word_embeddings=False)
    tiny = tiny_config_json(400)
    config = VideoLLaMA2Config(llm=llm, stc=STCConfig.from_dict(tiny | {"hidden_size": 224}), beats=BEATS_TINY,
                               audio_llm_width=224)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VideoLLaMA2AV(config)
    model.rebuild_nonpersistent_buffers(torch.device("cpu"))
    return model.eval()


def test_static_cache_on_the_full_size_geometry() -> None:
    model = _geometry_model(seed=5)
    assert model.model.layers[0].self_attn.head_dim == 128 and model.lm_head.out_features == 152064
    embeds = torch.randn(1, 24, 224, generator=torch.Generator().manual_seed(0))
    settings = DecodingSettings(frozenset(), max_new_tokens=8, repetition_penalty=1.3)
    with torch.inference_mode():
        plain = generate(model, embeds, settings)
        fast = generate(StaticCacheDecoder(model, capacity=64), embeds, settings)
    assert fast.tokens == plain.tokens and len(set(plain.tokens)) > 2


@cuda
def test_static_cache_cuda_graph_gives_the_greedy_tokens() -> None:
    model, tokenizer = tiny_mllm(seed=2, device="cuda")
    embeds = _plan_prompt(model, tokenizer)
    static = StaticCacheDecoder(model, capacity=64)
    for penalty in (1.0, 1.3):
        settings = DecodingSettings(tokenizer.stop_ids, max_new_tokens=40, repetition_penalty=penalty)
        with torch.inference_mode():
            plain = generate(model, embeds, settings)
            fast = generate(static, embeds, settings)
        assert static._graph is not None  # the steps ran as a captured graph
        assert fast.tokens == plain.tokens


U_BF16 = 2.0**-8
"""bf16's unit roundoff: 8 significant bits, round to nearest."""


def bf16_tolerance(blocks: int, roundings_per_block: int = 8) -> float:
    """Twice the expected relative RMS error of a bf16 network against its float32 self: each
    rounding of a weight or activation to bf16 adds an independent error of relative RMS u/√3;
    about ``roundings_per_block`` of them per block (weights, inputs and outputs of its matmuls,
    normalisations, residual sums) reach the output, adding in quadrature over ``blocks`` blocks.
    Two blocks: 1.8 %; BEATs (12 layers) 4.4 %; the separator (24 transformers) 6.3 %."""
    return 2 * U_BF16 / math.sqrt(3) * math.sqrt(roundings_per_block * blocks)


BF16_NETWORK_TOLERANCE = bf16_tolerance(2)


# --- 2. the flow network: torch.compile and FP8 matmuls ---------------------------------------


@pytest.fixture(scope="module")
def dev_engine() -> Engine:
    return Engine(EngineConfig(preset="dev", num_steps=2))


def _velocity_inputs(engine: Engine) -> dict[str, torch.Tensor]:
    """The inputs of the velocity graph's last call in a generation of a real clip."""
    graph = engine.graphs["flow_velocity"]
    seen: dict[str, torch.Tensor] = {}
    run = graph.run
    graph.run = lambda inputs: seen.update(inputs) or run(inputs)
    try:
        engine.generate(sample_clip_path(), duration=1.0, seed=1)
    finally:
        del graph.run
    return seen


@pytest.fixture(scope="module")
def velocity_inputs(dev_engine) -> dict[str, torch.Tensor]:
    return _velocity_inputs(dev_engine)


def _relative_rms(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().double(), reference.detach().double()
    return float((value - reference).norm() / reference.norm())


def test_compile_option_traces_the_velocity_step_and_the_separator_core(dev_engine, velocity_inputs) -> None:
    """``compile`` wiring: the graphs whose specs ask for it compile, and dynamo's trace (the
    "eager" compile backend: the code path without code generation) computes eager's bits.
    Inductor's code is checked on a GPU (the ``cuda`` test below, in gpu_bench.sh): compiling it
    on a CPU costs minutes."""
    engine = Engine(EngineConfig(preset="dev", num_steps=2, compile="eager"))
    assert engine.graphs["flow_velocity"].backend == engine.separator.backend == "torch+compile(eager)"
    assert engine.separator.core.per_item
    assert not any(isinstance(graph, CompiledTorchGraph) for name, graph in engine.graphs.items()
                   if name != "flow_velocity")
    eager = dev_engine.graphs["flow_velocity"]
    traced = CompiledTorchGraph(eager.spec, eager.module, dev_engine.device, dev_engine.dtype, "eager")
    assert torch.equal(traced.run(velocity_inputs)["velocity"], eager.run(velocity_inputs)["velocity"])


class _ChunkNorms(nn.Module):
    """Each chunk divided by its own norm: batch items independent, as the separator core's are."""

    def forward(self, chunks: torch.Tensor) -> torch.Tensor:
        return chunks / chunks.flatten(1).norm(dim=1).view(-1, *[1] * (chunks.dim() - 1))


def test_a_compiled_graph_of_varying_batch_runs_one_item_at_a_time() -> None:
    """The separator core's spec (``compile_per_item``): batches of 3 and 2 chunks through one
    compiled graph of batch 1, each chunk as the module computes it alone."""
    compiled = CompiledTorchGraph(SEPARATOR_CORE_SPEC, _ChunkNorms(), torch.device("cpu"), torch.float32, "eager")
    for batch in (3, 2):
        chunks = torch.randn(batch, 2, 5, 4, 2, generator=torch.Generator().manual_seed(batch)).double()
        out = compiled.run({"mix_spectrum": chunks})["stem_spectrum"]
        expected = torch.stack([chunk / chunk.norm() for chunk in chunks])
        torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=0)


def _e4m3_restated(values: np.ndarray) -> np.ndarray:
    """Round float64 values to float8 e4m3 (3 fraction bits, exponents from -6, subnormal steps of
    2^-9, largest finite 448), ties to even, as a restatement independent of torch's cast."""
    magnitude = np.abs(values)
    exponent = np.floor(np.log2(np.maximum(magnitude, 2.0**-6)))
    step = 2.0 ** (exponent - 3)
    rounded = np.round(magnitude / step) * step  # numpy rounds half to even
    return np.sign(values) * np.minimum(rounded, 448.0)


def test_fp8_rounding_and_row_scales_match_a_restatement() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=generator) * torch.logspace(-3, 3, 64)[:, None]
    x[3] = 0.0  # an all-zero row keeps a finite scale
    x[5, :10] = 1e-7  # subnormals of e4m3 after scaling
    values, scale = fp8.quantize_rows(x)
    assert values.dtype == torch.float8_e4m3fn and scale.shape == (64, 1) and bool(torch.isfinite(scale).all())
    quotient = (x.float() / scale).numpy().astype(np.float64)
    assert np.array_equal(values.double().numpy(), _e4m3_restated(quotient))
    row_max = values.double().abs().amax(dim=1)
    assert bool((row_max[torch.arange(64) != 3] == 448.0).all()) and float(row_max[3]) == 0.0


def test_fp8_linear_and_sequence_conv_compute_the_rounded_products() -> None:
    """Against float64 products of the rounded operands (what the kernel multiplies), and within the
    stated error of the exact float64 layer: relative RMS below 2^-4 for independent rows."""
    generator = torch.Generator().manual_seed(1)
    linear = nn.Linear(64, 48)
    conv = ChannelLastConv1d(32, 48, kernel_size=3, padding=1)
    with torch.no_grad():
        for module in (linear, conv):
            for parameter in module.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    x = torch.randn(2, 20, 64, generator=generator)
    fp8_linear = fp8.Fp8Linear(linear, kernel=False)
    x_values, x_scale = fp8.quantize_rows(x.reshape(-1, 64))
    weight = fp8_linear.weight.double() * fp8_linear.weight_scale.double().t()
    rounded = (x_values.double() * x_scale.double()) @ weight.t() + linear.bias.double()
    out = fp8_linear(x)
    torch.testing.assert_close(out.double().reshape(-1, 48), rounded, rtol=1e-5, atol=1e-6)
    exact = x.double() @ linear.weight.double().t() + linear.bias.double()
    assert _relative_rms(out, exact) < 2.0**-4

    y = torch.randn(2, 20, 32, generator=generator)
    fp8_conv = fp8.Fp8SequenceConv(conv, kernel=False)
    padded = torch.nn.functional.pad(y.double(), (0, 0, 1, 1))
    windows = torch.stack([torch.cat([padded[b, n + t] for t in range(3)]) for b in range(2) for n in range(20)])
    # a window lists tap 0..2 of channel 0, then of channel 1, ...: the conv weight's (in, k) order
    windows = windows.view(-1, 3, 32).transpose(1, 2).reshape(-1, 96)
    w_values, w_scale = fp8.quantize_rows(conv.weight.detach().reshape(48, 96))
    y_values, y_scale = fp8.quantize_rows(windows.float())
    rounded = (y_values.double() * y_scale.double()) @ (w_values.double() * w_scale.double()).t() + conv.bias.double()
    out = fp8_conv(y)
    torch.testing.assert_close(out.double().reshape(-1, 48), rounded, rtol=1e-5, atol=1e-6)
    exact = torch.nn.functional.conv1d(y.double().transpose(1, 2), conv.weight.double(), conv.bias.double(),
                                       padding=1).transpose(1, 2)
    assert _relative_rms(out, exact) < 2.0**-4


def test_fp8_flow_velocity_error_on_dev(dev_engine, velocity_inputs) -> None:
    """The dev flow network with FP8 blocks moves the conditional velocity by about 9 %: the ~4 %
    of each product (the layer test) adds up over the ~6 FP8 layers in a row on its path
    (guidance s·v_cond + (1 - s)·v_uncond magnifies it further, by up to √(s² + (s - 1)²) = 5.7 at
    s = 4.5; the step-1 audio moves by 1.5-3 %, the bench's "vs baseline" row). Converted: 19 layers,
    10 in the joint block (the latent stream's qkv, adaLN, output conv and SwiGLU's three convs;
    qkv and adaLN of the clip and text streams), 6 in the fused block, 3 in the latent input
    projection's SwiGLU (its first conv, from 40 channels × 7 taps = 280 inputs, is no multiple of 16)."""
    inputs = velocity_inputs | {"cfg_strength": torch.tensor(1.0)}  # the conditional velocity
    reference = dev_engine.graphs["flow_velocity"].run(inputs)["velocity"]
    engine = Engine(EngineConfig(preset="dev", num_steps=2, fp8=True))
    clip_length = dev_engine.models.flow
    engine.models.set_sequence_lengths(clip_length.latent_seq_len, clip_length.clip_seq_len, clip_length.sync_seq_len)
    flow = engine.models.flow
    converted = [m for m in flow.modules() if isinstance(m, (fp8.Fp8Linear, fp8.Fp8SequenceConv))]
    assert len(converted) == 19 and not any(isinstance(m, (nn.Linear, ChannelLastConv1d))
                                            for block in flow.fused_blocks for m in block.modules())
    error = _relative_rms(engine.graphs["flow_velocity"].run(inputs)["velocity"], reference)
    assert 1e-3 < error < 0.15


@cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and fp8.has_fp8_kernel(torch.device("cuda"))),
                    reason="needs a Hopper GPU")
def test_fp8_cuda_kernel_multiplies_what_the_emulation_multiplies() -> None:
    generator = torch.Generator().manual_seed(2)
    linear = nn.Linear(256, 512).to("cuda", torch.bfloat16)
    x = torch.randn(300, 256, generator=generator).to("cuda", torch.bfloat16)
    kernel, emulated = fp8.Fp8Linear(linear, kernel=True), fp8.Fp8Linear(linear, kernel=False)
    assert _relative_rms(kernel(x), emulated(x)) < 2.0**-7  # float32 sums in another order, bf16 output


@cuda
def test_compiled_velocity_step_in_a_cuda_graph_stays_within_bf16_of_fp32() -> None:
    """Eager, compiled and compiled-then-replayed bf16 velocities, each against the float32 one
    (unguided, so that guidance does not magnify the bf16 noise; on a CPU the dev network measures
    1.2 % eager and 1.0 % compiled, inductor keeping fused intermediates in float32)."""
    engine = Engine(EngineConfig(preset="dev", num_steps=2, device="cuda", dtype="bf16"))
    inputs = _velocity_inputs(engine) | {"cfg_strength": torch.tensor(1.0)}
    fp32 = Engine(EngineConfig(preset="dev", num_steps=2, device="cuda", dtype="fp32"))
    flow = engine.models.flow
    fp32.models.set_sequence_lengths(flow.latent_seq_len, flow.clip_seq_len, flow.sync_seq_len)
    reference = fp32.graphs["flow_velocity"].run(inputs)["velocity"]
    eager = engine.graphs["flow_velocity"]
    compiled = CompiledTorchGraph(eager.spec, eager.module, engine.device, engine.dtype, "inductor")
    replayed = CudaGraphTorchGraph(eager.spec, compiled.module, engine.device, engine.dtype, compiled.backend)
    for graph in (eager, compiled, replayed):
        assert _relative_rms(graph.run(inputs)["velocity"], reference) < BF16_NETWORK_TOLERANCE, graph.backend
    assert replayed._captured and all(c is not None for c in replayed._captured.values())


# --- 3. overlap ----------------------------------------------------------------------------


def _judged_run(engine: Engine):
    """``Engine.run`` with the cot judge through its verdict, taken as no voice-over (random weights
    could answer either way): plan, generate, judge, which are what ``overlap`` reorders (removal
    and the silence check run after the judge either way). Random weights never stop: the MLLM
    decodes 6 tokens at most."""
    for reasoner in {id(r): r for r in (engine.reasoner, engine.judge_reasoner)}.values():
        reasoner.settings = replace(reasoner.settings, max_new_tokens=6)
    judge = engine.judge_voice_over
    engine.judge_voice_over = lambda *args, **kwargs: (False, judge(*args, **kwargs)[1])
    try:
        return engine.run(sample_clip_path(), judge="cot", duration=1.3, seed=3)
    finally:
        del engine.judge_voice_over


@pytest.fixture(scope="module")
def serial_run(dev_engine):
    return _judged_run(dev_engine)


def _assert_same_steps(overlapped, serial) -> None:
    assert [r.step for r in overlapped.steps] == [r.step for r in serial.steps] == ["plan", "generate", "judge"]
    for mine, theirs in zip(overlapped.steps, serial.steps):
        assert mine.decision == theirs.decision and mine.details.get("answer") == theirs.details.get("answer")
        assert mine.details.get("steps") == theirs.details.get("steps")
        assert (mine.audio is None) == (theirs.audio is None)
        if mine.audio is not None:
            assert np.array_equal(mine.audio, theirs.audio), mine.step
    assert np.array_equal(overlapped.audio, serial.audio) and overlapped.wall_seconds > 0


def test_overlapped_steps_with_the_exact_levers_give_the_serial_results(serial_run) -> None:
    """Plan beside step 1, CLIP beside video decoding, the judge's encoders ahead, with static-cache
    decoding and SDPA in BEATs: the same plan, step-1 audio and judge answer (the same tokens: SDPA
    moves the audio tokens by float32 rounding only), bit for bit; each step keeps its own stage
    timings."""
    engine = Engine(EngineConfig(preset="dev", num_steps=2, overlap=True, static_decode=True, sdpa_encoders=True))
    assert engine.reasoner.backend("mllm_decoder") == "torch+static-cache"
    overlapped = _judged_run(engine)
    _assert_same_steps(overlapped, serial_run)
    stages = overlapped.step("generate").details["timings"].as_dict()
    assert set(stages) == {"video decode", "clip", "synchformer", "text", "conditions", "sampling", "vae", "vocoder"}
    assert {t.stage for t in overlapped.step("judge").details["timings"].stages} == {
        "mllm_vision", "mllm_audio", "mllm_decoder"}


@pytest.mark.parametrize("seconds, asked", [(2.5, 2.2), (2.5, 8.0)])
def test_clip_features_while_decoding_equal_the_serial_ones(dev_engine, tmp_path, seconds: float,
                                                            asked: float) -> None:
    """Runs of CLIP frames (16: 2 s) encoded as they are decoded, then the rest, whether the clip
    ends where it was asked to or where the video ends."""
    video = make_test_video(tmp_path / "clip.mp4", seconds, 25, (96, 64))
    graph = dev_engine.graphs["clip_image"]
    timings = Timings()
    clip, streamed = features.clip_image_features_while_decoding(graph, video, asked, timings, dev_engine.device)
    serial_clip = load_video(video, asked)
    assert clip.duration_s == serial_clip.duration_s and torch.equal(clip.clip_frames, serial_clip.clip_frames)
    assert torch.equal(clip.sync_frames, serial_clip.sync_frames)
    assert torch.equal(streamed, features.clip_image_features(graph, serial_clip.clip_frames))
    assert [t.stage for t in timings.stages] == ["video decode", "clip"]


def test_video_stream_and_background_hand_over_errors(tmp_path) -> None:
    stream = VideoStream(tmp_path / "missing.mp4")
    assert stream.clip_frames(0, 16) is None
    with pytest.raises(InputError, match="no such file"):
        stream.result()
    with pytest.raises(ZeroDivisionError):
        pipeline.Background(lambda: 1 / 0, torch.device("cpu")).result()


# --- 4. encoders in bf16 with SDPA ----------------------------------------------------------


def _bf16_error(module: nn.Module, run) -> float:
    with torch.inference_mode():
        reference = run(module.float())
        return _relative_rms(run(module.to(torch.bfloat16)).float(), reference)


def test_separator_clip_siglip_and_beats_in_bf16_stay_within_the_derived_tolerance() -> None:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    spectrum = torch.randn(1, 2, 1025, 8, 2, generator=generator)
    separator = BSRoformer(BSROFORMER_TINY).eval()
    assert _bf16_error(separator, lambda m: m.separate_spectrum(spectrum)) < bf16_tolerance(2)
    frames = torch.rand(1, 1, 3, 384, 384, generator=generator)
    clip = ClipEncoder(CLIP_TINY).eval()
    assert _bf16_error(clip, lambda m: m.encode_images(frames)) < bf16_tolerance(CLIP_TINY.vision_layers)
    tower = SiglipVisionModel(siglip_tiny_config()).eval()
    assert tower.config._attn_implementation == "sdpa"
    pixels = torch.rand(1, 3, 384, 384, generator=generator) * 2 - 1
    assert _bf16_error(tower, lambda m: patch_features(m, pixels)) < bf16_tolerance(2)
    fbank = torch.randn(1, 498, 128, generator=generator) * 3 - 5
    for sdpa in (False, True):
        beats = BEATs(BEATS_TINY).eval().use_sdpa(sdpa)
        assert _bf16_error(beats, lambda m: m.extract_features(fbank.to(m.patch_embedding.weight.dtype))) \
            < bf16_tolerance(BEATS_TINY.encoder_layers)


@cuda
def test_full_size_encoders_in_bf16_on_cuda() -> None:
    """Full-size random weights: BS-RoFormer on one chunk, CLIP ViT-H, SigLIP so400m, BEATs."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.device("cuda"):
        torch.manual_seed(0)
        separator = BSRoformer(BSROFORMER_VIPERX_317).eval()
        clip = ClipEncoder(CLIP_DFN5B_H14_384).eval()
        tower = SiglipVisionModel(siglip_so400m_config()).eval()
        beats = BEATs(BEATsConfig()).eval().use_sdpa()
    spectrum = torch.randn(1, 2, 1025, 801, 2, generator=generator, device="cuda")
    assert _bf16_error(separator, lambda m: m.separate_spectrum(spectrum)) < bf16_tolerance(24)
    frames = torch.rand(1, 8, 3, 384, 384, generator=generator, device="cuda")
    assert _bf16_error(clip, lambda m: m.encode_images(frames)) < bf16_tolerance(32)
    pixels = torch.rand(4, 3, 384, 384, generator=generator, device="cuda") * 2 - 1
    assert _bf16_error(tower, lambda m: patch_features(m, pixels)) < bf16_tolerance(26)
    fbank = torch.randn(1, 2998, 128, generator=generator, device="cuda") * 3 - 5
    assert _bf16_error(beats, lambda m: m.extract_features(fbank.to(m.patch_embedding.weight.dtype))) \
        < bf16_tolerance(12)
