"""Step 3 (Remove): BS-RoFormer against its goldens and the viperx manifest, the chunked demix on
synthetic models whose correct output is known without any recording, and the resampler."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import missing_reference
from deepsound_rt.errors import InputError, WeightsError
from deepsound_rt.models.bs_roformer import (
    BSROFORMER_TINY,
    BSRoformer,
    BSRoformerConfig,
    checkpoint_shapes,
)
from deepsound_rt.audio import resample
from deepsound_rt.stages.separate import demix, plan_demix, remove_vocals
from deepsound_rt.verify import compare
from deepsound_rt.verify.golden import Golden, load_golden
from deepsound_rt.verify.separator import MANIFESTS, RUNNERS, model_from_golden

# README: STFT-scale intermediates (values up to ~150) agree to about 1e-4.
INTERMEDIATE_ATOL = 1e-4


def _goldens(goldens_by_kind: dict[str, list[Path]], kind: str) -> list[Golden]:
    if not goldens_by_kind.get(kind):
        missing_reference(f"no golden of kind {kind}")
    return [load_golden(p) for p in goldens_by_kind[kind]]


def _waveform_atol(golden: Golden, name: str) -> float:
    """The stricter of the framework's atol and the JSON's own ``tolerance.suggested_atol``
    (which ``Golden.atol`` does not read for these goldens)."""
    own = (golden.meta.get("tolerance") or {}).get("suggested_atol")
    return min(golden.atol(name), float(own)) if isinstance(own, (int, float)) else golden.atol(name)


@pytest.mark.parametrize("kind", sorted(RUNNERS))
def test_goldens_pass(goldens_by_kind: dict[str, list[Path]], kind: str) -> None:
    failures = []
    for golden in _goldens(goldens_by_kind, kind):
        comparisons = compare(golden, RUNNERS[kind](golden))
        assert any(c.tensor.startswith("out/") for c in comparisons), golden.name
        for c in comparisons:
            atol = _waveform_atol(golden, c.tensor) if c.tensor.startswith("out/") else c.atol
            if not c.max_abs <= atol:
                failures.append(f"{golden.name} {c.tensor}: {c.max_abs:.3g} > {atol:g}")
    assert not failures, "\n".join(failures)


def test_bs_roformer_intermediates(goldens_by_kind: dict[str, list[Path]]) -> None:
    for golden in _goldens(goldens_by_kind, "bs_roformer"):
        mids: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            model_from_golden(golden)(golden.inputs["raw_audio"], intermediates=mids)
        for name, expected in golden.group("mid").items():
            torch.testing.assert_close(mids[name], expected, rtol=0, atol=INTERMEDIATE_ATOL, msg=name)


def test_demix_chunks_match_golden(goldens_by_kind: dict[str, list[Path]]) -> None:
    for golden in _goldens(goldens_by_kind, "bs_roformer_demix"):
        settings = golden.meta["demix_config"]
        model = model_from_golden(golden)
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []

        def recording(batch: torch.Tensor) -> torch.Tensor:
            inputs.append(batch)
            outputs.append(model(batch))
            return outputs[-1]

        with torch.inference_mode():
            demix(
                recording,
                golden.inputs["mix"],
                settings["audio.chunk_size"],
                settings["inference.num_overlap"],
                settings["inference.batch_size"],
            )
        assert torch.equal(torch.cat(inputs), golden.tensor("mid/chunk_model_inputs"))
        torch.testing.assert_close(torch.cat(outputs), golden.tensor("mid/chunk_model_outputs"), rtol=0, atol=1e-5)


def test_manifest_matches_key_for_key(manifests_dir: Path) -> None:
    for stem, build in MANIFESTS.items():
        path = manifests_dir / f"{stem}.json"
        if not path.is_file():
            missing_reference(f"manifest {stem}")
        expected = {k: tuple(v) for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        assert build() == expected


def test_loader_names_bad_keys() -> None:
    model = BSRoformer(BSROFORMER_TINY)
    state = dict(model.state_dict())
    state.pop("final_norm.gamma")
    state["band_split.bogus"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"missing keys: final_norm\.gamma.*unexpected keys: band_split\.bogus"):
        BSRoformer(BSROFORMER_TINY).load_checkpoint(state)
    state = dict(model.state_dict())
    state["final_norm.gamma"] = torch.ones(3)
    with pytest.raises(WeightsError, match=r"wrong shapes: final_norm\.gamma"):
        BSRoformer(BSROFORMER_TINY).load_checkpoint(state)


def test_tiny_config_matches_its_own_shapes() -> None:
    """The tiny preset has viperx's layout: same keys, smaller widths; rotary freqs repeated per attention."""
    tiny, viperx = checkpoint_shapes(BSROFORMER_TINY), checkpoint_shapes()
    assert {k for k in tiny if k.startswith(("band_split", "mask_estimators"))} == {
        k for k in viperx if k.startswith(("band_split", "mask_estimators"))
    }
    assert sum(k.endswith("rotary_embed.freqs") for k in tiny) == 2 * BSROFORMER_TINY.depth


