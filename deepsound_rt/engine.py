"""The SDK entry point: ``Engine(config).run(video)`` (the DeepSound steps) or ``.generate(video)``
(step 1 alone) -> audio for the video.

The Engine owns model loading, device/dtype choice and graph wiring; stages do the work through
backend graphs and know nothing of which backend runs them. The DeepSound branches live here only.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch

from . import overlap
from .backends import check_export_duration, load_backend_graphs
from .backends.base import Graph
from .backends.compiled import COMPILE_BACKENDS, CompiledTorchGraph
from .backends.cuda_graphs import CudaGraphTorchGraph
from .backends.fp8 import convert_flow_to_fp8, has_fp8_kernel
from .backends.torch_backend import TorchBackend
from .config import DEFAULT_DURATION_S, PRESETS, Preset, resolve_device, resolve_dtype
from .errors import DeepSoundError
from .export.manifest import ExportManifest
from .io.output import write_output
from .io.video import load_video
from .models.loading import DEV_SEED, GeneratorModels, load_generator_models
from .models.mmaudio.network import sequence_lengths
from .models.mmaudio.sampler import initial_noise
from .progress import ProgressEvent
from .stages import decode, features, generate
from .stages.silence import check_silence
from .timing import Timings
from .weights_dir import find_weight_file

ProgressSink = Callable[[ProgressEvent], None]
log = logging.getLogger(__name__)

NEGATIVE_PROMPT_FOR_FALLBACK = "human voice"  # DeepSound's "neg" post-processing
# Graphs with fixed shapes per clip duration and many small kernels: worth a CUDA graph.
CUDA_GRAPH_CANDIDATES = ("flow_velocity", "vae_decode", "vocoder")
Mode = Literal["s4", "s3"]
Postprocess = Literal["neg", "rep", "rm"]
Judge = Literal["auto", "cot", "qa", "vad", "always"]


@dataclass
class EngineConfig:
    """What to load and how to run it. ``weights`` is required for every preset but ``dev``,
    unless ``random_weights``."""

    preset: str = "large_44k_v2"
    weights: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    steps: int = 25
    cfg_strength: float = 4.5
    verify_checksums: bool = True
    random_weights: bool = False  # full-size networks with random weights: for benchmarks, not audio
    mllm: Path | None = None  # HF-style VideoLLaMA2.1-7B-AV-CoT directory: the plan and the judge
    judge_mllm: Path | None = None  # another checkpoint for the judge (e.g. the -QA one); default: mllm
    siglip: Path | None = None  # SigLIP so400m/14@384 directory (the MLLM's vision tower)
    separator: Path | None = None  # BS-RoFormer checkpoint; default: looked up in ``weights``
    vad_min_speech_share: float = 0.10  # vad judge: voice-over when speech covers this share
    silence_threshold_db: float = -50.0
    silence_max_share: float = 0.9
    cuda_graphs: bool = False  # replay the velocity step, VAE and vocoder as CUDA graphs (CUDA only)
    backend: str = "auto"  # per graph the best installed backend that has it (deepsound_rt.backends)
    export: Path | None = None  # a `deepsound-rt export` directory for the onnxruntime/tensorrt backends
    # Speed levers (each off by default; `deepsound-rt bench` times them alone and together):
    static_decode: bool = False  # MLLM decoding: static KV cache, greedy steps on the device, CUDA graph on a GPU
    compile: str | None = None  # torch.compile backend ("inductor") for the velocity step and the separator core
    fp8: bool = False  # FP8 matmuls in the flow network's blocks (Hopper; emulated in float32 on a CPU)
    overlap: bool = False  # plan beside step 1, video decoding beside CLIP, the judge's encoders ahead of it
    sdpa_encoders: bool = False  # BEATs attention by SDPA (one fused kernel) instead of upstream's softmax


@dataclass
class GenerationResult:
    """Generated mono audio plus what produced it; ``save`` writes it next to (or into) the video."""

    waveform: np.ndarray
    sample_rate: int
    duration_s: float
    video: Path
    timings: Timings
    preset: str
    seed: int
    device: str
    dtype: str

    def save(self, path: str | Path) -> Path:
        """Write ``.mp4``/``.mov``/``.mkv`` (video stream copied, audio as AAC) or ``.wav``."""
        return write_output(Path(path), self.waveform, self.sample_rate, source_video=self.video,
                            duration_s=self.duration_s)


class Engine:
    """Loads a preset's networks once; ``generate`` can then be called for many videos."""

    def __init__(self, config: EngineConfig | None = None, **overrides):
        unknown = sorted(set(overrides) - {f.name for f in fields(EngineConfig)})
        if unknown:
            raise TypeError(f"unknown EngineConfig field: {', '.join(unknown)}")
        config = replace(config or EngineConfig(), **overrides)  # the caller's config stays as it was
        if config.preset not in PRESETS:
            raise DeepSoundError(f"unknown preset '{config.preset}' (choose from {', '.join(sorted(PRESETS))})")
        if config.steps < 1:
            raise DeepSoundError(f"steps must be at least 1, got {config.steps}")
        if config.compile is not None and config.compile not in COMPILE_BACKENDS:
            raise DeepSoundError(f"unknown compile backend '{config.compile}' (use {' or '.join(COMPILE_BACKENDS)})")
        self.config = config
        self.preset: Preset = PRESETS[config.preset]
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if config.fp8 and self.device.type == "cuda" and not has_fp8_kernel(self.device):
            raise DeepSoundError("fp8 needs an NVIDIA GPU of compute capability 9.0 or newer (Hopper)")
        self.models: GeneratorModels = load_generator_models(self.preset, config.weights, self.device, self.dtype,
                                                             verify_checksums=config.verify_checksums,
                                                             random_weights=config.random_weights)
        self.graphs = self._load_graphs()

    def _load_graphs(self) -> dict[str, Graph]:
        """Each generator graph on its backend: exported graphs (ONNX Runtime, TensorRT) where an
        export is given and the backend allows, else PyTorch (optionally as CUDA graphs)."""
        config = self.config
        if config.export is None:
            if config.backend not in ("auto", "torch"):
                raise DeepSoundError(f"backend '{config.backend}' runs exported graphs: give the directory "
                                     "that `deepsound-rt export` made (--export DIR)")
            backend = TorchBackend(self.device, self.dtype)
            graphs = {name: backend.load(name, module) for name, module in self.models.graph_modules().items()}
        else:
            manifest = ExportManifest.load(config.export)
            graphs = load_backend_graphs(config.backend, config.export, self.models, self.device, self.dtype,
                                         self.preset.name, manifest.duration_s)
            self.models.release_unused(name for name, graph in graphs.items() if graph.backend == "torch")
        velocity = graphs["flow_velocity"]
        if velocity.backend == "torch" and config.fp8:
            convert_flow_to_fp8(self.models.flow, self.device)
        if velocity.backend == "torch" and config.compile:
            graphs["flow_velocity"] = CompiledTorchGraph("flow_velocity", velocity.module, self.device, self.dtype,
                                                         config.compile)
        if config.cuda_graphs and self.device.type == "cuda":
            for name in CUDA_GRAPH_CANDIDATES:
                if graphs[name].backend in ("torch", "torch+compile"):
                    graphs[name] = CudaGraphTorchGraph(name, graphs[name].module, self.device, self.dtype,
                                                       graphs[name].backend)
        return graphs

    @property
    def sample_rate(self) -> int:
        return self.preset.sampling_rate

    # -- the DeepSound steps (models for steps 0, 2 and 3 load on first use) ----------------------

    @property
    def has_planner(self) -> bool:
        return self.preset.random_weights or self.config.random_weights or self.config.mllm is not None

    @property
    def has_judge_mllm(self) -> bool:
        return self.has_planner or self.config.judge_mllm is not None

    def default_judge(self) -> str:
        """``auto``: the MLLM's chain of thought when one is configured, else the speech detector."""
        return "cot" if self.has_judge_mllm else "vad"

    @functools.cached_property
    def reasoner(self):
        """The MLLM; its encoders and decoder run on the export's graphs where it holds them."""
        from .backends.step_graphs import load_step_graphs
        from .stages.reason import MLLMReasoner

        if self.preset.random_weights:
            reasoner = MLLMReasoner.random(seed=DEV_SEED, device=self.device, dtype=self.dtype)
        elif self.config.random_weights:
            reasoner = MLLMReasoner.random(seed=DEV_SEED, device=self.device, dtype=self.dtype, full_size=True)
        elif self.config.mllm is None:
            raise DeepSoundError("this step needs the MLLM: set EngineConfig.mllm (CLI --mllm DIR)")
        else:
            reasoner = MLLMReasoner.from_dirs(self.config.mllm, self.config.siglip, device=self.device,
                                              dtype=self.dtype)
        return self._speed_up_reasoner(reasoner.use_graphs(load_step_graphs(
            self.config.backend, self.config.export, reasoner.graph_modules(), self.device, self.dtype,
            self.preset.name)))

    def _speed_up_reasoner(self, reasoner):
        """The MLLM's speed levers: static-cache decoding, SDPA in BEATs."""
        if self.config.static_decode:
            reasoner.use_static_cache()
        if self.config.sdpa_encoders:
            reasoner.model.model.audio_tower.use_sdpa()
        return reasoner

    @functools.cached_property
    def judge_reasoner(self):
        """The judge's MLLM: ``judge_mllm`` when it names another checkpoint, else the planner's."""
        from .stages.reason import MLLMReasoner

        judge_dir = self.config.judge_mllm
        if judge_dir is None or self.preset.random_weights or self.config.random_weights or judge_dir == self.config.mllm:
            return self.reasoner
        return self._speed_up_reasoner(MLLMReasoner.from_dirs(judge_dir, self.config.siglip, device=self.device,
                                                              dtype=self.dtype))

    @functools.cached_property
    def detector(self):
        from .stages.vad import SpeechDetector

        return SpeechDetector(min_speech_share=self.config.vad_min_speech_share)

    @functools.cached_property
    def separator(self):
        """BS-RoFormer; its core runs on the export's ``separator_core`` graph where it holds one."""
        from .backends.step_graphs import load_step_graphs
        from .stages.separate import load_separator

        if self.preset.random_weights:
            separator = load_separator(None, self.device, self.dtype, tiny_seed=DEV_SEED)
        elif self.config.random_weights:
            separator = load_separator(None, self.device, self.dtype, random_seed=DEV_SEED)
        else:
            separator = load_separator(self.separator_path(), self.device, self.dtype)
        graphs = load_step_graphs(self.config.backend, self.config.export, separator.graph_modules(), self.device,
                                  self.dtype, self.preset.name)
        if self.config.compile and not graphs:
            graphs = {name: CompiledTorchGraph(name, module, self.device, self.dtype, self.config.compile, per_item=True)
                      for name, module in separator.graph_modules().items()}
        return separator.use_graphs(graphs)

    def separator_path(self) -> Path:
        from .stages.separate import SEPARATOR_FILE

        if self.config.separator is not None:
            return Path(self.config.separator)
        if self.config.weights is None:
            raise DeepSoundError("voice-over removal needs the BS-RoFormer checkpoint: set EngineConfig.separator "
                                 "(CLI --separator FILE) or put it in the weights directory")
        return find_weight_file(Path(self.config.weights), SEPARATOR_FILE)

    def judge_voice_over(self, video: Path, audio: np.ndarray, sample_rate: int, judge: str,
                         media=None) -> tuple[bool, dict]:
        """Step 2: (voice-over?, details) by the MLLM (``cot``/``qa``) or the speech detector (``vad``);
        ``always`` assumes voice-over, so removal always runs (content known to attract hallucinated
        speech; demos with random weights, whose judges never answer yes). ``media``: the MLLM's
        encoded inputs, made ahead (``overlap``)."""
        if judge == "always":
            return True, {"assumed": True}
        if judge == "vad":
            decision = self.detector.detect(audio, sample_rate)
            return decision.voice_over, {"speech_share": decision.speech_share, "segments": decision.segments}
        answer = self.judge_reasoner.judge_voice_over(video, audio, sample_rate, mode=judge,
                                                      duration_s=len(audio) / sample_rate, media=media)
        return answer.voice_over, {"answer": answer.text, "timings": self.judge_reasoner.last_timings}

    def remove_voice_over(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, Timings]:
        """Step 3: the instrumental part of ``audio`` (mix minus vocals), same rate and length, and
        how long the separator took on which backend."""
        instrumental = self.separator.remove_vocals(audio, sample_rate)
        return instrumental, self.separator.last_timings

    def check_silence(self, audio: np.ndarray):
        """Step 4: DeepSound's RMS rule with the configured thresholds."""
        return check_silence(audio, self.config.silence_threshold_db, self.config.silence_max_share)

    def steps(self, video: str | Path, mode: Mode = "s4", postprocess: Postprocess = "rep", judge: Judge = "auto",
              prompt: str = "", negative_prompt: str = "", duration: float | None = None, seed: int = 42,
              progress: ProgressSink | None = None) -> Iterator[StepEvent]:
        """Run the DeepSound steps, yielding each step as it starts and finishes; the last event is
        ``step == "done"`` with the result. Branches follow DeepSound-V1: no voice-over → the
        step-1 audio; ``s3`` → stop after removal; silent after removal → ``rm`` (no audio),
        ``rep`` (step-1 audio) or ``neg`` (regenerate with the negative prompt "human voice")."""
        runner = _StepRunner(self, Path(video), mode, postprocess, judge, prompt, negative_prompt, duration, seed,
                             progress)
        return iter(runner)

    def run(self, video: str | Path, mode: Mode = "s4", postprocess: Postprocess = "rep", judge: Judge = "auto",
            prompt: str = "", negative_prompt: str = "", duration: float | None = None, seed: int = 42,
            progress: ProgressSink | None = None) -> DeepSoundResult:
        """Every step of :meth:`steps`, returning the result."""
        for event in self.steps(video, mode, postprocess, judge, prompt, negative_prompt, duration, seed, progress):
            if event.result is not None:
                return event.result
        raise AssertionError("the step runner ended without a result")

    def generate(self, video: str | Path, prompt: str = "", negative_prompt: str = "",
                 duration: float | None = None, seed: int = 42,
                 progress: ProgressSink | None = None,
                 on_decoded: Callable[[float], None] | None = None) -> GenerationResult:
        """Generate audio for ``video``: ``duration`` seconds (default 8, cut to the video's length).
        ``on_decoded`` is called with the clip's length once the video is decoded."""
        report = progress or (lambda event: None)
        timings = Timings()
        graphs = self.graphs
        video = Path(video)

        def stage(name: str, graph=None):
            report(ProgressEvent(name, 0, 1))
            return timings.measure(name, self.device, graph.backend if graph is not None else "")

        if self.config.overlap:  # CLIP encodes the frames decoded so far while decoding goes on
            report(ProgressEvent("video decode", 0, 1))
            clip, clip_f = overlap.decode_while_encoding(video, DEFAULT_DURATION_S if duration is None else duration,
                                                         graphs["clip_image"], timings, self.device)
            report(ProgressEvent("video decode", 1, 1))
        else:
            with stage("video decode"):
                clip = load_video(video, DEFAULT_DURATION_S if duration is None else duration)
            report(ProgressEvent("video decode", 1, 1))
        if on_decoded is not None:
            on_decoded(clip.duration_s)

        check_export_duration(graphs, self.preset.name, clip.duration_s)  # exports bake in their duration
        latent_len, clip_len, sync_len = sequence_lengths(clip.duration_s, self.preset.sampling_rate,
                                                          self.preset.hop_length)
        self.models.set_sequence_lengths(latent_len, clip_len, sync_len)

        if not self.config.overlap:
            with stage("clip", graphs["clip_image"]):
                clip_f = features.clip_image_features(graphs["clip_image"], clip.clip_frames[:clip_len])
        report(ProgressEvent("clip", 1, 1))
        with stage("synchformer", graphs["sync"]):
            sync_f = features.sync_features(graphs["sync"], clip.sync_frames)
        report(ProgressEvent("synchformer", 1, 1))
        with stage("text", graphs["clip_text"]):
            tokens = self.models.tokenize([prompt, negative_prompt])
            text_f = features.text_features(graphs["clip_text"], tokens)
        report(ProgressEvent("text", 1, 1))

        with stage("conditions", graphs["flow_conditions"]):
            conditions = generate.prepare_conditions(graphs["flow_conditions"], clip_f, sync_f[:, :sync_len],
                                                     text_f[:1], text_f[1:])
        report(ProgressEvent("conditions", 1, 1))

        x0 = initial_noise(1, latent_len, self.models.latent_dim, seed, self.device, torch.float32)
        report(ProgressEvent("sampling", 0, self.config.steps))
        with timings.measure("sampling", self.device, graphs["flow_velocity"].backend):
            latents = generate.sample_latents(
                graphs["flow_velocity"], conditions, x0, self.config.steps, self.config.cfg_strength,
                progress=lambda done, total: report(ProgressEvent("sampling", done, total)))

        with stage("vae", graphs["vae_decode"]):
            mel = decode.decode_latents(graphs["vae_decode"], latents)
        report(ProgressEvent("vae", 1, 1))
        with stage("vocoder", graphs["vocoder"]):
            waveform = decode.vocode(graphs["vocoder"], mel)
        report(ProgressEvent("vocoder", 1, 1))

        if not torch.isfinite(waveform).all():
            raise DeepSoundError(f"the generated audio contains NaN/Inf (dtype {self.dtype}); "
                                 "fp16 can overflow: try --dtype bf16 or fp32")
        num_samples = round(clip.duration_s * self.preset.sampling_rate)
        return GenerationResult(
            waveform=waveform[:num_samples].numpy().astype(np.float32),
            sample_rate=self.preset.sampling_rate, duration_s=clip.duration_s, video=video, timings=timings,
            preset=self.preset.name, seed=seed, device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."))


# --- DeepSound step-by-step orchestration ------------------------------------------------------

# The canonical plan's step numbers and what each one does.
STEP_ACTIONS = {1: "generate", 2: "judge", 3: "remove", 4: "silence"}


@dataclass
class StepRecord:
    """One finished step: what it decided, the audio it produced (if any) and how long it took."""

    step: str  # plan, generate, judge, remove, silence, postprocess
    decision: str
    seconds: float
    audio: np.ndarray | None = None
    details: dict = field(default_factory=dict)


@dataclass
class DeepSoundResult:
    """The final audio (None when post-processing ``rm`` removed it), every step's record (each
    with its own time) and the wall time of the whole run (less than their sum with ``overlap``)."""

    audio: np.ndarray | None
    sample_rate: int
    duration_s: float
    video: Path
    steps: list[StepRecord]
    wall_seconds: float = 0.0

    def step(self, name: str) -> StepRecord | None:
        """The last record of step ``name``."""
        return next((r for r in reversed(self.steps) if r.step == name), None)

    def save(self, path: str | Path) -> Path:
        """``.mp4``/``.mov``/``.mkv`` (video copied, audio as AAC; no audio track when it was
        removed) or ``.wav`` (refused when there is no audio)."""
        return write_output(Path(path), self.audio, self.sample_rate, source_video=self.video,
                            duration_s=self.duration_s)


@dataclass
class StepEvent:
    """What ``Engine.steps`` yields: a step starting, a step finished (``record``), or the end
    (``step == "done"``, ``result``)."""

    step: str
    status: Literal["started", "finished"]
    record: StepRecord | None = None
    result: DeepSoundResult | None = None


def _default_plan_steps() -> dict[int, str]:
    from .models.mllm.prompt import CANONICAL_PLAN_STEPS

    return dict(CANONICAL_PLAN_STEPS)


class _StepRunner:
    """Runs DeepSound's branches for one clip; a generator of StepEvents (see ``Engine.steps``)."""

    def __init__(self, engine: "Engine", video: Path, mode: Mode, postprocess: Postprocess, judge: Judge,
                 prompt: str, negative_prompt: str, duration: float | None, seed: int,
                 progress: ProgressSink | None):
        if mode not in ("s4", "s3"):
            raise DeepSoundError(f"unknown mode '{mode}' (use s4 or s3)")
        if postprocess not in ("neg", "rep", "rm"):
            raise DeepSoundError(f"unknown post-processing '{postprocess}' (use neg, rep or rm)")
        if judge not in ("auto", "cot", "qa", "vad", "always"):
            raise DeepSoundError(f"unknown judge '{judge}' (use auto, cot, qa, vad or always)")
        self.engine, self.video, self.mode, self.postprocess = engine, video, mode, postprocess
        self.judge = engine.default_judge() if judge == "auto" else judge
        if self.judge in ("cot", "qa") and not engine.has_judge_mllm:
            raise DeepSoundError(f"judge '{self.judge}' needs the MLLM (EngineConfig.mllm); use judge='vad'")
        if not (engine.preset.random_weights or engine.config.random_weights):
            engine.separator_path()  # a missing separator checkpoint fails now, not after minutes of work
        self.prompt, self.negative_prompt, self.duration, self.seed = prompt, negative_prompt, duration, seed
        self.progress = progress
        self.records: list[StepRecord] = []
        self.generated: GenerationResult | None = None
        self.generate_seconds = 0.0
        self.lookahead: overlap.StepLookahead | None = None
        self.run_started = 0.0

    def _finish(self, step: str, started: float, decision: str, audio=None, seconds: float | None = None,
                **details) -> StepEvent:
        seconds = time.perf_counter() - started if seconds is None else seconds
        record = StepRecord(step, decision, seconds, audio, details)
        self.records.append(record)
        log.info("%s: %s (%.2f s)", step, decision, record.seconds)
        return StepEvent(step, "finished", record=record)

    def _done(self, audio: np.ndarray | None) -> StepEvent:
        generated = self.generated
        result = DeepSoundResult(audio=audio, sample_rate=generated.sample_rate, duration_s=generated.duration_s,
                                 video=self.video, steps=self.records,
                                 wall_seconds=time.perf_counter() - self.run_started)
        return StepEvent("done", "finished", result=result)

    def _run_generation(self, negative_prompt: str, on_decoded=None) -> GenerationResult:
        return self.engine.generate(self.video, prompt=self.prompt, negative_prompt=negative_prompt,
                                    duration=self.duration, seed=self.seed, progress=self.progress,
                                    on_decoded=on_decoded)

    def _generate(self, negative_prompt: str) -> GenerationResult:
        """Step 1 (its own seconds in ``generate_seconds``); with ``overlap`` the first one has run ahead."""
        ahead = self.lookahead.take_generation() if self.lookahead is not None else None
        if ahead is not None:
            result, self.generate_seconds = ahead
            return result
        started = time.perf_counter()
        result = self._run_generation(negative_prompt)
        self.generate_seconds = time.perf_counter() - started
        return result

    def __iter__(self) -> Iterator[StepEvent]:
        self.run_started = time.perf_counter()
        if self.engine.config.overlap:
            judge = self.engine.judge_reasoner if self.judge in ("cot", "qa") else None  # loaded here, not there
            self.lookahead = overlap.StepLookahead(
                lambda on_decoded: self._run_generation(self.negative_prompt, on_decoded), judge, self.engine.device,
                self.engine.sample_rate)
        try:
            yield from self._steps()
        finally:
            if self.lookahead is not None:
                self.lookahead.close()

    def _steps(self) -> Iterator[StepEvent]:
        engine = self.engine
        yield StepEvent("plan", "started")
        started = time.perf_counter()
        details = {}
        if engine.has_planner:
            plan = engine.reasoner.plan(self.video)
            steps, how = plan.steps, ("fast path" if plan.fast_path else "generated")
            details["timings"] = engine.reasoner.last_timings
            if plan.defaulted:  # the parser has logged the unusable text
                how = "default plan (the MLLM's was unusable)"
        else:
            steps, how = _default_plan_steps(), "default plan (no MLLM configured)"
        yield self._finish("plan", started, how, steps=dict(steps), **details)
        if self.lookahead is not None and 2 in steps:
            self.lookahead.encode_judge_video(self.video)

        step1_audio = step3_audio = None
        silence_checked = False
        silent = False
        for number in sorted(steps):
            action = STEP_ACTIONS.get(number)
            yield StepEvent(action or f"step{number}", "started")
            started = time.perf_counter()
            if action == "generate":
                self.generated = self._generate(self.negative_prompt)
                step1_audio = self.generated.waveform
                yield self._finish("generate", started, f"{self.generated.duration_s:.2f} s of audio", step1_audio,
                                   seconds=self.generate_seconds, timings=self.generated.timings)
            elif step1_audio is None:
                # A plan that does anything before (or without) generating: generate first.
                log.warning("plan step %d (%s) comes before any generated audio; generating first", number, action)
                self.generated = self._generate(self.negative_prompt)
                step1_audio = self.generated.waveform
                yield self._finish("generate", started, "generated before the plan's first step", step1_audio,
                                   seconds=self.generate_seconds)
                started = time.perf_counter()
            if action == "judge":
                media = self.lookahead.judge_media(step1_audio, self.generated.sample_rate) if self.lookahead else None
                ahead = 0.0
                if media is not None:  # its encoders ran ahead: their own time, not the wait for them
                    started, ahead = time.perf_counter(), media.seconds
                voice_over, detail = engine.judge_voice_over(self.video, step1_audio, self.generated.sample_rate,
                                                             self.judge, media=media)
                decision = "voice-over" if voice_over else "no voice-over"
                yield self._finish("judge", started, decision + (" (assumed: judge=always)" if detail.get("assumed") else ""),
                                   seconds=time.perf_counter() - started + ahead, judge=self.judge, **detail)
                if not voice_over:
                    yield self._done(step1_audio)
                    return
            elif action == "remove":
                step3_audio, timings = engine.remove_voice_over(step1_audio, self.generated.sample_rate)
                yield self._finish("remove", started, "vocals removed", step3_audio, timings=timings)
                if self.mode == "s3":
                    yield self._done(step3_audio)
                    return
            elif action == "silence":
                if step3_audio is None:
                    yield self._finish("silence", started, "skipped: nothing was removed")
                    continue
                decision = engine.check_silence(step3_audio)
                silence_checked, silent = True, decision.silent
                yield self._finish("silence", started, "silent" if silent else "not silent",
                                   silent_share=decision.silent_share)
            elif action is None:
                yield self._finish(f"step{number}", started, "skipped: unknown step")

        if step1_audio is None:  # a plan without Step1: still give the user audio
            yield StepEvent("generate", "started")
            started = time.perf_counter()
            self.generated = self._generate(self.negative_prompt)
            step1_audio = self.generated.waveform
            yield self._finish("generate", started, "the plan had no generation step", step1_audio,
                               seconds=self.generate_seconds)
        if step3_audio is None:
            yield self._done(step1_audio)
            return
        if not silence_checked:
            # Upstream crashes on a plan without Step4; in s4 mode the check is implied.
            yield StepEvent("silence", "started")
            started = time.perf_counter()
            decision = engine.check_silence(step3_audio)
            silent = decision.silent
            yield self._finish("silence", started, ("silent" if silent else "not silent") + " (implied by s4)",
                               silent_share=decision.silent_share)
        if not silent:
            yield self._done(step3_audio)
            return

        yield StepEvent("postprocess", "started")
        started = time.perf_counter()
        if self.postprocess == "rm":
            yield self._finish("postprocess", started, "rm: no audio")
            yield self._done(None)
        elif self.postprocess == "rep":
            yield self._finish("postprocess", started, "rep: step-1 audio", step1_audio)
            yield self._done(step1_audio)
        else:
            regenerated = self._generate(NEGATIVE_PROMPT_FOR_FALLBACK)
            yield self._finish("postprocess", started, f"neg: regenerated with negative prompt "
                               f"'{NEGATIVE_PROMPT_FOR_FALLBACK}'", regenerated.waveform)
            yield self._done(regenerated.waveform)
