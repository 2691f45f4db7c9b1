"""The SDK entry point: ``Engine(config).run(video)`` (the DeepSound steps) or ``.generate(video)``
(step 1 alone) -> audio for the video.

The Engine owns model loading, device/dtype/kernel choice and graph wiring, and does each step's
work; :mod:`.pipeline` decides which step comes next. Stages do the work through backend graphs
and know nothing of which backend runs them.
"""
from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import kernels
from .backends import GraphLoader, check_export_duration
from .backends.base import Graph
from .backends.cuda_graphs import CudaGraphTorchGraph
from .config import DEFAULT_DURATION_S, PRESETS, Preset, resolve_device, resolve_dtype
from .errors import DeepSoundError
from .events import ProgressEvent, ProgressSink, StepEvent
from .io.video import load_video
from .models.graphs import generator_graph_modules, release_unused
from .models.loading import GeneratorModels, load_generator_models
from .models.mmaudio.network import sequence_lengths
from .models.mmaudio.sampler import initial_noise
from .models.spec import graph_spec
from .options import EngineConfig, RunOptions, with_overrides
from .pipeline import StepRunner
from .results import DeepSoundResult, GenerationResult
from .stages import decode, features, generate
from .stages.silence import check_silence
from .timing import Timings
from .weights_dir import DEV_SEED, WeightsSource, find_weight_file

__all__ = ["Engine", "EngineConfig", "RunOptions", "GenerationResult", "DeepSoundResult"]
log = logging.getLogger(__name__)


def _run_options(options: RunOptions | None, overrides: dict) -> RunOptions:
    if options is not None and not isinstance(options, RunOptions):
        raise DeepSoundError(f"options must be a RunOptions, got {type(options).__name__}")
    return with_overrides(options or RunOptions(), overrides)


