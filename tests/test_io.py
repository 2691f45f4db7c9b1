"""Video reading (MMAudio frame selection and transforms), output writing and the sample clip."""
from __future__ import annotations

import bisect
import math
from fractions import Fraction
import os
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from torchvision.transforms import v2

from deepsound_rt.errors import InputError, OutputError
from deepsound_rt.io import output as output_module
from deepsound_rt.io import load_video, probe_video, sample_clip_path, write_output
from deepsound_rt.io.sample import make_test_video, read_frame_index, synthetic_frame
from deepsound_rt.io.video import CLIP_FPS, SYNC_FPS


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic sources shared by the tests (encoding them dominates the run time)."""
    folder = tmp_path_factory.mktemp("clips")
    return {
        "8s": make_test_video(folder / "8s.mp4", 8, 25, (160, 120)),
        "10s": make_test_video(folder / "10s.mp4", 10, 25, (160, 120), with_audio=True),
        "3s": make_test_video(folder / "3s.mp4", 3, 25, (320, 180)),
        "5fps": make_test_video(folder / "5fps.mp4", 4, 5, (160, 120)),
    }


def decoded_frames(path: Path) -> tuple[list[float], list[np.ndarray]]:
    """Every frame's time and RGB picture, decoded without any of the code under test."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        return [frame.time for frame in frames], [frame.to_ndarray(format="rgb24") for frame in frames]


def display_end(path: Path) -> Fraction:
    """When the last frame's display ends: its time plus its duration, read with PyAV alone."""
    with av.open(str(path)) as container:
        last = list(container.decode(video=0))[-1]
        return (last.pts + last.duration) * last.time_base


def expected_indices(frame_times: list[float], fps: int, end_s: float, video_end: Fraction | None = None) -> list[int]:
    """MMAudio's frame selection, restated: grid slot k (at exactly k / fps) takes the first frame
    at or after it; slots after the last frame <= end_s, before ``video_end`` (when given, and
    before ``end_s``), hold the last frame."""
    usable = [Fraction(time).limit_denominator(100_000) for time in frame_times if time <= end_s]
    indices, slot = [], 0
    while Fraction(slot, fps) <= usable[-1]:
        indices.append(bisect.bisect_left(usable, Fraction(slot, fps)))
        slot += 1
    while video_end is not None and Fraction(slot, fps) < min(video_end, Fraction(end_s) if end_s < np.inf else video_end):
        indices.append(len(usable) - 1)
        slot += 1
    return indices


def frame_indices(frames: torch.Tensor) -> list[int]:
    return [read_frame_index(frame) for frame in frames]


# --- load_video: frame counts and duration ---------------------------------------------------


@pytest.mark.parametrize(
    ("clip", "requested", "duration", "clip_count", "sync_count"),
    [
        ("10s", 8.0, 8.0, 64, 200),
        ("10s", 10.0, 10.0, 80, 250),
        ("10s", None, 10.0, 80, 250),
        # Upstream's float-accumulated slot times would give 7.96 s (63/199 frames) here.
        ("8s", 8.0, 8.0, 64, 200),
    ],
)
def test_frame_counts_and_duration(clips, clip, requested, duration, clip_count, sync_count):
    video = load_video(clips[clip], requested)
    assert video.duration_s == pytest.approx(duration)
    assert video.clip_frames.shape == (clip_count, 3, 384, 384)
    assert video.sync_frames.shape == (sync_count, 3, 224, 224)
    assert video.clip_frames.dtype == video.sync_frames.dtype == torch.uint8
    assert (video.width, video.height) == (160, 120)
    assert video.fps == 25


VFR_TIMES = [0, 0.05, 0.15, 0.2, 0.4, 0.45, 0.8, 1.0, 1.1, 1.3, 1.55, 1.6, 2.0, 2.2, 2.25, 2.5, 2.7, 2.9]


@pytest.mark.parametrize(("seconds", "fps", "frame_times"),
                         [(3.0, 12, None), (3.0, 24, None), (3.0, 5, None), (5.0, 1, None), (3.0, 25, VFR_TIMES)],
                         ids=["12fps", "24fps", "5fps", "1fps", "vfr"])
def test_duration_is_the_whole_display_time_at_any_frame_rate(tmp_path, seconds, fps, frame_times):
    """The video lasts until its last frame's display ends; the grids cover all of it (once 12 fps
    3.0 s gave 2.92 s, 1 fps 5.0 s gave 4.04 s: slots after the last frame were dropped)."""
    path = make_test_video(tmp_path / "clip.mp4", seconds, fps, (96, 64), frame_times=frame_times)
    end = display_end(path)
    if frame_times is None:
        assert end == Fraction(seconds)
    video = load_video(path, None)
    assert video.duration_s == float(end)
    assert len(video.clip_frames) == math.floor(CLIP_FPS * end)
    assert len(video.sync_frames) == math.floor(SYNC_FPS * end)
    frame_times_read, _ = decoded_frames(path)
    assert frame_indices(video.sync_frames) == expected_indices(frame_times_read, SYNC_FPS, np.inf, end)[: len(video.sync_frames)]
    assert load_video(path, 1.0).duration_s == 1.0  # a shorter request still cuts


