"""The SDK entry point: ``Engine(config).run(video)`` (the DeepSound steps) or ``.generate(video)``
(step 1 alone) -> audio for the video.

The Engine owns model loading, device/dtype/kernel choice and graph wiring, and does each step's
work; :mod:`.pipeline` decides which step comes next. Stages do the work through backend graphs
and know nothing of which backend runs them.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from . import kernels
from .backends import GraphLoader, check_export_duration
from .backends.base import Graph
from .backends.fp8 import convert_flow_to_fp8, has_fp8_kernel
from .backends.torch_backend import TorchGraph
from .config import PRESETS, Preset, resolve_device, resolve_dtype
from .errors import DeepSoundError
from .events import ProgressEvent, ProgressSink, StepEvent
from .io.batch import BatchItem, ResultLog, expand_inputs
from .io.output import check_output_path, write_bytes
from .io.video import SYNC_FPS, FrameStream, probe_video, read_ahead
from .memory import check_fits, mllm_parts, pipeline_bytes, resolve_tier
from .models.graphs import generator_graph_modules, release_unused
from .models.loading import GeneratorModels, load_generator_models
from .models.mmaudio.network import TRAINING_DURATION_S, sequence_lengths
from .models.mmaudio.sampler import initial_noise, window_seed
from .models.spec import graph_spec
from .options import EngineConfig, RunOptions, with_overrides, with_row
from .pipeline import StepRunner
from .residency import Residency
from .results import BatchResult, DeepSoundResult, GenerationResult
from .stages import decode, features, generate
from .stages.windows import AudioJoin, Window, WindowPlan, plan_windows
from .stages.silence import check_silence
from .timing import Timings
from .weights_dir import DEV_SEED, WeightsSource, find_weight_file

logger = logging.getLogger(__name__)

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
        if config.fp8 and self.device.type == "cuda" and not has_fp8_kernel(self.device):
            raise DeepSoundError("fp8 needs an NVIDIA GPU of compute capability 9.0 or newer (Hopper)")
        # The memory tier: one that the device cannot hold is refused here, before anything loads.
        self.tier, self.int8_llm = resolve_tier(config.memory, config.mllm_precision)
        if self.int8_llm:
            from .models.mllm.quantize import require_torchao

            require_torchao()
        check_fits(pipeline_bytes(self), config.memory, config.mllm_precision, self.device)
        self.residency = Residency(self.device)
        self.loader = GraphLoader(config.backend, config.export, self.device, self.dtype, self.preset.name,
                                  self.use_kernels, compile=config.compile, cuda_graphs=config.cuda_graphs)
        self.models: GeneratorModels = load_generator_models(
            self.preset, config.weights, self.device, self.dtype, config.weights_source,
            verify_checksums=config.verify_checksums, use_kernels=self.use_kernels)
        self.graphs = self._load_graphs()
        if self.tier.offload_encoders:  # those on torch (an exported graph holds its own weights; none is a CUDA graph)
            on_torch = {network for name, graph in self.graphs.items() if isinstance(graph, TorchGraph)
                        for network in graph_spec(name).networks}
            self.residency.offload("encoders", [getattr(self.models, network) for network in ("clip", "synchformer")
                                                if network in on_torch])
        if config.window_batch not in ("auto", 1) and not self.graphs["flow_velocity"].backend.startswith("torch"):
            raise DeepSoundError(f"window_batch {config.window_batch} needs flow_velocity on torch: an exported "
                                 "velocity graph runs one window at a time (use window_batch 1 or auto)")
        # The flow network's position tables are set per clip duration, and CUDA graphs replay from
        # static buffers: threads sharing this Engine take turns from the conditions to the vocoder.
        self._graph_lock = threading.Lock()

    def _load_graphs(self) -> dict[str, Graph]:
        """Each generator graph on its backend (exported graphs where the export and the backend
        allow, else PyTorch, compiled and replayed as CUDA graphs as asked and their specs allow);
        with ``fp8`` the flow network's blocks in FP8 where PyTorch runs the velocity step (before
        its first run, which compiles and captures it)."""
        graphs = self.loader.load(generator_graph_modules(self.models))
        on_torch = [name for name, graph in graphs.items() if isinstance(graph, TorchGraph)]
        release_unused(self.models, on_torch)
        if self.config.fp8 and "flow_velocity" in on_torch:
            convert_flow_to_fp8(self.models.flow, self.device)
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
                                              dtype=self.dtype, use_kernels=self.use_kernels,
                                              weights_device=self._mllm_weights_device)
        reasoner.use_graphs(self.loader.load(reasoner.graph_modules(), torch_fallback=False))
        return self._fit_mllm("mllm", self._with_levers(reasoner))

    def _with_levers(self, reasoner):
        """The MLLM's speed levers: static-cache decoding, SDPA in BEATs."""
        if self.config.static_decode:
            reasoner.use_static_cache()
        if self.config.sdpa_encoders:
            reasoner.model.model.audio_tower.use_sdpa()
        return reasoner

    @property
    def _mllm_weights_device(self) -> torch.device:
        """Where an MLLM checkpoint loads: the host when the tier offloads it (the device never
        holds it whole outside its steps, not even while loading)."""
        return torch.device("cpu") if self.tier.offload_steps else self.device

    def _fit_mllm(self, network: str, reasoner):
        """The memory tier's part: int8 language-model weights (quantised on the compute device,
        layer by layer), then host copies between steps."""
        from .models.mllm.quantize import quantize_llm_int8

        if self.int8_llm:
            quantize_llm_int8(reasoner.model, work_device=self.device)
        if self.tier.offload_steps:
            self.residency.offload(network, mllm_parts(reasoner.model), in_order=True)
        return reasoner

    @functools.cached_property
    def judge_reasoner(self):
        """The judge's MLLM: ``judge_mllm`` when it names another checkpoint, else the planner's."""
        from .stages.reason import MLLMReasoner

        judge_dir = self.config.judge_mllm
        if judge_dir is None or self.config.weights_source.random or judge_dir == self.config.mllm:
            return self.reasoner
        return self._fit_mllm("judge_mllm", self._with_levers(MLLMReasoner.from_dirs(
            judge_dir, self.config.siglip, device=self.device, dtype=self.dtype, use_kernels=self.use_kernels,
            weights_device=self._mllm_weights_device)))

    @functools.cached_property
    def detector(self):
        from .stages.vad import SpeechDetector

        return SpeechDetector(min_speech_share=self.config.vad_min_speech_share)

    @functools.cached_property
    def separator(self):
        """BS-RoFormer; its core runs on the export's ``separator_core`` graph where it holds one
        (or compiled, with ``compile``)."""
        from .stages.separate import load_separator

        source = self.config.weights_source
        separator = load_separator(source, None if source.random else self.separator_path(), self.device,
                                   self.dtype, use_kernels=self.use_kernels)
        separator.use_graphs(self.loader.load(separator.graph_modules(), torch_fallback=False))
        if self.tier.offload_steps:
            self.residency.offload("separator", [separator.model])
        return separator

    def separator_path(self) -> Path:
        from .models.bs_roformer import SEPARATOR_FILE

        if self.config.separator is not None:
            return self.config.separator
        if self.config.weights is None:
            raise DeepSoundError("voice-over removal needs the BS-RoFormer checkpoint: set EngineConfig.separator "
                                 "(CLI --separator FILE) or put it in the weights directory")
        return find_weight_file(self.config.weights, SEPARATOR_FILE)

    def _on_device(self, step: str):
        """The weights ``step`` runs on, on the device for the body: the one place where the memory
        tier meets the steps (nothing happens for the networks the tier keeps resident)."""
        network = {"plan": "mllm", "features": "encoders", "remove": "separator",
                   "judge": "judge_mllm" if "judge_mllm" in self.residency else "mllm"}[step]
        return self.residency.on_device(network)

    def plan(self, video: Path):
        """Step 0: the MLLM's plan of steps for ``video``."""
        reasoner = self.reasoner
        with self._on_device("plan"):
            return reasoner.plan(video)

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
        reasoner = self.judge_reasoner
        with self._on_device("judge"):
            answer = reasoner.judge_voice_over(video, audio, sample_rate, mode=judge,
                                               duration_s=len(audio) / sample_rate, media=media)
        return answer.voice_over, {"answer": answer.text, "timings": reasoner.last_timings}

    def remove_voice_over(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, Timings]:
        """Step 3: the instrumental part of ``audio`` (mix minus vocals), same rate and length, and
        how long the separator took on which backend."""
        separator = self.separator
        with self._on_device("remove"):
            instrumental = separator.remove_vocals(audio, sample_rate)
        return instrumental, separator.last_timings

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

    def run_many(self, inputs: Iterable, options: RunOptions | None = None, *, output_dir: str | Path | None = None,
                 suffix: str = ".mp4", overwrite: bool = False, log: str | Path | None = None, plot: bool = False,
                 progress: ProgressSink | None = None, on_step: Callable[[StepEvent], None] | None = None,
                 **overrides) -> Iterator[BatchResult]:
        """Many videos on this one Engine, a :class:`BatchResult` yielded as each finishes.

        ``inputs``: video paths, folders (their videos), CSV/JSONL lists whose rows name a
        ``video`` and optionally its ``output`` and run options (``prompt``, ``seed``, ...; see
        :mod:`.io.batch`), or ``(video, {options})`` pairs. With ``output_dir``, each result is
        written there (``<video name><suffix>`` unless its row names one) and a video whose output
        already exists is skipped unless ``overwrite``. A video that fails fails alone; ``log``
        gets a JSON line per video as it finishes. Options ``mode="gen"`` runs step 1 alone. ``plot``:
        each output's picture (:func:`~deepsound_rt.plot.render_result`) beside it as ``.png``."""
        base = _run_options(options, overrides)
        result_log = None if log is None else ResultLog(Path(log))
        items = expand_inputs(inputs)
        outputs_taken: set[Path] = set()
        for item in items:
            output = None if output_dir is None else Path(output_dir) / (item.output or item.video.stem + suffix)
            outcome = self._run_item(item, base, output, outputs_taken, overwrite, plot, progress, on_step)
            if result_log is not None:
                result_log.write(outcome.log_entry())
            yield outcome

    def _run_item(self, item: BatchItem, base: RunOptions, output: Path | None, outputs_taken: set[Path],
                  overwrite: bool, plot: bool, progress: ProgressSink | None, on_step) -> BatchResult:
        started = time.perf_counter()

        def failed(error: str) -> BatchResult:
            return BatchResult(item.video, "failed", time.perf_counter() - started, output, error=error,
                               source=item.source)

        if item.error is not None:
            return failed(item.error)
        if output is not None:
            if output in outputs_taken:
                return failed(f"{output}: an earlier video of this batch writes there; give the row an output name")
            outputs_taken.add(output)
            if output.exists() and not overwrite:  # written under a temporary name, so complete
                return BatchResult(item.video, "skipped", 0.0, output, source=item.source)
        try:
            options = with_row(base, item.options)
            if output is not None:
                check_output_path(output, item.video)
            if options.mode == "gen":
                result = self.generate(item.video, options, progress=progress)
            else:
                for event in self.steps(item.video, options, progress=progress):
                    if on_step is not None:
                        on_step(event)
                    if event.result is not None:
                        result = event.result
            if output is not None:
                result.save(output)
                if plot:
                    from .plot import render_result

                    write_bytes(output.with_suffix(".png"), render_result(result))
        except DeepSoundError as error:
            return failed(str(error))
        except Exception as error:  # a bug or a library's surprise on this file: the rest still run
            logger.exception("%s failed", item.video)
            return failed(f"{type(error).__name__}: {error}")
        return BatchResult(item.video, "ok", time.perf_counter() - started, output, result, source=item.source)

    def generate(self, video: str | Path, options: RunOptions | None = None, *, progress: ProgressSink | None = None,
                 on_decoded: Callable[[float], None] | None = None, **overrides) -> GenerationResult:
        """Step 1 alone: audio for the whole video, or its first ``options.duration`` seconds, from
        ``prompt``, ``negative_prompt`` and ``seed``. Longer than the training length (8 s), it is
        made in overlapping windows (:mod:`.stages.windows`): the video's features once, as its
        frames decode; each window's conditions sliced from them, its own seeded noise, several
        windows per velocity call (``EngineConfig.window_batch``), joined by ``options.seam``.
        ``on_decoded`` is called with the clip's length once the video is decoded."""
        options = _run_options(options, overrides)
        report = progress or (lambda event: None)
        timings = Timings()
        graphs = self.graphs
        video = Path(video)

        def stage(name: str, graph=None):
            return timings.measure(name, self.device, graph.backend if graph is not None else "")

        plan_for = functools.partial(plan_windows, sample_rate=self.preset.sampling_rate, hop=self.preset.hop_length,
                                     overlap_s=options.window_overlap, seam=options.seam)
        with self._on_device("features"):  # the low tier keeps CLIP and the Synchformer on the host otherwise
            clip_f, sync_f, duration = self._video_features(video, options.duration, plan_for, timings, report)
            if on_decoded is not None:
                on_decoded(float(duration))
            plan = plan_for(duration)
            ended_with_video = options.duration is None or duration < options.duration
            check_export_duration(graphs, self.preset.name, plan.window_s,  # exports bake in their duration
                                  video_s=float(duration) if ended_with_video else None)

            report(ProgressEvent("text", 0, 1))
            with stage("text", graphs["clip_text"]):
                tokens = self.models.tokenize([options.prompt, options.negative_prompt])
                text_f = features.text_features(graphs["clip_text"], tokens)
            report(ProgressEvent("text", 1, 1))
        with self._graph_lock:  # one clip at a time through the shared graphs (see __init__)
            self.models.set_sequence_lengths(*plan.lengths)
            waveform = self._sample_windows(plan, clip_f, sync_f, text_f, options.seed, stage, report)
        return GenerationResult(
            waveform=waveform, sample_rate=self.preset.sampling_rate, duration_s=plan.duration_s, video=video,
            timings=timings, preset=self.preset.name, seed=options.seed, device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."), windows=plan)

    def _video_features(self, video: Path, duration_s: float | None, plan_for, timings: Timings,
                        report: ProgressSink) -> tuple[torch.Tensor, torch.Tensor, Fraction]:
        """CLIP and sync features of the whole video (padded for the windows that reach past its
        end), encoded as its frames decode (with ``overlap``, decoded on a worker thread meanwhile);
        and its duration. "video decode" is the time the stream took, less the encoders' own."""
        graphs = self.graphs
        for name, graph in (("video decode", None), ("clip", graphs["clip_image"]), ("synchformer", graphs["sync"])):
            timings.add(name, 0.0, graph.backend if graph is not None else "")  # the table's order
        stream = FrameStream(video, duration_s, chunk=features.CLIP_FRAMES_PER_RUN,
                             pad=lambda duration: plan_for(duration).frames_needed)
        encoder = features.StreamEncoder(graphs["clip_image"], graphs["sync"],
                                         lambda name, graph: timings.measure(name, self.device, graph.backend))
        expected = probe_video(video).duration_s or 0.0
        total = math.ceil(min(expected, duration_s or math.inf))
        report(ProgressEvent("video decode", 0, total))
        started = time.perf_counter()
        for chunk in read_ahead(stream) if self.config.overlap else stream:
            encoder.add(chunk)
            if chunk.kind == "sync":
                report(ProgressEvent("video decode", min(total, (chunk.first + len(chunk.frames)) // SYNC_FPS), total))
        clip_f, sync_f = encoder.finish()
        encoding = sum(seconds for name, seconds in timings.as_dict().items() if name in ("clip", "synchformer"))
        timings.add("video decode", time.perf_counter() - started - encoding)
        seconds = math.ceil(stream.duration_s)
        report(ProgressEvent("video decode", seconds, seconds))
        return clip_f, sync_f, stream.duration

    def window_batch(self) -> int:
        """Windows per velocity call: ``EngineConfig.window_batch``, or for ``auto`` as many as half the
        free memory holds (:func:`flow_window_bytes`), at most ``AUTO_WINDOW_BATCH`` of the device;
        one where the velocity graph is exported (exports run one window)."""
        if self.config.window_batch != "auto":
            return self.config.window_batch
        if not self.graphs["flow_velocity"].backend.startswith("torch"):
            return 1
        latent_len, clip_len, _ = sequence_lengths(TRAINING_DURATION_S, self.preset.sampling_rate,
                                                   self.preset.hop_length)
        per_window = flow_window_bytes(self.preset.flow, latent_len, clip_len, self.dtype)
        return max(1, min(AUTO_WINDOW_BATCH[self.device.type], int(free_memory(self.device) / 2 // per_window)))

    def _sample_windows(self, plan: WindowPlan, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor,
                        seed: int, stage, report: ProgressSink) -> np.ndarray:
        """Each window's latents (:meth:`window_latents`), then its VAE and vocoder, joined as the plan says."""
        graphs = self.graphs
        count = len(plan.windows)
        joined = AudioJoin(plan)
        batch = self.window_batch()
        for window, latents in self.window_latents(plan, clip_f, sync_f, text_f, seed, batch, stage, report):
            with stage("vae", graphs["vae_decode"]):
                mel = decode.decode_latents(graphs["vae_decode"], latents)
            report(ProgressEvent("vae", window.index + 1, count))
            with stage("vocoder", graphs["vocoder"]):
                waveform = decode.vocode(graphs["vocoder"], mel)
            report(ProgressEvent("vocoder", window.index + 1, count))
            decode.check_finite(waveform, self.dtype)
            joined.add(window, waveform.numpy())
        return joined.result()

    def window_latents(self, plan: WindowPlan, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor,
                       seed: int, batch: int, stage=None, report: ProgressSink | None = None
                       ) -> Iterator[tuple[Window, torch.Tensor]]:
        """(window, its (1, N, C) latents) in order: each window's conditions sliced from the whole
        video's features, its own seeded noise, ``batch`` windows per velocity call (one at a time
        when each follows the previous: ``inpaint``)."""
        graphs = self.graphs
        stage = stage or (lambda name, graph=None: contextlib.nullcontext())
        report = report or (lambda event: None)
        latent_len, clip_len, sync_len = plan.lengths
        batch = 1 if plan.seam == "inpaint" else batch
        groups = [plan.windows[first : first + batch] for first in range(0, len(plan.windows), batch)]
        steps = self.config.num_steps
        previous: torch.Tensor | None = None  # the last window's latents, for the next one's held part
        report(ProgressEvent("sampling", 0, steps * len(groups)))
        for number, group in enumerate(groups):
            with stage("conditions", graphs["flow_conditions"]):
                conditions = generate.stack_conditions([generate.prepare_conditions(
                    graphs["flow_conditions"], clip_f[:, w.clip_first : w.clip_first + clip_len],
                    sync_f[:, w.sync_first : w.sync_first + sync_len], text_f[:1], text_f[1:]) for w in group])
            x0 = torch.cat([initial_noise(1, latent_len, self.models.latent_dim, window_seed(seed, w.index),
                                          self.device, torch.float32) for w in group])
            held = previous[:, latent_len - group[0].held :] if group[0].held else None
            with stage("sampling", graphs["flow_velocity"]):
                latents = generate.sample_latents(
                    graphs["flow_velocity"], conditions, x0, steps, self.config.cfg_strength, held=held,
                    progress=lambda done, _: report(ProgressEvent("sampling", number * steps + done, steps * len(groups))))
            previous = latents[-1:]
            yield from zip(group, latents.split(1))


AUTO_WINDOW_BATCH = {"cuda": 16, "cpu": 4}
"""The most windows ``auto`` batches: a GPU gains up to about this many per call, a CPU little beyond
a few (its cores are busy with one window's matrix products)."""
FLOW_ACTIVATION_WIDTHS = 16
"""Hidden-size vectors per token alive at a flow block's peak (the residual stream, q/k/v, the
SwiGLU's two 4x projections): the per-token part of a window's memory."""


def flow_window_bytes(flow, latent_len: int, clip_len: int, dtype: torch.dtype) -> int:
    """Estimated memory one more window adds to a velocity call: activations of its conditional and
    unconditional token sequences, plus float32 attention scores where they are materialised."""
    tokens = latent_len + clip_len + flow.text_seq_len
    element = torch.finfo(dtype).bits // 8
    return 2 * tokens * (flow.hidden_dim * element * FLOW_ACTIVATION_WIDTHS + flow.num_heads * tokens * 4)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's, or the memory Linux reports available (else 1 GiB)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**30
