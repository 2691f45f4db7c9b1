"""Step 3, "Remove": take the voice-over out of the generated audio with a vocal separator.

:func:`demix` is MusicSourceSeparationTraining's chunked overlap-add procedure (generic mode) as
DeepSound-V1 runs it; :func:`remove_vocals` is what DeepSound's Step3 does around it. Both take the
network as a plain callable, so they do not care which backend runs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..audio import resample
from ..errors import InputError
from ..models.bs_roformer import (VIPERX_BATCH_SIZE, VIPERX_CHUNK_SIZE, VIPERX_NUM_OVERLAP, BSRoformer,
                                  separator_network)
from ..models.bs_roformer_graph import SEPARATOR_CORE, SeparatorCoreGraph
from ..timing import Timings
from ..weights_dir import WeightsSource

if TYPE_CHECKING:
    from ..backends.base import Graph

ModelFn = Callable[[torch.Tensor], torch.Tensor]
"""(B, channels, chunk_size) mix chunks -> (B, channels, chunk_size) vocals."""

SEPARATOR_RATE = 44100


@dataclass(frozen=True)
class Chunk:
    """One model call's slice of the (border-padded) signal."""

    start: int
    length: int  # valid samples; the rest up to chunk_size is padding
    reflect_padded: bool  # partial chunks longer than half a chunk are reflect-padded, others zero-padded


@dataclass(frozen=True)
class DemixPlan:
    """Where the chunks go and how each batch is windowed: every discrete choice of the procedure."""

    chunk_size: int
    border: int  # reflect padding added on both ends (0 when the signal is too short)
    fade_size: int
    batches: tuple[tuple[Chunk, ...], ...]
    keep_fade_in: tuple[bool, ...]  # per batch
    keep_fade_out: tuple[bool, ...]  # per batch

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        return tuple(chunk for batch in self.batches for chunk in batch)

    def window(self, batch_index: int) -> torch.Tensor:
        """The linear-fade window for all chunks of one batch (upstream picks it once per batch)."""
        window = torch.ones(self.chunk_size)
        if self.fade_size and self.keep_fade_out[batch_index]:
            window[-self.fade_size :] = torch.linspace(1, 0, self.fade_size)
        if self.fade_size and self.keep_fade_in[batch_index]:
            window[: self.fade_size] = torch.linspace(0, 1, self.fade_size)
        return window


