"""A picture of a result: a strip of video frames over the waveform and the log-mel spectrogram of
the generated audio, on one time axis, with each DeepSound step's decision in a lane below.

Everything drawn comes in as data (audio, frames, step records, markers), so the server's page
and ``run --plot`` draw the same picture, and callers can add their own time markers (generation
windows, seams). Rendering uses matplotlib's object API on the Agg canvas, which is safe in
worker threads (pyplot is not).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

FRAME_HEIGHT = 96  # pixels per thumbnail; the strip is resampled to the figure anyway


@dataclass(frozen=True)
class Marker:
    """A moment (``end_s`` None) or a span on the audio's time axis, labelled."""

    start_s: float
    end_s: float | None = None
    label: str = ""


class StepLike(Protocol):
    step: str
    decision: str
    seconds: float


def video_frames(video: str | Path, duration_s: float, count: int = 8) -> list[tuple[float, np.ndarray]]:
    """``count`` (time, RGB thumbnail) pairs evenly over the first ``duration_s`` seconds: for each
    slot's middle, the first frame shown at or after it (or the last one before the end)."""
    from .io.video import first_video_stream, open_media

    video = Path(video)
    targets = [(index + 0.5) * duration_s / count for index in range(count)]
    picked: list[tuple[float, np.ndarray]] = []
    last = None
    with open_media(video) as container:
        stream = first_video_stream(container, video)
        width = max(1, round(stream.codec_context.width * FRAME_HEIGHT / max(stream.codec_context.height, 1)))
        for frame in container.decode(stream):
            time = frame.time if frame.time is not None else 0.0
            last = frame
            while len(picked) < count and time >= targets[len(picked)]:
                picked.append((time, frame.to_ndarray(format="rgb24", width=width, height=FRAME_HEIGHT)))
            if len(picked) == count or time > duration_s:
                break
    while last is not None and len(picked) < count:
        picked.append((last.time or 0.0, last.to_ndarray(format="rgb24", width=width, height=FRAME_HEIGHT)))
    return picked


def log_mel(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """(mel bins × frames, seconds per frame) from MMAudio's mel front end with the generator's own
    parameters for that sample rate, on our mel kernel where it is built."""
    import torch

    from .kernels import enabled_for
    from .models.mel import MEL_16K, MEL_44K, MelConverter

    params = {MEL_16K.sampling_rate: MEL_16K, MEL_44K.sampling_rate: MEL_44K}.get(sample_rate)
    if params is None:
        raise ValueError(f"no mel parameters for {sample_rate} Hz (the generator rates are 16000 and 44100)")
    converter = MelConverter.from_config(params, use_kernels=enabled_for("auto", torch.device("cpu")))
    with torch.inference_mode():
        mel = converter(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)))
    return mel.numpy(), params.hop_size / sample_rate


def render(audio: np.ndarray | None, sample_rate: int, duration_s: float, **drawn) -> bytes:
    """The picture of :func:`figure` as PNG bytes."""
    buffer = io.BytesIO()
    figure(audio, sample_rate, duration_s, **drawn).savefig(
        buffer, format="png", pil_kwargs={"compress_level": 1})  # zlib's best costs a second here
    return buffer.getvalue()


