"""Our kernels for the vocoder's activations and the audio front ends, with torch fallbacks.

Every function computes the same thing on up to three compute paths:

* ``"torch"``: the reference, built from torch ops (always available);
* ``"cpp"``: the C++ kernels of ``deepsound_rt._kernels`` on CPU tensors;
* ``"cuda"``: its CUDA kernels on CUDA tensors (when the module was built with nvcc).

``path="auto"`` picks ``cuda`` for CUDA tensors and ``cpp`` for CPU tensors when they are there,
else ``torch``; :func:`default_path` says which one that is. The kernels are for inference: their
outputs carry no autograd history.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

# Modules, not names: the model code may call these functions, and a partly imported module is
# enough for a circular import.
from .models import alias_free
from .models import fbank as kaldi
from .models import mel as mmaudio_mel

try:
    from . import _kernels
except ImportError:  # not built: the torch paths still work
    _kernels = None

PATHS = ("torch", "cpp", "cuda")
# The separator's STFT (BS-RoFormer): centred, reflect padding, periodic Hann, not normalised.
STFT_N_FFT = 2048
STFT_HOP = 441
STFT_BINS = STFT_N_FFT // 2 + 1

_KERNEL_DTYPES = {torch.float32: ("float32", 0), torch.float16: ("float16", 1), torch.bfloat16: ("bfloat16", 2)}


def _probe_paths() -> tuple[str, ...]:
    paths = ["torch"]
    if _kernels is not None:
        paths.append("cpp")
        if _kernels.has_cuda and torch.cuda.is_available() and _kernels.cuda_device_count() > 0:
            paths.append("cuda")
    return tuple(paths)


_probed: tuple[object, tuple[str, ...]] | None = None  # (the extension module probed, its paths)


def available_paths() -> list[str]:
    """The compute paths usable in this process, in the order torch, cpp, cuda."""
    global _probed
    if _probed is None or _probed[0] is not _kernels:
        _probed = (_kernels, _probe_paths())
    return list(_probed[1])


def default_path(device: torch.device | str) -> str:
    """The path ``"auto"`` runs for tensors on ``device``."""
    kind = torch.device(device).type
    paths = available_paths()
    if kind == "cuda" and "cuda" in paths:
        return "cuda"
    if kind == "cpu" and "cpp" in paths:
        return "cpp"
    return "torch"


_runtime_enabled = os.environ.get("DEEPSOUND_RT_KERNELS", "on") != "off"


def runtime_path() -> str:
    """The path the runtime's call sites (vocoder activations, fbank, separator STFT) ask for:
    ``"auto"``, or ``"torch"`` when our kernels are switched off (``DEEPSOUND_RT_KERNELS=off``
    or :func:`use_kernels`)."""
    return "auto" if _runtime_enabled else "torch"


@contextlib.contextmanager
def use_kernels(enabled: bool) -> Iterator[None]:
    """Switch the runtime's use of our kernels on or off for a block (benchmarks compare both)."""
    global _runtime_enabled
    previous, _runtime_enabled = _runtime_enabled, enabled
    try:
        yield
    finally:
        _runtime_enabled = previous