def plan_demix(num_samples: int, chunk_size: int, num_overlap: int, batch_size: int) -> DemixPlan:
    """Reproduce upstream's chunk layout.

    Chunks start every ``chunk_size // num_overlap`` samples of the border-padded signal. After each
    batch one window is chosen for all of its chunks: the fade-in is dropped only when the batch's
    last chunk is chunk 0, else the fade-out is dropped when the batch reaches the end. So with
    batch_size > 1 chunk 0 keeps its fade-in and every chunk of the final batch loses its fade-out.
    """
    step = chunk_size // num_overlap
    if num_samples <= 0 or step <= 0 or batch_size <= 0:
        raise ValueError(
            f"bad demix setup: {num_samples} samples, chunk {chunk_size}, overlap {num_overlap}, batch {batch_size}"
        )
    border = chunk_size - step
    if not (num_samples > 2 * border and border > 0):
        border = 0
    padded = num_samples + 2 * border
    starts = range(0, padded, step)
    chunks = [Chunk(s, min(chunk_size, padded - s), min(chunk_size, padded - s) > chunk_size // 2) for s in starts]
    batches = tuple(tuple(chunks[i : i + batch_size]) for i in range(0, len(chunks), batch_size))
    ends_at_zero = [batch[-1].start == 0 for batch in batches]
    reaches_end = [batch[-1].start + step >= padded for batch in batches]
    return DemixPlan(
        chunk_size=chunk_size,
        border=border,
        fade_size=chunk_size // 10,
        batches=batches,
        keep_fade_in=tuple(not first for first in ends_at_zero),
        keep_fade_out=tuple(first or not last for first, last in zip(ends_at_zero, reaches_end)),
    )


def _pad_chunk(part: torch.Tensor, chunk: Chunk, chunk_size: int) -> torch.Tensor:
    missing = chunk_size - chunk.length
    if not missing:
        return part
    return F.pad(part, (0, missing), mode="reflect" if chunk.reflect_padded else "constant")


def demix(
    model_fn: ModelFn,
    mix: torch.Tensor,
    chunk_size: int = VIPERX_CHUNK_SIZE,
    num_overlap: int = VIPERX_NUM_OVERLAP,
    batch_size: int = VIPERX_BATCH_SIZE,
) -> torch.Tensor:
    """(channels, T) mix -> (channels, T) float32 vocals by chunked, windowed overlap-add.

    The mix is reflect-padded by the overlap border (when long enough), cut into chunks of
    ``chunk_size`` run ``batch_size`` at a time, and each output is weighted by its batch's fade
    window; the sum is divided by the summed window, with 0/0 set to 0 (an unpadded signal's first
    sample), and the border is cut off again. Accumulation is float32 in upstream's order.
    """
    mix = mix.float()
    num_samples = mix.shape[-1]
    plan = plan_demix(num_samples, chunk_size, num_overlap, batch_size)
    if plan.border:
        mix = F.pad(mix, (plan.border, plan.border), mode="reflect")
    result = torch.zeros_like(mix)
    counter = torch.zeros_like(mix)
    for batch_index, batch in enumerate(plan.batches):
        parts = [_pad_chunk(mix[:, c.start : c.start + c.length], c, chunk_size) for c in batch]
        vocals = model_fn(torch.stack(parts)).float()
        window = plan.window(batch_index).to(mix.device)
        for chunk, chunk_vocals in zip(batch, vocals):
            span = slice(chunk.start, chunk.start + chunk.length)
            result[:, span] += chunk_vocals[:, : chunk.length] * window[: chunk.length]
            counter[:, span] += window[: chunk.length]
    estimate = torch.nan_to_num(result / counter, nan=0.0)
    return estimate[:, plan.border : plan.border + num_samples]


def _fit_length(audio: torch.Tensor, length: int) -> torch.Tensor:
    if audio.shape[-1] >= length:
        return audio[..., :length]
    return F.pad(audio, (0, length - audio.shape[-1]))


def remove_vocals(
    model_fn: ModelFn,
    audio: torch.Tensor,
    sample_rate: int,
    separator_rate: int = SEPARATOR_RATE,
    chunk_size: int = VIPERX_CHUNK_SIZE,
    num_overlap: int = VIPERX_NUM_OVERLAP,
    batch_size: int = VIPERX_BATCH_SIZE,
) -> torch.Tensor:
    """(T,) mono audio at ``sample_rate`` -> (T,) float32 instrumental at ``sample_rate``.

    As DeepSound's Step3: resample to the separator's rate, duplicate mono to stereo, demix, and
    keep mix − vocals (the input unnormalised, as the viperx config has no ``normalize``). Step3
    stops there and writes the stereo 44.1 kHz result; our pipeline carries mono at the generator's
    rate, so we average the two channels (what DeepSound's Step4 and ``librosa.load`` see) and
    resample back, trimming to the input length.
    """
    audio = torch.as_tensor(audio)
    if audio.ndim != 1 or audio.numel() == 0:
        raise InputError(f"audio to separate must be a non-empty mono waveform, got shape {tuple(audio.shape)}")
    mono = resample(audio.float(), sample_rate, separator_rate)
    mix = torch.stack((mono, mono))  # Step3 duplicates a mono file to stereo
    instrumental = (mix - demix(model_fn, mix, chunk_size, num_overlap, batch_size)).mean(dim=0)
    return _fit_length(resample(instrumental, separator_rate, sample_rate), audio.shape[-1])


class Separator:
    """A loaded BS-RoFormer and DeepSound's Step3 around it; demixing runs on the model's device.

    With a ``separator_core`` graph (:meth:`use_graphs`) the network between the STFT and the
    iSTFT runs on that graph's backend; the STFT, iSTFT and overlap-add stay here.
    """

    def __init__(self, model: BSRoformer, device: torch.device, dtype: torch.dtype):
        self.model = model.eval().to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype
        self.core: Graph | None = None
        self.last_timings = Timings()

    def graph_modules(self) -> dict[str, nn.Module]:
        """The graph this stage can run exported, as the torch module it is exported from."""
        return {SEPARATOR_CORE: SeparatorCoreGraph(self.model)}

    def use_graphs(self, graphs: Mapping[str, Graph]) -> Separator:
        """Run ``separator_core`` on the given graph when there is one (else torch)."""
        self.core = graphs.get(SEPARATOR_CORE)
        return self

    @property
    def backend(self) -> str:
        return "torch" if self.core is None else self.core.backend

    def _run_core(self, spectrum: torch.Tensor) -> torch.Tensor:
        return self.core.run({"mix_spectrum": spectrum})["stem_spectrum"].to(spectrum.device)

    def _vocals(self, chunks: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.core is None:
                return self.model(chunks.to(self.dtype))
            return self.model.separate(chunks, self._run_core)

    def remove_vocals(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """(T,) mono float32 -> (T,) instrumental at the same rate; ``last_timings`` says how long
        the separator took and on which backend."""
        signal = torch.as_tensor(np.asarray(audio, dtype=np.float32), device=self.device)
        self.last_timings = Timings()
        with self.last_timings.measure("separator", self.device, self.backend):
            instrumental = remove_vocals(self._vocals, signal, sample_rate)
        return instrumental.cpu().numpy()


def load_separator(source: WeightsSource, path: Path | None, device: torch.device, dtype: torch.dtype,
                   use_kernels: bool = False) -> Separator:
    """The viperx separator from ``source`` (its checkpoint at ``path``, or seeded random weights);
    ``use_kernels``: its STFT and iSTFT run our kernels."""
    return Separator(separator_network(source, path, use_kernels), device, dtype)
