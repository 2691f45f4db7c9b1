"""The MLLM's audio path: clip sampling and fbank, BEATs, the audio projector, against the reference
goldens and manifest and an independent restatement of the clip-sampling rule."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from conftest import missing_reference
from deepsound_rt.errors import WeightsError
from deepsound_rt.models.fbank import LOG_FLOOR
from deepsound_rt.models.mllm.audio_input import (
    audio_features,
    clip_sample_bounds,
    sample_audio_clips,
)
from deepsound_rt.models.mllm.audio_projector import AudioProjector
from deepsound_rt.models.mllm.beats import BEATS_TINY, BEATs, BEATsConfig
from deepsound_rt.verify import compare
from deepsound_rt.verify.audio_mllm import MANIFESTS, RUNNERS
from deepsound_rt.verify.golden import Golden, load_golden

# A float32 fbank cannot reproduce torchaudio's rounding bit for bit, so a few values land on the
# neighbouring bfloat16; the runner's exact ``check/fbank_bf16_beyond_one_ulp`` bounds them instead.
ONE_ULP_OUTPUTS = {"out/fbank_bf16": "check/fbank_bf16_beyond_one_ulp"}


def _goldens(goldens_by_kind: dict[str, list[Path]], kind: str) -> list[Golden]:
    paths = goldens_by_kind.get(kind, [])
    if not paths:
        missing_reference(f"no golden of kind {kind}")
    return [load_golden(p) for p in paths]


@pytest.mark.parametrize("kind", sorted(RUNNERS))
def test_goldens_pass(goldens_by_kind: dict[str, list[Path]], kind: str) -> None:
    failures = []
    for golden in _goldens(goldens_by_kind, kind):
        comparisons = compare(golden, RUNNERS[kind](golden))
        names = {c.tensor for c in comparisons}
        assert any(n.startswith("out/") for n in names), golden.name
        for c in comparisons:
            if c.tensor in ONE_ULP_OUTPUTS:
                assert ONE_ULP_OUTPUTS[c.tensor] in names, golden.name
                continue
            if not c.passed:
                failures.append(f"{golden.name} {c.tensor}: {c.max_abs:.3g} > {c.atol:g}")
    assert not failures, "\n".join(failures)


def _beats_golden(goldens_by_kind: dict[str, list[Path]]) -> tuple[Golden, BEATsConfig]:
    golden = _goldens(goldens_by_kind, "beats")[0]
    return golden, BEATsConfig.from_dict(golden.meta["constructor_config"])


def test_manifest_key_for_key(manifests_dir: Path) -> None:
    manifest = json.loads((manifests_dir / "beats.json").read_text())
    expected = {k: tuple(v) for k, v in manifest.items() if not k.startswith("_")}
    assert MANIFESTS["beats"]() == expected
    assert BEATsConfig.from_dict(manifest["_notes"]["config"]) == BEATsConfig()


def _restated_clip_bounds(num_samples: int) -> list[tuple[int, int]]:
    """pytorchvideo 0.1.5's ConstantClipsPerVideoSampler(2, 8) as get_clip_timepoints drives it."""
    clip_duration, clips_per_video, rate = Fraction(2), 8, 16000
    duration = num_samples / rate
    bounds, index, last = [], 0, False
    while not last:
        max_start = Fraction(max(duration - clip_duration, 0))
        step = Fraction(max_start, clips_per_video)
        start = step * index
        index += 1
        last = index >= clips_per_video or step * index > max_start
        bounds.append((int(start * rate), int((start + clip_duration) * rate)))
    return bounds


@pytest.mark.parametrize("num_samples", [0, 24_000, 32_000, 40_000, 160_000, 160_001, 256_000, 479_999, 480_000])
def test_clip_sampling_matches_restated_rule(num_samples: int) -> None:
    expected = _restated_clip_bounds(num_samples)
    assert clip_sample_bounds(num_samples).tolist() == [list(b) for b in expected]
    waveform = torch.arange(num_samples, dtype=torch.float32)
    clips, bounds = sample_audio_clips(waveform)
    assert torch.equal(clips, torch.cat([waveform[s:e] for s, e in expected]))
    assert clips.shape[0] <= 8 * 32_000 and bounds.dtype == torch.int64


def test_clip_sampling_divides_by_eight() -> None:
    # 10 s: spacing (10 - 2) / 8 = 1 s, so the last clip is [7 s, 9 s) and 9..10 s is never used.
    assert clip_sample_bounds(160_000)[:, 0].tolist() == [16_000 * k for k in range(8)]
    assert clip_sample_bounds(160_000)[-1].tolist() == [112_000, 144_000]


def test_audio_features_shape_and_silence() -> None:
    short = audio_features(torch.zeros(16_000))
    assert short.shape == (1, 2998, 128) and short.dtype == torch.float16
    silent_value = torch.tensor(LOG_FLOOR).log().to(torch.bfloat16).to(torch.float16)
    assert bool((short == silent_value).all())


