"""deepsound_rt.kernels on every kernel path present (cpp, cuda) against the goldens and against the
models' torch references (also run on the goldens as path ``torch``) on random shapes, error cases,
and what happens when the extension is missing.

CUDA cases run the same inputs through the CUDA kernel, the C++ kernel and the torch reference.
"""
from __future__ import annotations

import random

import pytest
import torch

from deepsound_rt import kernels
from deepsound_rt.errors import DeepSoundError
from deepsound_rt.models import fbank
from deepsound_rt.models.alias_free import kaiser_sinc_filter, snake_beta_antialiased_reference
from deepsound_rt.models.mel import MEL_16K, MEL_44K, MelConverter, linear_magnitude
from deepsound_rt.verify.golden import load_golden
from deepsound_rt.verify.kernels import RUNNERS_BY_PATH

NATIVE_PATHS = kernels.available_paths()
PATHS = ["torch", *NATIVE_PATHS]
HAS_CUDA_KERNELS = "cuda" in PATHS
needs_native = pytest.mark.skipif(not NATIVE_PATHS, reason="deepsound_rt._kernels is not built")
needs_cuda = pytest.mark.skipif(not HAS_CUDA_KERNELS, reason="no CUDA device or CUDA kernels not built")

GOLDEN_FILES = {
    "antialiased_snakebeta": "snakebeta_activation1d",
    "mel_converter_16k": "mel_converter_16k",
    "mel_converter_44k": "mel_converter_44k",
    "beats_fbank": "beats_fbank",
}
KAISER = kaiser_sinc_filter(0.25, 0.3, 12)
# Per output dtype: (atol, rtol); rtol of a half type is one unit in the last place, the most a
# rounding of the same fp32 value on either side of a tie can differ.
SNAKE_TOLERANCE = {torch.float32: (2e-5, 1e-5), torch.float16: (1e-4, 2.0**-10), torch.bfloat16: (1e-3, 2.0**-7)}


def _device(path: str) -> str:
    return "cuda" if path == "cuda" else "cpu"


# The separator's transform: n_fft 2048, hop 441, periodic Hann, centred, not normalised.
STFT_WINDOW = torch.hann_window(2048)
STFT_HOP = 441


def run_mel(wave, params, path, return_magnitude=False):
    """MMAudio's mel on ``path``: the MelConverter reference ("torch") or our kernel."""
    converter = MelConverter.from_config(params)
    if path != "torch":
        return kernels.mel_spectrogram(wave.to(_device(path)), converter.mel_basis, converter.mel_spans,
                                       converter.hann_window, params.n_fft, params.hop_size, params.log,
                                       return_magnitude=return_magnitude)
    rows = wave.reshape(-1, wave.shape[-1])
    mel = converter(rows).reshape(*wave.shape[:-1], params.num_mels, -1)
    if not return_magnitude:
        return mel
    magnitude = linear_magnitude(rows, converter.hann_window, params.n_fft, params.hop_size)
    return mel, magnitude.reshape(*wave.shape[:-1], *magnitude.shape[-2:])


def run_fbank(wave, path):
    return fbank.kaldi_fbank(wave.to(_device(path)), use_kernels=path != "torch")


def run_stft(x, path):
    if path != "torch":
        return kernels.stft(x.to(_device(path)), STFT_WINDOW.to(_device(path)), STFT_HOP)
    rows = x.reshape(-1, x.shape[-1])
    spec = torch.stft(rows, 2048, STFT_HOP, 2048, STFT_WINDOW, center=True, pad_mode="reflect", normalized=False,
                      onesided=True, return_complex=True)
    return spec.reshape(*x.shape[:-1], *spec.shape[-2:])


def run_istft(spec, length, path):
    if path != "torch":
        return kernels.istft(spec.to(_device(path)), STFT_WINDOW.to(_device(path)), STFT_HOP, length)
    rows = spec.reshape(-1, *spec.shape[-2:])
    out = torch.istft(rows, 2048, STFT_HOP, 2048, STFT_WINDOW, center=True, normalized=False, onesided=True,
                      length=length)
    return out.reshape(*spec.shape[:-2], length)


