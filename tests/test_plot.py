"""The result picture: frames picked by time, the mel front end at the generator's parameters, and
every step, decision and marker drawn where it belongs."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from deepsound_rt.results import DeepSoundResult, StepRecord
from deepsound_rt.io.sample import make_test_video, read_frame_index
from deepsound_rt.plot import Marker, figure, log_mel, render, render_result, video_frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_test_video(tmp_path_factory.mktemp("plot") / "clip.mp4", 2.0, 25, (160, 120))


def frame_index(image: np.ndarray) -> int:
    return read_frame_index(torch.from_numpy(image).permute(2, 0, 1))


def test_frames_are_the_first_shown_at_or_after_each_slots_middle(clip):
    frames = video_frames(clip, 2.0, 4)  # slot middles 0.25, 0.75, 1.25, 1.75 s at 25 fps
    assert [frame_index(image) for _, image in frames] == [7, 19, 32, 44]
    assert [round(time, 2) for time, _ in frames] == [0.28, 0.76, 1.28, 1.76]
    assert all(image.shape == (96, 128, 3) and image.dtype == np.uint8 for _, image in frames)
    past_the_end = video_frames(clip, 4.0, 4)  # slots beyond the video repeat its last frame
    assert [frame_index(image) for _, image in past_the_end] == [13, 38, 49, 49]


@pytest.mark.parametrize("sample_rate, bins, expected_bin", [(44100, 128, 31), (16000, 80, 26)])
def test_the_spectrogram_is_the_generators_mel_scale(sample_rate, bins, expected_bin):
    """A 1 kHz tone peaks in the Slaney-scale bin whose centre is 1 kHz: 15 mel, with the centres
    equally spaced from 0 to the mel of half the rate (44.1k) or 8 kHz (16k)."""
    seconds = np.arange(sample_rate) / sample_rate
    tone = (0.5 * np.sin(2 * np.pi * 1000 * seconds)).astype(np.float32)
    mel, seconds_per_frame = log_mel(tone, sample_rate)
    assert mel.shape[0] == bins
    assert seconds_per_frame == pytest.approx({44100: 512, 16000: 256}[sample_rate] / sample_rate)
    assert mel.shape[1] == pytest.approx(1.0 / seconds_per_frame, abs=2)
    top = 15 + np.log({44100: 22050, 16000: 8000}[sample_rate] / 1000) / (np.log(6.4) / 27)
    assert round(15 * (bins + 1) / top - 1) == expected_bin  # the restatement agrees with the table
    assert int(np.argmax(mel.mean(axis=1))) in (expected_bin, expected_bin + 1)
    with pytest.raises(ValueError, match="22050 Hz"):
        log_mel(tone, 22050)


def test_the_figure_shows_frames_audio_steps_and_markers(clip):
    rate = 44100
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)).astype(np.float32)
    frames = video_frames(clip, 2.0, 4)
    steps = [StepRecord("plan", "default plan", 0.01), StepRecord("judge", "voice-over", 0.02),
             StepRecord("remove", "vocals removed", 0.3)]
    picture = figure(audio, rate, 2.0, frames=frames, steps=steps, title="clip.mp4",
                     markers=[Marker(0.5, label="seam"), Marker(1.0, 1.5, "window 2")])
    strip, wave, spectrum, lane = picture.axes
    np.testing.assert_array_equal(strip.images[0].get_array(), np.concatenate([image for _, image in frames], 1))
    np.testing.assert_array_equal(spectrum.images[0].get_array(), log_mel(audio, rate)[0])
    assert strip.images[0].get_extent() == [0, 2.0, 0, 1]
    lane_texts = [text.get_text() for text in lane.texts]
    for record in steps:
        assert any(text.startswith(f"{record.step}\n{record.decision}\n") for text in lane_texts), record
    labels = [text.get_text() for text in wave.texts]
    assert labels == ["seam", "window 2"]
    assert picture._suptitle.get_text() == "clip.mp4"
    png = Image.open(io.BytesIO(render(audio, rate, 2.0, frames=frames, steps=steps)))
    assert png.size == (1000, 720)


def test_a_result_without_audio_still_has_a_picture(clip):
    step1 = np.zeros(44100, dtype=np.float32)
    result = DeepSoundResult(audio=None, sample_rate=44100, duration_s=1.0, video=clip,
                             steps=[StepRecord("generate", "1.00 s of audio", 0.1, audio=step1),
                                    StepRecord("postprocess", "rm: no audio", 0.0)])
    png = Image.open(io.BytesIO(render_result(result, name="holiday.mp4")))
    assert png.size == (1000, 720)
    picture = figure(None, 44100, 1.0, step1_audio=step1)
    wave, spectrum = picture.axes[1:3]
    assert "no audio" in wave.texts[0].get_text() and not spectrum.images
    assert [item.get_label() for item in wave.collections] == ["step-1 audio"]
