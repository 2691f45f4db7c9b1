"""MMAudio flow network and Euler sampler against the upstream goldens and checkpoint manifests."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deepsound_rt.errors import WeightsError
from deepsound_rt.models.mmaudio.network import (
    AUDIO_16K,
    AUDIO_44K,
    MMAudio,
    checkpoint_shapes,
    nearest_exact_source_index,
    num_audio_samples,
    sequence_lengths,
)
from deepsound_rt.models.mmaudio.sampler import euler_sample, initial_noise
from deepsound_rt.verify import check_golden
from deepsound_rt.verify.flow import MANIFESTS, RUNNERS, build_from_golden, compute_flow_tensors
from deepsound_rt.verify.golden import Golden, load_golden

GOLDENS = ["mmaudio_flow_v1", "mmaudio_flow_v2"]
MANIFEST_STEMS = [
    "mmaudio_small_16k",
    "mmaudio_small_44k",
    "mmaudio_medium_44k",
    "mmaudio_large_44k",
    "mmaudio_large_44k_v2",
]


@pytest.fixture(scope="module", params=GOLDENS)
def golden(request, goldens_dir: Path) -> Golden:
    return load_golden(goldens_dir / f"{request.param}.json")


@pytest.fixture(scope="module")
def net(golden: Golden) -> MMAudio:
    return build_from_golden(golden)


@pytest.mark.parametrize("name", GOLDENS)
def test_golden_outputs_within_suggested_atol(name: str, goldens_dir: Path):
    """The verify framework's own check: a missing out/ tensor counts as an infinite error."""
    report = check_golden(goldens_dir / f"{name}.json", RUNNERS)
    assert report is not None and report.error is None, report and report.error
    failures = [f"{c.tensor}: {c.max_abs:.3g} > {c.atol:.3g}" for c in report.comparisons if not c.passed]
    assert report.passed, failures


def test_every_stored_intermediate_matches(golden: Golden):
    """All stored mid/ tensors match too: those without a suggested_atol at the library default,
    sampler states and velocities at the tolerance of the sampler output."""
    with torch.inference_mode():
        computed = compute_flow_tensors(golden)
    stored = {f"mid/{k}" for k in golden.group("mid")}
    missing = stored - set(computed)
    assert not missing, f"intermediates not reproduced: {sorted(missing)}"
    for name in sorted(stored):
        if name.startswith("mid/sample_") and name not in golden.meta.get("suggested_atol", {}):
            atol = golden.atol("out/x1_normalized")
        else:
            atol = golden.atol(name)
        expected = golden.tensor(name)
        assert computed[name].shape == expected.shape, name
        err = (computed[name].double() - expected.double()).abs().max().item()
        assert err <= atol, f"{name}: {err:.3g} > {atol:.3g}"


def test_tables_bit_exact(golden: Golden, net: MMAudio):
    """Rotary tables, timestep frequencies and the sync index map are built exactly as upstream."""
    assert torch.equal(net.latent_rot, golden.tensor("mid/latent_rot"))
    assert torch.equal(net.clip_rot, golden.tensor("mid/clip_rot"))
    assert torch.equal(net.t_embed.freqs, golden.tensor("mid/t_embed_freqs"))
    assert torch.equal(net.sync_src_index, golden.tensor("mid/sync_interp_src_index"))


@pytest.mark.parametrize(("in_len", "out_len"), [(192, 345), (192, 250), (240, 431), (16, 50), (64, 7)])
def test_sync_index_equals_torch_nearest_exact(in_len: int, out_len: int):
    x = torch.randn(1, 3, in_len)
    expected = F.interpolate(x, size=out_len, mode="nearest-exact")
    assert torch.equal(x[..., nearest_exact_source_index(in_len, out_len)], expected)


def test_initial_noise_is_upstreams_first_draw(golden: Golden):
    sampling_call = next(line for line in golden.meta["calls"] if "manual_seed" in line)
    seed = int(re.search(r"manual_seed\((\d+)\)", sampling_call).group(1))
    x0 = golden.inputs["x0"]
    noise = initial_noise(*x0.shape, seed=seed, device="cpu", dtype=torch.float32)
    assert torch.equal(noise, x0)


def test_guided_velocity_equals_two_separate_passes(golden: Golden, net: MMAudio):
    inputs = golden.inputs
    x_t, t = inputs["x_t"], inputs["t"][:1].expand(inputs["x_t"].shape[0])
    strength = 4.5
    with torch.inference_mode():
        cond = net.preprocess_conditions(inputs["clip_f"], inputs["sync_f"], inputs["text_f"])
        empty = net.get_empty_conditions(x_t.shape[0], negative_text_features=inputs["negative_text_f"])
        v_cond = net.predict_flow(x_t, t, cond)
        v_uncond = net.predict_flow(x_t, t, empty)
        guided = net.guided_velocity(inputs["t"][0], x_t, cond, empty, strength)
        weak = net.guided_velocity(inputs["t"][0], x_t, cond, empty, 0.5)
    by_hand = strength * v_cond + (1 - strength) * v_uncond
    torch.testing.assert_close(guided, by_hand, rtol=0, atol=4e-5)  # float32 ulps of |v| ~ 20
    torch.testing.assert_close(weak, v_cond, rtol=0, atol=1e-6)