def _resolve(path: str, tensor: torch.Tensor) -> str:
    if path == "auto":
        return default_path(tensor.device)
    if path not in PATHS:
        raise ValueError(f"path must be 'auto' or one of {PATHS}, got {path!r}")
    if path not in available_paths():
        raise RuntimeError(f"compute path {path!r} is not available here (available: {available_paths()})")
    wanted = "cuda" if path == "cuda" else "cpu"
    if path != "torch" and tensor.device.type != wanted:
        raise ValueError(f"path {path!r} needs {wanted} tensors, got one on {tensor.device}")
    return path


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view of a CPU tensor; fp16/bf16 as their uint16 bit patterns."""
    t = t.detach().contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    if dtype in (torch.float16, torch.bfloat16):
        return torch.from_numpy(a.view(np.int16)).view(dtype)
    return torch.from_numpy(a)


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


# ---------------------------------------------------------------------------------------------
# Anti-aliased SnakeBeta


def snake_beta_antialiased(
    x: torch.Tensor,
    alpha_log: torch.Tensor,
    beta_log: torch.Tensor,
    up_filter: torch.Tensor,
    down_filter: torch.Tensor,
    path: str = "auto",
    *,
    logscale: bool = True,
) -> torch.Tensor:
    """BigVGAN's Activation1d(SnakeBeta) on (B, C, T) in float32/float16/bfloat16: replicate-pad,
    2x up-sample, x + sin²(αx)/(β + 1e-9), 2x down-sample; fp32 arithmetic, result in ``x``'s dtype.

    ``alpha_log``/``beta_log`` hold one value per channel (log-scale unless ``logscale=False``);
    the filters are (taps,) or (1, 1, taps) with 2-64 taps (BigVGAN: 12). The torch path is
    :func:`~deepsound_rt.models.alias_free.snake_beta_antialiased_reference`, so that
    ``Activation1d.forward`` can call this function.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, channels, length), got shape {tuple(x.shape)}")
    batch, channels, length = x.shape
    if alpha_log.numel() != channels or beta_log.numel() != channels:
        raise ValueError(
            f"alpha/beta need {channels} values (one per channel), got {alpha_log.numel()} and {beta_log.numel()}"
        )
    for name, taps in (("up_filter", up_filter), ("down_filter", down_filter)):
        if not 2 <= taps.numel() <= 64:
            raise ValueError(f"{name} must have 2 to 64 taps, got {taps.numel()}")
    if length == 0:
        raise ValueError("x must have at least one sample")
    path = _resolve(path, x)
    if path == "torch":
        return alias_free.snake_beta_antialiased_reference(
            x, alpha_log, beta_log, up_filter, down_filter, logscale=logscale
        )
    if x.dtype not in _KERNEL_DTYPES:
        raise ValueError(f"x must be float32, float16 or bfloat16 for the {path} kernel, got {x.dtype}")
    name, code = _KERNEL_DTYPES[x.dtype]
    params = (alpha_log, beta_log, up_filter, down_filter)
    if path == "cpp":
        alpha, beta, up, down = (p.detach().float().reshape(-1).cpu().numpy() for p in params)
        return _from_numpy(_kernels.snake_beta_antialiased(_numpy(x), name, alpha, beta, logscale, up, down), x.dtype)
    # Called once per activation (109 times per vocoder pass): pass the parameters as they are when
    # they can be, so that the launch costs a few microseconds of Python.
    x = x.contiguous()
    dtype = params[0].dtype
    if dtype not in _KERNEL_DTYPES or any(
        p.dtype != dtype or p.device != x.device or not p.is_contiguous() for p in params
    ):
        params = tuple(p.detach().to(device=x.device, dtype=torch.float32).contiguous() for p in params)
        dtype = torch.float32
    y = torch.empty_like(x)
    alpha, beta, up, down = params
    _kernels.cuda_snake_beta_antialiased(
        x.device.index, _stream(x), x.data_ptr(), y.data_ptr(), code,
        batch * channels, channels, length, alpha.data_ptr(), beta.data_ptr(), _KERNEL_DTYPES[dtype][1], logscale,
        up.data_ptr(), up.numel(), down.data_ptr(), down.numel(),
    )
    return y


# ---------------------------------------------------------------------------------------------
# Filterbank front ends


def _filter_spans(bank: torch.Tensor) -> torch.Tensor:
    """(rows, 2) int32 [first, end) of each row's non-zero columns (triangular filters are contiguous)."""
    nonzero = (bank != 0).numpy()
    cols = nonzero.shape[1]
    first = np.where(nonzero.any(1), nonzero.argmax(1), 0)
    end = np.where(nonzero.any(1), cols - nonzero[:, ::-1].argmax(1), 0)
    return torch.from_numpy(np.stack([first, end], 1).astype(np.int32))


