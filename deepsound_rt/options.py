"""What an Engine loads (:class:`EngineConfig`) and how one clip runs (:class:`RunOptions`).

Both are frozen and validated once, when built: a bad value is a :class:`DeepSoundError` that
names the allowed values. The CLI reads its choices and defaults from the tuples and dataclass
defaults here, so no default is written twice.
"""
from __future__ import annotations

import math
import os
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .backends import AUTO, BACKENDS
from .backends.compiled import COMPILE_BACKENDS
from .config import DTYPE_NAMES, PRESETS
from .models.mmaudio.network import TRAINING_DURATION_S
from .errors import DeepSoundError
from .weights_dir import WeightsSource

MODES = ("s4", "s3", "gen")
"""s4: every DeepSound step; s3: stop after voice-over removal; gen: step 1 (generation) alone."""
POSTPROCESSES = ("rep", "neg", "rm")
"""When the audio is silent after removal: the step-1 audio, regenerate with a negative prompt, none."""
JUDGES = ("auto", "cot", "qa", "vad", "always")
KERNEL_SETTINGS = ("auto", "on", "off")
"""auto: our kernels where they are built for the device; on: required; off: torch ops."""
KERNELS_ENV = "DEEPSOUND_RT_KERNELS"
DTYPES = ("auto", *DTYPE_NAMES)
BACKEND_CHOICES = (AUTO, *BACKENDS)
WEIGHTS_SOURCES = ("auto", *(source.value for source in WeightsSource))
MEMORY_TIERS = ("max", "balanced", "low")
"""Fastest first. max: every network on the device; balanced: the MLLM and the separator only during
their steps; low: also int8 LLM weights and the video encoders only while features are computed
(deepsound_rt.memory)."""
MLLM_PRECISIONS = ("auto", "int8", "dtype")
"""The MLLM's language-model weights: int8, or the Engine's dtype; auto: int8 in the low tier."""
MAX_SEED = 2**63
SEAMS = ("crossfade", "inpaint")
"""How the windows of a video longer than the training length join: an equal-power crossfade of
independent windows, or each window's overlap held to the previous window's latents while it is
sampled (sequential). The rule: ``deepsound_rt.stages.windows``."""
MAX_OVERLAP_S = TRAINING_DURATION_S / 2
"""Windows overlap by at most half their length, so no moment lies in three windows."""
MAX_WINDOW_BATCH = 64
MAX_NUM_STEPS = 1000
"""Euler steps at most: MMAudio is trained and evaluated at 25; 40 times that bounds how long one
clip can run (a typo such as 100000 would otherwise run for hours without an error)."""
MAX_CFG_STRENGTH = 100.0
"""Guidance strength at most (MMAudio's default is 4.5; strengths below 1 act as 1, as upstream):
a bound that keeps the guided velocity finite, so an absurd value is refused up front rather than
ending a whole run in NaN."""