def _golden_atol(golden, name: str, expected: torch.Tensor) -> float:
    """The golden's tolerance, plus one unit in the last place of the largest value for bf16
    tensors: rounding an fp32 result that differs in the 5th digit may flip to the next bf16 value."""
    atol = golden.atol(name)
    if expected.dtype == torch.bfloat16:
        atol += 2.0 ** (int(torch.log2(expected.float().abs().max()).floor()) - 7)
    return atol


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", sorted(GOLDEN_FILES))
def test_golden(goldens_dir, kind, path):
    golden = load_golden(goldens_dir / f"{GOLDEN_FILES[kind]}.json")
    assert golden.kind == kind
    computed = RUNNERS_BY_PATH[kind](golden, path)
    assert {f"out/{k}" for k in golden.outputs} <= set(computed)
    for name, got in computed.items():
        if name.startswith("check/"):  # a count of mismatches
            assert int(got) == 0, f"{kind} {path} {name}: {int(got)}"
            continue
        expected = golden.tensor(name)
        assert got.shape == expected.shape, name
        error = float((got.double() - expected.double()).abs().max())
        assert error <= _golden_atol(golden, name, expected), f"{kind} {path} {name}: max |diff| {error:.3g}"


# ------------------------------------------------------------------------------------------------
# Anti-aliased SnakeBeta


def _snake_cases() -> list[tuple[int, int, int, torch.dtype]]:
    rng = random.Random(7)
    lengths = [1, 2, 3, 5, 6, 11, 257, 1023, 1024, 1025, 2049, 3001, 4097]
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    return [(rng.randint(1, 3), rng.randint(1, 33), length, dtypes[i % 3]) for i, length in enumerate(lengths)]


def _snake_inputs(batch, channels, length, dtype, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, channels, length, generator=g) * scale).to(dtype)
    alpha = torch.randn(channels, generator=g) * 0.5
    beta = torch.randn(channels, generator=g) * 0.5
    return x, alpha, beta


