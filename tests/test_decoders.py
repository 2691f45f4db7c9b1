"""Decode path: VAE, BigVGAN vocoders, anti-aliased SnakeBeta and mel front end against the
reference goldens, manifests and independent float64 references."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import missing_reference
from deepsound_rt.errors import WeightsError
from deepsound_rt.models.alias_free import (
    Activation1d,
    SnakeBeta,
    snake_beta_antialiased_polyphase,
    snake_beta_antialiased_reference,
)
from deepsound_rt.models.bigvgan import BigVGAN, BigVGANConfig, fold_weight_norm, load_vocoder_file
from deepsound_rt.models.mel import MEL_16K, MEL_44K, MelConverter, slaney_mel_filterbank
from deepsound_rt.models.vae import VAE
from deepsound_rt.verify import compare
from deepsound_rt.verify.decoders import MANIFESTS, RUNNERS
from deepsound_rt.verify.golden import Golden, load_golden


def _goldens(goldens_by_kind: dict[str, list[Path]], *kinds: str) -> list[Golden]:
    paths = [p for kind in kinds for p in goldens_by_kind.get(kind, [])]
    if not paths:
        missing_reference(f"no golden of kind {kinds}")
    return [load_golden(p) for p in paths]


@pytest.mark.parametrize("kind", sorted(RUNNERS))
def test_goldens_pass(goldens_by_kind: dict[str, list[Path]], kind: str) -> None:
    failures = []
    for golden in _goldens(goldens_by_kind, kind):
        with torch.inference_mode():
            comparisons = compare(golden, RUNNERS[kind](golden))
        assert any(c.tensor.startswith("out/") for c in comparisons), golden.name
        failures += [f"{golden.name} {c.tensor}: {c.max_abs:.3g} > {c.atol:g}" for c in comparisons if not c.passed]
    assert not failures, "\n".join(failures)


def _close(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert ours.keys() == reference.keys()
    for key, expected in reference.items():
        torch.testing.assert_close(ours[key], expected, rtol=0, atol=atol, msg=key)


def test_vae_raw_to_state(goldens_by_kind: dict[str, list[Path]]) -> None:
    for golden in _goldens(goldens_by_kind, "vae_decoder_16k", "vae_decoder_44k"):
        c = golden.meta["constructor"]
        model = VAE(c["data_dim"], c["embed_dim"], c["hidden_dim"])
        statistics = {k: golden.state[k] for k in ("data_mean", "data_std")}
        model.load_checkpoint(golden.group("raw") | statistics, need_encoder=True)
        _close(model.state_dict(), golden.state)

        decoder_only = VAE(c["data_dim"], c["embed_dim"], c["hidden_dim"])
        decoder_only.load_checkpoint(golden.group("raw") | statistics)
        assert decoder_only.encoder is None
        assert not any(k.startswith("encoder.") for k in decoder_only.state_dict())


def test_vae_rejects_decoder_only_checkpoint(goldens_by_kind: dict[str, list[Path]]) -> None:
    golden = _goldens(goldens_by_kind, "vae_decoder_16k")[0]
    c = golden.meta["constructor"]
    without_encoder = {k: v for k, v in golden.state.items() if not k.startswith("encoder.")}
    with pytest.raises(WeightsError, match="missing keys: encoder"):
        VAE(c["data_dim"], c["embed_dim"], c["hidden_dim"]).load_checkpoint(without_encoder)


def _generator_state(golden: Golden, group: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix("vocoder."): v for k, v in golden.group(group).items()}


def test_bigvgan_fold_reproduces_state(goldens_by_kind: dict[str, list[Path]]) -> None:
    for golden in _goldens(goldens_by_kind, "bigvgan_v1_16k", "bigvgan_v2"):
        _close(fold_weight_norm(_generator_state(golden, "raw")), _generator_state(golden, "state"))


def _parametrization_naming(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        key = key.replace(".weight_g", ".parametrizations.weight.original0")
        renamed[key.replace(".weight_v", ".parametrizations.weight.original1")] = value
    return renamed


@pytest.fixture(scope="module")
def bigvgan_v2_golden(goldens_by_kind: dict[str, list[Path]]) -> Golden:
    return _goldens(goldens_by_kind, "bigvgan_v2")[0]


def test_bigvgan_loader_accepts_three_namings(bigvgan_v2_golden: Golden) -> None:
    raw = _generator_state(bigvgan_v2_golden, "raw")
    config = BigVGANConfig.from_dict(bigvgan_v2_golden.meta["constructor_config_h"])
    loaded = []
    for state in (raw, _parametrization_naming(raw), _generator_state(bigvgan_v2_golden, "state")):
        model = BigVGAN(config)
        model.load_checkpoint(state)
        loaded.append(model.state_dict())
    _close(loaded[1], loaded[0], atol=0)
    _close(loaded[2], loaded[0])


def test_bigvgan_loader_names_bad_keys(bigvgan_v2_golden: Golden) -> None:
    raw = _generator_state(bigvgan_v2_golden, "raw")
    model = BigVGAN(BigVGANConfig.from_dict(bigvgan_v2_golden.meta["constructor_config_h"]))
    tampered = {k: v for k, v in raw.items() if k != "conv_pre.bias"} | {"conv_pre.extra": raw["conv_pre.bias"]}
    with pytest.raises(WeightsError) as error:
        model.load_checkpoint(tampered)
    assert "conv_pre.bias" in str(error.value) and "conv_pre.extra" in str(error.value)

    unpaired = {k: v for k, v in raw.items() if k != "conv_post.weight_v"}
    with pytest.raises(WeightsError) as error:
        model.load_checkpoint(unpaired)
    assert "conv_post.weight" in str(error.value) and "conv_post.weight_g" in str(error.value)


def test_load_vocoder_file(bigvgan_v2_golden: Golden, tmp_path: Path) -> None:
    config = BigVGANConfig.from_dict(bigvgan_v2_golden.meta["constructor_config_h"])
    path = tmp_path / "bigvgan_generator.pt"
    torch.save({"generator": _generator_state(bigvgan_v2_golden, "raw")}, path)
    model = load_vocoder_file(path, config)
    _close(model.state_dict(), _generator_state(bigvgan_v2_golden, "state"))

    torch.save({"discriminator": {}}, path)
    with pytest.raises(WeightsError, match="generator"):
        load_vocoder_file(path, config)


def test_manifests_match(manifests_dir: Path) -> None:
    for stem, build in MANIFESTS.items():
        manifest = json.loads((manifests_dir / f"{stem}.json").read_text())
        expected = {k: tuple(v) for k, v in manifest.items() if not k.startswith("_")}
        ours = build()
        assert sorted(ours) == sorted(expected), stem
        assert {k: v for k, v in ours.items() if v != expected[k]} == {}, stem
        assert sum(int(np.prod(v)) for v in ours.values()) == manifest["_total_parameters"], stem


# --- anti-aliased SnakeBeta against a direct float64 numpy implementation ---


def _kaiser_sinc_f64(taps: int = 12, cutoff: float = 0.25, half_width: float = 0.3) -> np.ndarray:
    attenuation = 2.285 * (taps // 2 - 1) * np.pi * 4 * half_width + 7.95
    beta = 0.1102 * (attenuation - 8.7)  # > 50 dB for these parameters
    time = np.arange(-taps // 2, taps // 2) + 0.5
    h = 2 * cutoff * np.kaiser(taps, beta) * np.sinc(2 * cutoff * time)
    return h / h.sum()


def _snakebeta_antialiased_f64(x: np.ndarray, alpha_log: np.ndarray, beta_log: np.ndarray) -> np.ndarray:
    h = _kaiser_sinc_f64()
    taps, length = len(h), x.shape[-1]
    # up: replicate-pad 5, zero-stuff (transposed conv stride 2) with gain 2, keep the middle 2T samples
    padded = np.concatenate([x[..., :1].repeat(5, -1), x, x[..., -1:].repeat(5, -1)], axis=-1)
    full = np.zeros(x.shape[:-1] + (2 * (padded.shape[-1] - 1) + taps,))
    for i in range(padded.shape[-1]):
        full[..., 2 * i : 2 * i + taps] += padded[..., i : i + 1] * h
    up = 2 * full[..., 15 : 15 + 2 * length]
    a = np.exp(alpha_log)[:, None]
    b = np.exp(beta_log)[:, None]
    act = up + np.sin(a * up) ** 2 / (b + 1e-9)
    # down: replicate-pad 5 left / 6 right, correlate, keep every second sample
    padded = np.concatenate([act[..., :1].repeat(5, -1), act, act[..., -1:].repeat(6, -1)], axis=-1)
    return sum(padded[..., k : k + 2 * length : 2] * h[k] for k in range(taps))


@pytest.mark.parametrize("batch,channels,length", [(1, 1, 1), (2, 3, 7), (1, 17, 33), (3, 33, 101), (1, 8, 250)])
def test_snakebeta_matches_float64(batch: int, channels: int, length: int) -> None:
    generator = torch.Generator().manual_seed(channels * 1000 + length)
    x = 3 * torch.randn(batch, channels, length, generator=generator)
    activation = Activation1d(SnakeBeta(channels))
    with torch.no_grad():
        activation.act.alpha.normal_(0, 0.5, generator=generator)
        activation.act.beta.normal_(0, 0.5, generator=generator)
    np.testing.assert_allclose(activation.upsample.filter.flatten().numpy(), _kaiser_sinc_f64(), rtol=0, atol=1e-7)
    expected = _snakebeta_antialiased_f64(
        x.double().numpy(),
        activation.act.alpha.detach().double().numpy(),
        activation.act.beta.detach().double().numpy(),
    )
    with torch.inference_mode():
        y = activation(x)
    assert y.shape == x.shape
    np.testing.assert_allclose(y.double().numpy(), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("batch,channels,length", [(1, 1, 1), (1, 2, 2), (2, 3, 7), (1, 17, 33), (3, 33, 101)])
def test_snakebeta_polyphase_matches_float64(batch: int, channels: int, length: int) -> None:
    """The form exported graphs take, edges included (lengths shorter than the filter too)."""
    generator = torch.Generator().manual_seed(channels * 1000 + length)
    x = 3 * torch.randn(batch, channels, length, generator=generator)
    alpha, beta = 0.5 * torch.randn(channels, generator=generator), 0.5 * torch.randn(channels, generator=generator)
    kaiser = torch.from_numpy(_kaiser_sinc_f64()).float()
    y = snake_beta_antialiased_polyphase(x, alpha, beta, kaiser, kaiser)
    expected = _snakebeta_antialiased_f64(x.double().numpy(), alpha.double().numpy(), beta.double().numpy())
    np.testing.assert_allclose(y.double().numpy(), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("taps", [2, 4, 6, 8, 16])
@pytest.mark.parametrize("length", [1, 3, 40])
def test_snakebeta_polyphase_other_filters(taps: int, length: int) -> None:
    """Other even tap counts: the phase filters and the trim of the interleaved phases follow the length."""
    generator = torch.Generator().manual_seed(taps * 100 + length)
    x = torch.randn(2, 3, length, generator=generator)
    alpha, beta = 0.3 * torch.randn(3, generator=generator), 0.3 * torch.randn(3, generator=generator)
    up, down = torch.randn(1, 1, taps, generator=generator), torch.randn(1, 1, taps, generator=generator)
    torch.testing.assert_close(snake_beta_antialiased_polyphase(x, alpha, beta, up, down),
                               snake_beta_antialiased_reference(x.double(), alpha, beta, up, down).float(),
                               rtol=1e-5, atol=1e-5)


def test_exported_activation_has_no_transposed_convolution() -> None:
    activation = Activation1d(SnakeBeta(4)).eval()
    with torch.no_grad():
        activation.act.alpha.uniform_(-1, 1)
    x = torch.randn(1, 4, 50, generator=torch.Generator().manual_seed(2))
    exported = torch.export.export(activation, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert not any("conv_transpose" in target for target in targets)
    expected = _snakebeta_antialiased_f64(x.double().numpy(), activation.act.alpha.detach().double().numpy(),
                                          activation.act.beta.detach().double().numpy())
    np.testing.assert_allclose(exported.module()(x).detach().double().numpy(), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_snakebeta_half_input_computes_in_float32(dtype: torch.dtype) -> None:
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    activation = Activation1d(SnakeBeta(5))
    with torch.inference_mode():
        y = activation(x.to(dtype))
        reference = snake_beta_antialiased_reference(
            x.to(dtype).float(), activation.act.alpha, activation.act.beta,
            activation.upsample.filter, activation.downsample.lowpass.filter,
        )
    assert y.dtype == dtype
    torch.testing.assert_close(y, reference.to(dtype), rtol=0, atol=0)


def test_snakebeta_linear_scale_parameters() -> None:
    x = torch.randn(1, 4, 40, generator=torch.Generator().manual_seed(1))
    log_scale = Activation1d(SnakeBeta(4))
    linear = Activation1d(SnakeBeta(4, alpha_logscale=False))
    with torch.no_grad():
        log_scale.act.alpha.uniform_(-1, 1)
        log_scale.act.beta.uniform_(-1, 1)
        linear.act.alpha.copy_(log_scale.act.alpha.exp())
        linear.act.beta.copy_(log_scale.act.beta.exp())
        torch.testing.assert_close(linear(x), log_scale(x))


def test_runner_rejects_wrong_weight_transform(bigvgan_v2_golden: Golden) -> None:
    raw = dict(bigvgan_v2_golden.group("raw"))
    raw["conv_pre.weight_g"] = raw["conv_pre.weight_g"] * 1.001
    tampered = Golden(bigvgan_v2_golden.path, bigvgan_v2_golden.meta, bigvgan_v2_golden.groups | {"raw": raw})
    with pytest.raises(AssertionError, match="conv_pre.weight"):
        RUNNERS["bigvgan_v2"](tampered)


# --- reduced precision smoke runs ---


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_vocoder_half_precision(bigvgan_v2_golden: Golden, dtype: torch.dtype) -> None:
    config = BigVGANConfig.from_dict(bigvgan_v2_golden.meta["constructor_config_h"])
    model = BigVGAN(config).eval()
    model.load_checkpoint(_generator_state(bigvgan_v2_golden, "state"))
    mel = bigvgan_v2_golden.inputs["mel"][..., :8]  # CPU half-precision convs are slow; 8 frames suffice
    with torch.inference_mode():
        reference = model(mel)
        wav = model.to(dtype)(mel.to(dtype))
    assert wav.dtype == dtype and torch.isfinite(wav).all()
    error = (wav.float() - reference).abs()
    assert error.max() < 0.1 and error.mean() < 0.01, (error.max(), error.mean())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_vae_decode_half_precision(goldens_by_kind: dict[str, list[Path]], dtype: torch.dtype) -> None:
    golden = _goldens(goldens_by_kind, "vae_decoder_44k")[0]
    c = golden.meta["constructor"]
    model = VAE(c["data_dim"], c["embed_dim"], c["hidden_dim"]).eval()
    model.load_checkpoint(golden.group("raw") | {k: golden.state[k] for k in ("data_mean", "data_std")})
    latent = golden.inputs["latent"]
    with torch.inference_mode():
        reference = model.decode(latent)
        mel = model.to(dtype).decode(latent.to(dtype))
    assert mel.dtype == dtype and torch.isfinite(mel).all()
    error = (mel.float() - reference).abs()
    assert error.max() < 1.0 and error.mean() < 0.1, (error.max(), error.mean())


# --- mel front end ---


def test_mel_filterbank_matches_golden(goldens_by_kind: dict[str, list[Path]]) -> None:
    for golden in _goldens(goldens_by_kind, "mel_converter_16k", "mel_converter_44k"):
        c = golden.meta["constructor"]
        basis = slaney_mel_filterbank(c["sampling_rate"], c["n_fft"], c["num_mels"], c["fmin"], c["fmax"])
        torch.testing.assert_close(basis, golden.state["mel_basis"], rtol=0, atol=1e-6)


def test_mel_presets_match_goldens(goldens_by_kind: dict[str, list[Path]]) -> None:
    for kind, preset in (("mel_converter_16k", MEL_16K), ("mel_converter_44k", MEL_44K)):
        for golden in _goldens(goldens_by_kind, kind):
            c = golden.meta["constructor"]
            assert (preset.sampling_rate, preset.n_fft, preset.num_mels, preset.hop_size, preset.win_size) == (
                c["sampling_rate"], c["n_fft"], c["num_mels"], c["hop_size"], c["win_size"],
            )
            assert (preset.fmin, preset.fmax) == (c["fmin"], c["fmax"])
            converter = MelConverter.from_config(preset)
            with torch.inference_mode():
                mel = converter(golden.inputs["waveform"])
            torch.testing.assert_close(mel, golden.outputs["mel"], rtol=0, atol=golden.atol("out/mel"))
