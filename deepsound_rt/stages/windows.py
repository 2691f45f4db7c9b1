"""Whole videos as windows of the flow network's training length: where each window sits on the
three time grids, which features it takes, and how its audio joins the previous window's.

The grids: Synchformer tokens come from 16-frame segments every 8 frames at 25 fps (a segment
starts every 0.32 s, 8 tokens each), CLIP features sit on an 8 fps grid, and latents on a grid of
``2 * hop / sample_rate`` seconds (1024/44100 s, 43.07 per second, at 44.1 kHz; 512/16000 s at
16 kHz). A window of 8 s is exactly 25 segment starts (200 frames, 24 segments), 64 CLIP slots and
(at 44.1 kHz) 345 latents.

The rule (all arithmetic exact, in fractions of a second):

- **Starts on the segment grid.** Window k starts at ``m_k`` segments (``0.32 * m_k`` s), so its 24
  segments are exactly segments ``m_k .. m_k + 23`` of the whole video, and its sync features are
  the whole video's tokens ``8 m_k .. 8 m_k + 191``, unchanged.
- **Stride.** The overlap is the asked one rounded down to whole segments (2 s -> 6 segments,
  1.92 s); windows start every ``25 - 6 = 19`` segments (6.08 s). The last window ends at the
  video's end rounded up to the segment grid (less than 0.32 s past it), and starts no earlier
  than one overlap after the one before the previous window's start, so that no moment lies in
  three windows (then it ends up to one overlap past the video). The 25 fps frames past the
  video's end hold its last frame, as the slots up to the end of its display do.
- **CLIP.** A window starting at 0.32 m s takes the whole video's 8 fps slots from
  ``round(64 m / 25)`` on: the slot nearest its own first slot. The distance is a multiple of
  1/25 of a slot, never a half, so at most 12/25 of 1/8 s (60 ms); MMAudio's own frame picking
  (the first frame at or after each slot) moves frames by up to a source frame (40 ms at 25 fps).
- **Crossfade seams** (``crossfade``, the default): each window's 8 s of audio starts at exactly
  ``0.32 m_k * sample_rate`` samples (14112 m at 44.1 kHz, 5120 m at 16 kHz) and joins the audio
  before it across their overlap with equal-power weights: over the overlap's L samples,
  ``u = (i + 0.5) / L``, ``w_prev = cos(pi/2 u)``, ``w_next = sin(pi/2 u)`` (the windows are drawn
  independently, so their powers add: ``w_prev^2 + w_next^2 = 1``).
- **Inpainted seams** (``inpaint``): the windows share one latent grid. Window k's latents start
  at the latent nearest its start, ``floor(m_k * 0.32 * sample_rate / (2 hop) + 1/2)``; at 44.1 kHz
  0.32 s is 13.78125 latents, so the audio moves by at most 15/32 of a latent earlier or 16/32 later
  (at most 512 samples, 11.6 ms, a third of a 25 fps frame; at 16 kHz 0.32 s is 10 latents and
  nothing moves). Its leading latents that lie in the previous window are held to that window's
  latents while it is sampled (:func:`~deepsound_rt.models.mmaudio.sampler.euler_sample`), so
  both windows decode the same latents there; the audio joins across the overlap with equal-gain
  weights ``w_prev = 1 - u``, ``w_next = u`` (the two signals are nearly the same, so equal power
  would lift the middle by up to 3 dB). Each window keeps its 345 latents' audio
  (353,280 samples), which reaches 480 samples past its 8 s; moved earlier by at most 480 samples,
  the last window still reaches the video's end.
- A video no longer than one window is one window of its own length, as it always was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..models.mmaudio.network import (
    CLIP_FPS,
    LATENT_DOWNSAMPLE,
    SYNC_FEATURES_PER_SEGMENT,
    SYNC_FPS,
    SYNC_SEGMENT_STEP,
    TRAINING_DURATION_S,
    sequence_lengths,
)

SEGMENT_S = Fraction(SYNC_SEGMENT_STEP, SYNC_FPS)
"""Seconds between the starts of Synchformer segments (0.32 s): the grid windows start on."""
WINDOW_S = Fraction(TRAINING_DURATION_S)
WINDOW_SEGMENTS = int(WINDOW_S / SEGMENT_S)
"""Segment starts per window (25): 8 s is a whole number of 0.32 s strides."""


@dataclass(frozen=True)
class Window:
    """One window of a :class:`WindowPlan`, placed on each grid of the whole video."""

    index: int
    start: Fraction
    """Seconds from the video's start; a multiple of 0.32 s."""
    clip_first: int
    """First of the whole video's 8 fps CLIP slots it takes."""
    sync_first: int
    """First of the whole video's sync tokens it takes (8 per segment)."""
    latent_first: int
    """Its first latent on the whole video's latent grid (where ``inpaint`` places it)."""
    sample_first: int
    """Where its audio starts in the output."""
    samples: int
    """How many of its samples go there."""
    fade: int
    """Of those, how many join the audio before it (its overlap with the previous window)."""
    held: int
    """``inpaint``: its leading latents held to the previous window's; 0 otherwise."""

    @property
    def start_s(self) -> float:
        return float(self.start)