def test_beats_loader_names_keys(goldens_by_kind: dict[str, list[Path]]) -> None:
    golden, config = _beats_golden(goldens_by_kind)
    state = dict(golden.state)
    with pytest.raises(WeightsError, match="missing keys: encoder.pos_conv.0.weight_g"):
        BEATs(config).load_checkpoint({k: v for k, v in state.items() if k != "encoder.pos_conv.0.weight_g"})
    with pytest.raises(WeightsError, match="unexpected keys: encoder.pos_conv.0.weight"):
        BEATs(config).load_checkpoint(state | {"encoder.pos_conv.0.weight": state["encoder.pos_conv.0.weight_v"]})
    with pytest.raises(WeightsError, match=r"wrong shapes: patch_embedding.weight"):
        BEATs(config).load_checkpoint(state | {"patch_embedding.weight": torch.zeros(1)})
    bias_key = "encoder.layers.1.self_attn.relative_attention_bias.weight"
    with pytest.raises(WeightsError, match=bias_key):
        BEATs(config).load_checkpoint(state | {bias_key: state[bias_key] + 1})
    with pytest.raises(WeightsError, match="missing keys: encoder.layers.0.self_attn.relative_attention_bias"):
        BEATs(config).load_checkpoint({k: v for k, v in state.items() if "relative_attention_bias" not in k})


def test_beats_loads_one_shared_bias_copy(goldens_by_kind: dict[str, list[Path]]) -> None:
    golden, config = _beats_golden(goldens_by_kind)
    # safetensors keeps a shared tensor under one name, not necessarily layer 0's.
    last = f"encoder.layers.{config.encoder_layers - 1}.self_attn.relative_attention_bias.weight"
    state = {k: v for k, v in golden.state.items() if "relative_attention_bias" not in k or k == last}
    model = BEATs(config).eval()
    model.load_checkpoint(state)
    with torch.inference_mode():
        features = model.extract_features(golden.inputs["fbank"])
    torch.testing.assert_close(features, golden.tensor("out/features"), rtol=0, atol=1e-4)


def test_sdpa_attention_passes_the_golden(goldens_by_kind: dict[str, list[Path]]) -> None:
    """SDPA with the gated bias as an additive mask is upstream's attention: the shifted logits
    change no softmax (issue 17's encoder lever, ``EngineConfig.sdpa_encoders``)."""
    golden, config = _beats_golden(goldens_by_kind)
    model = BEATs(config).eval().use_sdpa()
    model.load_checkpoint(golden.state)
    with torch.inference_mode():
        features = model.extract_features(golden.inputs["fbank"])
    torch.testing.assert_close(features, golden.tensor("out/features"), rtol=0, atol=golden.atol("out/features"))


def test_beats_bf16_smoke(goldens_by_kind: dict[str, list[Path]]) -> None:
    golden, config = _beats_golden(goldens_by_kind)
    model = BEATs(config).eval()
    model.load_checkpoint(golden.state)
    model = model.to(torch.bfloat16)
    with torch.inference_mode():
        features = model.extract_features(golden.inputs["fbank"].to(torch.bfloat16))
    assert features.dtype == torch.bfloat16
    # Each of about 4 + 6 * depth roundings of the activations (fbank, patch embedding, its norm,
    # positional conv; per layer q/k/v, attention, output, two FFN matmuls and the norm) adds a
    # relative error of at most bf16's unit roundoff u = 2**-8; independent errors add in
    # quadrature. A margin of 2 covers correlated rounding; a real defect (a norm or softmax
    # left in bf16, a dropped upcast) is an order of magnitude above it.
    reference = golden.tensor("out/features")
    roundings = 4 + 6 * config.encoder_layers
    relative_rms = float((features.float() - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt())
    assert relative_rms <= 2 * 2**-8 * roundings**0.5


def test_tiny_preset_covers_the_30s_fbank_in_whole_patches() -> None:
    """2998 fbank frames make 187 rows of 16-frame patches (1496 tokens); the 6 frames past the
    last whole patch are never seen, while every frame inside one is."""
    torch.manual_seed(0)
    model = BEATs(BEATS_TINY).eval()
    fbank = audio_features(0.1 * torch.randn(16_000)).float()
    covered = 187 * BEATS_TINY.input_patch_size
    past_the_patches, inside_the_last = fbank.clone(), fbank.clone()
    past_the_patches[:, covered:] += 5.0
    inside_the_last[:, covered - 1] += 5.0
    with torch.inference_mode():
        features = model.extract_features(fbank)
        unseen = model.extract_features(past_the_patches)
        seen = model.extract_features(inside_the_last)
    assert fbank.shape[1] == 2998 and covered == 2992
    assert features.shape == (1, BEATS_TINY.num_tokens(2998), BEATS_TINY.encoder_embed_dim) == (1, 1496, 32)
    assert bool(torch.isfinite(features).all())
    torch.testing.assert_close(unseen, features, atol=0, rtol=0)
    assert float((seen - features).abs().max()) > 1e-3


def test_projector_loader_names_keys() -> None:
    projector = AudioProjector(8, 16)
    state = {k: torch.zeros_like(v) for k, v in projector.state_dict().items()}
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    with pytest.raises(WeightsError, match="missing keys: 2.bias"):
        projector.load_checkpoint({k: v for k, v in state.items() if k != "2.bias"})
