"""Golden runners and manifest builders for the decode path: VAE, BigVGAN vocoders, the anti-aliased
SnakeBeta and the mel front end.

Every runner builds its module from the golden's own config, loads ``state/``, and, where the golden
stores ``raw/`` checkpoint weights, first proves that our load-time transform turns them into
``state/`` (raising AssertionError otherwise) so that the transform is checked, not assumed.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Mapping

import torch

from ..models import bigvgan, vae
from ..models.alias_free import Activation1d, SnakeBeta, snake_beta, upsample_2x
from ..models.bigvgan import BigVGAN, BigVGANConfig
from ..models.mel import MelConfig, MelConverter, linear_magnitude
from ..models.vae import VAE, gaussian_from_moments
from ..models.weights import load_strict
from .golden import Golden

TRANSFORM_ATOL = 1e-6
# The 16 kHz wrapper in MMAudio holds the generator as ``.vocoder``; checkpoints have no prefix.
_WRAPPER_PREFIX = "vocoder."


def _require_close(what: str, ours: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> None:
    """Raise AssertionError naming the first tensor that is missing or off by more than 1e-6."""
    for key, expected in reference.items():
        if key not in ours:
            raise AssertionError(f"{what}: {key} missing")
        got = ours[key]
        if got.shape != expected.shape:
            raise AssertionError(f"{what}: {key} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
        diff = float((got.double() - expected.double()).abs().max()) if got.numel() else 0.0
        if diff > TRANSFORM_ATOL:
            raise AssertionError(f"{what}: {key} differs by {diff:.3g} (> {TRANSFORM_ATOL})")


def _with_suggested_mids(
    golden: Golden, outputs: dict[str, torch.Tensor], mids: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The outputs plus those intermediates the golden gives a tolerance for."""
    suggested = golden.meta.get("suggested_atol") or {}
    return outputs | {f"mid/{k}": v for k, v in mids.items() if f"mid/{k}" in suggested}


def _vae_from_golden(golden: Golden) -> VAE:
    constructor = golden.meta["constructor"]
    fixed = constructor.get("fixed_inside_VAE")
    if fixed is not None:
        ours = {
            "ch_mult": list(vae.CHANNEL_MULTIPLIERS),
            "num_res_blocks": vae.NUM_RES_BLOCKS,
            "down_layers": list(vae.DOWNSAMPLE_LEVELS),
            "kernel_size": vae.KERNEL_SIZE,
            "clip_act": vae.ACTIVATION_CLIP,
        }
        differing = {k: fixed[k] for k in ours if k in fixed and fixed[k] != ours[k]}
        # attn_layers only matter if they name an existing level; upstream's [3] never does.
        if any(level < len(vae.CHANNEL_MULTIPLIERS) for level in fixed.get("attn_layers", [])):
            differing["attn_layers"] = fixed["attn_layers"]
        if differing:
            raise ValueError(f"golden VAE architecture differs from ours: {differing}")
    return VAE(constructor["data_dim"], constructor["embed_dim"], constructor["hidden_dim"])


@torch.inference_mode()
def run_vae(golden: Golden) -> dict[str, torch.Tensor]:
    """Decode ``in/latent`` (+ encoder moments of ``in/mel``); check raw -> state first."""
    model = _vae_from_golden(golden).eval()
    load_strict(model, golden.state, f"golden {golden.name} state")
    raw = golden.group("raw")
    if raw:
        from_raw = _vae_from_golden(golden).eval()
        # data_mean/data_std are untransformed buffers that the golden stores only under state/.
        statistics = {k: golden.state[k] for k in ("data_mean", "data_std") if k not in raw}
        from_raw.load_checkpoint(raw | statistics, need_encoder=True)
        _require_close(f"{golden.name} raw -> state", from_raw.state_dict(), golden.state)

    mids: dict[str, torch.Tensor] = {}
    decoder = model.decoder
    (upsample,) = [level.upsample for level in decoder.up if level.upsample is not None]
    hooked = {
        "dec_conv_in_out": decoder.conv_in,
        "dec_mid_attn_out": decoder.mid.attn_1,
        "dec_upsample_out": upsample,
        "dec_out_normalized": decoder,
    }
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: mids.__setitem__(name, out))
        for name, module in hooked.items()
    ]
    try:
        outputs = {"out/mel": model.decode(golden.inputs["latent"])}
    finally:
        for handle in handles:
            handle.remove()
    if "mel" in golden.inputs:
        moments = model.encoder(model.normalize(golden.inputs["mel"]))
        mean, logvar = gaussian_from_moments(moments)
        outputs |= {"out/enc_moments": moments, "out/enc_mean": mean, "out/enc_logvar": logvar}
    return _with_suggested_mids(golden, outputs, mids)


