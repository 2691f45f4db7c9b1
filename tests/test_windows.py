"""Whole videos by windows (deepsound_rt.stages.windows and Engine.generate) on the dev preset: the
length of a long video's audio and mp4, the seam rules restated independently, batching, inpainting,
a one-window video unchanged from the single-window code, and every frame-rate case's length."""
from __future__ import annotations

import io
import math
from dataclasses import replace
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from deepsound_rt.engine import Engine, EngineConfig
from deepsound_rt.io.sample import make_test_video, read_frame_index
from deepsound_rt.io.video import CLIP_FPS, SYNC_FPS, FrameStream, load_video
from deepsound_rt.models.mmaudio.network import sequence_lengths
from deepsound_rt.plot import render_result, window_markers
from deepsound_rt.models.mmaudio.sampler import euler_sample, initial_noise
from deepsound_rt.stages import decode, features, generate
from deepsound_rt.stages.windows import AudioJoin, plan_windows, seam_weights
from test_io import display_end

RATE, HOP = 44100, 512
WINDOW_SAMPLES = 8 * RATE


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(preset="dev", num_steps=2))


class _LengthExactVocoder:
    """A stand-in for the vocoder where only lengths and joins are tested: each mel frame becomes
    ``HOP`` samples (its mean), as many as BigVGAN gives, at a fraction of its cost."""

    name, backend = "vocoder", "torch"

    def __init__(self):
        self.kept = []

    def run(self, inputs):
        waveform = inputs["mel"].mean(dim=1).repeat_interleave(HOP, dim=-1)
        self.kept.append(waveform.clone())
        return {"waveform": waveform}


class _Recorder:
    """Passes a graph's calls through and keeps each output (or input) named ``keep``."""

    def __init__(self, graph, keep: str, from_inputs: bool = False):
        self.graph, self.name, self.backend = graph, graph.name, graph.backend
        self.keep, self.from_inputs, self.kept = keep, from_inputs, []

    def run(self, inputs):
        outputs = self.graph.run(inputs)
        self.kept.append((inputs if self.from_inputs else outputs)[self.keep].clone())
        return outputs


def joined_restatement(starts_s: list[float], waveforms: list[np.ndarray], total: int, seam: str) -> np.ndarray:
    """The join rule as the windows module's docstring states it, sample by sample in float64:
    window k's audio starts at start_k * rate; where it overlaps the audio before it (L samples),
    sample i of the overlap is prev * w_prev(u) + next * w_next(u), u = (i + 1/2) / L, with
    (cos, sin)(pi/2 u) for crossfade and (1 - u, u) for inpaint."""
    out = np.zeros(total, dtype=np.float64)
    end = 0
    for start_s, waveform in zip(starts_s, waveforms):
        first = round(start_s * RATE)
        overlap = max(0, end - first)
        for i in range(len(waveform)):
            if first + i >= total:
                break
            if i < overlap:
                u = (i + 0.5) / overlap
                w_prev, w_next = (math.cos(math.pi / 2 * u), math.sin(math.pi / 2 * u)) if seam == "crossfade" \
                    else (1 - u, u)
                out[first + i] = out[first + i] * w_prev + waveform[i] * w_next
            else:
                out[first + i] = waveform[i]
        end = first + len(waveform)
    return out


# --- the rule, without networks ------------------------------------------------------------------


@pytest.mark.parametrize("duration", [8.0, 8.01, 14.0, 40.0, 600.0])
@pytest.mark.parametrize("overlap", [0.0, 2.0, 4.0])
def test_windows_start_on_the_segment_grid_and_cover_the_audio(duration, overlap):
    plan = plan_windows(duration, RATE, HOP, overlap)
    starts = [w.start for w in plan.windows]
    assert starts[0] == 0 and all(s * 25 / 8 == int(s * 25 / 8) for s in starts)  # multiples of 0.32 s
    assert plan.num_samples == round(duration * RATE)
    if duration <= 8:
        assert len(starts) == 1 and plan.lengths == sequence_lengths(duration, RATE, HOP)
        return
    assert plan.windows[-1].start + 8 >= duration  # the last window reaches the end
    asked = Fraction(math.floor(overlap / 0.32) * 8, 25)
    for before, after in zip(starts, starts[1:]):
        assert before + 8 - after >= asked  # at least the asked overlap on the grid ...
    for first, third in zip(starts, starts[2:]):
        assert third >= first + 8  # ... and no moment in three windows
    for w in plan.windows:
        assert w.sync_first == 8 * round(w.start * 25 / 8) and w.clip_first == round(w.start * 8)


