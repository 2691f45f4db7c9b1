"""The Python face of our kernels (``deepsound_rt._kernels``): the C++ kernels on CPU tensors, the
CUDA kernels on CUDA tensors (when the module was built with nvcc).

Each function runs the kernel for its tensors' device and takes every constant it needs (filters,
windows, filterbanks) as arguments. The torch references they are tested against live with the
models that call them (:mod:`.models.alias_free`, :mod:`.models.fbank`, :mod:`.models.mel`, the
separator's ``torch.stft``); a model uses a kernel only when it was built with ``use_kernels``
(:func:`enabled_for` turns the ``kernels`` setting into that choice). The kernels are for
inference: their outputs carry no autograd history. This module never imports the models.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DeepSoundError

try:
    from . import _kernels
except ImportError:  # not built: the models run their torch references
    _kernels = None

_KERNEL_DTYPES = {torch.float32: ("float32", 0), torch.float16: ("float16", 1), torch.bfloat16: ("bfloat16", 2)}
_probed: tuple[object, tuple[str, ...]] | None = None  # (the extension module probed, its paths)


def available_paths() -> list[str]:
    """The kernel paths usable in this process: ``cpp`` (CPU tensors), ``cuda`` (CUDA tensors)."""
    global _probed
    if _probed is None or _probed[0] is not _kernels:
        paths = []
        if _kernels is not None:
            paths.append("cpp")
            if _kernels.has_cuda and torch.cuda.is_available() and _kernels.cuda_device_count() > 0:
                paths.append("cuda")
        _probed = (_kernels, tuple(paths))
    return list(_probed[1])


def path_for(device: torch.device | str) -> str | None:
    """The kernel path that serves tensors on ``device``, or None when none is built for it."""
    wanted = {"cpu": "cpp", "cuda": "cuda"}.get(torch.device(device).type)
    return wanted if wanted in available_paths() else None


def enabled_for(setting: str, device: torch.device) -> bool:
    """Whether models on ``device`` use our kernels: ``off`` never, ``auto`` where they are built,
    ``on`` always (a DeepSoundError when they are not built for the device)."""
    if setting == "off":
        return False
    if path_for(device) is not None:
        return True
    if setting == "on":
        built = ", ".join(available_paths()) or "none: the extension is not built"
        raise DeepSoundError(f"kernels 'on' but deepsound_rt._kernels has no kernels for {torch.device(device).type} "
                             f"here (paths built: {built}); use kernels 'auto' or 'off'")
    return False


def _path(tensor: torch.Tensor) -> str:
    path = path_for(tensor.device)
    if path is None:
        raise RuntimeError(f"our kernels are not available for {tensor.device.type} tensors here "
                           f"(available: {available_paths()})")
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


def filter_spans(bank: torch.Tensor) -> torch.Tensor:
    """(rows, 2) int32 [first, end) of each filterbank row's non-zero columns, on ``bank``'s device
    (triangular filters are contiguous): what the filterbank kernels skip by."""
    nonzero = (bank.detach().cpu() != 0).numpy()
    cols = nonzero.shape[1]
    first = np.where(nonzero.any(1), nonzero.argmax(1), 0)
    end = np.where(nonzero.any(1), cols - nonzero[:, ::-1].argmax(1), 0)
    return torch.from_numpy(np.stack([first, end], 1).astype(np.int32)).to(bank.device)


def _as_rows(waveform: torch.Tensor, what: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    if waveform.dim() < 1:
        raise ValueError(f"{what} must have a time dimension")
    lead = tuple(waveform.shape[:-1])
    return waveform.detach().float().reshape(-1, waveform.shape[-1]).contiguous(), lead


def _constant(t: torch.Tensor, like: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return t.detach().to(device=like.device, dtype=dtype).contiguous()


# ---------------------------------------------------------------------------------------------
# Anti-aliased SnakeBeta


def snake_beta_antialiased(
    x: torch.Tensor,
    alpha_log: torch.Tensor,
    beta_log: torch.Tensor,
    up_filter: torch.Tensor,
    down_filter: torch.Tensor,
    *,
    logscale: bool = True,
) -> torch.Tensor:
    """BigVGAN's Activation1d(SnakeBeta) on (B, C, T) in float32/float16/bfloat16: replicate-pad,
    2x up-sample, x + sin²(αx)/(β + 1e-9), 2x down-sample; fp32 arithmetic, result in ``x``'s dtype.

    ``alpha_log``/``beta_log`` hold one value per channel (log-scale unless ``logscale=False``);
    the filters are (taps,) or (1, 1, taps) with 2-64 taps (BigVGAN: 12). Reference:
    :func:`deepsound_rt.models.alias_free.snake_beta_antialiased_reference`.
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
    if x.dtype not in _KERNEL_DTYPES:
        raise ValueError(f"x must be float32, float16 or bfloat16 for our kernel, got {x.dtype}")
    path = _path(x)
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