def _assert_snake_close(got, reference, what=""):
    assert got.dtype == reference.dtype and got.shape == reference.shape, what
    atol, rtol = SNAKE_TOLERANCE[reference.dtype]
    torch.testing.assert_close(got.float(), reference.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _run_snake(path, x, alpha, beta, up=KAISER, down=KAISER, **kwargs):
    device = _device(path)
    y = kernels.snake_beta_antialiased(
        x.to(device), alpha.to(device), beta.to(device), up.to(device), down.to(device), **kwargs
    )
    assert y.device.type == device
    return y.cpu()


@needs_native
@pytest.mark.parametrize("path", NATIVE_PATHS)
@pytest.mark.parametrize("case", _snake_cases(), ids=lambda c: f"B{c[0]}C{c[1]}T{c[2]}-{str(c[3])[6:]}")
def test_snake_matches_reference(path, case):
    x, alpha, beta = _snake_inputs(*case, seed=case[2])
    reference = snake_beta_antialiased_reference(x, alpha, beta, KAISER, KAISER)
    got = _run_snake(path, x, alpha, beta)
    _assert_snake_close(got, reference, f"{path} {case}")
    if path == "cuda":  # the same inputs through the C++ kernel
        _assert_snake_close(got, _run_snake("cpp", x, alpha, beta), f"cuda vs cpp {case}")


@needs_native
@pytest.mark.parametrize("path", NATIVE_PATHS)
@pytest.mark.parametrize("up_taps,down_taps", [(2, 2), (7, 5), (13, 12), (12, 7), (64, 64)])
def test_snake_any_filter_length(path, up_taps, down_taps):
    g = torch.Generator().manual_seed(up_taps * 100 + down_taps)
    up, down = torch.rand(up_taps, generator=g) / up_taps, torch.rand(down_taps, generator=g) / down_taps
    for length in (1, 2, 3, 17, 2600):
        x, alpha, beta = _snake_inputs(2, 3, length, torch.float32, seed=length)
        reference = snake_beta_antialiased_reference(x, alpha, beta, up.view(1, 1, -1), down.view(1, 1, -1))
        _assert_snake_close(_run_snake(path, x, alpha, beta, up, down), reference, f"{path} T={length}")


@needs_native
@pytest.mark.parametrize("path", NATIVE_PATHS)
def test_snake_linear_scale_half_parameters_and_huge_arguments(path):
    # linear-scale alpha/beta
    x, alpha, beta = _snake_inputs(1, 4, 999, torch.float32, seed=1)
    alpha, beta = alpha.exp(), beta.exp()
    reference = snake_beta_antialiased_reference(x, alpha, beta, KAISER, KAISER, logscale=False)
    _assert_snake_close(_run_snake(path, x, alpha, beta, logscale=False), reference, "linear scale")
    # parameters and filters in bf16, as in a model cast with .to(torch.bfloat16)
    x, alpha, beta = _snake_inputs(2, 5, 1500, torch.bfloat16, seed=2)
    params = [p.to(torch.bfloat16) for p in (alpha, beta, KAISER)]
    reference = snake_beta_antialiased_reference(x, params[0], params[1], params[2], params[2])
    _assert_snake_close(_run_snake(path, x, params[0], params[1], params[2], params[2]), reference, "bf16 params")
    # |alpha·x| beyond the fast sin's range reduction: a wrong sin² would be off by O(1); the
    # filters' sums of terms ~1e4 round at ~1e-3
    x, alpha, beta = _snake_inputs(1, 3, 300, torch.float32, seed=3, scale=2e4)
    reference = snake_beta_antialiased_reference(x, alpha, beta, KAISER, KAISER)
    torch.testing.assert_close(_run_snake(path, x, alpha, beta), reference, atol=1e-6 * 2e4 * 4, rtol=1e-5)


@needs_native
@pytest.mark.parametrize("path", NATIVE_PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_snake_half_outputs_across_sin_ranges(path, dtype):
    # 16-bit outputs take the CUDA kernel's fast sin up to |alpha·x| = 64 and its polynomial and
    # library sin beyond: arguments here span 0 to ~1e4
    x, alpha, beta = _snake_inputs(2, 4, 1500, torch.float32, seed=5)
    x = (x * torch.logspace(-1, 3, 1500)).to(dtype)
    reference = snake_beta_antialiased_reference(x, alpha, beta, KAISER, KAISER)
    _assert_snake_close(_run_snake(path, x, alpha, beta), reference, f"{path} {dtype}")


@needs_native
@pytest.mark.parametrize("path", NATIVE_PATHS)
def test_snake_in_activation1d_module(path):
    from deepsound_rt.models.alias_free import Activation1d, SnakeBeta

    """A module built with ``use_kernels`` runs the kernel; without, the reference."""
    module = Activation1d(SnakeBeta(7)).to(_device(path))
    with torch.no_grad():
        module.act.alpha.normal_(0, 0.4)
        module.act.beta.normal_(0, 0.4)
    fused = Activation1d(SnakeBeta(7), use_kernels=True).to(_device(path))
    fused.load_state_dict(module.state_dict())
    x = torch.randn(2, 7, 333, device=_device(path))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), module(x), atol=2e-5, rtol=1e-5)


@needs_native
@pytest.mark.parametrize("path", NATIVE_PATHS)
def test_snake_rejects_bad_arguments(path):
    device = _device(path)
    x = torch.randn(1, 4, 50, device=device)
    a = torch.zeros(4, device=device)
    f = KAISER.to(device)
    with pytest.raises(ValueError):
        kernels.snake_beta_antialiased(x[0], a, a, f, f)  # not (B, C, T)
    with pytest.raises(ValueError):
        kernels.snake_beta_antialiased(x, a[:3], a, f, f)  # channels differ
    with pytest.raises(ValueError):
        kernels.snake_beta_antialiased(x, a, a, torch.ones(1, device=device), f)  # 1 tap
    with pytest.raises(ValueError):
        kernels.snake_beta_antialiased(x, a, a, f, torch.ones(65, device=device))  # 65 taps
    with pytest.raises(ValueError):
        kernels.snake_beta_antialiased(x[..., :0], a, a, f, f)  # empty
    with pytest.raises(ValueError):
        kernels.snake_beta_antialiased(x.double(), a, a, f, f)


