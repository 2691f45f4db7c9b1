"""Writing the generated audio: a WAV file, or the source video with the audio added.

Outputs are written to a hidden temporary file beside the target and moved onto it only when
complete, so a crash or error never leaves a partial file under the name the user asked for.
Missing output directories are an error rather than created: a typo in a path should not
silently create a directory tree.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import av
import numpy as np
import soundfile
import torch

from deepsound_rt.errors import OutputError
from deepsound_rt.io.video import ffmpeg_reason, first_video_stream, open_media

AUDIO_SUFFIXES = (".wav",)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
_REENCODE_CODEC = "libx264"


def write_output(
    out_path: str | Path,
    audio: np.ndarray | torch.Tensor | None,
    sample_rate: int,
    source_video: str | Path | None,
    duration_s: float,
) -> Path:
    """Write mono float ``audio`` in [-1, 1] to ``out_path``; returns the path written.

    ``.wav``: 32-bit float WAV, so the file holds exactly what the model produced (no
    quantisation, no clipping of overshoots) and can be compared against reference numbers.
    ``.mp4``/``.mov``/``.mkv``: the first ``duration_s`` seconds of ``source_video``'s video
    stream, copied packet for packet (no quality loss), plus the audio as AAC at
    ``sample_rate``. The source's own audio is dropped. Only if the container cannot hold the
    source codec (e.g. VP8 or Theora into .mp4) is the video re-encoded, as H.264. ``audio=None``
    (DeepSound's ``rm`` fallback) writes the video with no audio track.
    """
    out_path = check_output_path(out_path, source_video)
    if audio is None and out_path.suffix.lower() in AUDIO_SUFFIXES:
        raise OutputError(f"{out_path}: there is no audio to write (post-processing removed it); write a video")
    samples = None if audio is None else _mono_float32(audio)
    temporary = _create_temporary(out_path)
    try:
        if out_path.suffix.lower() in AUDIO_SUFFIXES:
            soundfile.write(temporary, samples, sample_rate, subtype="FLOAT", format="WAV")
        else:
            _write_video(temporary, samples, sample_rate, Path(source_video), duration_s)
        os.replace(temporary, out_path)
    except (av.FFmpegError, OSError, soundfile.LibsndfileError) as error:
        temporary.unlink(missing_ok=True)
        reason = ffmpeg_reason(error) if isinstance(error, av.FFmpegError) else getattr(error, "strerror", None) or str(error)
        raise OutputError(f"{out_path}: cannot write ({reason})") from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return out_path


def write_bytes(out_path: str | Path, data: bytes) -> Path:
    """Write ``data`` (a picture, a log, an engine) to ``out_path`` through a temporary file beside
    it, so a reader never sees half of it and an interruption leaves no temporary behind."""
    out_path = Path(out_path)
    temporary = _create_temporary(out_path)
    try:
        temporary.write_bytes(data)
        os.replace(temporary, out_path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"{out_path}: cannot write ({error.strerror or error})") from error
        raise
    return out_path


def check_output_path(out_path: str | Path, source_video: str | Path | None) -> Path:
    """Refuse an output we could not write, before any expensive work is done for it."""
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in AUDIO_SUFFIXES + VIDEO_SUFFIXES:
        supported = ", ".join(AUDIO_SUFFIXES + VIDEO_SUFFIXES)
        raise OutputError(f"{out_path}: unsupported output type '{out_path.suffix}'; use one of {supported}")
    if suffix in VIDEO_SUFFIXES and source_video is None:
        raise OutputError(f"{out_path}: a video output needs the source video")
    if source_video is not None and _same_file(out_path, Path(source_video)):
        raise OutputError(f"{out_path}: refusing to overwrite the input video; choose another output path")
    directory = out_path.parent
    if not directory.exists():
        raise OutputError(f"{out_path}: output directory {directory} does not exist")
    if not directory.is_dir():
        raise OutputError(f"{out_path}: {directory} is not a directory")
    if out_path.is_dir():
        raise OutputError(f"{out_path}: is a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"{out_path}: output directory {directory} is not writable")
    return out_path


def _same_file(first: Path, second: Path) -> bool:
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def _mono_float32(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N,) float32 samples from a (N,), (1, N) or (1, 1, N) array or tensor."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    samples = np.asarray(audio, dtype=np.float32).squeeze()
    if samples.ndim != 1:
        raise ValueError(f"expected mono audio, got shape {audio.shape}")
    return samples


def _create_temporary(out_path: Path) -> Path:
    """An empty ``.{name}.tmp-XXXXXXXX{suffix}`` beside the target: same directory so the final
    ``os.replace`` is an atomic rename; created with the usual umask permissions (unlike
    ``mkstemp``'s 0600) because it becomes the user's file."""
    temporary = out_path.with_name(f".{out_path.stem}.tmp-{secrets.token_hex(4)}{out_path.suffix}")
    try:
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as error:
        raise OutputError(f"{out_path}: cannot write in {out_path.parent} ({error.strerror})") from error
    return temporary


def _write_video(target: Path, samples: np.ndarray | None, sample_rate: int, source: Path, duration_s: float) -> None:
    with open_media(source) as source_container, av.open(str(target), "w") as output:
        source_stream = first_video_stream(source_container, source)
        if source_stream.codec_context.name in output.supported_codecs:
            video_stream = output.add_stream_from_template(source_stream)
            audio_stream = None if samples is None else output.add_stream("aac", rate=sample_rate, layout="mono")
            _copy_video(source_container, source_stream, video_stream, output, duration_s)
        else:
            # The rate only sets the encoder's time base; frames keep their own timestamps.
            video_stream = output.add_stream(_REENCODE_CODEC, rate=source_stream.guessed_rate or 25)
            video_stream.width = source_stream.codec_context.width
            video_stream.height = source_stream.codec_context.height
            video_stream.pix_fmt = "yuv420p"
            video_stream.options = {"crf": "18"}
            audio_stream = None if samples is None else output.add_stream("aac", rate=sample_rate, layout="mono")
            _reencode_video(source_container, source_stream, video_stream, output, duration_s)
        if audio_stream is not None:
            _encode_audio(samples, sample_rate, audio_stream, output)


def _copy_video(
    source: av.container.InputContainer,
    source_stream: av.video.stream.VideoStream,
    video_stream: av.video.stream.VideoStream,
    output: av.container.OutputContainer,
    duration_s: float,
) -> None:
    """Copy packets from the first keyframe until the first one *decoded* at or after
    ``duration_s`` (as ``ffmpeg -c copy -t`` does). Cutting by decode time keeps every frame the
    kept ones reference; with B-frames the video can end a frame or two after ``duration_s``."""
    started = False
    for packet in source.demux(source_stream):
        if packet.size == 0:
            continue  # the empty packet that asks a decoder to flush
        # Matroska stores no decode times; there the first packets carry only a pts.
        decode_time = packet.dts if packet.dts is not None else packet.pts
        if decode_time is not None and decode_time * packet.time_base >= duration_s:
            break
        started = started or packet.is_keyframe
        if started:
            packet.stream = video_stream
            output.mux(packet)


def _reencode_video(
    source: av.container.InputContainer,
    source_stream: av.video.stream.VideoStream,
    video_stream: av.video.stream.VideoStream,
    output: av.container.OutputContainer,
    duration_s: float,
) -> None:
    for frame in source.decode(source_stream):
        if frame.time is not None and frame.time >= duration_s:
            break
        frame.pict_type = av.video.frame.PictureType.NONE
        output.mux(video_stream.encode(frame))
    output.mux(video_stream.encode())


def _encode_audio(
    samples: np.ndarray, sample_rate: int, audio_stream: av.audio.stream.AudioStream, output: av.container.OutputContainer
) -> None:
    """Encode all samples; PyAV cuts the frame into the encoder's frame size (1024 for AAC)."""
    frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    output.mux(audio_stream.encode(frame))
    output.mux(audio_stream.encode())