def test_a_truncated_file_warns_with_both_lengths(tmp_path, caplog):
    """An mp4 with its index in front (+faststart), cut in half: what decodes is used, and the
    user is told that the container claimed more."""
    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for index in range(200):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(index, 96, 64), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger="deepsound_rt.io.video"):
        video = load_video(cut, None)
    assert 1.0 < video.duration_s < 7.0
    (record,) = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert "8.00 s" in record.getMessage() and f"{video.duration_s:.2f} s" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="deepsound_rt.io.video"):
        load_video(whole, None)
        load_video(cut, 1.0)  # nothing missing from what was asked
    assert not caplog.records


def test_short_clip_truncates_duration(clips):
    video = load_video(clips["3s"], 8.0)
    assert video.duration_s == pytest.approx(3.0)
    assert len(video.clip_frames) == int(CLIP_FPS * video.duration_s)
    assert len(video.sync_frames) == int(SYNC_FPS * video.duration_s)


def test_has_audio_reflects_the_source(clips):
    assert load_video(clips["10s"], 1.0).has_audio
    assert not load_video(clips["8s"], 1.0).has_audio


def test_probe_reads_headers(clips):
    probe = probe_video(clips["10s"])
    assert probe.duration_s == pytest.approx(10.0, abs=0.05)
    assert (probe.fps, probe.width, probe.height, probe.has_audio) == (25, 160, 120, True)


# --- load_video: which frames, and what they look like ---------------------------------------


def test_low_fps_source_repeats_frames_by_the_time_rule(clips):
    video = load_video(clips["5fps"], None)
    frame_times, _ = decoded_frames(clips["5fps"])
    end = display_end(clips["5fps"])
    sync_expected = expected_indices(frame_times, SYNC_FPS, end_s=np.inf, video_end=end)
    clip_expected = expected_indices(frame_times, CLIP_FPS, end_s=np.inf, video_end=end)
    assert len(video.sync_frames) == len(sync_expected) == 100 and len(video.clip_frames) == len(clip_expected) == 32
    assert frame_indices(video.sync_frames) == sync_expected
    assert frame_indices(video.clip_frames) == clip_expected
    # Each 5 fps frame covers exactly five 25 fps slots.
    assert sync_expected[:11] == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    assert set(np.bincount(sync_expected)[1:-1]) == {5}
    # The last frame (3.8 s) takes its five slots up to its time, then holds the four after it up to 4.0 s.
    assert np.bincount(sync_expected)[-1] == 9
    # A repeated frame is the very same converted picture.
    assert torch.equal(video.sync_frames[1], video.sync_frames[5])


def test_frames_equal_torchvision_transforms_on_non_square_source(clips):
    """Bit-exact against MMAudio's own transform stacks applied to the whole decoded batch."""
    video = load_video(clips["3s"], 2.0)
    frame_times, pictures = decoded_frames(clips["3s"])
    batch = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2)
    bicubic = v2.InterpolationMode.BICUBIC
    clip_reference = v2.Resize((384, 384), interpolation=bicubic)
    sync_reference = v2.Compose([v2.Resize(224, interpolation=bicubic), v2.CenterCrop(224)])
    clip_indices = expected_indices(frame_times, CLIP_FPS, end_s=2.0)[: len(video.clip_frames)]
    sync_indices = expected_indices(frame_times, SYNC_FPS, end_s=2.0)[: len(video.sync_frames)]
    assert (len(clip_indices), len(sync_indices)) == (16, 50)
    assert torch.equal(video.clip_frames, clip_reference(batch[clip_indices]))
    assert torch.equal(video.sync_frames, sync_reference(batch[sync_indices]))
    assert frame_indices(video.sync_frames) == sync_indices


# --- load_video: bad input ----------------------------------------------------------------


def write_without_keyframes(source: Path, target: Path) -> Path:
    """An mp4 whose packets are all inter frames: a video stream nothing can be decoded from."""
    with av.open(str(source)) as container, av.open(str(target), "w") as output:
        stream = output.add_stream_from_template(container.streams.video[0])
        for packet in container.demux(container.streams.video[0]):
            if packet.dts is not None and not packet.is_keyframe:
                packet.stream = stream
                output.mux(packet)
    return target