def mel_spectrogram(
    waveform: torch.Tensor, mel_basis: torch.Tensor, mel_spans: torch.Tensor, window: torch.Tensor, n_fft: int,
    hop: int, log: str, *, return_magnitude: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """MMAudio's log-mel of a waveform (..., L) -> (..., num_mels, frames) in float32: clamp to
    [-1, 1], reflect-pad (n_fft - hop) / 2 per side, uncentred STFT with ``window`` (centred in
    n_fft), sqrt(|X|² + 1e-9), ``mel_basis`` (its ``filter_spans`` as ``mel_spans``), clamp at
    1e-5, ``log`` (``log10`` or ``ln``). With ``return_magnitude`` also the STFT magnitude
    (..., n_fft/2 + 1, frames). Reference: :class:`deepsound_rt.models.mel.MelConverter`.
    """
    rows, lead = _as_rows(waveform, "waveform")
    path = _path(rows)
    pad = (n_fft - hop) // 2
    if rows.shape[-1] <= pad:
        raise ValueError(f"waveform needs more than {pad} samples for the reflect padding, got {rows.shape[-1]}")
    left = (n_fft - window.numel()) // 2
    window = _constant(F.pad(window.detach().float(), (left, n_fft - window.numel() - left)), rows)
    basis, spans = _constant(mel_basis, rows), _constant(mel_spans, rows, torch.int32)
    if path == "cpp":
        mel_np, mag_np = _kernels.mel_spectrogram(
            rows.numpy(), basis.numpy(), spans.numpy(), window.numpy(), hop, log, return_magnitude
        )
        mel = torch.from_numpy(mel_np)
        magnitude = torch.from_numpy(mag_np) if return_magnitude else None
    else:
        frames = 1 + (rows.shape[-1] + 2 * pad - n_fft) // hop
        mel = rows.new_empty(rows.shape[0], basis.shape[0], frames)
        magnitude = rows.new_empty(rows.shape[0], n_fft // 2 + 1, frames) if return_magnitude else None
        _kernels.cuda_mel_spectrogram(
            rows.device.index, _stream(rows), rows.data_ptr(), rows.shape[0], rows.shape[1], basis.data_ptr(),
            spans.data_ptr(), basis.shape[0], window.data_ptr(), n_fft, hop, log,
            mel.data_ptr(), 0 if magnitude is None else magnitude.data_ptr(),
        )
    mel = mel.reshape(*lead, *mel.shape[-2:])
    if not return_magnitude:
        return mel
    return mel, magnitude.reshape(*lead, *magnitude.shape[-2:])


def kaldi_fbank(
    waveform: torch.Tensor, mel_banks: torch.Tensor, mel_spans: torch.Tensor, window: torch.Tensor, *,
    frame_shift: int, padded_frame_length: int, preemphasis: float, waveform_scale: float, log_floor: float,
) -> torch.Tensor:
    """Kaldi's log-mel fbank (snip_edges, mean removal, pre-emphasis, ``window``, power spectrum of
    ``padded_frame_length``, ``mel_banks`` with their ``filter_spans``, log of max(energy,
    ``log_floor``)): (L,) -> (frames, bins), (B, L) -> (B, frames, bins), float32, frames =
    1 + (L - window) // frame_shift. Reference: :func:`deepsound_rt.models.fbank.kaldi_fbank`.
    """
    frame_length = window.numel()
    if waveform.dim() not in (1, 2):
        raise ValueError(f"waveform must be (L,) or (B, L), got shape {tuple(waveform.shape)}")
    if waveform.shape[-1] < frame_length:
        raise ValueError(f"waveform needs at least {frame_length} samples, got {waveform.shape[-1]}")
    rows, lead = _as_rows(waveform, "waveform")
    path = _path(rows)
    banks, spans, window = _constant(mel_banks, rows), _constant(mel_spans, rows, torch.int32), _constant(window, rows)
    if path == "cpp":
        out = torch.from_numpy(
            _kernels.kaldi_fbank(
                rows.numpy(), banks.numpy(), spans.numpy(), window.numpy(), frame_shift, padded_frame_length,
                preemphasis, waveform_scale, log_floor,
            )
        )
    else:
        frames = 1 + (rows.shape[-1] - frame_length) // frame_shift
        out = rows.new_empty(rows.shape[0], frames, banks.shape[0])
        _kernels.cuda_kaldi_fbank(
            rows.device.index, _stream(rows), rows.data_ptr(), rows.shape[0], rows.shape[1], banks.data_ptr(),
            spans.data_ptr(), banks.shape[0], banks.shape[1], window.data_ptr(), frame_length, frame_shift,
            padded_frame_length, preemphasis, waveform_scale, log_floor, out.data_ptr(),
        )
    return out.reshape(*lead, *out.shape[-2:])


# ---------------------------------------------------------------------------------------------
# STFT / iSTFT


def stft(x: torch.Tensor, window: torch.Tensor, hop: int) -> torch.Tensor:
    """(..., L) float -> (..., n_fft/2 + 1, 1 + L // hop) complex64 with n_fft = len(window) (a
    power of two): torch.stft centred with reflect padding, one-sided, not normalised; L > n_fft/2.

    Like torch.stft's, the result is a transposed view of a (..., frames, bins) tensor.
    """
    rows, lead = _as_rows(x, "signal")
    path = _path(rows)
    n_fft = window.numel()
    if rows.shape[-1] <= n_fft // 2:
        raise ValueError(f"signal needs more than {n_fft // 2} samples, got {rows.shape[-1]}")
    window = _constant(window, rows)
    if path == "cpp":
        spec = torch.from_numpy(_kernels.stft(rows.numpy(), window.numpy(), hop))
    else:
        frames = 1 + rows.shape[-1] // hop
        spec = torch.empty(rows.shape[0], frames, n_fft // 2 + 1, dtype=torch.complex64, device=rows.device)
        _kernels.cuda_stft(
            rows.device.index, _stream(rows), rows.data_ptr(), rows.shape[0], rows.shape[1], window.data_ptr(),
            n_fft, hop, spec.data_ptr(),
        )
    return spec.reshape(*lead, *spec.shape[-2:]).transpose(-1, -2)


def istft(spec: torch.Tensor, window: torch.Tensor, hop: int, length: int) -> torch.Tensor:
    """(..., n_fft/2 + 1, frames) complex -> (..., length) float32: torch.istft with the parameters
    of :func:`stft`. ``length`` must be in [1, hop · frames] (every sample then has window overlap)."""
    n_fft = window.numel()
    bins = n_fft // 2 + 1
    if spec.dim() < 2 or spec.shape[-2] != bins:
        raise ValueError(f"spectrogram must be (..., {bins}, frames), got shape {tuple(spec.shape)}")
    frames = spec.shape[-1]
    if not 1 <= length <= hop * frames:
        raise ValueError(f"length must be in [1, {hop * frames}] for {frames} frames, got {length}")
    path = _path(spec)
    lead = tuple(spec.shape[:-2])
    # The kernels read (signal, frame, bin): free for spectra that come from stft().
    rows = spec.detach().to(torch.complex64).transpose(-1, -2).reshape(-1, frames, bins).contiguous()
    window = _constant(window, rows)
    if path == "cpp":
        out = torch.from_numpy(_kernels.istft(rows.numpy(), window.numpy(), hop, length))
    else:
        workspace = torch.empty(rows.shape[0] * frames * n_fft, device=rows.device)
        out = torch.empty(rows.shape[0], length, device=rows.device)
        _kernels.cuda_istft(
            rows.device.index, _stream(rows), rows.data_ptr(), rows.shape[0], frames, window.data_ptr(), n_fft,
            hop, length, workspace.data_ptr(), out.data_ptr(),
        )
    return out.reshape(*lead, length)
