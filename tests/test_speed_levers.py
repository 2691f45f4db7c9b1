"""The speed levers of issue 17, each against the plain path it replaces: the static-cache decoder
against transformers' dynamic cache (greedy tokens), compiled against eager values, FP8 against a
float64 restatement of its rounding, bf16 encoders against their float32 selves, and the
overlapped steps against the serial order (bit for bit on a CPU). Timings live in benchmarks/.

Tests marked ``cuda`` run on a GPU only (``benchmarks/gpu_bench.sh`` runs this file there).
"""
from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2Config

from deepsound_rt.models.mllm import prompt
from deepsound_rt.models.mllm.beats import BEATS_TINY
from deepsound_rt.models.mllm.decoding import DecodingSettings, generate
from deepsound_rt.models.mllm.static_cache import StaticCacheDecoder
from deepsound_rt.models.mllm.stc import STCConfig
from deepsound_rt.models.mllm.tiny import tiny_config_json, tiny_mllm
from deepsound_rt.models.mllm.videollama2 import VIDEOLLAMA2_1_7B_AV, VideoLLaMA2AV, VideoLLaMA2Config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# --- 1. static KV cache and fixed-shape greedy steps ------------------------------------------


def _plan_prompt(model, tokenizer) -> torch.Tensor:
    return model.embed(torch.tensor([tokenizer.encode(prompt.render_chat(prompt.PLAN_QUESTION))]))


@pytest.mark.parametrize("penalty", [1.0, 1.3])
@pytest.mark.parametrize("tokens_per_sync", [1, 5])
def test_static_cache_gives_the_greedy_tokens_of_the_dynamic_cache(penalty: float, tokens_per_sync: int) -> None:
    """Plain and drafted (the draft is cut back at the first token) decoding, from a cache too
    small for the prompt (grown on the way), with stops checked every token or every 5."""
    model, tokenizer = tiny_mllm(seed=2)
    embeds = _plan_prompt(model, tokenizer)
    static = StaticCacheDecoder(model, capacity=16, tokens_per_sync=tokens_per_sync)
    settings = DecodingSettings(tokenizer.stop_ids, max_new_tokens=23, repetition_penalty=penalty)
    with torch.inference_mode():
        plain = generate(model, embeds, settings)
        for draft in ((), tokenizer.encode(prompt.CANONICAL_PLAN_TEXT)):
            fast = generate(static, embeds, settings, draft=draft)
            assert fast.tokens == plain.tokens and len(fast.tokens) == 23
            assert fast.decode_steps == plain.decode_steps == 22 and fast.stop_reason == "max_new_tokens"
    assert static.cache.capacity >= embeds.shape[1] + 23


def test_static_cache_stops_where_greedy_stops() -> None:
    """A stop token and a stop condition met mid-way through a run of unsynchronised steps: the
    steps beyond are discarded."""
    model, tokenizer = tiny_mllm(seed=2)
    embeds = _plan_prompt(model, tokenizer)
    with torch.inference_mode():
        reference = generate(model, embeds, DecodingSettings(frozenset(), max_new_tokens=12)).tokens
        static = StaticCacheDecoder(model, tokens_per_sync=8)
        stop = DecodingSettings(frozenset({reference[6]}), max_new_tokens=12)
        stopped = generate(static, embeds, stop)
        assert stopped.tokens == reference[: reference.index(reference[6]) + 1] and stopped.stop_reason == "stop_token"
        settings = DecodingSettings(frozenset(), max_new_tokens=12)
        conditioned = generate(static, embeds, settings, stop_when=lambda tokens: len(tokens) == 4)
        assert conditioned.tokens == reference[:4] and conditioned.stop_reason == "condition"


def _geometry_model(seed: int) -> VideoLLaMA2AV:
    """VideoLLaMA2.1-7B-AV's LLM geometry (28 layers, 28 query and 4 kv heads of 128, the 152,064
    vocabulary) at a width of 224, with the tiny media towers."""
    full = VIDEOLLAMA2_1_7B_AV
    llm = Qwen2Config(**{k: full[k] for k in ("vocab_size", "num_hidden_layers", "num_attention_heads",
                                               "num_key_value_heads", "rms_norm_eps", "rope_theta")},
                      hidden_size=224, intermediate_size=448, head_dim=128, tie_word_embeddings=False)
    tiny = tiny_config_json(400)
    config = VideoLLaMA2Config(llm=llm, stc=STCConfig.from_dict(tiny | {"hidden_size": 224}), beats=BEATS_TINY,
                               audio_llm_width=224)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VideoLLaMA2AV(config)
    model.rebuild_nonpersistent_buffers(torch.device("cpu"))
    return model.eval()


def test_static_cache_on_the_full_size_geometry() -> None:
    model = _geometry_model(seed=5)
    assert model.model.layers[0].self_attn.head_dim == 128 and model.lm_head.out_features == 152064
    embeds = torch.randn(1, 96, 224, generator=torch.Generator().manual_seed(0))
    settings = DecodingSettings(frozenset(), max_new_tokens=10, repetition_penalty=1.05)
    with torch.inference_mode():
        plain = generate(model, embeds, settings)
        fast = generate(StaticCacheDecoder(model, capacity=128), embeds, settings)
    assert fast.tokens == plain.tokens and len(set(plain.tokens)) > 3


@cuda
def test_static_cache_cuda_graph_gives_the_greedy_tokens() -> None:
    model, tokenizer = tiny_mllm(seed=2, device="cuda")
    embeds = _plan_prompt(model, tokenizer)
    static = StaticCacheDecoder(model, capacity=64)
    for penalty in (1.0, 1.3):
        settings = DecodingSettings(tokenizer.stop_ids, max_new_tokens=40, repetition_penalty=penalty)
        with torch.inference_mode():
            plain = generate(model, embeds, settings)
            fast = generate(static, embeds, settings)
        assert static._graph is not None  # the steps ran as a captured graph
        assert fast.tokens == plain.tokens