class Engine:
    """Loads a preset's networks once; ``run``/``steps``/``generate`` can then be called for many
    videos. Keyword overrides on any of them replace fields of the config or options given."""

    def __init__(self, config: EngineConfig | None = None, **overrides):
        if config is not None and not isinstance(config, EngineConfig):
            raise DeepSoundError(f"config must be an EngineConfig, got {type(config).__name__}")
        self.config = config = with_overrides(config or EngineConfig(), overrides)  # the caller's stays as it was
        for note in config.ignored_settings():
            log.warning("%s", note)
        self.preset: Preset = PRESETS[config.preset]
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.use_kernels = kernels.enabled_for(config.kernels, self.device)
        self.loader = GraphLoader(config.backend, config.export, self.device, self.dtype, self.preset.name,
                                  self.use_kernels)
        self.models: GeneratorModels = load_generator_models(
            self.preset, config.weights, self.device, self.dtype, config.weights_source,
            verify_checksums=config.verify_checksums, use_kernels=self.use_kernels)
        self.graphs = self._load_graphs()
        # The flow network's position tables are set per clip duration, and CUDA graphs replay from
        # static buffers: threads sharing this Engine take turns from the conditions to the vocoder.
        self._graph_lock = threading.Lock()

    def _load_graphs(self) -> dict[str, Graph]:
        """Each generator graph on its backend (exported graphs where the export and the backend
        allow, else PyTorch); the graphs whose specs allow it replayed as CUDA graphs when asked."""
        graphs = self.loader.load(generator_graph_modules(self.models))
        release_unused(self.models, [name for name, graph in graphs.items() if graph.backend == "torch"])
        if self.config.cuda_graphs and self.device.type == "cuda":
            for name, graph in graphs.items():
                if graph_spec(name).cuda_graph and graph.backend == "torch":
                    graphs[name] = CudaGraphTorchGraph(graph_spec(name), graph.module, self.device, self.dtype)
        return graphs

    @property
    def sample_rate(self) -> int:
        return self.preset.sampling_rate

    # -- the DeepSound steps (models for steps 0, 2 and 3 load on first use) ----------------------

    @property
    def has_planner(self) -> bool:
        return self.config.weights_source.random or self.config.mllm is not None

    @property
    def has_judge_mllm(self) -> bool:
        return self.has_planner or self.config.judge_mllm is not None

    def default_judge(self) -> str:
        """``auto``: the MLLM's chain of thought when one is configured, else the speech detector."""
        return "cot" if self.has_judge_mllm else "vad"

    @functools.cached_property
    def reasoner(self):
        """The MLLM; its encoders and decoder run on the export's graphs where it holds them."""
        from .stages.reason import MLLMReasoner

        source = self.config.weights_source
        if source.random:
            reasoner = MLLMReasoner.random(seed=DEV_SEED, device=self.device, dtype=self.dtype,
                                           full_size=source is WeightsSource.FULL_RANDOM, use_kernels=self.use_kernels)
        elif self.config.mllm is None:
            raise DeepSoundError("this step needs the MLLM: set EngineConfig.mllm (CLI --mllm DIR)")
        else:
            reasoner = MLLMReasoner.from_dirs(self.config.mllm, self.config.siglip, device=self.device,
                                              dtype=self.dtype, use_kernels=self.use_kernels)
        return reasoner.use_graphs(self.loader.load(reasoner.graph_modules(), torch_fallback=False))

    @functools.cached_property
    def judge_reasoner(self):
        """The judge's MLLM: ``judge_mllm`` when it names another checkpoint, else the planner's."""
        from .stages.reason import MLLMReasoner

        judge_dir = self.config.judge_mllm
        if judge_dir is None or self.config.weights_source.random or judge_dir == self.config.mllm:
            return self.reasoner
        return MLLMReasoner.from_dirs(judge_dir, self.config.siglip, device=self.device, dtype=self.dtype,
                                      use_kernels=self.use_kernels)

    @functools.cached_property
    def detector(self):
        from .stages.vad import SpeechDetector

        return SpeechDetector(min_speech_share=self.config.vad_min_speech_share)

    @functools.cached_property
    def separator(self):
        """BS-RoFormer; its core runs on the export's ``separator_core`` graph where it holds one."""
        from .stages.separate import load_separator

        source = self.config.weights_source
        separator = load_separator(source, None if source.random else self.separator_path(), self.device,
                                   self.dtype, use_kernels=self.use_kernels)
        return separator.use_graphs(self.loader.load(separator.graph_modules(), torch_fallback=False))

    def separator_path(self) -> Path:
        from .models.bs_roformer import SEPARATOR_FILE

        if self.config.separator is not None:
            return self.config.separator
        if self.config.weights is None:
            raise DeepSoundError("voice-over removal needs the BS-RoFormer checkpoint: set EngineConfig.separator "
                                 "(CLI --separator FILE) or put it in the weights directory")
        return find_weight_file(self.config.weights, SEPARATOR_FILE)

    def judge_voice_over(self, video: Path, audio: np.ndarray, sample_rate: int, judge: str) -> tuple[bool, dict]:
        """Step 2: (voice-over?, details) by the MLLM (``cot``/``qa``) or the speech detector (``vad``);
        ``always`` assumes voice-over, so removal always runs (content known to attract hallucinated
        speech; demos with random weights, whose judges never answer yes)."""
        if judge == "always":
            return True, {"assumed": True}
        if judge == "vad":
            decision = self.detector.detect(audio, sample_rate)
            return decision.voice_over, {"speech_share": decision.speech_share, "segments": decision.segments}
        answer = self.judge_reasoner.judge_voice_over(video, audio, sample_rate, mode=judge,
                                                duration_s=len(audio) / sample_rate)
        return answer.voice_over, {"answer": answer.text, "timings": self.judge_reasoner.last_timings}

    def remove_voice_over(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, Timings]:
        """Step 3: the instrumental part of ``audio`` (mix minus vocals), same rate and length, and
        how long the separator took on which backend."""
        instrumental = self.separator.remove_vocals(audio, sample_rate)
        return instrumental, self.separator.last_timings

    def check_silence(self, audio: np.ndarray):
        """Step 4: DeepSound's RMS rule with the configured thresholds."""
        return check_silence(audio, self.config.silence_threshold_db, self.config.silence_max_share)

    def steps(self, video: str | Path, options: RunOptions | None = None, *, progress: ProgressSink | None = None,
              **overrides) -> Iterator[StepEvent]:
        """Run the DeepSound steps (:mod:`.pipeline`), yielding each step as it starts and
        finishes; the last event is ``step == "done"`` with the result."""
        return iter(StepRunner(self, Path(video), _run_options(options, overrides), progress))

    def run(self, video: str | Path, options: RunOptions | None = None, *, progress: ProgressSink | None = None,
            **overrides) -> DeepSoundResult:
        """Every step of :meth:`steps`, returning the result."""
        for event in self.steps(video, options, progress=progress, **overrides):
            if event.result is not None:
                return event.result
        raise AssertionError("the step runner ended without a result")

    def generate(self, video: str | Path, options: RunOptions | None = None, *, progress: ProgressSink | None = None,
                 **overrides) -> GenerationResult:
        """Step 1 alone: ``options.duration`` seconds of audio for ``video`` (default 8, cut to the
        video's length) from ``prompt``, ``negative_prompt`` and ``seed``."""
        options = _run_options(options, overrides)
        report = progress or (lambda event: None)
        timings = Timings()
        graphs = self.graphs
        video = Path(video)

        def stage(name: str, graph=None):
            report(ProgressEvent(name, 0, 1))
            return timings.measure(name, self.device, graph.backend if graph is not None else "")

        with stage("video decode"):
            clip = load_video(video, DEFAULT_DURATION_S if options.duration is None else options.duration)
        report(ProgressEvent("video decode", 1, 1))

        requested = DEFAULT_DURATION_S if options.duration is None else options.duration
        check_export_duration(graphs, self.preset.name, clip.duration_s,  # exports bake in their duration
                              video_s=clip.duration_s if clip.duration_s < requested else None)
        latent_len, clip_len, sync_len = sequence_lengths(clip.duration_s, self.preset.sampling_rate,
                                                          self.preset.hop_length)

        with stage("clip", graphs["clip_image"]):
            clip_f = features.clip_image_features(graphs["clip_image"], clip.clip_frames[:clip_len])
        report(ProgressEvent("clip", 1, 1))
        with stage("synchformer", graphs["sync"]):
            sync_f = features.sync_features(graphs["sync"], clip.sync_frames)
        report(ProgressEvent("synchformer", 1, 1))
        with stage("text", graphs["clip_text"]):
            tokens = self.models.tokenize([options.prompt, options.negative_prompt])
            text_f = features.text_features(graphs["clip_text"], tokens)
        report(ProgressEvent("text", 1, 1))

        with self._graph_lock:  # one clip at a time through the shared graphs (see __init__)
            self.models.set_sequence_lengths(latent_len, clip_len, sync_len)
            with stage("conditions", graphs["flow_conditions"]):
                conditions = generate.prepare_conditions(graphs["flow_conditions"], clip_f, sync_f[:, :sync_len],
                                                         text_f[:1], text_f[1:])
            report(ProgressEvent("conditions", 1, 1))

            x0 = initial_noise(1, latent_len, self.models.latent_dim, options.seed, self.device, torch.float32)
            report(ProgressEvent("sampling", 0, self.config.num_steps))
            with timings.measure("sampling", self.device, graphs["flow_velocity"].backend):
                latents = generate.sample_latents(
                    graphs["flow_velocity"], conditions, x0, self.config.num_steps, self.config.cfg_strength,
                    progress=lambda done, total: report(ProgressEvent("sampling", done, total)))

            with stage("vae", graphs["vae_decode"]):
                mel = decode.decode_latents(graphs["vae_decode"], latents)
            report(ProgressEvent("vae", 1, 1))
            with stage("vocoder", graphs["vocoder"]):
                waveform = decode.vocode(graphs["vocoder"], mel)
            report(ProgressEvent("vocoder", 1, 1))

        decode.check_finite(waveform, self.dtype)
        num_samples = round(clip.duration_s * self.preset.sampling_rate)
        return GenerationResult(
            waveform=waveform[:num_samples].numpy().astype(np.float32),
            sample_rate=self.preset.sampling_rate, duration_s=clip.duration_s, video=video, timings=timings,
            preset=self.preset.name, seed=options.seed, device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."))