@dataclass(frozen=True)
class WindowPlan:
    """Every window of a video of ``duration`` seconds, with the lengths they share."""

    duration: Fraction
    seam: str
    windows: tuple[Window, ...]
    lengths: tuple[int, int, int]
    """(latent, clip, sync) tokens of every window."""
    window_s: float
    """Seconds of each window: the training length, or the video's when it is one window."""
    overlap_s: float
    """The overlap the windows were planned with (the asked one on the segment grid); 0 for one window."""
    num_samples: int
    """Samples of the joined audio: ``round(duration * sample_rate)``."""
    clip_slots: int
    """8 fps slots the windows read: the video's, or more when the last window ends past it."""
    sync_frames: int
    """25 fps frames the windows' segments read, likewise."""

    @property
    def duration_s(self) -> float:
        return float(self.duration)

    @property
    def frames_needed(self) -> tuple[int, int]:
        """(CLIP slots, 25 fps frames) to ask the frame stream for."""
        return self.clip_slots, self.sync_frames


def plan_windows(duration: Fraction | float, sample_rate: int, hop: int, overlap_s: float = 2.0,
                 seam: str = "crossfade") -> WindowPlan:
    """The windows for ``duration`` seconds of audio at ``sample_rate`` (mel ``hop``), by the rule
    in this module's docstring."""
    duration = Fraction(duration)
    num_samples = round(duration * sample_rate)
    if duration <= WINDOW_S:
        lengths = sequence_lengths(float(duration), sample_rate, hop)
        only = Window(0, Fraction(0), 0, 0, 0, 0, num_samples, 0, 0)
        return WindowPlan(duration, seam, (only,), lengths, float(duration), 0.0, num_samples,
                          math.floor(CLIP_FPS * duration), math.floor(SYNC_FPS * duration))
    lengths = sequence_lengths(float(WINDOW_S), sample_rate, hop)
    latent_len, clip_len, _ = lengths
    latent_samples = LATENT_DOWNSAMPLE * hop
    overlap = min(math.floor(Fraction(overlap_s) / SEGMENT_S), WINDOW_SEGMENTS // 2)
    stride = WINDOW_SEGMENTS - overlap
    last = math.ceil((duration - WINDOW_S) / SEGMENT_S)  # the earliest last start that reaches the end
    count = 1 + math.ceil(last / stride)
    starts = [k * stride for k in range(count - 1)]
    starts.append(last if count == 2 else max(last, starts[-1] + overlap))
    windows: list[Window] = []
    for index, segment in enumerate(starts):
        start = segment * SEGMENT_S
        latent_first = math.floor(start * sample_rate / latent_samples + Fraction(1, 2))
        if seam == "inpaint":
            sample_first, samples = latent_first * latent_samples, latent_len * latent_samples
        else:
            sample_first, samples = round(start * sample_rate), round(WINDOW_S * sample_rate)
        previous = windows[-1] if windows else None
        fade = max(0, previous.sample_first + previous.samples - sample_first) if previous else 0
        held = previous.latent_first + latent_len - latent_first if previous and seam == "inpaint" else 0
        windows.append(Window(index, start, round(start * CLIP_FPS), segment * SYNC_FEATURES_PER_SEGMENT,
                              latent_first, sample_first, samples, fade, max(held, 0)))
    final = windows[-1]
    if final.sample_first + final.samples < num_samples:
        raise AssertionError(f"the last window ends at sample {final.sample_first + final.samples}, "
                             f"before the audio's {num_samples}")
    sync_frames = (final.start + WINDOW_S) * SYNC_FPS  # 8 m + 200: the last window's segments end there
    return WindowPlan(duration, seam, tuple(windows), lengths, float(WINDOW_S), float(overlap * SEGMENT_S),
                      num_samples, final.clip_first + clip_len, int(sync_frames))


def seam_weights(length: int, seam: str) -> tuple[np.ndarray, np.ndarray]:
    """(w_prev, w_next) over a seam of ``length`` samples, u = (i + 0.5) / length: equal power
    (cos, sin of pi/2 u) for ``crossfade``, equal gain (1 - u, u) for ``inpaint``."""
    u = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    if seam == "inpaint":
        return 1.0 - u, u
    return np.cos(np.pi / 2 * u), np.sin(np.pi / 2 * u)


class AudioJoin:
    """The joined audio of a plan: windows are added in order, each across its seam."""

    def __init__(self, plan: WindowPlan):
        self.plan = plan
        final = plan.windows[-1]
        self.audio = np.zeros(final.sample_first + final.samples, dtype=np.float32)
        self.added = 0

    def add(self, window: Window, waveform: np.ndarray) -> None:
        """Place ``window``'s waveform (at least ``window.samples`` long) after the windows before it."""
        if window.index != self.added:
            raise ValueError(f"window {window.index} added after {self.added} windows; add them in order")
        if len(waveform) < window.samples:
            raise ValueError(f"window {window.index} has {len(waveform)} samples, {window.samples} are placed")
        first, fade = window.sample_first, window.fade
        part = np.asarray(waveform[: window.samples], dtype=np.float32)
        if fade:
            w_prev, w_next = seam_weights(fade, self.plan.seam)
            seam = slice(first, first + fade)
            self.audio[seam] = self.audio[seam] * w_prev + part[:fade] * w_next
        self.audio[first + fade : first + window.samples] = part[fade:]
        self.added += 1

    def result(self) -> np.ndarray:
        """The joined audio, ``plan.num_samples`` long."""
        if self.added != len(self.plan.windows):
            raise ValueError(f"{self.added} of {len(self.plan.windows)} windows added")
        return self.audio[: self.plan.num_samples]