def test_without_the_extension_nothing_claims_our_kernels(monkeypatch):
    """Not built: no kernel path, ``auto`` runs torch ops, ``on`` is a user error, and a kernel
    call says why it cannot run."""
    monkeypatch.setattr(kernels, "_kernels", None)
    cpu = torch.device("cpu")
    assert kernels.available_paths() == [] and kernels.path_for(cpu) is None
    assert not kernels.enabled_for("auto", cpu) and not kernels.enabled_for("off", cpu)
    with pytest.raises(DeepSoundError, match="kernels 'on'"):
        kernels.enabled_for("on", cpu)
    x, alpha, beta = _snake_inputs(1, 3, 100, torch.float32, seed=4)
    with pytest.raises(RuntimeError, match="not available"):
        kernels.snake_beta_antialiased(x, alpha, beta, KAISER, KAISER)


def test_the_path_follows_the_device():
    assert kernels.path_for("cpu") == ("cpp" if "cpp" in NATIVE_PATHS else None)
    assert kernels.path_for("cuda") == ("cuda" if HAS_CUDA_KERNELS else None)
    if not HAS_CUDA_KERNELS and torch.cuda.is_available():
        with pytest.raises(DeepSoundError):
            kernels.enabled_for("on", torch.device("cuda"))


# ------------------------------------------------------------------------------------------------
# Front ends


