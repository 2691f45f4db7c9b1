"""DeepSound's branches, forced one by one with fakes at the stage boundary."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from deepsound_rt.engine import Engine, EngineConfig, GenerationResult
from deepsound_rt.errors import DeepSoundError
from deepsound_rt.stages.silence import SilenceDecision
from deepsound_rt.timing import Timings

CANONICAL = {
    1: "Step1: Generate audio from video.",
    2: "Step2: Given a video and its generated audio, determine whether the audio contains voice-over.",
    3: "Step3: Remove voice-over from audio.",
    4: "Step4: Determine whether the audio is silent.",
}
RATE = 16000
STEP1 = np.full(RATE, 0.1, dtype=np.float32)
NEG = np.full(RATE, 0.2, dtype=np.float32)
INSTRUMENTAL = np.full(RATE, 0.3, dtype=np.float32)


@dataclass
class FakePlan:
    steps: dict
    text: str = ""
    fast_path: bool = True
    defaulted: bool = False


@dataclass
class FakeReasoner:
    plan_steps: dict = field(default_factory=lambda: dict(CANONICAL))
    defaulted: bool = False
    last_timings: Timings = field(default_factory=Timings)

    def plan(self, video):
        return FakePlan(self.plan_steps, defaulted=self.defaulted)


@dataclass
class Calls:
    generate: list = field(default_factory=list)
    judge: int = 0
    remove: int = 0
    silence: int = 0


@pytest.fixture(scope="module")
def base_engine() -> Engine:
    return Engine(EngineConfig(preset="dev", num_steps=2))


@pytest.fixture
def rig(base_engine, monkeypatch):
    """The dev engine with every stage replaced by a fake whose answer the test chooses."""
    calls = Calls()
    answers = {"voice_over": True, "silent": False}

    def generate(video, options, progress=None, on_decoded=None):
        calls.generate.append(options.negative_prompt)
        audio = NEG if options.negative_prompt == "human voice" else STEP1
        return GenerationResult(audio, RATE, 1.0, Path(video), Timings(), "dev", options.seed, "cpu", "float32")

    def judge(video, audio, rate, mode, media=None):
        calls.judge += 1
        assert audio is STEP1 and mode == "vad"
        return answers["voice_over"], {}

    def remove(audio, rate):
        calls.remove += 1
        assert audio is STEP1
        return INSTRUMENTAL, Timings()

    def silence(audio):
        calls.silence += 1
        assert audio is INSTRUMENTAL
        return SilenceDecision(answers["silent"], 1.0 if answers["silent"] else 0.0)

    monkeypatch.setattr(base_engine, "generate", generate)
    monkeypatch.setattr(base_engine, "judge_voice_over", judge)
    monkeypatch.setattr(base_engine, "remove_voice_over", remove)
    monkeypatch.setattr(base_engine, "check_silence", silence)
    monkeypatch.setattr(type(base_engine), "reasoner", FakeReasoner(), raising=False)
    return base_engine, calls, answers


BRANCHES = list(itertools.product(["s4", "s3"], ["rm", "rep", "neg"], [True, False], [True, False]))


@pytest.mark.parametrize(("mode", "postprocess", "voice_over", "silent"), BRANCHES)
def test_every_branch(rig, mode, postprocess, voice_over, silent):
    engine, calls, answers = rig
    answers.update(voice_over=voice_over, silent=silent)
    result = engine.run("clip.mp4", mode=mode, postprocess=postprocess, judge="vad")
    names = [r.step for r in result.steps]

    if not voice_over:
        expected_audio, expected_steps = STEP1, ["plan", "generate", "judge"]
    elif mode == "s3":
        expected_audio, expected_steps = INSTRUMENTAL, ["plan", "generate", "judge", "remove"]
    elif not silent:
        expected_audio, expected_steps = INSTRUMENTAL, ["plan", "generate", "judge", "remove", "silence"]
    else:
        expected_steps = ["plan", "generate", "judge", "remove", "silence", "postprocess"]
        expected_audio = {"rm": None, "rep": STEP1, "neg": NEG}[postprocess]

    assert names == expected_steps
    if expected_audio is None:
        assert result.audio is None
    else:
        assert result.audio is expected_audio
    assert calls.generate == [""] + (["human voice"] if expected_steps[-1] == "postprocess" and postprocess == "neg" else [])
    assert (calls.judge, calls.remove, calls.silence) == (1, int("remove" in names), int("silence" in names))
    assert result.step("judge").decision == ("voice-over" if voice_over else "no voice-over")
    assert all(r.seconds >= 0 for r in result.steps)


def test_steps_yields_start_and_finish_events_in_order(rig):
    engine, _, answers = rig
    answers.update(voice_over=True, silent=True)
    events = list(engine.steps("clip.mp4", postprocess="neg", judge="vad"))
    flow = [(e.step, e.status) for e in events]
    assert flow == [
        ("plan", "started"), ("plan", "finished"), ("generate", "started"), ("generate", "finished"),
        ("judge", "started"), ("judge", "finished"), ("remove", "started"), ("remove", "finished"),
        ("silence", "started"), ("silence", "finished"), ("postprocess", "started"), ("postprocess", "finished"),
        ("done", "finished"),
    ]
    assert events[-1].result.audio is NEG


def test_plan_without_step4_still_checks_silence_in_s4(rig, monkeypatch):
    """Upstream raises KeyError here; in s4 mode the silence check is implied."""
    engine, calls, answers = rig
    monkeypatch.setattr(type(engine), "reasoner", FakeReasoner({k: CANONICAL[k] for k in (1, 2, 3)}), raising=False)
    answers.update(voice_over=True, silent=True)
    result = engine.run("clip.mp4", postprocess="rep", judge="vad")
    assert [r.step for r in result.steps] == ["plan", "generate", "judge", "remove", "silence", "postprocess"]
    assert "implied" in result.step("silence").decision and result.audio is STEP1


def test_plan_without_a_judge_removes_unconditionally(rig, monkeypatch):
    engine, calls, answers = rig
    monkeypatch.setattr(type(engine), "reasoner", FakeReasoner({1: CANONICAL[1], 3: CANONICAL[3]}), raising=False)
    result = engine.run("clip.mp4", mode="s3", judge="vad")
    assert calls.judge == 0 and result.audio is INSTRUMENTAL


def test_plan_that_starts_after_step1_generates_first(rig, monkeypatch):
    engine, calls, answers = rig
    monkeypatch.setattr(type(engine), "reasoner", FakeReasoner({2: CANONICAL[2]}), raising=False)
    answers.update(voice_over=False)
    result = engine.run("clip.mp4", judge="vad")
    assert [r.step for r in result.steps] == ["plan", "generate", "judge"] and result.audio is STEP1


def test_a_defaulted_plan_is_recorded(rig, monkeypatch):
    engine, _, answers = rig
    monkeypatch.setattr(type(engine), "reasoner", FakeReasoner(defaulted=True), raising=False)
    answers.update(voice_over=False)
    assert "default plan" in engine.run("clip.mp4", judge="vad").step("plan").decision


@pytest.mark.parametrize(("option", "value"), [("mode", "s5"), ("postprocess", "mute"), ("judge", "llm")])
def test_unknown_options_are_user_errors(rig, option, value):
    engine, _, _ = rig
    with pytest.raises(DeepSoundError, match="unknown"):
        engine.run("clip.mp4", **{option: value})


def test_a_missing_separator_checkpoint_fails_before_any_work(rig, monkeypatch):
    """Official presets need the BS-RoFormer file; say so before generating, not after."""
    import dataclasses

    engine, calls, _ = rig
    monkeypatch.setattr(engine, "config", dataclasses.replace(engine.config, weights_source="official"))
    with pytest.raises(DeepSoundError, match="BS-RoFormer checkpoint"):
        engine.run("clip.mp4", judge="vad")
    assert calls.generate == []
