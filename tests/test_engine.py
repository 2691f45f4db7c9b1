"""The Engine end to end on the dev preset (tiny random networks, real data flow)."""
from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile
import torch

from deepsound_rt import kernels
from deepsound_rt.engine import Engine, EngineConfig
from deepsound_rt.errors import DeepSoundError, WeightsError
from deepsound_rt.io.sample import sample_clip_path
from deepsound_rt.models.alias_free import Activation1d

STAGES = ["video decode", "clip", "synchformer", "text", "conditions", "sampling", "vae", "vocoder"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(preset="dev", num_steps=4))


def test_generate_gives_the_requested_duration_at_the_preset_rate(engine):
    result = engine.generate(sample_clip_path(), duration=2.0, seed=1)
    assert result.sample_rate == 44100
    assert result.duration_s == 2.0
    assert result.waveform.shape == (88200,) and result.waveform.dtype == np.float32
    assert np.isfinite(result.waveform).all() and np.abs(result.waveform).max() <= 1.0
    assert [t.stage for t in result.timings.stages] == STAGES
    assert {t.backend for t in result.timings.stages if t.stage != "video decode"} == {"torch"}


def test_noise_is_deterministic_from_the_seed(engine):
    first = engine.generate(sample_clip_path(), duration=1.0, seed=7).waveform
    again = engine.generate(sample_clip_path(), duration=1.0, seed=7).waveform
    other = engine.generate(sample_clip_path(), duration=1.0, seed=8).waveform
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4


class _RecordingGraph:
    """Passes calls through to a graph and keeps a copy of every input it was given."""

    def __init__(self, graph):
        self.graph, self.name, self.backend = graph, graph.name, graph.backend
        self.calls = []

    def run(self, inputs):
        self.calls.append({name: value.clone() for name, value in inputs.items()})
        return self.graph.run(inputs)


def test_prompt_conditions_the_positive_branch_and_negative_prompt_the_negative_one(engine, monkeypatch):
    """The flow network's conditional text features are CLIP's encoding of the prompt and its
    unconditional ones that of the negative prompt ("" when none), not the other way round."""
    recorder = _RecordingGraph(engine.graphs["flow_conditions"])
    monkeypatch.setitem(engine.graphs, "flow_conditions", recorder)
    text = "rain on a tin roof"
    prompted = engine.generate(sample_clip_path(), prompt=text, duration=1.0, seed=3).waveform
    negated = engine.generate(sample_clip_path(), negative_prompt=text, duration=1.0, seed=3).waveform
    clip = engine.models.clip
    with torch.inference_mode():
        rain, empty = clip.encode_tokens(clip.tokenize([text])), clip.encode_tokens(clip.tokenize([""]))
    (as_prompt, as_negative) = recorder.calls
    torch.testing.assert_close(as_prompt["text_f"], rain)
    torch.testing.assert_close(as_prompt["negative_text_f"], empty)
    torch.testing.assert_close(as_negative["text_f"], empty)
    torch.testing.assert_close(as_negative["negative_text_f"], rain)
    assert np.abs(prompted - negated).max() > 1e-5


def test_a_video_shorter_than_asked_shortens_the_audio(engine, tmp_path):
    from deepsound_rt.io.sample import make_test_video

    short = make_test_video(tmp_path / "short.mp4", 1.6, 25, (96, 64))  # 40 frames, the last shown until 1.6 s
    result = engine.generate(short, duration=8.0)
    assert result.duration_s == 1.6 and len(result.waveform) == round(1.6 * 44100)


def test_save_writes_mp4_with_video_and_audio_of_the_right_length(engine, tmp_path):
    result = engine.generate(sample_clip_path(), duration=2.0)
    path = result.save(tmp_path / "out.mp4")
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac" and audio.rate == 44100
        stream_seconds = float(audio.duration * audio.time_base)  # av 18: read while the container is open
        decoded = sum(frame.samples for frame in container.decode(audio))
    one_mel_frame = 512
    assert abs(decoded - 2.0 * 44100) <= one_mel_frame + 1024  # AAC pads to whole 1024-sample frames
    assert abs(stream_seconds - 2.0) <= one_mel_frame / 44100