@needs_native
@pytest.mark.parametrize("path", NATIVE_PATHS)
@pytest.mark.parametrize("params", [MEL_16K, MEL_44K], ids=["16k", "44k"])
def test_mel_matches_reference(path, params):
    rng = random.Random(params.n_fft)
    pad = (params.n_fft - params.hop_size) // 2
    for shape in [(1, pad + 1), (rng.randint(1, 3), rng.randint(2000, 30000)), (2, 2, 4001), (params.sampling_rate,)]:
        g = torch.Generator().manual_seed(shape[-1])
        wave = torch.randn(*shape, generator=g) * 0.5  # some samples beyond [-1, 1]: clamped
        mel_ref, mag_ref = run_mel(wave, params, "torch", return_magnitude=True)
        mel, mag = run_mel(wave, params, path, return_magnitude=True)
        assert mel.shape == mel_ref.shape and mag.shape == mag_ref.shape
        torch.testing.assert_close(mel.cpu(), mel_ref, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(mag.cpu(), mag_ref, atol=1e-4, rtol=1e-5)
        if path == "cuda":
            torch.testing.assert_close(mel.cpu(), run_mel(wave, params, "cpp"), atol=1e-4, rtol=1e-5)


@needs_native
@pytest.mark.parametrize("path", NATIVE_PATHS)
def test_fbank_matches_reference(path):
    for shape in [(400,), (401,), (16000 + 123,), (3, 5000)]:
        g = torch.Generator().manual_seed(shape[-1])
        wave = torch.round(torch.randn(*shape, generator=g) * 4000) / 32768  # s16-quantised audio
        reference = fbank.kaldi_fbank(wave)
        got = run_fbank(wave, path)
        assert got.shape == reference.shape == (*shape[:-1], 1 + (shape[-1] - 400) // 160, 128)
        torch.testing.assert_close(got.cpu(), reference, atol=1e-3, rtol=1e-5)
        if path == "cuda":
            torch.testing.assert_close(got.cpu(), run_fbank(wave, "cpp"), atol=1e-3, rtol=1e-5)


@needs_native
@pytest.mark.parametrize("path", NATIVE_PATHS)
def test_stft_istft_match_reference(path):
    device = _device(path)
    for shape in [(1025,), (2, 44100), (2, 1, 7 * 441 + 13)]:
        g = torch.Generator().manual_seed(shape[-1])
        x = torch.randn(*shape, generator=g)
        reference = run_stft(x, "torch")
        spec = run_stft(x, path)
        assert spec.shape == reference.shape == (*shape[:-1], 1025, 1 + shape[-1] // 441)
        assert spec.dtype == torch.complex64
        torch.testing.assert_close(spec.cpu(), reference, atol=5e-4, rtol=1e-5)
        length = shape[-1]
        torch.testing.assert_close(run_istft(spec, length, path).cpu(), x, atol=1e-5, rtol=1e-5)
        noise = torch.randn(reference.shape, dtype=torch.complex64, generator=g)  # not a consistent spectrum
        for n in (length, 441 * reference.shape[-1], 1):
            torch.testing.assert_close(
                run_istft(noise.to(device), n, path).cpu(), run_istft(noise, n, "torch"), atol=1e-5, rtol=1e-5
            )


@needs_native
@pytest.mark.parametrize("path", NATIVE_PATHS)
def test_front_ends_reject_bad_arguments(path):
    device = _device(path)
    with pytest.raises(ValueError):
        run_mel(torch.zeros(1, 300, device=device), MEL_16K, path)  # shorter than the padding
    with pytest.raises(ValueError):
        run_fbank(torch.zeros(399, device=device), path)
    with pytest.raises(ValueError):
        run_fbank(torch.zeros(1, 1, 800, device=device), path)
    with pytest.raises(ValueError):
        run_stft(torch.zeros(1024, device=device), path)
    spec = torch.zeros(1025, 4, dtype=torch.complex64, device=device)
    with pytest.raises(ValueError):
        run_istft(spec, 441 * 4 + 1, path)
    with pytest.raises(ValueError):
        run_istft(spec[:1000], 100, path)


# ------------------------------------------------------------------------------------------------
# CUDA specifics: streams, many tiles, the vocoder's sizes


@needs_cuda
def test_cuda_runs_on_the_current_stream_and_large_rows():
    x, alpha, beta = _snake_inputs(1, 64, 100_003, torch.bfloat16, seed=5)
    expected = _run_snake("cpp", x, alpha, beta)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xs = x.cuda()
        y = kernels.snake_beta_antialiased(xs, alpha.cuda(), beta.cuda(), KAISER.cuda(), KAISER.cuda())
    stream.synchronize()
    _assert_snake_close(y.cpu(), expected, "side stream, 100k samples")
    _assert_snake_close(y.cpu(), snake_beta_antialiased_reference(x, alpha, beta, KAISER, KAISER), "vs reference")


@needs_cuda
def test_cuda_non_contiguous_input():
    x, alpha, beta = _snake_inputs(3, 8, 2000, torch.float32, seed=6)
    strided = x.cuda().transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    y = kernels.snake_beta_antialiased(strided, alpha.cuda(), beta.cuda(), KAISER.cuda(), KAISER.cuda())
    _assert_snake_close(y.cpu(), snake_beta_antialiased_reference(x, alpha, beta, KAISER, KAISER), "strided")


@pytest.mark.parametrize("path", NATIVE_PATHS)
def test_stft_of_a_silent_frame_is_exactly_zero(path):
    """torch.stft gives exact zeros there, and BS-RoFormer's RMSNorm turns any leak into unit norm."""
    device = "cuda" if path == "cuda" else "cpu"
    x = torch.randn(2, 20000, generator=torch.Generator().manual_seed(0))
    x[:, 6000:14000] = 0
    reference = run_stft(x, "torch")
    silent = reference.abs().amax(dim=(0, 1)) == 0
    assert silent.sum() >= 8
    assert torch.count_nonzero(run_stft(x.to(device), path).cpu()[..., silent]) == 0


@needs_native
def test_separator_and_judge_front_end_built_with_kernels_match_torch():
    """BS-RoFormer's STFT/iSTFT and the judge's fbank, built with ``use_kernels``, against the
    same modules built without."""
    from deepsound_rt.models.bs_roformer import BSROFORMER_TINY, BSRoformer
    from deepsound_rt.models.mllm.audio_input import audio_features

    torch.manual_seed(0)
    plain = BSRoformer(BSROFORMER_TINY).eval()
    fused = BSRoformer(BSROFORMER_TINY, use_kernels=True).eval()
    fused.load_state_dict(plain.state_dict())
    assert fused.kernel_transform and not plain.kernel_transform
    mix = torch.randn(1, 2, 20000, generator=torch.Generator().manual_seed(1)) * 0.3
    with torch.inference_mode():
        torch.testing.assert_close(fused(mix), plain(mix), atol=1e-5, rtol=1e-4)
    wave = torch.round(torch.randn(48000, generator=torch.Generator().manual_seed(2)) * 3000) / 32768
    steps = (audio_features(wave, use_kernels=True).float() - audio_features(wave).float()).abs()
    assert float(steps.max()) <= 2 ** (int(audio_features(wave).float().abs().max().log2()) - 7)  # one bf16 step
