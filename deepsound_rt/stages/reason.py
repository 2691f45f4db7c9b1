"""DeepSound's MLLM steps: step 0 (the step plan, from the video) and step 2 (does the generated
audio contain voice-over? from the video and that audio).

What upstream feeds the model: step 0 sees the 16 sampled frames only (``va=False``); step 2 reads
the step-1 video, i.e. the input's first ``duration`` seconds re-encoded with the generated audio
muxed in, and gets both its frames and its audio (ffmpeg: mono, 16 kHz, s16). Here step 2 takes the
generated waveform directly (no AAC round trip), converts it with the same libswresample path, and
samples frames from the input video up to ``duration_s``.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Mapping, TypeVar

import av
import numpy as np
import torch
from torch import nn

from ..errors import InputError, WeightsError
from ..models.mllm import decoding
from ..models.mllm.audio_input import SAMPLE_RATE, audio_features
from ..models.mllm.decoding import DecodingSettings, LanguageModel
from ..models.mllm.prompt import (
    CANONICAL_PLAN_TEXT,
    PLAN_QUESTION,
    VOICE_OVER_QUESTION,
    ChatTokenizer,
    JudgeResult,
    PlanResult,
    prompt_ids,
)
from ..models.mllm.static_cache import StaticCacheDecoder
from ..models.mllm.videollama2 import VideoLLaMA2AV
from ..models.mllm.vision import video_pixels
from ..models.mllm.graphs import (
    MLLM_AUDIO,
    MLLM_AUDIO_SPEC,
    MLLM_DECODER,
    MLLM_GRAPHS,
    MLLM_VISION,
    MLLM_VISION_SPEC,
    ExportedDecoder,
    MllmAudioGraph,
    MllmDecoderGraph,
    MllmVisionGraph,
)
from ..timing import Timings

if TYPE_CHECKING:
    from ..backends.base import Graph

log = logging.getLogger(__name__)

__all__ = ["JudgeMedia", "JudgeResult", "MLLMReasoner", "PlanResult", "to_16k_mono"]

JudgeMode = Literal["qa", "cot"]
_PCM_SCALE = 32768.0
SIGLIP_DIR_NAME = "siglip-so400m-patch14-384"
TINY_MAX_NEW_TOKENS = 64
GRAPH_INPUTS = {MLLM_VISION: MLLM_VISION_SPEC.inputs[0], MLLM_AUDIO: MLLM_AUDIO_SPEC.inputs[0]}
T = TypeVar("T")


def to_16k_mono(audio: np.ndarray, sample_rate: int) -> torch.Tensor:
    """(T,) or (channels, T) float audio -> 16 kHz mono float32 quantised to k/32768, converted by
    libswresample as upstream's ``ffmpeg -ac 1 -ar 16000 -f s16le`` does."""
    samples = np.ascontiguousarray(np.atleast_2d(np.asarray(audio, dtype=np.float32)))
    if samples.shape[0] not in (1, 2):
        raise InputError(f"audio must be mono or stereo (channels, samples), got shape {samples.shape}")
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
    frame.sample_rate = int(sample_rate)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks = [out.to_ndarray().reshape(-1) for out in [*resampler.resample(frame), *resampler.resample(None)]]
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return torch.from_numpy(pcm.astype(np.float32) / np.float32(_PCM_SCALE))


@dataclass
class JudgeMedia:
    """Step 2's encoded inputs, made ahead of its decoding (the overlapped step runner encodes the
    frames while step 1 still runs, the audio as soon as it exists): video tokens, audio tokens,
    and the encoders' timings and own seconds."""

    video_tokens: torch.Tensor
    audio_tokens: torch.Tensor
    timings: Timings
    seconds: float