def test_config_rejects_what_we_do_not_implement() -> None:
    with pytest.raises(ValueError, match="linear"):
        BSRoformerConfig.from_dict({"dim": 8, "depth": 1, "linear_transformer_depth": 1})
    with pytest.raises(ValueError, match="unknown"):
        BSRoformerConfig.from_dict({"dim": 8, "depth": 1, "no_such_option": 1})
    with pytest.raises(ValueError, match="bins"):
        BSRoformerConfig(dim=8, depth=1, freqs_per_bands=(2, 2))


def test_half_precision_runs_close_to_float32() -> None:
    torch.manual_seed(0)
    model = BSRoformer(BSROFORMER_TINY).eval()
    mix = 0.1 * torch.randn(1, 2, 8820)
    with torch.inference_mode():
        reference = model(mix)
        for dtype in (torch.bfloat16, torch.float16):
            out = BSRoformer(BSROFORMER_TINY).to(dtype).eval()
            out.load_state_dict(model.state_dict())
            result = out(mix)
            assert result.dtype == torch.float32 and torch.isfinite(result).all()
            assert (result - reference).abs().max() < 0.02 * reference.abs().max()


# --- demix on synthetic models --------------------------------------------------------------------

CHUNK = 100  # step 50, border 50, fade 10


def _signal(num_samples: int) -> torch.Tensor:
    return torch.randn(2, num_samples, generator=torch.Generator().manual_seed(num_samples))


@pytest.mark.parametrize(
    "num_samples",
    [
        1000,  # padded to 1100: 22 chunks, exact fit
        1020,  # padded to 1120: last chunk 20 samples -> zero padding
        1080,  # padded to 1180: last chunk 80 samples -> reflect padding
        101,  # just long enough for border padding
    ],
)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_demix_gain_model_reconstructs(num_samples: int, batch_size: int) -> None:
    """A fixed-gain "separator" must come back as exactly gain·mix: windows and overlaps cancel."""
    mix = _signal(num_samples)
    vocals = demix(lambda batch: 0.25 * batch, mix, CHUNK, 2, batch_size)
    torch.testing.assert_close(vocals, 0.25 * mix, rtol=1e-6, atol=1e-6)


def test_demix_partial_chunk_padding() -> None:
    """A partial chunk is reflect-padded when longer than half a chunk, zero-padded otherwise.

    1080 samples + 2·50 border = 1180: the chunk at 1100 has 80 valid samples (reflect), the one
    at 1150 has 30 (zeros); every earlier chunk is full.
    """
    seen: list[torch.Tensor] = []
    demix(lambda batch: seen.append(batch) or batch, _signal(1080), CHUNK, 2, 4)
    assert all(b.shape[1:] == (2, CHUNK) and b.shape[0] <= 4 for b in seen)
    chunks = torch.cat(seen)
    assert len(chunks) == 24
    reflect_chunk, zero_chunk = chunks[-2], chunks[-1]
    assert torch.equal(reflect_chunk[:, 80:], reflect_chunk[:, 78 - torch.arange(20)])
    assert torch.equal(zero_chunk[:, 30:], torch.zeros(2, 70))
    assert zero_chunk[:, :30].abs().min() > 0