@pytest.mark.parametrize("seam", ["crossfade", "inpaint"])
def test_the_join_follows_the_stated_rule_at_every_seam(seam):
    """AudioJoin of independent signals against the restated rule; equal power: w_prev^2 + w_next^2 = 1."""
    plan = plan_windows(21.0, RATE, HOP, 2.0, seam)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(w.samples + 7).astype(np.float32) for w in plan.windows]
    joined = AudioJoin(plan)
    for window, wave in zip(plan.windows, waves):
        joined.add(window, wave)
    starts = [w.sample_first / RATE for w in plan.windows]
    expected = joined_restatement(starts, [w[: pw.samples] for w, pw in zip(waves, plan.windows)],
                                  plan.num_samples, seam)
    np.testing.assert_allclose(joined.result(), expected, rtol=0, atol=2e-6)
    w_prev, w_next = seam_weights(1000, seam)
    if seam == "crossfade":
        np.testing.assert_allclose(w_prev**2 + w_next**2, 1.0, atol=1e-12)
    else:
        np.testing.assert_allclose(w_prev + w_next, 1.0, atol=1e-12)


def test_inpainting_holds_the_known_latents_on_their_straight_path():
    """Before each Euler step the held latents are t * held + (1 - t) * x0; at the end exactly held."""
    x0 = torch.randn(1, 10, 3, generator=torch.Generator().manual_seed(0))
    held = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(1))
    seen = []

    def velocity(t, x):
        seen.append((float(t), x.clone()))
        return torch.cos(x) + t  # anything the held part would not follow by itself

    out = euler_sample(velocity, x0, num_steps=5, held=held)
    assert len(seen) == 5
    for t, x in seen:
        torch.testing.assert_close(x[:, :4], t * held + (1 - t) * x0[:, :4], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, :4], held, rtol=0, atol=0)
    assert not torch.allclose(out[:, 4:], x0[:, 4:])


