"""A tiny random VideoLLaMA2AV and an offline tokenizer, for the dev preset and tests.

Every structural path of the real model runs at full geometry (16 frames of 384 px in 14 px patches
-> 27×27 grid -> STC -> 1352 video tokens; 30 s fbank -> 1496 BEATs tokens); only widths and depths
shrink. The tokenizer is a byte-level BPE trained, at build time and deterministically, on
DeepSound's prompts and answers, with Qwen2's chat special tokens.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import SiglipVisionModel

from .beats import BEATS_TINY
from .prompt import (
    CANONICAL_PLAN_TEXT,
    END_OF_TEXT,
    IM_END,
    IM_START,
    PLAN_QUESTION,
    QWEN2_CHAT_TEMPLATE,
    VOICE_OVER_QUESTION,
    ChatTokenizer,
    render_chat,
)
from .videollama2 import VIDEOLLAMA2_1_7B_AV, VideoLLaMA2AV, VideoLLaMA2Config
from .vision import siglip_so400m_config, siglip_tiny_config

TINY_VOCAB_SIZE = 400
"""BPE target size; training stops earlier when the corpus has no more merges."""
_EXTRA_CORPUS = (
    "A", "B", "Yes", "No", "<SUMMARY> The video shows a scene. </SUMMARY>",
    "<REASONING> The audio has a person speaking over the scene. </REASONING>",
    "<CONCLUSION> A </CONCLUSION>", "<CONCLUSION> B </CONCLUSION>",
)


def tiny_tokenizer() -> ChatTokenizer:
    """Byte-level BPE (any text encodes) with ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[END_OF_TEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [render_chat(PLAN_QUESTION), render_chat(VOICE_OVER_QUESTION), CANONICAL_PLAN_TEXT, *_EXTRA_CORPUS]
    tokenizer.train_from_iterator(corpus, trainer)
    return ChatTokenizer(tokenizer, QWEN2_CHAT_TEMPLATE, stop_tokens=(IM_END, END_OF_TEXT))


def tiny_config_json(vocab_size: int) -> dict:
    """A config.json for the tiny model: Qwen2 with 2 layers of width 64 (4 query heads, 2 kv
    heads), tiny SigLIP-width STC input, and BEATs given by ``audio_tower_config`` (our extension:
    real checkpoints have none and get upstream's ``BEATsConfig()``)."""
    llm_width = 64
    return {
        "vocab_size": vocab_size,
        "hidden_size": llm_width,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "mm_projector_type": "stc_connector_v35",
        "mm_hidden_size": siglip_tiny_config().hidden_size,
        "mm_projector_a_type": "mlp2x_gelu",
        "mm_hidden_size_a": BEATS_TINY.encoder_embed_dim,
        "hidden_size_a": llm_width,
        "audio_tower_config": asdict(BEATS_TINY),
    }


def tiny_mllm(
    seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[VideoLLaMA2AV, ChatTokenizer]:
    """(model, tokenizer): random weights, the same for the same seed; the global RNG is untouched."""
    tokenizer = tiny_tokenizer()
    config = VideoLLaMA2Config.from_dict(tiny_config_json(tokenizer.vocab_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VideoLLaMA2AV(config, SiglipVisionModel(siglip_tiny_config()))
    device = torch.device(device)
    model.to(device=device, dtype=dtype)
    model.rebuild_nonpersistent_buffers(device)
    return model.eval(), tokenizer


def full_size_random_mllm(
    seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16
) -> tuple[VideoLLaMA2AV, ChatTokenizer]:
    """VideoLLaMA2.1-7B-AV and SigLIP so400m at full size with random weights, built directly on
    ``device`` in ``dtype``, with the tiny tokenizer: latency does not depend on weight values or
    on which ids the prompt has, so this times the real shapes (1352 video + 1496 audio tokens)."""
    device = torch.device(device)
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = VideoLLaMA2AV(VideoLLaMA2Config.from_dict(VIDEOLLAMA2_1_7B_AV), SiglipVisionModel(siglip_so400m_config()))
        finally:
            torch.set_default_dtype(previous)
    model.rebuild_nonpersistent_buffers(device)
    return model.eval(), tiny_tokenizer()
