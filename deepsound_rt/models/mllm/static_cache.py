"""Greedy decoding near the weight-bandwidth floor: a static KV cache and one decoding step of fixed
shapes, captured once as a CUDA graph on a GPU and replayed per token.

Why: through transformers' dynamic cache a 7B decoding step costs 26-34 ms on an H100 in Python and
kernel launches, against ~5 ms to read the weights once. Here each layer's keys and values live in
buffers of a fixed capacity, written in place; one step embeds the last token, attends over the
whole capacity with a mask of the valid positions, applies the repetition penalty and takes the
argmax, all on the device, and feeds its token to the next step. The host reads the new tokens
back every ``tokens_per_sync`` steps to check the stop conditions; steps run past a stop are
discarded, so the tokens are those of token-by-token greedy decoding (up to float rounding, which
can only matter at a near tie). On a CPU the same step runs eagerly.

The prefill (any number of tokens) runs eagerly through the same buffers. The layers are the
checkpoint's own Qwen2 modules, written out without transformers' cache and mask machinery, as in
``MllmDecoderGraph``.
"""
from __future__ import annotations

import logging
import math
import threading

import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

from .decoding import DecodingSettings, StopCondition, finish_reason
from .videollama2 import VideoLLaMA2AV

DEFAULT_CAPACITY = 4096
"""Positions per layer; grown (in steps of ``CAPACITY_STEP``) when a prompt plus its token budget
needs more. 4096 holds the step-2 prompt (~2.9k tokens) and a long answer: 57 KB per position for
the 7B model (28 layers × 2 × 4 kv heads × 128 × bf16), 235 MB in all."""
CAPACITY_STEP = 1024
TOKENS_PER_SYNC = 8
"""Decoding steps between two reads of the tokens: at most this many steps are wasted past a stop."""
log = logging.getLogger(__name__)
WARMUP_STEPS = 2
CAPTURE_LOCK = threading.Lock()
"""One CUDA graph capture at a time in the process."""


class StaticCache:
    """Per-layer key/value buffers (1, kv_heads, capacity, head_dim) and how many positions hold the
    sequence so far; ``crop``/``get_seq_length`` as decoding expects of a cache."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = keys, values
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` positions (negative: drop that many); later writes overwrite
        the rest, which the attention mask hides meanwhile."""
        self.length = max_length if max_length >= 0 else self.length + max_length