def test_save_wav_round_trips(engine, tmp_path):
    result = engine.generate(sample_clip_path(), duration=1.0)
    samples, rate = soundfile.read(result.save(tmp_path / "out.wav"), dtype="float32")
    assert rate == 44100
    np.testing.assert_array_equal(samples, result.waveform)


def test_options_are_validated_once_with_the_allowed_values_named():
    from deepsound_rt.options import RunOptions, with_overrides
    from deepsound_rt.weights_dir import WeightsSource

    assert EngineConfig(preset="dev").weights_source is WeightsSource.TINY_RANDOM
    assert EngineConfig().weights_source is WeightsSource.OFFICIAL
    assert with_overrides(EngineConfig(), {"preset": "dev"}).weights_source is WeightsSource.TINY_RANDOM
    assert with_overrides(EngineConfig(weights_source="full-random"), {"preset": "dev"}).weights_source \
        is WeightsSource.FULL_RANDOM
    for bad, allowed in [({"seed": -1}, "2\\*\\*63"), ({"seed": True}, "integer"), ({"duration": 0.0}, "> 0"),
                         ({"duration": float("nan")}, "finite"), ({"mode": "s5"}, "s4, s3, gen"),
                         ({"judge": "llm"}, "auto, cot, qa, vad, always"), ({"prompt": 3}, "string")]:
        with pytest.raises(DeepSoundError, match=allowed):
            RunOptions(**bad)
    for bad, allowed in [({"kernels": "fast"}, "auto, on, off"), ({"vad_min_speech_share": 1.5}, r"\[0, 1\]"),
                         ({"device": "gpu"}, "cuda:N"), ({"cfg_strength": float("inf")}, "finite"),
                         ({"weights_source": "mine"}, "tiny-random"), ({"compile": "tensorrt"}, "inductor, eager"),
                         ({"overlap": 1}, "True or False"), ({"memory": "huge"}, "max, balanced, low"),
                         ({"mllm_precision": "int4"}, "auto, int8, dtype"),
                         ({"memory": "low", "overlap": True}, "overlap cannot follow: use memory='max'")]:
        with pytest.raises(DeepSoundError, match=allowed):
            EngineConfig(**bad)


def test_bad_settings_are_user_errors():
    with pytest.raises(DeepSoundError, match="unknown preset"):
        Engine(preset="huge")
    with pytest.raises(DeepSoundError, match="num_steps"):
        Engine(preset="dev", num_steps=0)
    with pytest.raises(WeightsError, match="needs --weights"):
        Engine(preset="small_16k")
    with pytest.raises(WeightsError, match="no official weights"):
        Engine(preset="dev", weights_source="official")
    with pytest.raises(DeepSoundError, match="unknown EngineConfig field temperature"):
        Engine(preset="dev", temperature=1.0)


def test_audio_covers_a_low_frame_rate_video_to_its_end(engine, tmp_path):
    """12 fps, 3.0 s: the last frame is shown until 3.0 s, so there are 3.0 s of audio (was 2.92 s)."""
    from deepsound_rt.io.sample import make_test_video

    video = make_test_video(tmp_path / "12fps.mp4", 3.0, 12, (96, 64))
    result = engine.generate(video)
    assert result.duration_s == 3.0 and len(result.waveform) == 3 * 44100


@pytest.mark.skipif(kernels.path_for("cpu") is None, reason="deepsound_rt._kernels is not built")
def test_two_engines_in_one_process_choose_their_kernels():
    """The kernels setting is handed to the modules at construction: one Engine runs our kernels,
    the other torch ops, side by side, and both give the same audio."""
    on, off = (Engine(EngineConfig(preset="dev", num_steps=2, kernels=setting)) for setting in ("on", "off"))
    for engine, expected in ((on, True), (off, False)):
        flags = {m.use_kernels for m in engine.models.vocoder.modules() if isinstance(m, Activation1d)}
        assert flags == {expected}
        assert engine.separator.model.kernel_transform is expected and engine.reasoner.use_kernels is expected
    with_kernels = on.generate(sample_clip_path(), duration=1.0, seed=5).waveform
    without = off.generate(sample_clip_path(), duration=1.0, seed=5).waveform
    np.testing.assert_allclose(with_kernels, without, atol=1e-4, rtol=0)