def test_float64_matches_golden_flows(golden: Golden):
    inputs = golden.inputs
    with torch.inference_mode():
        net = build_from_golden(golden).to(torch.float64)
        cond = net.preprocess_conditions(inputs["clip_f"], inputs["sync_f"], inputs["text_f"])
        flow = net.predict_flow(inputs["x_t"], inputs["t"], cond)
    assert flow.dtype == torch.float64
    err = (flow - golden.outputs["flow_cond"].double()).abs().max().item()
    assert err <= golden.atol("out/flow_cond")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_smoke(golden: Golden, dtype: torch.dtype):
    inputs = golden.inputs
    with torch.inference_mode():
        net = build_from_golden(golden).to(dtype)
        cond = net.preprocess_conditions(inputs["clip_f"], inputs["sync_f"], inputs["text_f"])
        flow = net.predict_flow(inputs["x_t"], inputs["t"], cond)
    for table in (net.latent_rot, net.clip_rot, net.t_embed.freqs):
        assert table.dtype == torch.float32
    assert torch.equal(net.t_embed.freqs, golden.tensor("mid/t_embed_freqs"))
    assert torch.equal(net.latent_rot, golden.tensor("mid/latent_rot"))
    reference = golden.outputs["flow_cond"]
    assert flow.dtype == dtype
    assert (flow.float() - reference).abs().max() <= 0.05 * reference.abs().max()


def test_update_seq_lengths_rebuilds_tables(golden: Golden):
    net = build_from_golden(golden)
    latent, clip, sync = sequence_lengths(10.0, *AUDIO_44K)
    net.update_seq_lengths(latent, clip, sync)
    head_pairs = net.config.hidden_dim // net.config.num_heads // 2
    assert net.latent_rot.shape == (1, latent, head_pairs, 2, 2)
    assert net.clip_rot.shape == (1, clip, head_pairs, 2, 2)
    assert torch.equal(net.sync_src_index, nearest_exact_source_index(sync, latent))
    inputs = golden.inputs
    batch = inputs["x_t"].shape[0]
    with torch.inference_mode():
        cond = net.preprocess_conditions(
            torch.randn(batch, clip, net.config.clip_dim), torch.randn(batch, sync, net.config.sync_dim), inputs["text_f"]
        )
        flow = net.predict_flow(torch.randn(batch, latent, net.config.latent_dim), inputs["t"], cond)
    assert flow.shape == (batch, latent, net.config.latent_dim) and torch.isfinite(flow).all()


def test_state_dict_has_no_recomputed_tables(net: MMAudio):
    keys = set(net.state_dict())
    assert not keys & {"latent_rot", "clip_rot", "sync_src_index", "t_embed.freqs"}


@pytest.mark.parametrize("stem", MANIFEST_STEMS)
def test_manifest_matches_checkpoint_shapes(stem: str, manifests_dir: Path):
    manifest = json.loads((manifests_dir / f"{stem}.json").read_text())
    expected = {k: tuple(v) for k, v in manifest.items() if not k.startswith("_")}
    ours = MANIFESTS[stem]()
    assert sorted(set(expected) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(expected)) == [], "unexpected keys"
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert ours == checkpoint_shapes(stem.removeprefix("mmaudio_"))


def test_load_checkpoint_drops_optional_tables(golden: Golden, manifests_dir: Path):
    notes = json.loads((manifests_dir / "mmaudio_small_44k.json").read_text())["_notes"]
    assert set(notes["optional_keys_possibly_present_and_ignored"]) == {"t_embed.freqs", "latent_rot", "clip_rot"}
    net = build_from_golden(golden)
    state = dict(golden.state)
    state["t_embed.freqs"] = net.t_embed.freqs.clone()
    state["latent_rot"] = net.latent_rot.clone()
    state["clip_rot"] = torch.zeros(1, 3, 1, 2, 2)  # wrong shape too: it must be ignored, not checked
    net.load_checkpoint(state)
    assert torch.equal(net.final_layer.conv.bias, golden.state["final_layer.conv.bias"])


def test_load_checkpoint_names_missing_and_unexpected_keys(golden: Golden):
    net = build_from_golden(golden)
    state = dict(golden.state)
    del state["final_layer.conv.bias"]
    state["final_layer.conv.gain"] = torch.zeros(3)
    with pytest.raises(WeightsError) as excinfo:
        net.load_checkpoint(state)
    assert "final_layer.conv.bias" in str(excinfo.value)
    assert "final_layer.conv.gain" in str(excinfo.value)


@pytest.mark.parametrize(
    ("duration", "audio", "expected", "samples"),
    [
        (8.0, AUDIO_16K, (250, 64, 192), 128000),
        (8.0, AUDIO_44K, (345, 64, 192), 353280),
        (10.0, AUDIO_44K, (431, 80, 240), 441344),
    ],
)
def test_sequence_lengths(duration, audio, expected, samples):
    lengths = sequence_lengths(duration, *audio)
    assert lengths == expected
    assert num_audio_samples(lengths[0], audio.spectrogram_frame_rate) == samples


def test_sequence_lengths_rejects_too_short_clip():
    with pytest.raises(ValueError):
        sequence_lengths(0.5, *AUDIO_44K)


def test_euler_sample_grid_and_progress():
    seen_t, progress = [], []

    def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.float32 and t.dim() == 0
        seen_t.append(t.item())
        return torch.ones_like(x) * (1 + t)

    x1 = euler_sample(velocity, torch.zeros(2, 3), num_steps=4, progress=lambda i, n: progress.append((i, n)))
    assert seen_t == [0.0, 0.25, 0.5, 0.75]
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    torch.testing.assert_close(x1, torch.full((2, 3), 0.25 * (1 + 1.25 + 1.5 + 1.75)))