def bad_inputs(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Each bad input, and a word its error message must contain."""
    text = folder / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    data = good.read_bytes()
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    damaged = bytearray(data)
    damaged[len(data) // 3 : len(data) // 3 + 2000] = bytes(2000)
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(bytes(damaged))
    wav = folder / "speech.wav"
    soundfile.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    return {
        "missing": (folder / "missing.mp4", "no such file"),
        "directory": (folder, "directory"),
        "text": (text, "not a readable video"),
        "truncated": (truncated, "not a readable video"),
        "corrupt": (corrupt, "corrupt"),
        "wav": (wav, "no video stream"),
        "zero_frames": (make_test_video(folder / "zero.mp4", 0, 25, (160, 120)), "no video stream"),
        "no_keyframes": (write_without_keyframes(good, folder / "nokey.mp4"), "no decodable"),
        "too_short": (make_test_video(folder / "short.mp4", 0.5, 25, (160, 120)), "0.64"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "directory", "text", "truncated", "corrupt", "wav", "zero_frames", "no_keyframes", "too_short"]
)
def test_bad_input_raises_one_line_input_error(tmp_path, clips, case):
    path, reason = bad_inputs(tmp_path, clips["8s"])[case]
    with pytest.raises(InputError) as raised:
        load_video(path)
    message = str(raised.value)
    assert str(path) in message and reason in message and "\n" not in message


@pytest.mark.parametrize("duration", [0.0, -1.0, float("nan"), 0.5])
def test_unusable_duration_raises_input_error(clips, duration):
    with pytest.raises(InputError, match="requested duration") as raised:
        load_video(clips["8s"], duration)
    assert str(clips["8s"]) in str(raised.value)


# --- write_output ---------------------------------------------------------------------------

SAMPLE_RATE = 44100


def tone(seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    times = np.arange(round(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * 330 * times)).astype(np.float32)


def video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(video=0) if packet.size > 0]


def decoded_indices(path: Path) -> list[int]:
    _, pictures = decoded_frames(path)
    return [read_frame_index(torch.from_numpy(picture).permute(2, 0, 1)) for picture in pictures]


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_video_output_copies_video_and_adds_aac(tmp_path, clips, suffix):
    audio = tone(8.0)
    written = write_output(tmp_path / f"out{suffix}", audio, SAMPLE_RATE, clips["10s"], 8.0)
    assert written == tmp_path / f"out{suffix}"
    assert sorted(os.listdir(tmp_path)) == [f"out{suffix}"]
    with av.open(str(written)) as container:
        assert [stream.type for stream in container.streams] == ["video", "audio"]
        video_stream, audio_stream = container.streams.video[0], container.streams.audio[0]
        assert video_stream.codec_context.name == "h264"
        assert audio_stream.codec_context.name == "aac"
        assert audio_stream.rate == SAMPLE_RATE
        decoded = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio=0)])
    with av.open(str(written)) as container:
        video_end = max(frame.time for frame in container.decode(video=0)) + 1 / 25
    assert abs(len(decoded) - len(audio)) <= 1024
    assert np.sqrt(np.mean(decoded**2)) == pytest.approx(np.sqrt(np.mean(audio**2)), rel=0.05)
    # Cut by decode time, so B-frames keep their references: may run a few frames long.
    assert 8.0 <= video_end <= 8.2
    copied = video_packets(written)
    assert copied == video_packets(clips["10s"])[: len(copied)]
    assert decoded_indices(written) == list(range(len(copied)))


def test_mp4_audio_stream_duration_matches_audio(tmp_path, clips):
    audio = tone(7.3, 16000)
    written = write_output(tmp_path / "out.mp4", torch.from_numpy(audio)[None], 16000, clips["10s"], 7.3)
    with av.open(str(written)) as container:
        stream = container.streams.audio[0]
        assert stream.rate == 16000
        assert abs(float(stream.duration * stream.time_base) - 7.3) <= 1024 / 16000


def test_wav_round_trips_exactly(tmp_path):
    audio = tone(1.5) * 1.2  # overshoots are kept, not clipped
    written = write_output(tmp_path / "out.wav", audio, SAMPLE_RATE, None, 1.5)
    read, rate = soundfile.read(written, dtype="float32")
    assert rate == SAMPLE_RATE
    np.testing.assert_array_equal(read, audio)
    assert soundfile.info(written).subtype == "FLOAT"


def test_source_codec_the_container_cannot_hold_is_reencoded(tmp_path):
    webm = make_test_video(tmp_path / "vp8.webm", 1.5, 25, (160, 120), codec="libvpx")
    written = write_output(tmp_path / "out.mp4", tone(1.2), SAMPLE_RATE, webm, 1.2)
    with av.open(str(written)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert decoded_indices(written) == list(range(30))


def test_matroska_source_without_decode_times_is_copied_whole(tmp_path, clips):
    """Matroska gives the first B-frame-reordered packets no dts; they must still be copied."""
    mkv = write_output(tmp_path / "source.mkv", tone(3.0), SAMPLE_RATE, clips["10s"], 3.0)
    written = write_output(tmp_path / "out.mp4", tone(2.0), SAMPLE_RATE, mkv, 2.0)
    indices = decoded_indices(written)
    assert indices == list(range(len(indices))) and 50 <= len(indices) <= 53


def test_existing_output_is_replaced(tmp_path):
    target = tmp_path / "out.wav"
    target.write_bytes(b"old")
    write_output(target, tone(0.5), SAMPLE_RATE, None, 0.5)
    assert soundfile.info(target).frames == round(0.5 * SAMPLE_RATE)


def assert_refused(out_path: Path, source: Path | None, reason: str) -> None:
    with pytest.raises(OutputError, match=reason) as raised:
        write_output(out_path, tone(0.5), SAMPLE_RATE, source, 0.5)
    assert str(out_path) in str(raised.value) and "\n" not in str(raised.value)


def test_missing_output_directory_is_not_created(tmp_path, clips):
    assert_refused(tmp_path / "nowhere" / "out.mp4", clips["8s"], "does not exist")
    assert os.listdir(tmp_path) == []


def test_output_directory_that_is_a_file(tmp_path, clips):
    (tmp_path / "file").write_text("")
    assert_refused(tmp_path / "file" / "out.wav", None, "is not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert_refused(locked / "out.wav", None, "cannot write")
    assert os.listdir(locked) == []


def test_permission_denied_becomes_output_error(tmp_path, monkeypatch):
    """What a non-root user gets in a read-only directory, simulated because tests may run as root."""

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    assert_refused(tmp_path / "out.wav", None, "Permission denied")
    assert os.listdir(tmp_path) == []


def test_unsupported_suffix(tmp_path, clips):
    assert_refused(tmp_path / "out.avi", clips["8s"], "unsupported output type")
    assert os.listdir(tmp_path) == []


def test_output_over_input_is_refused(clips):
    same_file_other_spelling = clips["8s"].parent / ".." / clips["8s"].parent.name / clips["8s"].name
    before = clips["8s"].read_bytes()
    assert_refused(clips["8s"], clips["8s"], "overwrite the input")
    assert_refused(same_file_other_spelling, clips["8s"], "overwrite the input")
    assert clips["8s"].read_bytes() == before


def test_failure_while_encoding_leaves_nothing(tmp_path, clips, monkeypatch):
    def broken_encoder(*args, **kwargs):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(output_module, "_encode_audio", broken_encoder)
    with pytest.raises(RuntimeError, match="encoder exploded"):
        write_output(tmp_path / "out.mp4", tone(1.0), SAMPLE_RATE, clips["10s"], 1.0)
    assert os.listdir(tmp_path) == []


def test_disk_error_becomes_output_error_and_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.wav"
    target.write_bytes(b"previous result")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(soundfile, "write", disk_full)
    assert_refused(target, None, "No space left on device")
    assert os.listdir(tmp_path) == ["out.wav"] and target.read_bytes() == b"previous result"


# --- sample clip ----------------------------------------------------------------------------


def test_sample_clip_ships_and_loads():
    path = sample_clip_path()
    assert path.is_file() and path.stat().st_size < 300_000
    probe = probe_video(path)
    assert probe.duration_s == pytest.approx(8.5, abs=0.05)
    assert (probe.fps, probe.width, probe.height, probe.has_audio) == (25, 320, 240, False)
    video = load_video(path)
    assert video.duration_s == 8.0 and video.sync_frames.shape[0] == 200
    assert frame_indices(video.clip_frames[:4]) == [0, 4, 7, 10]


def test_no_audio_writes_the_video_alone_and_refuses_wav(tmp_path, clips):
    path = write_output(tmp_path / "silent.mp4", None, SAMPLE_RATE, source_video=clips["8s"], duration_s=2.0)
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 0
    with pytest.raises(OutputError, match="no audio to write"):
        write_output(tmp_path / "silent.wav", None, SAMPLE_RATE, source_video=clips["8s"], duration_s=2.0)
    assert not (tmp_path / "silent.wav").exists()


def test_write_bytes_leaves_the_old_file_and_no_temporary_when_interrupted(tmp_path):
    target = tmp_path / "engine.plan"
    target.write_bytes(b"previous engine")
    with pytest.raises(TypeError):
        output_module.write_bytes(target, "text is not bytes")  # fails half-way, after the temporary exists
    assert target.read_bytes() == b"previous engine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["engine.plan"]
    output_module.write_bytes(target, b"new engine")
    assert target.read_bytes() == b"new engine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["engine.plan"]