def _strip_wrapper_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(_WRAPPER_PREFIX) for k in state):
        return {k[len(_WRAPPER_PREFIX) :]: v for k, v in state.items()}
    return dict(state)


@torch.inference_mode()
def run_bigvgan(golden: Golden) -> dict[str, torch.Tensor]:
    """Vocode ``in/mel`` with every stage recorded; check that folding ``raw/`` gives ``state/``."""
    config = BigVGANConfig.from_dict(golden.meta["constructor_config_h"])
    state = _strip_wrapper_prefix(golden.state)
    model = BigVGAN(config).eval()
    model.load_checkpoint(state)
    raw = golden.group("raw")
    if raw:
        from_raw = BigVGAN(config).eval()
        from_raw.load_checkpoint(_strip_wrapper_prefix(raw))
        _require_close(f"{golden.name} raw -> state", from_raw.state_dict(), state)
    mids: dict[str, torch.Tensor] = {}
    wav = model(golden.inputs["mel"], intermediates=mids)
    return _with_suggested_mids(golden, {"out/wav": wav}, mids)


@torch.inference_mode()
def run_snakebeta(golden: Golden) -> dict[str, torch.Tensor]:
    """Anti-aliased SnakeBeta on ``in/x``; our own filters must equal the stored ones."""
    channels = golden.state["act.alpha"].shape[0]
    activation = Activation1d(SnakeBeta(channels, alpha_logscale=True))  # the kind is defined log-scale
    filters = {k: v for k, v in golden.state.items() if k.endswith("filter")}
    _require_close(f"{golden.name} kaiser-sinc filters", activation.state_dict(), filters)
    load_strict(activation, golden.state, f"golden {golden.name} state")
    x = golden.inputs["x"]
    upsampled = upsample_2x(x, activation.upsample.filter)
    mids = {"upsampled": upsampled, "activated": snake_beta(upsampled, activation.act.alpha, activation.act.beta)}
    return _with_suggested_mids(golden, {"out/y": activation(x)}, mids)


def mel_config_from_golden(golden: Golden) -> MelConfig:
    """The mel front end a mel golden's ``constructor`` describes (its ``norm_fn`` names the log)."""
    c = golden.meta["constructor"]
    norm_fn = str(c["norm_fn"])
    if "log10" in norm_fn:
        log = "log10"
    elif norm_fn.startswith("torch.log"):
        log = "ln"
    else:
        raise ValueError(f"unknown norm_fn {norm_fn!r}")
    return MelConfig(
        int(c["sampling_rate"]), int(c["n_fft"]), int(c["num_mels"]), int(c["hop_size"]), int(c["win_size"]),
        float(c["fmin"]), float(c["fmax"]), log,
    )


@torch.inference_mode()
def run_mel(golden: Golden) -> dict[str, torch.Tensor]:
    """Mel of ``in/waveform`` with our own filterbank and window, which must equal ``state/``."""
    converter = MelConverter.from_config(mel_config_from_golden(golden))
    ours = {"mel_basis": converter.mel_basis, "hann_window": converter.hann_window}
    _require_close(f"{golden.name} buffers", ours, golden.state)
    waveform = golden.inputs["waveform"]
    magnitude = linear_magnitude(waveform, converter.hann_window, converter.n_fft, converter.hop_size)
    return _with_suggested_mids(golden, {"out/mel": converter(waveform)}, {"linear_mag": magnitude})


RUNNERS: dict[str, Callable[[Golden], dict[str, torch.Tensor]]] = {
    "vae_decoder_16k": run_vae,
    "vae_decoder_44k": run_vae,
    "bigvgan_v1_16k": run_bigvgan,
    "bigvgan_v2": run_bigvgan,
    "antialiased_snakebeta": run_snakebeta,
    "mel_converter_16k": run_mel,
    "mel_converter_44k": run_mel,
}

MANIFESTS: dict[str, Callable[[], dict[str, tuple[int, ...]]]] = {
    "vae_16k": partial(vae.checkpoint_shapes, "16k"),
    "vae_44k": partial(vae.checkpoint_shapes, "44k"),
    "bigvgan_16k": partial(bigvgan.checkpoint_shapes, bigvgan.BIGVGAN_16K),
    "bigvgan_v2_44khz_128band_512x": partial(bigvgan.checkpoint_shapes, bigvgan.BIGVGAN_V2_44K),
}