def test_demix_short_signal_quirk() -> None:
    """Too short for border padding (<= 2·border) and batched: chunk 0 keeps its fade-in, so sample 0
    has zero total weight and comes out 0 (upstream's NaN -> 0), the rest is reconstructed."""
    mix = _signal(90)
    vocals = demix(lambda batch: batch, mix, CHUNK, 2, 4)
    assert torch.equal(vocals[:, 0], torch.zeros(2))
    torch.testing.assert_close(vocals[:, 1:], mix[:, 1:], rtol=1e-6, atol=1e-6)
    # With one chunk per batch the first batch drops its fade-in and sample 0 survives.
    torch.testing.assert_close(demix(lambda batch: batch, mix, CHUNK, 2, 1), mix, rtol=1e-6, atol=1e-6)


def test_demix_plan_windows() -> None:
    plan = plan_demix(1000, CHUNK, 2, 4)
    assert plan.border == 50 and [len(b) for b in plan.batches] == [4] * 5 + [2]
    assert plan.keep_fade_in == (True,) * 6 and plan.keep_fade_out == (True,) * 5 + (False,)
    final = plan.window(5)
    assert final[0] == 0 and torch.equal(final[-10:], torch.ones(10))
    single = plan_demix(1000, CHUNK, 2, 1)
    assert single.keep_fade_in[0] is False and single.keep_fade_out[0] is True


# --- resampling and remove_vocals --------------------------------------------------------------


def _tones(rate: int, num_samples: int, freqs: tuple[float, ...]) -> torch.Tensor:
    t = torch.arange(num_samples, dtype=torch.float64) / rate
    return sum(0.3 * torch.sin(2 * math.pi * f * t + i) for i, f in enumerate(freqs)).float()


@pytest.mark.parametrize("rate", [16000, 22050, 48000])
def test_resample_matches_analytic_tones(rate: int) -> None:
    freqs = (440.0, 3000.0, 0.4 * rate)
    x = _tones(rate, rate, freqs)
    y = resample(x, rate, 44100)
    assert y.shape[-1] == 44100
    interior = slice(2000, -2000)  # the filter's zero padding disturbs the ends
    # soxr HQ (DeepSound's resampler) ripples by up to ~4e-4 of a tone at 80 % of Nyquist (0.3 here)
    assert (y - _tones(44100, 44100, freqs))[interior].abs().max() < 2e-4
    back = resample(y, 44100, rate)
    assert back.shape[-1] == rate
    assert (back - x)[interior].abs().max() < 4e-4


def test_remove_vocals_keeps_rate_and_length() -> None:
    calls: list[torch.Tensor] = []

    def half_is_vocals(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch)
        return 0.5 * batch

    for rate in (16000, 44100):
        audio = _tones(rate, rate + 123, (300.0, 2500.0))
        calls.clear()
        instrumental = remove_vocals(half_is_vocals, audio, rate, chunk_size=8820)
        assert instrumental.shape == audio.shape and instrumental.dtype == torch.float32
        assert all(b.shape[1:] == (2, 8820) and torch.equal(b[:, 0], b[:, 1]) for b in calls)
        # The separator sees 44.1 kHz: the padded signal is cut into ceil(len/step) chunks.
        separator_samples = math.ceil((rate + 123) * 44100 / rate)
        assert sum(b.shape[0] for b in calls) == math.ceil((separator_samples + 2 * 4410) / 4410)
        interior = slice(rate // 20, -rate // 20)
        assert (instrumental - 0.5 * audio)[interior].abs().max() < 1e-4


def test_remove_vocals_rejects_empty_audio() -> None:
    with pytest.raises(InputError):
        remove_vocals(lambda batch: batch, torch.zeros(0), 16000)
