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
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch

from ..errors import InputError, WeightsError
from ..models.mllm import decoding
from ..models.mllm.audio_input import SAMPLE_RATE, audio_features
from ..models.mllm.decoding import DecodingSettings
from ..models.mllm.prompt import (
    CANONICAL_PLAN_TEXT,
    PLAN_QUESTION,
    VOICE_OVER_QUESTION,
    ChatTokenizer,
    JudgeResult,
    PlanResult,
    prompt_ids,
)
from ..models.mllm.videollama2 import VideoLLaMA2AV
from ..models.mllm.vision import video_pixels

log = logging.getLogger(__name__)

__all__ = ["JudgeResult", "MLLMReasoner", "PlanResult", "to_16k_mono"]

JudgeMode = Literal["qa", "cot"]
_PCM_SCALE = 32768.0
SIGLIP_DIR_NAME = "siglip-so400m-patch14-384"
TINY_MAX_NEW_TOKENS = 64


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


class MLLMReasoner:
    """Plan and voice-over judge with one VideoLLaMA2.1-7B-AV checkpoint (-CoT: plan and ``cot``
    judge; -QA: ``qa`` judge)."""

    def __init__(
        self,
        model: VideoLLaMA2AV,
        tokenizer: ChatTokenizer,
        device: str | torch.device,
        dtype: torch.dtype,
        settings: DecodingSettings | None = None,
        canonical_plan: str = CANONICAL_PLAN_TEXT,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.settings = settings or DecodingSettings(tokenizer.stop_ids)
        self.canonical_plan = canonical_plan

    @classmethod
    def from_dirs(
        cls,
        llm_dir: str | Path,
        siglip_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float16,
    ) -> "MLLMReasoner":
        """Load an HF-style VideoLLaMA2.1-7B-AV(-CoT/-QA) directory and the SigLIP tower directory
        (default: ``siglip-so400m-patch14-384`` inside or beside the LLM directory)."""
        llm_dir = Path(llm_dir)
        siglip = Path(siglip_dir) if siglip_dir is not None else _find_siglip(llm_dir)
        model, tokenizer = VideoLLaMA2AV.from_pretrained_dir(llm_dir, siglip, dtype=dtype, device=device)
        return cls(model, tokenizer, device, dtype, decoding.settings_from_dir(llm_dir, tokenizer))

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_new_tokens: int = TINY_MAX_NEW_TOKENS,
    ) -> "MLLMReasoner":
        """Random tiny model (full input geometry) for the dev preset and tests. Random weights
        rarely emit a stop token, hence the short ``max_new_tokens``."""
        from ..models.mllm.tiny import tiny_mllm

        model, tokenizer = tiny_mllm(seed, device, dtype)
        return cls(model, tokenizer, device, dtype, DecodingSettings(tokenizer.stop_ids, max_new_tokens))

    @classmethod
    def full_size_random(
        cls,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        max_new_tokens: int = TINY_MAX_NEW_TOKENS,
    ) -> "MLLMReasoner":
        """The 7B model's shapes with random weights, for benchmarks (``--random-weights``)."""
        from ..models.mllm.tiny import full_size_random_mllm

        model, tokenizer = full_size_random_mllm(seed, device, dtype)
        return cls(model, tokenizer, device, dtype, DecodingSettings(tokenizer.stop_ids, max_new_tokens))

    def prompt_embeds(self, question: str, media: list[torch.Tensor]) -> torch.Tensor:
        """(1, L, hidden) embeddings of the chat prompt with ``media`` tokens at the placeholder."""
        ids = prompt_ids(question, self.tokenizer)
        embeds, _ = self.model.splice(torch.tensor(ids.before), torch.tensor(ids.after), *media)
        return embeds

    @torch.inference_mode()
    def plan(self, video_path: str | Path) -> PlanResult:
        """Step 0: the step plan for a video (16 frames of the whole video, no audio)."""
        pixels = video_pixels(video_path, self.model.config.num_frames).to(self.device, self.dtype)
        embeds = self.prompt_embeds(PLAN_QUESTION, [self.model.encode_video(pixels)])
        result = decoding.plan(self.model, self.tokenizer, embeds, self.settings, self.canonical_plan)
        log.info("plan (%s): %r", "fast path" if result.fast_path else "generated", result.text)
        return result

    @torch.inference_mode()
    def judge_voice_over(
        self,
        video_path: str | Path,
        audio: np.ndarray,
        sample_rate: int,
        mode: JudgeMode = "cot",
        duration_s: float | None = None,
    ) -> JudgeResult:
        """Step 2: does ``audio`` (generated for the video) contain voice-over?

        ``duration_s``: the generated clip's length; frames are sampled from that much of the video,
        as upstream samples them from the step-1 video (None: the whole video).
        """
        if mode not in ("qa", "cot"):
            raise ValueError(f"judge mode must be 'qa' or 'cot', got {mode!r}")
        pixels = video_pixels(video_path, self.model.config.num_frames, duration_s).to(self.device, self.dtype)
        fbank = audio_features(to_16k_mono(audio, sample_rate)).to(self.device)
        media = [self.model.encode_video(pixels), self.model.encode_audio(fbank)]
        embeds = self.prompt_embeds(VOICE_OVER_QUESTION, media)
        judge = decoding.judge_qa if mode == "qa" else decoding.judge_cot
        result = judge(self.model, self.tokenizer, embeds, self.settings)
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