class MLLMReasoner:
    """Plan and voice-over judge with one VideoLLaMA2.1-7B-AV checkpoint (-CoT: plan and ``cot``
    judge; -QA: ``qa`` judge).

    The vision encoder, audio encoder and LLM decoder run as exported graphs where
    :meth:`use_graphs` gave them (token embedding, splicing and decoding logic stay in torch), the
    decoder with a static cache where :meth:`use_static_cache` asked for it; ``last_timings`` says
    how long each took in the last call and on which backend. Decoding calls are serialised (a
    static cache is one buffer), encoder calls may come from several threads. ``use_kernels``:
    the judge's audio fbank runs our kernel.
    """

    def __init__(
        self,
        model: VideoLLaMA2AV,
        tokenizer: ChatTokenizer,
        device: str | torch.device,
        dtype: torch.dtype,
        settings: DecodingSettings | None = None,
        canonical_plan: str = CANONICAL_PLAN_TEXT,
        use_kernels: bool = False,
    ) -> None:
        self.model = model
        self.use_kernels = use_kernels
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.settings = settings or DecodingSettings(tokenizer.stop_ids)
        self.canonical_plan = canonical_plan
        self.graphs: dict[str, Graph] = {}
        self.static_decoder: StaticCacheDecoder | None = None
        self.last_timings = Timings()
        self._decoding = threading.Lock()

    def graph_modules(self) -> dict[str, nn.Module]:
        """The graphs this stage can run exported, as the torch modules they are exported from."""
        return {MLLM_VISION: MllmVisionGraph(self.model), MLLM_AUDIO: MllmAudioGraph(self.model),
                MLLM_DECODER: MllmDecoderGraph(self.model)}

    def use_graphs(self, graphs: Mapping[str, Graph]) -> "MLLMReasoner":
        """Run the MLLM graphs among ``graphs`` on their backends (the others on torch)."""
        self.graphs = {name: graphs[name] for name in MLLM_GRAPHS if name in graphs}
        return self

    def use_static_cache(self) -> "MLLMReasoner":
        """Decode through a static KV cache in fixed-shape steps, greedy on the device and replayed
        as a CUDA graph on a GPU (:mod:`..models.mllm.static_cache`); an exported decoder graph,
        where there is one, still takes precedence."""
        self.static_decoder = StaticCacheDecoder(self.model)
        return self

    def backend(self, graph_name: str) -> str:
        if graph_name in self.graphs:
            return self.graphs[graph_name].backend
        if graph_name == MLLM_DECODER and self.static_decoder is not None:
            return "torch+static-cache" + ("+cudagraph" if self.device.type == "cuda" else "")
        return "torch"

    @property
    def language_model(self) -> LanguageModel:
        """What decoding runs: the exported decoder when there is one, else the static-cache
        decoder when asked for, else the torch model with transformers' cache."""
        graph = self.graphs.get(MLLM_DECODER)
        if graph is not None:
            return ExportedDecoder(self.model, graph)
        return self.static_decoder or self.model

    def _encode(self, graph_name: str, encode: Callable[[torch.Tensor], torch.Tensor],
                value: torch.Tensor, timings: Timings) -> torch.Tensor:
        """(tokens, hidden) media tokens from ``encode`` (torch) or the graph of that name."""
        with timings.measure(graph_name, self.device, self.backend(graph_name)):
            graph = self.graphs.get(graph_name)
            if graph is None:
                return encode(value)
            (tokens,) = graph.run({GRAPH_INPUTS[graph_name]: value}).values()
            return tokens.to(self.device, self.dtype)

    def _decode(self, run: Callable[[LanguageModel], T]) -> T:
        with self._decoding, self.last_timings.measure(MLLM_DECODER, self.device, self.backend(MLLM_DECODER)):
            return run(self.language_model)

    @classmethod
    def from_dirs(
        cls,
        llm_dir: str | Path,
        siglip_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float16,
        use_kernels: bool = False,
        weights_device: str | torch.device | None = None,
    ) -> "MLLMReasoner":
        """Load an HF-style VideoLLaMA2.1-7B-AV(-CoT/-QA) directory and the SigLIP tower directory
        (default: ``siglip-so400m-patch14-384`` inside or beside the LLM directory). The weights
        load onto ``weights_device`` (default: ``device``, where the inputs go)."""
        llm_dir = Path(llm_dir)
        siglip = Path(siglip_dir) if siglip_dir is not None else _find_siglip(llm_dir)
        model, tokenizer = VideoLLaMA2AV.from_pretrained_dir(llm_dir, siglip, dtype=dtype,
                                                             device=weights_device or device)
        return cls(model, tokenizer, device, dtype, decoding.settings_from_dir(llm_dir, tokenizer),
                   use_kernels=use_kernels)

    @classmethod
    def random(
        cls,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        full_size: bool = False,
        max_new_tokens: int = TINY_MAX_NEW_TOKENS,
        use_kernels: bool = False,
    ) -> "MLLMReasoner":
        """Random weights, seeded: tiny widths with the full input geometry (the dev preset, tests),
        or the 7B model's shapes (``full_size``: benchmarks, ``--random-weights``). Random weights
        rarely emit a stop token, hence the short ``max_new_tokens``."""
        from ..models.mllm.tiny import full_size_random_mllm, tiny_mllm

        model, tokenizer = (full_size_random_mllm if full_size else tiny_mllm)(seed, device, dtype)
        return cls(model, tokenizer, device, dtype, DecodingSettings(tokenizer.stop_ids, max_new_tokens),
                   use_kernels=use_kernels)

    def prompt_embeds(self, question: str, media: list[torch.Tensor]) -> torch.Tensor:
        """(1, L, hidden) embeddings of the chat prompt with ``media`` tokens at the placeholder."""
        ids = prompt_ids(question, self.tokenizer)
        embeds, _ = self.model.splice(torch.tensor(ids.before), torch.tensor(ids.after), *media)
        return embeds

    @torch.inference_mode()
    def plan(self, video_path: str | Path) -> PlanResult:
        """Step 0: the step plan for a video (16 frames of the whole video, no audio)."""
        self.last_timings = Timings()
        pixels = video_pixels(video_path, self.model.config.num_frames).to(self.device, self.dtype)
        embeds = self.prompt_embeds(PLAN_QUESTION,
                                    [self._encode(MLLM_VISION, self.model.encode_video, pixels, self.last_timings)])
        result = self._decode(lambda llm: decoding.plan(llm, self.tokenizer, embeds, self.settings,
                                                        self.canonical_plan))
        log.info("plan (%s): %r", "fast path" if result.fast_path else "generated", result.text)
        return result

    @torch.inference_mode()
    def judge_video_tokens(self, video_path: str | Path, duration_s: float | None, timings: Timings) -> torch.Tensor:
        """Step 2's video tokens: frames sampled from the first ``duration_s`` seconds, SigLIP + STC."""
        pixels = video_pixels(video_path, self.model.config.num_frames, duration_s).to(self.device, self.dtype)
        return self._encode(MLLM_VISION, self.model.encode_video, pixels, timings)

    @torch.inference_mode()
    def judge_audio_tokens(self, audio: np.ndarray, sample_rate: int, timings: Timings) -> torch.Tensor:
        """Step 2's audio tokens: the audio as upstream's ffmpeg gives it, fbank, BEATs + projector."""
        fbank = audio_features(to_16k_mono(audio, sample_rate).to(self.device), self.use_kernels).to(self.device)
        return self._encode(MLLM_AUDIO, self.model.encode_audio, fbank, timings)

    def judge_media(self, video_path: str | Path, audio: np.ndarray, sample_rate: int,
                    duration_s: float | None = None) -> JudgeMedia:
        """Both of step 2's encoders, for :meth:`judge_voice_over` (``media``)."""
        timings, started = Timings(), time.perf_counter()
        video_tokens = self.judge_video_tokens(video_path, duration_s, timings)
        audio_tokens = self.judge_audio_tokens(audio, sample_rate, timings)
        return JudgeMedia(video_tokens, audio_tokens, timings, time.perf_counter() - started)

    @torch.inference_mode()
    def judge_voice_over(
        self,
        video_path: str | Path,
        audio: np.ndarray,
        sample_rate: int,
        mode: JudgeMode = "cot",
        duration_s: float | None = None,
        media: JudgeMedia | None = None,
    ) -> JudgeResult:
        """Step 2: does ``audio`` (generated for the video) contain voice-over?

        ``duration_s``: the generated clip's length; frames are sampled from that much of the video,
        as upstream samples them from the step-1 video (None: the whole video). ``media``: the
        encoders' output for these inputs, made earlier (:meth:`judge_media`).
        """
        if mode not in ("qa", "cot"):
            raise ValueError(f"judge mode must be 'qa' or 'cot', got {mode!r}")
        if media is None:
            media = self.judge_media(video_path, audio, sample_rate, duration_s)
        self.last_timings = Timings(list(media.timings.stages))
        embeds = self.prompt_embeds(VOICE_OVER_QUESTION, [media.video_tokens, media.audio_tokens])
        judge = decoding.judge_qa if mode == "qa" else decoding.judge_cot
        result = self._decode(lambda llm: judge(llm, self.tokenizer, embeds, self.settings))
        log.info("voice-over judge (%s): %s from %r", mode, result.voice_over, result.text)
        return result


def _find_siglip(llm_dir: Path) -> Path:
    for candidate in (llm_dir / SIGLIP_DIR_NAME, llm_dir.parent / SIGLIP_DIR_NAME):
        if (candidate / "config.json").is_file():
            return candidate
    raise WeightsError(
        f"no SigLIP tower directory given and no {SIGLIP_DIR_NAME}/ inside or beside {llm_dir}; "
        "pass the google/siglip-so400m-patch14-384 directory"
    )