class StaticCacheDecoder:
    """A :class:`VideoLLaMA2AV`'s LLM as greedy decoding sees it (``embed``, ``new_cache``,
    ``logits``), plus ``decode``: the token-by-token phase as replayed fixed-shape steps.

    One cache is reused by every call, so calls must not overlap (the reasoner serialises them).
    """

    def __init__(self, model: VideoLLaMA2AV, capacity: int = DEFAULT_CAPACITY,
                 tokens_per_sync: int = TOKENS_PER_SYNC):
        config = model.config.llm
        self.model = model
        self.device = model.device
        self.tokens_per_sync = tokens_per_sync
        language_model = model.model
        self.layers = language_model.layers
        self.norm = language_model.norm
        self.rotary_emb = language_model.rotary_emb
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.cache = StaticCache(*self._allocate(capacity))
        vocab = model.lm_head.out_features
        # The step's state, on the device: its input token, position, the tokens generated so far
        # (for the repetition penalty), and where it writes its output token.
        self.token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(1, dtype=torch.long, device=self.device)
        self.seen = torch.zeros(vocab, dtype=torch.bool, device=self.device)
        self.count = torch.zeros(1, dtype=torch.long, device=self.device)
        self.history = torch.zeros(self.cache.capacity, dtype=torch.long, device=self.device)
        self.penalty = 1.0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_penalty: float | None = None
        self._capture_failed = False

    def _allocate(self, capacity: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Key and value buffers per layer. Zeros, not empty: masked positions get weight 0, and 0
        times a NaN left in memory is NaN."""
        shape = (1, self.num_kv_heads, capacity, self.head_dim)
        dtype = self.model.dtype
        return ([torch.zeros(shape, dtype=dtype, device=self.device) for _ in self.layers],
                [torch.zeros(shape, dtype=dtype, device=self.device) for _ in self.layers])

    def _ensure_capacity(self, needed: int) -> None:
        """Grow the buffers in place (content kept; the cache object stays the one decoding holds)
        when ``needed`` positions do not fit; a captured step refers to the old buffers, so it is
        captured again."""
        cache = self.cache
        if needed <= cache.capacity:
            return
        keys, values = self._allocate(CAPACITY_STEP * math.ceil(needed / CAPACITY_STEP))
        for new, stored in zip([*keys, *values], [*cache.keys, *cache.values]):
            new[:, :, : cache.length] = stored[:, :, : cache.length]
        cache.keys, cache.values = keys, values
        self.history = torch.zeros(cache.capacity, dtype=torch.long, device=self.device)
        self._graph = None

    # -- the LanguageModel interface ---------------------------------------------------------

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(ids)

    def new_cache(self) -> StaticCache:
        """The decoder's one cache, emptied."""
        self.cache.length = 0
        return self.cache

    def logits(self, inputs_embeds: torch.Tensor, cache: StaticCache, num_logits: int = 1) -> torch.Tensor:
        """Prefill: (1, n, hidden) new embeddings at the next n positions, written into the cache;
        float32 (num_logits, vocab) logits of the last positions."""
        start, new = cache.length, inputs_embeds.shape[1]
        self._ensure_capacity(start + new)
        positions = torch.arange(start, start + new, device=self.device)
        cos, sin = self.rotary_emb(inputs_embeds, positions.unsqueeze(0))
        keys_visible = None
        if start:  # earlier positions in the cache: a causal mask over all of them
            key_positions = torch.arange(start + new, device=self.device)
            keys_visible = key_positions[None, :] <= positions[:, None]
        hidden = inputs_embeds
        for layer, key_cache, value_cache in zip(self.layers, cache.keys, cache.values):
            attention = layer.self_attn
            query, key, value = self._project(layer, hidden, cos, sin)
            key_cache[:, :, start : start + new] = key
            value_cache[:, :, start : start + new] = value
            groups = attention.num_key_value_groups
            keys = repeat_kv(key_cache[:, :, : start + new], groups)
            values = repeat_kv(value_cache[:, :, : start + new], groups)
            out = F.scaled_dot_product_attention(query, keys, values, attn_mask=keys_visible,
                                                 is_causal=keys_visible is None, scale=attention.scaling)
            hidden = self._finish_layer(layer, hidden, out)
        cache.length = start + new
        return self.model.lm_head(self.norm(hidden)[0, -num_logits:]).float()

    # -- one fixed-shape step ------------------------------------------------------------------

    def _project(self, layer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        attention = layer.self_attn
        head_shape = (1, hidden.shape[1], -1, self.head_dim)
        normed = layer.input_layernorm(hidden)
        query = attention.q_proj(normed).view(head_shape).transpose(1, 2)
        key = attention.k_proj(normed).view(head_shape).transpose(1, 2)
        value = attention.v_proj(normed).view(head_shape).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        return query, key, value

    @staticmethod
    def _finish_layer(layer, hidden: torch.Tensor, attention_out: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = attention_out.shape
        out = attention_out.transpose(1, 2).reshape(batch, length, -1)
        hidden = hidden + layer.self_attn.o_proj(out)
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def _step(self) -> None:
        """Feed ``token`` at ``position``; write the greedy next token to ``token`` and
        ``history[count]``. Shapes never change and nothing waits for the host: capturable."""
        cache = self.cache
        hidden = self.model.embed(self.token)
        cos, sin = self.rotary_emb(hidden, self.position.view(1, 1))
        key_positions = torch.arange(cache.capacity, device=self.device)
        visible = (key_positions <= self.position).view(1, 1, 1, -1)
        for layer, key_cache, value_cache in zip(self.layers, cache.keys, cache.values):
            attention = layer.self_attn
            query, key, value = self._project(layer, hidden, cos, sin)
            key_cache.index_copy_(2, self.position, key)
            value_cache.index_copy_(2, self.position, value)
            # One query token: the heads sharing a kv head become query rows of that head, so the
            # cache is read once per kv head instead of being repeated for every query head.
            groups = attention.num_key_value_groups
            rows = query.view(1, self.num_kv_heads, groups, self.head_dim)
            out = F.scaled_dot_product_attention(rows, key_cache, value_cache, attn_mask=visible,
                                                 scale=attention.scaling)
            hidden = self._finish_layer(layer, hidden, out.reshape(1, -1, 1, self.head_dim))
        logits = self.model.lm_head(self.norm(hidden))[0, 0].float()
        if self.penalty != 1.0:  # HF's RepetitionPenaltyLogitsProcessor over the generated tokens
            penalized = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
            logits = torch.where(self.seen, penalized, logits)
        token = logits.argmax().view(1)
        self.token.copy_(token.view(1, 1))
        self.seen.index_fill_(0, token, True)
        self.history.index_copy_(0, self.count, token)
        self.count.add_(1)
        self.position.add_(1)

    def _capture(self) -> None:
        """Record :meth:`_step` as a CUDA graph. Warm-up steps run first (at the last cache slot,
        which decoding overwrites before it ever attends to it); capture errors are thread-local
        because other stages may run on other threads and streams meanwhile. A step that cannot be
        captured runs eagerly, with a warning."""
        self._graph = None
        self.position.fill_(self.cache.capacity - 1)
        self.count.zero_()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with CAPTURE_LOCK, torch.inference_mode():
                with torch.cuda.stream(side):
                    for _ in range(WARMUP_STEPS):
                        self.position.fill_(self.cache.capacity - 1)
                        self._step()
                    self.position.fill_(self.cache.capacity - 1)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self._step()
        except RuntimeError as exc:
            log.warning("the decoding step cannot be captured as a CUDA graph (%s); running it eagerly", exc)
            self._capture_failed = True
            torch.cuda.current_stream(self.device).synchronize()
            return
        self._graph, self._graph_penalty = graph, self.penalty

    def _run_steps(self, count: int) -> None:
        for _ in range(count):
            if self._graph is not None:
                self._graph.replay()
            else:
                self._step()

    def decode(self, cache: StaticCache, tokens: list[int], settings: DecodingSettings,
               stop_when: StopCondition | None) -> tuple[int, str]:
        """Greedy steps after ``tokens`` (those chosen from the prefill, the last one not yet in the
        cache), appended to ``tokens`` until a stop; returns (steps, stop reason)."""
        budget = settings.max_new_tokens - len(tokens)
        self._ensure_capacity(cache.length + budget)
        self.penalty = settings.repetition_penalty
        stale = self._graph is None or self._graph_penalty != self.penalty
        if self.device.type == "cuda" and stale and not self._capture_failed:
            self._capture()
        self.token.fill_(tokens[-1])
        self.position.fill_(cache.length)
        self.count.zero_()
        self.seen.zero_()
        self.seen[torch.tensor(sorted(set(tokens)), device=self.device)] = True
        steps = 0
        while True:
            run = min(self.tokens_per_sync, budget - steps)
            self._run_steps(run)
            for token in self.history[steps : steps + run].tolist():  # the one wait for the device
                steps += 1
                tokens.append(token)
                reason = finish_reason(tokens, settings, stop_when)
                if reason is not None:
                    cache.length += steps
                    return steps, reason