@functools.lru_cache(maxsize=8)
def _mel_constants(params: mmaudio_mel.MelConfig, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mel basis, its spans, the periodic Hann window centred in n_fft) on ``device``, as the
    reference MelConverter builds them."""
    converter = mmaudio_mel.MelConverter.from_config(params)
    window = converter.hann_window
    left = (params.n_fft - window.numel()) // 2
    window = F.pad(window, (left, params.n_fft - window.numel() - left))
    basis = converter.mel_basis.contiguous()
    return basis.to(device), _filter_spans(basis).to(device), window.contiguous().to(device)


def _as_rows(waveform: torch.Tensor, what: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    if waveform.dim() < 1:
        raise ValueError(f"{what} must have a time dimension")
    lead = tuple(waveform.shape[:-1])
    return waveform.detach().float().reshape(-1, waveform.shape[-1]).contiguous(), lead


def mel_spectrogram(
    waveform: torch.Tensor, params: mmaudio_mel.MelConfig, path: str = "auto", *, return_magnitude: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """MMAudio's log-mel of a waveform (..., L) -> (..., num_mels, frames) in float32, with the
    parameters of ``params`` (:data:`~deepsound_rt.models.mel.MEL_16K` / ``MEL_44K``).

    With ``return_magnitude`` also the linear STFT magnitude (..., n_fft/2 + 1, frames). The torch
    path computes what :class:`~deepsound_rt.models.mel.MelConverter` does, from
    :func:`~deepsound_rt.models.mel.linear_magnitude` and the same buffers.
    """
    path = _resolve(path, waveform)
    rows, lead = _as_rows(waveform, "waveform")
    pad = (params.n_fft - params.hop_size) // 2
    if rows.shape[-1] <= pad:
        raise ValueError(f"waveform needs more than {pad} samples for the reflect padding, got {rows.shape[-1]}")
    basis, spans, window = _mel_constants(params, str(rows.device))
    if path == "torch":
        magnitude = mmaudio_mel.linear_magnitude(rows, window, params.n_fft, params.hop_size)
        energies = torch.matmul(basis, magnitude).clamp(min=mmaudio_mel.LOG_FLOOR)
        mel = torch.log10(energies) if params.log == "log10" else torch.log(energies)
    elif path == "cpp":
        mel_np, mag_np = _kernels.mel_spectrogram(
            rows.numpy(), basis.numpy(), spans.numpy(), window.numpy(), params.hop_size, params.log, return_magnitude
        )
        mel = torch.from_numpy(mel_np)
        magnitude = torch.from_numpy(mag_np) if return_magnitude else None
    else:
        frames = 1 + (rows.shape[-1] + 2 * pad - params.n_fft) // params.hop_size
        mel = rows.new_empty(rows.shape[0], params.num_mels, frames)
        magnitude = rows.new_empty(rows.shape[0], params.n_fft // 2 + 1, frames) if return_magnitude else None
        _kernels.cuda_mel_spectrogram(
            rows.device.index, _stream(rows), rows.data_ptr(), rows.shape[0], rows.shape[1], basis.data_ptr(),
            spans.data_ptr(), params.num_mels, window.data_ptr(), params.n_fft, params.hop_size, params.log,
            mel.data_ptr(), 0 if magnitude is None else magnitude.data_ptr(),
        )
    mel = mel.reshape(*lead, *mel.shape[-2:])
    if not return_magnitude:
        return mel
    return mel, magnitude.reshape(*lead, *magnitude.shape[-2:])


@functools.lru_cache(maxsize=4)
def _fbank_constants(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    banks = kaldi.kaldi_mel_banks().contiguous()
    return banks.to(device), _filter_spans(banks).to(device), kaldi.povey_window().contiguous().to(device)


def kaldi_fbank(waveform_16k: torch.Tensor, path: str = "auto") -> torch.Tensor:
    """BEATs' Kaldi log-mel fbank of 16 kHz audio in [-1, 1]: (L,) -> (frames, 128), (B, L) ->
    (B, frames, 128), float32, frames = 1 + (L - 400) // 160. The torch path is
    :func:`deepsound_rt.models.fbank.kaldi_fbank`; normalise with :func:`~deepsound_rt.models.fbank.beats_normalize`.
    """
    if waveform_16k.dim() not in (1, 2):
        raise ValueError(f"waveform must be (L,) or (B, L), got shape {tuple(waveform_16k.shape)}")
    if waveform_16k.shape[-1] < kaldi.FRAME_LENGTH:
        raise ValueError(f"waveform needs at least {kaldi.FRAME_LENGTH} samples, got {waveform_16k.shape[-1]}")
    path = _resolve(path, waveform_16k)
    if path == "torch":
        return kaldi.kaldi_fbank(waveform_16k)
    rows, lead = _as_rows(waveform_16k, "waveform")
    banks, spans, window = _fbank_constants(str(rows.device))
    if path == "cpp":
        out = torch.from_numpy(
            _kernels.kaldi_fbank(
                rows.numpy(), banks.numpy(), spans.numpy(), window.numpy(), kaldi.FRAME_SHIFT,
                kaldi.PADDED_FRAME_LENGTH, kaldi.PREEMPHASIS, kaldi.WAVEFORM_SCALE, kaldi.LOG_FLOOR,
            )
        )
    else:
        frames = 1 + (rows.shape[-1] - kaldi.FRAME_LENGTH) // kaldi.FRAME_SHIFT
        out = rows.new_empty(rows.shape[0], frames, banks.shape[0])
        _kernels.cuda_kaldi_fbank(
            rows.device.index, _stream(rows), rows.data_ptr(), rows.shape[0], rows.shape[1], banks.data_ptr(),
            spans.data_ptr(), banks.shape[0], banks.shape[1], window.data_ptr(), kaldi.FRAME_LENGTH, kaldi.FRAME_SHIFT,
            kaldi.PADDED_FRAME_LENGTH, kaldi.PREEMPHASIS, kaldi.WAVEFORM_SCALE, kaldi.LOG_FLOOR, out.data_ptr(),
        )
    return out.reshape(*lead, *out.shape[-2:])


# ---------------------------------------------------------------------------------------------
# STFT / iSTFT of the separator


@functools.lru_cache(maxsize=4)
def _stft_window(device: str) -> torch.Tensor:
    return torch.hann_window(STFT_N_FFT, device=device)


def stft(x: torch.Tensor, path: str = "auto") -> torch.Tensor:
    """(..., L) float -> (..., 1025, 1 + L // 441) complex64: torch.stft with n_fft 2048, hop 441,
    periodic Hann of 2048, centred with reflect padding, one-sided, not normalised; L > 1024.

    Like torch.stft's, the result is a transposed view of a (..., frames, 1025) tensor.
    """
    path = _resolve(path, x)
    rows, lead = _as_rows(x, "signal")
    if rows.shape[-1] <= STFT_N_FFT // 2:
        raise ValueError(f"signal needs more than {STFT_N_FFT // 2} samples, got {rows.shape[-1]}")
    window = _stft_window(str(rows.device))
    if path == "torch":
        spec = torch.stft(
            rows, STFT_N_FFT, STFT_HOP, STFT_N_FFT, window, center=True, pad_mode="reflect", normalized=False,
            onesided=True, return_complex=True,
        ).transpose(-1, -2)
    elif path == "cpp":
        spec = torch.from_numpy(_kernels.stft(rows.numpy(), window.numpy(), STFT_HOP))
    else:
        frames = 1 + rows.shape[-1] // STFT_HOP
        spec = torch.empty(rows.shape[0], frames, STFT_BINS, dtype=torch.complex64, device=rows.device)
        _kernels.cuda_stft(
            rows.device.index, _stream(rows), rows.data_ptr(), rows.shape[0], rows.shape[1], window.data_ptr(),
            STFT_N_FFT, STFT_HOP, spec.data_ptr(),
        )
    return spec.reshape(*lead, *spec.shape[-2:]).transpose(-1, -2)


def istft(spec: torch.Tensor, length: int, path: str = "auto") -> torch.Tensor:
    """(..., 1025, frames) complex -> (..., length) float32: torch.istft with the parameters of
    :func:`stft`. ``length`` must be in [1, 441 · frames] (every sample then has window overlap)."""
    if spec.dim() < 2 or spec.shape[-2] != STFT_BINS:
        raise ValueError(f"spectrogram must be (..., {STFT_BINS}, frames), got shape {tuple(spec.shape)}")
    frames = spec.shape[-1]
    if not 1 <= length <= STFT_HOP * frames:
        raise ValueError(f"length must be in [1, {STFT_HOP * frames}] for {frames} frames, got {length}")
    path = _resolve(path, spec)
    lead = tuple(spec.shape[:-2])
    window = _stft_window(str(spec.device))
    if path == "torch":
        rows = spec.detach().to(torch.complex64).reshape(-1, STFT_BINS, frames)
        out = torch.istft(
            rows, STFT_N_FFT, STFT_HOP, STFT_N_FFT, window, center=True, normalized=False, onesided=True,
            length=length,
        )
        return out.reshape(*lead, length)
    # The kernels read (signal, frame, bin): free for spectra that come from stft().
    rows = spec.detach().to(torch.complex64).transpose(-1, -2).reshape(-1, frames, STFT_BINS).contiguous()
    if path == "cpp":
        out = torch.from_numpy(_kernels.istft(rows.numpy(), window.numpy(), STFT_HOP, length))
    else:
        workspace = torch.empty(rows.shape[0] * frames * STFT_N_FFT, device=rows.device)
        out = torch.empty(rows.shape[0], length, device=rows.device)
        _kernels.cuda_istft(
            rows.device.index, _stream(rows), rows.data_ptr(), rows.shape[0], frames, window.data_ptr(), STFT_N_FFT,
            STFT_HOP, length, workspace.data_ptr(), out.data_ptr(),
        )
    return out.reshape(*lead, length)