def _choice(what: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise DeepSoundError(f"unknown {what} {value!r} (choose from {', '.join(allowed)})")


def _number(what: str, value: Any, low: float = -math.inf, high: float = math.inf, above: bool = False) -> float:
    """``value`` as a finite float in [low, high] (``above``: greater than ``low``); bools are not
    numbers here."""
    try:
        valid = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
            and (low < value if above else low <= value) and value <= high
    except OverflowError:  # an int too large for a float
        valid = False
    if not valid:
        bounds = (f" > {low:g}" if above and high == math.inf else f" of at least {low:g}" if high == math.inf
                  else "" if low == -math.inf else f" in [{low:g}, {high:g}]")
        raise DeepSoundError(f"{what} must be a finite number{bounds}, got {value!r}")
    return float(value)


def integer_in(what: str, value: Any, low: int, high: float = math.inf, bounds: str = "") -> int:
    """``value`` if it is an int in [low, high] (bools are not), else a DeepSoundError naming the
    range (``bounds``, or [low, high], or 'at least low')."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        bounds = bounds or (f"of at least {low}" if high == math.inf else f"in [{low}, {high}]")
        raise DeepSoundError(f"{what} must be an integer {bounds}, got {value!r}")
    return value


def _optional_path(what: str, value: Any) -> Path | None:
    if value is None or isinstance(value, Path):
        return value
    if isinstance(value, str):
        try:
            return Path(value).expanduser()
        except RuntimeError:  # ~name of no user here
            raise DeepSoundError(f"{what}: cannot expand {value!r}: no such user's home directory") from None
    raise DeepSoundError(f"{what} must be a path, got {value!r}")


def resolve_weights_source(preset: str, value: WeightsSource | str) -> WeightsSource:
    """``auto``: tiny-random for a preset without official files (dev), else official."""
    name = value.value if isinstance(value, WeightsSource) else value
    _choice("weights source", name, WEIGHTS_SOURCES)
    if name == "auto":
        return WeightsSource.TINY_RANDOM if not PRESETS[preset].files else WeightsSource.OFFICIAL
    return WeightsSource(name)


def default_kernels() -> str:
    """``$DEEPSOUND_RT_KERNELS`` when set, else auto."""
    return os.environ.get(KERNELS_ENV, "auto")


@dataclass(frozen=True)
class EngineConfig:
    """What to load and how to run it. ``weights`` (official files) is required for every preset
    but ``dev`` unless ``weights_source`` is a random one."""

    preset: str = "large_44k_v2"
    weights: Path | None = None
    weights_source: WeightsSource | str = "auto"  # auto: tiny-random for presets without files (dev), else official
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    dtype: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    num_steps: int = 25  # Euler steps of the flow (MMAudio's num_steps)
    cfg_strength: float = 4.5
    verify_checksums: bool = True
    mllm: Path | None = None  # HF-style VideoLLaMA2.1-7B-AV-CoT directory: the plan and the judge
    judge_mllm: Path | None = None  # another checkpoint for the judge (e.g. the -QA one); default: mllm
    siglip: Path | None = None  # SigLIP so400m/14@384 directory (the MLLM's vision tower)
    separator: Path | None = None  # BS-RoFormer checkpoint; default: looked up in ``weights``
    vad_min_speech_share: float = 0.10  # vad judge: voice-over when speech covers this share
    silence_threshold_db: float = -50.0
    silence_max_share: float = 0.9
    cuda_graphs: bool = False  # replay the graphs their specs allow as CUDA graphs (CUDA only)
    backend: str = AUTO  # per graph the best installed backend that has it (deepsound_rt.backends)
    export: Path | None = None  # a `deepsound-rt export` directory for the onnxruntime/tensorrt backends
    kernels: str = field(default_factory=default_kernels)  # see KERNEL_SETTINGS
    window_batch: int | str = "auto"  # windows of a long video per velocity call; auto: by free memory
    # Speed levers (each off by default; `deepsound-rt bench` times them alone and together):
    static_decode: bool = False  # MLLM decoding: static KV cache, greedy on the device, a CUDA graph per token on a GPU
    compile: str | None = None  # torch.compile backend (COMPILE_BACKENDS) for the graphs whose specs allow it
    fp8: bool = False  # FP8 matmuls in the flow network's blocks (Hopper; emulated in float32 elsewhere)
    overlap: bool = False  # plan beside step 1, video decoding beside CLIP, the judge's encoders ahead of it
    sdpa_encoders: bool = False  # BEATs attention by SDPA (one fused kernel) instead of upstream's softmax
    memory: str = "max"  # see MEMORY_TIERS
    mllm_precision: str = "auto"  # see MLLM_PRECISIONS

    def __post_init__(self) -> None:
        _choice("preset", self.preset, tuple(sorted(PRESETS)))
        _choice("dtype", self.dtype, DTYPES)
        _choice("backend", self.backend, BACKEND_CHOICES)
        if self.compile is not None:
            _choice("compile backend", self.compile, COMPILE_BACKENDS)
        _choice(f"kernels setting (EngineConfig.kernels or ${KERNELS_ENV})", self.kernels, KERNEL_SETTINGS)
        _choice("memory tier", self.memory, MEMORY_TIERS)
        _choice("mllm_precision", self.mllm_precision, MLLM_PRECISIONS)
        object.__setattr__(self, "weights_source", resolve_weights_source(self.preset, self.weights_source))
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda")
                                                    or self.device.removeprefix("cuda:").isdigit()):
            raise DeepSoundError(f"unknown device {self.device!r} (use auto, cpu, cuda or cuda:N)")
        integer_in("num_steps", self.num_steps, 1, MAX_NUM_STEPS)
        object.__setattr__(self, "cfg_strength", _number("cfg_strength", self.cfg_strength, 0, MAX_CFG_STRENGTH))
        object.__setattr__(self, "vad_min_speech_share", _number("vad_min_speech_share", self.vad_min_speech_share, 0, 1))
        object.__setattr__(self, "silence_threshold_db", _number("silence_threshold_db", self.silence_threshold_db))
        object.__setattr__(self, "silence_max_share", _number("silence_max_share", self.silence_max_share, 0, 1))
        if self.window_batch != "auto":
            integer_in("window_batch", self.window_batch, 1, MAX_WINDOW_BATCH, bounds=f"auto or in [1, {MAX_WINDOW_BATCH}]")
        for name in ("verify_checksums", "cuda_graphs", "static_decode", "fp8", "overlap", "sdpa_encoders"):
            if not isinstance(getattr(self, name), bool):
                raise DeepSoundError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("weights", "mllm", "judge_mllm", "siglip", "separator", "export"):
            object.__setattr__(self, name, _optional_path(name, getattr(self, name)))
        # A tier that moves weights between steps cannot serve levers that run the MLLM ahead of its
        # step or keep hold of the weights they first saw (captured decoding, compiled graphs).
        holding = [name for name in ("overlap", "static_decode", "compile") if getattr(self, name)]
        if self.memory != "max" and holding:
            raise DeepSoundError(f"memory tier {self.memory!r} moves weights between steps, which "
                                 f"{', '.join(holding)} cannot follow: use memory='max' with them")

    def ignored_settings(self) -> list[str]:
        """One line per reason for settings this config gives that nothing will read (the Engine
        logs them as warnings rather than dropping them without a word)."""
        notes = []
        if self.weights_source.random:
            unread = [name for name in ("weights", "separator", "mllm", "judge_mllm", "siglip")
                      if getattr(self, name) is not None]
            unread += [] if self.verify_checksums else ["verify_checksums=False"]
            if unread:
                notes.append(f"ignored: {', '.join(unread)}: weights source {self.weights_source.value} "
                             "builds random networks and reads no weight file")
        if self.cuda_graphs and self.device == "cpu":
            notes.append("ignored: cuda_graphs: CUDA graphs need a CUDA device")
        if self.export is not None and self.backend == "torch":
            notes.append("ignored: export: backend torch runs the torch modules, not the export")
        return notes


@dataclass(frozen=True)
class RunOptions:
    """How one clip runs: the DeepSound branches (``mode``, ``postprocess``, ``judge``) and the
    generation inputs. ``duration`` None = the whole video (a number caps it); audio longer than
    the training length (8 s) is made in windows that overlap by ``window_overlap`` seconds and join by
    ``seam``."""

    mode: str = "s4"
    postprocess: str = "rep"
    judge: str = "auto"  # auto: cot with an MLLM, else vad; always: assume voice-over (removal runs)
    prompt: str = ""
    negative_prompt: str = ""
    duration: float | None = None
    seed: int = 42
    window_overlap: float = 2.0
    seam: str = "crossfade"

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("post-processing", self.postprocess, POSTPROCESSES)
        _choice("judge", self.judge, JUDGES)
        for name in ("prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise DeepSoundError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.duration is not None:
            object.__setattr__(self, "duration", _number("duration (seconds, or None)", self.duration, 0, above=True))
        integer_in("seed", self.seed, 0, MAX_SEED - 1, bounds="in [0, 2**63)")
        object.__setattr__(self, "window_overlap", _number("window_overlap", self.window_overlap, 0, MAX_OVERLAP_S))
        _choice("seam", self.seam, SEAMS)

    def ignored_settings(self) -> list[str]:
        """Settings (other than their defaults) that this mode never reads, one line per mode."""
        unread = []
        if self.mode == "gen" and self.judge != default_of(RunOptions, "judge"):
            unread.append(f"judge={self.judge}")
        if self.mode in ("gen", "s3") and self.postprocess != default_of(RunOptions, "postprocess"):
            unread.append(f"postprocess={self.postprocess}")
        return [f"ignored: {', '.join(unread)}: mode {self.mode} stops before that step"] if unread else []


def with_overrides(base, overrides: dict[str, Any]):
    """``base`` (an EngineConfig or RunOptions) with keyword overrides, validated again; an
    unknown name is a DeepSoundError naming the fields."""
    names = {f.name for f in fields(base)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise DeepSoundError(f"unknown {type(base).__name__} field {', '.join(unknown)} "
                             f"(fields: {', '.join(sorted(names))})")
    if isinstance(base, EngineConfig) and "preset" in overrides and "weights_source" not in overrides \
            and base.weights_source is resolve_weights_source(base.preset, "auto"):
        overrides = {**overrides, "weights_source": "auto"}  # an automatic source follows the new preset
    return replace(base, **overrides) if overrides else base


_ROW_NUMBERS = {"seed": int, "duration": float, "window_overlap": float}


def with_row(base: RunOptions, row: dict[str, Any]) -> RunOptions:
    """``base`` with a batch list's row of options (CSV strings or JSON values), validated; numbers
    written as strings are read as numbers."""
    converted = {}
    for name, value in row.items():
        if name in _ROW_NUMBERS and isinstance(value, str):
            try:
                value = _ROW_NUMBERS[name](value)
            except ValueError:
                raise DeepSoundError(f"{name} must be a number, got {value!r}") from None
        converted[name] = value
    return with_overrides(base, converted)


def default_of(cls, name: str) -> Any:
    """The default of field ``name`` of a dataclass (what the CLI shows and uses)."""
    spec = next(f for f in fields(cls) if f.name == name)
    return spec.default_factory() if spec.default is MISSING else spec.default
