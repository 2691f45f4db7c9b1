"""The SDK entry point: ``Engine(config).generate(video)`` -> audio for the video.

The Engine owns model loading, device/dtype choice and graph wiring; stages do the work through
backend graphs and know nothing of which backend runs them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .backends.torch_backend import TorchBackend
from .config import DEFAULT_DURATION_S, PRESETS, Preset, resolve_device, resolve_dtype
from .errors import DeepSoundError
from .io.output import write_output
from .io.video import load_video
from .models.loading import GeneratorModels, load_generator_models
from .models.mmaudio.network import sequence_lengths
from .models.mmaudio.sampler import initial_noise
from .progress import ProgressEvent
from .stages import decode, features, generate
from .timing import Timings

ProgressSink = Callable[[ProgressEvent], None]


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
    extra: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write ``.mp4``/``.mov``/``.mkv`` (video stream copied, audio as AAC) or ``.wav``."""
        return write_output(Path(path), self.waveform, self.sample_rate, source_video=self.video,
                            duration_s=self.duration_s)


class Engine:
    """Loads a preset's networks once; ``generate`` can then be called for many videos."""

    def __init__(self, config: EngineConfig | None = None, **overrides):
        config = config or EngineConfig()
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise TypeError(f"unknown EngineConfig field: {key}")
            setattr(config, key, value)
        if config.preset not in PRESETS:
            raise DeepSoundError(f"unknown preset '{config.preset}' (choose from {', '.join(sorted(PRESETS))})")
        if config.steps < 1:
            raise DeepSoundError(f"steps must be at least 1, got {config.steps}")
        self.config = config
        self.preset: Preset = PRESETS[config.preset]
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.models: GeneratorModels = load_generator_models(self.preset, config.weights, self.device, self.dtype,
                                                             verify_checksums=config.verify_checksums,
                                                             random_weights=config.random_weights)
        backend = TorchBackend(self.device, self.dtype)
        self.graphs = {name: backend.load(name, module) for name, module in self.models.graph_modules().items()}

    @property
    def sample_rate(self) -> int:
        return self.preset.sampling_rate

    def generate(self, video: str | Path, prompt: str = "", negative_prompt: str = "",
                 duration: float | None = None, seed: int = 42,
                 progress: ProgressSink | None = None) -> GenerationResult:
        """Generate audio for ``video``: ``duration`` seconds (default 8, cut to the video's length)."""
        report = progress or (lambda event: None)
        timings = Timings()
        graphs = self.graphs
        video = Path(video)

        def stage(name: str, graph=None):
            report(ProgressEvent(name, 0, 1))
            return timings.measure(name, self.device, graph.backend if graph is not None else "")

        with stage("video decode"):
            clip = load_video(video, DEFAULT_DURATION_S if duration is None else duration)
        report(ProgressEvent("video decode", 1, 1))

        latent_len, clip_len, sync_len = sequence_lengths(clip.duration_s, self.preset.sampling_rate,
                                                          self.preset.hop_length)
        self.models.set_sequence_lengths(latent_len, clip_len, sync_len)

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