# --- the Engine on a 40 s video ------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_run(engine, tmp_path_factory):
    """A 40 s video through Engine.generate (the vocoder a stand-in), its per-window waveforms and
    the video's features kept."""
    video = make_test_video(tmp_path_factory.mktemp("long") / "40s.mp4", 40.0, 12, (32, 24))
    vocoder = _LengthExactVocoder()
    kept = {}
    original_features = engine._video_features

    def keep_features(*args, **kwargs):
        kept["features"] = original_features(*args, **kwargs)
        return kept["features"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(engine.graphs, "vocoder", vocoder)
        patch.setattr(engine, "_video_features", keep_features)
        result = engine.generate(video, seed=11)
    return video, result, [w.reshape(-1).numpy() for w in vocoder.kept], kept["features"]


def test_a_40s_video_gives_40s_of_audio_in_a_40s_mp4(long_run, tmp_path):
    video, result, _, _ = long_run
    assert result.duration_s == 40.0 and len(result.waveform) == 40 * RATE
    assert len(result.windows.windows) == 7
    path = result.save(tmp_path / "out.mp4")
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        audio_seconds = float(audio.duration * audio.time_base)
        video_end = max(frame.time for frame in container.decode(video=0)) + 1 / 12
    assert abs(audio_seconds - 40.0) <= HOP / RATE
    assert abs(video_end - 40.0) <= HOP / RATE


def test_the_engine_joins_its_windows_by_the_crossfade_rule(long_run):
    _, result, waveforms, _ = long_run
    starts = [w.start_s for w in result.windows.windows]
    expected = joined_restatement(starts, [w[:WINDOW_SAMPLES] for w in waveforms], 40 * RATE, "crossfade")
    np.testing.assert_allclose(result.waveform, expected, rtol=0, atol=2e-6)


def test_the_picture_marks_every_seam(long_run):
    _, result, _, _ = long_run
    markers = window_markers(result.windows, RATE)
    windows = result.windows.windows  # each seam: from a window's start to the previous one's end
    assert [t for m in markers for t in (m.start_s, m.end_s)] == pytest.approx(
        [t for before, w in zip(windows, windows[1:]) for t in (w.start_s, before.start_s + 8)], abs=1 / RATE)
    assert markers[0].label == "w1 crossfade"
    picture = Image.open(io.BytesIO(render_result(result)))
    assert picture.size == (1000, 720)


def _latents(engine, plan, kept_features, batch, seed=11):
    clip_f, sync_f, _ = kept_features
    engine.models.set_sequence_lengths(*plan.lengths)
    text_f = features.text_features(engine.graphs["clip_text"], engine.models.tokenize(["", ""]))
    return [latents for _, latents in engine.window_latents(plan, clip_f, sync_f, text_f, seed, batch)]


def test_windows_in_one_batch_equal_windows_one_at_a_time(engine, long_run):
    """Equal up to float32 summation order (a batched matrix product may add in another order)."""
    _, result, _, kept = long_run
    plan = replace(result.windows, windows=result.windows.windows[:2])
    batched = _latents(engine, plan, kept, batch=2)
    alone = _latents(engine, plan, kept, batch=1)
    assert len(batched) == len(alone) == 2
    for one, other in zip(batched, alone):
        torch.testing.assert_close(one, other, rtol=0, atol=3e-5)


def test_inpainted_windows_follow_the_previous_window_in_their_overlap(engine, long_run):
    _, result, _, kept = long_run
    plan = plan_windows(40.0, RATE, HOP, 2.0, "inpaint")
    plan = replace(plan, windows=plan.windows[:2])
    latents = _latents(engine, plan, kept, batch=4)
    assert len(latents) == 2
    for window, before, current in zip(plan.windows[1:], latents, latents[1:]):
        assert window.held > 0
        torch.testing.assert_close(current[:, : window.held], before[:, -window.held :], rtol=0, atol=0)
        assert window.latent_first == math.floor(window.start * RATE / (2 * HOP) + Fraction(1, 2))


# --- one window: what the single-window code gives --------------------------------------------


def test_a_video_of_one_window_is_bit_identical_to_the_single_window_code(engine, tmp_path):
    video = make_test_video(tmp_path / "2s.mp4", 2.0, 10, (32, 24))
    result = engine.generate(video, seed=5, prompt="rain")
    g, models = engine.graphs, engine.models
    clip = load_video(video, 8.0)  # what generate read before windows: 8 s, cut to the video
    latent_len, clip_len, sync_len = sequence_lengths(clip.duration_s, RATE, HOP)
    models.set_sequence_lengths(latent_len, clip_len, sync_len)
    clip_f = features.clip_image_features(g["clip_image"], clip.clip_frames[:clip_len])
    sync_f = features.sync_features(g["sync"], clip.sync_frames)
    text_f = features.text_features(g["clip_text"], models.tokenize(["rain", ""]))
    conditions = generate.prepare_conditions(g["flow_conditions"], clip_f, sync_f[:, :sync_len], text_f[:1], text_f[1:])
    x0 = initial_noise(1, latent_len, models.latent_dim, 5, engine.device, torch.float32)
    latents = generate.sample_latents(g["flow_velocity"], conditions, x0, 2, engine.config.cfg_strength)
    waveform = decode.vocode(g["vocoder"], decode.decode_latents(g["vae_decode"], latents))
    assert clip.duration_s == 2.0
    np.testing.assert_array_equal(result.waveform, waveform[: 2 * RATE].numpy())


# --- frame rates, sizes and orientations: the windows' frames and the audio's length ---------------


@pytest.mark.parametrize(("fps", "size", "frame_times", "codec"), [
    (12, (32, 24), None, "libx264"), (24, (32, 24), None, "libx264"), (25, (32, 24), None, "libx264"),
    (Fraction(30000, 1001), (32, 24), None, "libx264"), (30, (32, 24), None, "libx264"), (60, (32, 24), None, "libx264"),
    (25, (32, 24), [i * 0.09 + (0.04 if i % 3 else 0) for i in range(94)], "libx264"),
    (25, (24, 48), None, "libx264"), (25, (65, 37), None, "mpeg4"),  # x264 refuses odd sizes in 4:2:0
], ids=["12fps", "24fps", "25fps", "29.97fps", "30fps", "60fps", "vfr", "portrait", "odd-size"])
def test_every_frame_rate_gives_the_whole_length_in_windows(tmp_path, fps, size, frame_times, codec):
    """A two-window video: the audio covers its display time, and the stream hands the windows
    every slot they read, those past the end holding the last frame."""
    path = make_test_video(tmp_path / "clip.mp4", 8.5, fps, size, codec, frame_times=frame_times)
    end = display_end(path)
    stream = FrameStream(path, None, pad=lambda duration: plan_windows(duration, RATE, HOP).frames_needed)
    frames = {"clip": [], "sync": []}
    for chunk in stream:
        frames[chunk.kind].append(chunk.frames)
    plan = plan_windows(stream.duration, RATE, HOP)
    assert stream.duration == end and len(plan.windows) == 2
    assert plan.num_samples == round(end * RATE)
    clip_frames, sync_frames = torch.cat(frames["clip"]), torch.cat(frames["sync"])
    assert (len(clip_frames), len(sync_frames)) == plan.frames_needed
    assert plan.frames_needed[0] >= math.floor(CLIP_FPS * end) and plan.frames_needed[1] >= math.floor(SYNC_FPS * end)
    padded = sync_frames[math.floor(SYNC_FPS * end):]
    assert len(padded) > 0
    if size[0] >= size[1]:  # the index bands survive a horizontal crop only
        last = (round(8.5 * fps) if frame_times is None else len(frame_times)) - 1
        assert [read_frame_index(frame) for frame in padded] == [last] * len(padded)
    else:
        assert all(torch.equal(frame, padded[0]) for frame in padded)