def figure(audio: np.ndarray | None, sample_rate: int, duration_s: float, *,
           frames: Sequence[tuple[float, np.ndarray]] = (), steps: Sequence[StepLike] = (),
           markers: Sequence[Marker] = (), step1_audio: np.ndarray | None = None, title: str = ""):
    """The picture as a matplotlib Figure (1000 × 720 px). ``audio`` None: the result has no audio
    track. ``step1_audio``, when given and different from ``audio``, is drawn in grey behind it, so
    what removal or post-processing changed shows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    picture = Figure(figsize=(10, 7.2), dpi=100)  # fixed margins: a layout engine would draw it twice
    FigureCanvasAgg(picture)
    grid = picture.add_gridspec(4, 1, height_ratios=[1.1, 1.4, 2.2, 1.0], left=0.07, right=0.985, bottom=0.02,
                               top=0.94 if title else 0.98, hspace=0.28)
    strip = picture.add_subplot(grid[0])
    wave = picture.add_subplot(grid[1], sharex=strip)
    spectrum = picture.add_subplot(grid[2], sharex=strip)
    lane = picture.add_subplot(grid[3])
    if title:
        picture.suptitle(title, fontsize=11)

    _draw_frames(strip, frames, duration_s)
    if step1_audio is not None and (audio is None or not np.array_equal(step1_audio, audio)):
        _draw_envelope(wave, step1_audio, sample_rate, color="0.75", label="step-1 audio")
    if audio is None:
        for axes in (wave, spectrum):
            axes.text(0.5, 0.5, "no audio (post-processing removed it)", ha="center", va="center",
                      transform=axes.transAxes, color="0.3")
    else:
        _draw_envelope(wave, audio, sample_rate, color="tab:blue", label="result")
        mel, seconds_per_frame = log_mel(audio, sample_rate)
        spectrum.imshow(mel, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                        extent=(0, mel.shape[1] * seconds_per_frame, 0, mel.shape[0]))
    if wave.collections:
        wave.legend(loc="upper right", fontsize=7, frameon=False)
    wave.set_ylim(-1.05, 1.05)
    wave.set_ylabel("waveform", fontsize=8)
    spectrum.set_ylabel("mel bin", fontsize=8)
    spectrum.set_xlabel("seconds", fontsize=8)
    spectrum.set_xlim(0, duration_s)
    for axes in (strip, wave, spectrum):
        axes.tick_params(labelsize=7)
    _draw_markers((strip, wave, spectrum), markers)
    _draw_steps(lane, steps)
    return picture


def render_result(result, markers: Sequence[Marker] = (), frame_count: int = 8, name: str | None = None) -> bytes:
    """:func:`render` for a :class:`~deepsound_rt.results.DeepSoundResult` (or a step-1
    :class:`~deepsound_rt.results.GenerationResult`): its video's frames, its step records, the
    step-1 audio behind the final audio, and the seams of its windows (:func:`window_markers`);
    ``name`` (default: the video's file name) heads the picture."""
    steps = getattr(result, "steps", ())
    generate = result.step("generate") if steps else None
    audio = result.audio if steps else result.waveform
    name = name or Path(result.video).name
    return render(audio, result.sample_rate, result.duration_s,
                  frames=video_frames(result.video, result.duration_s, frame_count), steps=steps,
                  markers=[*window_markers(result.windows, result.sample_rate), *markers],
                  step1_audio=None if generate is None else generate.audio,
                  title=f"{name}: {result.duration_s:.2f} s at {result.sample_rate} Hz")


def window_markers(plan, sample_rate: int) -> list[Marker]:
    """Where the windows of a long video's audio join: each seam's span (the overlap the join rule
    weighs), labelled with the window that starts there; none for audio made in one window."""
    if plan is None or len(plan.windows) < 2:
        return []
    return [Marker(window.sample_first / sample_rate, (window.sample_first + window.fade) / sample_rate,
                   f"w{window.index} {plan.seam}") for window in plan.windows[1:]]


def _draw_envelope(axes, audio: np.ndarray, sample_rate: int, columns: int = 2000, **style) -> None:
    """The waveform as its min/max per column: what a line through every sample would show, at a
    fraction of the drawing time."""
    audio = np.asarray(audio, dtype=np.float32)
    per_column = max(1, len(audio) // columns)
    usable = len(audio) // per_column * per_column
    blocks = audio[:usable].reshape(-1, per_column)
    times = (np.arange(len(blocks)) + 0.5) * per_column / sample_rate
    axes.fill_between(times, blocks.min(axis=1), blocks.max(axis=1), lw=0.3, edgecolor=style["color"], **style)


def _draw_frames(axes, frames: Sequence[tuple[float, np.ndarray]], duration_s: float) -> None:
    """Thumbnails side by side over equal slots of the time axis (the slot each was taken from)."""
    axes.set_yticks([])
    axes.set_ylabel("video", fontsize=8)
    if not frames:
        return
    height = min(image.shape[0] for _, image in frames)
    strip = np.concatenate([image[:height] for _, image in frames], axis=1)
    axes.imshow(strip, aspect="auto", extent=(0, duration_s, 0, 1), interpolation="bilinear")
    for index in range(1, len(frames)):
        axes.axvline(index * duration_s / len(frames), color="white", lw=0.8)
    axes.tick_params(labelbottom=False)


def _draw_markers(axes_list, markers: Sequence[Marker]) -> None:
    for marker in markers:
        for axes in axes_list:
            if marker.end_s is None:
                axes.axvline(marker.start_s, color="tab:red", lw=1, ls="--")
            else:
                axes.axvspan(marker.start_s, marker.end_s, color="tab:red", alpha=0.12)
        if marker.label:
            axes_list[1].annotate(marker.label, (marker.start_s, 1.0), xycoords=("data", "axes fraction"),
                                  fontsize=7, color="tab:red", va="bottom")


# The colour of a step box says what its decision did to the audio.
_STEP_COLOURS = {"plan": "#d9d9d9", "generate": "#9ecae1", "judge": "#fdd0a2", "remove": "#c6b4e0",
                 "silence": "#c7e9c0", "postprocess": "#fcbba1"}


def _draw_steps(axes, steps: Sequence[StepLike]) -> None:
    """One box per step, in the order they ran: the step, its decision and its time."""
    axes.set_axis_off()
    axes.set_xlim(0, max(len(steps), 1))
    axes.set_ylim(0, 1)
    axes.text(-0.045, 0.5, "steps", fontsize=8, rotation=90, transform=axes.transAxes, ha="center", va="center")
    for index, record in enumerate(steps):
        axes.add_patch(_box(index, _STEP_COLOURS.get(record.step, "#eeeeee")))
        decision = record.decision if len(record.decision) <= 38 else record.decision[:36] + "…"
        axes.text(index + 0.5, 0.5, f"{record.step}\n{_wrap(decision)}\n{record.seconds:.2f} s", ha="center",
                  va="center", fontsize=7)


def _box(index: int, colour: str):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((index + 0.05, 0.08), 0.9, 0.84, boxstyle="round,pad=0.0,rounding_size=0.08",
                          facecolor=colour, edgecolor="0.4", lw=0.6)


def _wrap(text: str, width: int = 19) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])
