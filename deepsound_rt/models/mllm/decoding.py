"""Greedy decoding over spliced ``inputs_embeds`` with a KV cache, as upstream's HF ``generate``
(do_sample=False) runs it, plus draft verification that answers in one prefill when the model's
greedy answer is the expected one.

Draft verification: the prompt and a guessed answer (the canonical plan, or the letter ``A``) go
through the LLM in one pass; greedy decoding would have produced the draft iff at every position
the arg-max equals the next draft token, and the answer ends there iff the arg-max after the draft
is a stop token. At the first disagreement the cache is cut back to the agreed prefix and normal
greedy decoding carries on from the model's own token, so the tokens returned are always exactly
greedy decoding's (up to the float rounding difference between one long pass and token-by-token
steps, which can only matter at a near tie).

Logits processors: HF applies ``repetition_penalty`` from the checkpoint's generation_config.json
even when decoding greedily, over the generated tokens only (the prompt is passed as embeddings),
so we do too. Sampling settings (temperature, top_p, top_k) play no part in greedy decoding.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from .prompt import (
    CANONICAL_PLAN_TEXT,
    CONCLUSION_TAG,
    VOICE_OVER_ANSWER,
    ChatTokenizer,
    JudgeResult,
    PlanResult,
    parse_cot_answer,
    parse_plan,
    parse_qa_answer,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 2048
"""``mm_infer``'s ``max_new_tokens``."""


@dataclass(frozen=True)
class DecodingSettings:
    """When to stop and how to adjust logits, as HF generate does for the checkpoint."""

    stop_ids: frozenset[int]
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    repetition_penalty: float = 1.0


@dataclass
class Generation:
    """Generated ids (a final stop token included), and how many single-token steps it took after
    the one prefill (0: the draft was the answer)."""

    tokens: list[int]
    decode_steps: int
    stop_reason: str  # "stop_token", "max_new_tokens" or "condition"

    @property
    def fast_path(self) -> bool:
        return self.decode_steps == 0


StopCondition = Callable[[list[int]], bool]
"""Called with the tokens so far after each new token; True ends decoding (e.g. once a judge's
answer is settled)."""


def penalize_repetitions(logits: torch.Tensor, generated: Sequence[int], penalty: float) -> torch.Tensor:
    """HF's RepetitionPenaltyLogitsProcessor: each generated token's logit divided by the penalty
    if positive, multiplied if negative."""
    if penalty == 1.0 or not generated:
        return logits
    ids = torch.tensor(sorted(set(generated)), device=logits.device)
    picked = logits[ids]
    adjusted = logits.clone()
    adjusted[ids] = torch.where(picked < 0, picked * penalty, picked / penalty)
    return adjusted


def _next_token(logits: torch.Tensor, generated: Sequence[int], settings: DecodingSettings) -> int:
    return int(penalize_repetitions(logits, generated, settings.repetition_penalty).argmax())


class KVCache(Protocol):
    """The part of a transformers cache that decoding uses (``DynamicCache`` satisfies it)."""

    def get_seq_length(self) -> int: ...

    def crop(self, max_length: int) -> None: ...


class LanguageModel(Protocol):
    """The LLM as decoding sees it: :class:`VideoLLaMA2AV` (torch, transformers cache),
    ``ExportedDecoder`` (the decoder as a backend graph, explicit key/value tensors) or
    ``StaticCacheDecoder``, which also brings ``decode(cache, tokens, settings, stop_when) ->
    (steps, reason)`` for the token-by-token phase (fixed-shape steps, greedy on the device)."""

    def embed(self, ids: torch.Tensor) -> torch.Tensor: ...

    def new_cache(self) -> KVCache: ...

    def logits(self, inputs_embeds: torch.Tensor, cache: KVCache, num_logits: int = 1) -> torch.Tensor: ...


def new_cache(model: LanguageModel) -> KVCache:
    """An empty cache for ``model.logits`` (a transformers cache for the torch model)."""
    return model.new_cache()


def _truncate(cache: KVCache, length: int) -> None:
    surplus = cache.get_seq_length() - length
    if surplus:
        cache.crop(-surplus)


def finish_reason(tokens: list[int], settings: DecodingSettings, stop_when: StopCondition | None) -> str | None:
    """Why decoding ends after ``tokens`` (``stop_token``, ``condition``, ``max_new_tokens``), or None."""
    if tokens and tokens[-1] in settings.stop_ids:
        return "stop_token"
    if stop_when is not None and tokens and stop_when(tokens):
        return "condition"
    if len(tokens) >= settings.max_new_tokens:
        return "max_new_tokens"
    return None


@torch.inference_mode()
def generate(
    model: LanguageModel,
    prompt_embeds: torch.Tensor,
    settings: DecodingSettings,
    draft: Sequence[int] = (),
    stop_when: StopCondition | None = None,
) -> Generation:
    """Greedy decoding of the continuation of (1, L, hidden) ``prompt_embeds``.

    With a ``draft``, the prompt and the draft are prefilled together and verified (see the module
    docstring); without one this is plain greedy decoding: one prefill, then one step per token.
    """
    draft = list(draft)[: max(settings.max_new_tokens - 1, 0)]
    cache = model.new_cache()
    prompt_length = prompt_embeds.shape[1]
    if draft:
        draft_embeds = model.embed(torch.tensor([draft], device=prompt_embeds.device))
        inputs = torch.cat([prompt_embeds, draft_embeds.to(prompt_embeds.dtype)], dim=1)
    else:
        inputs = prompt_embeds
    all_logits = model.logits(inputs, cache, num_logits=len(draft) + 1)

    tokens: list[int] = []
    for position, logits in enumerate(all_logits):
        token = _next_token(logits, tokens, settings)
        tokens.append(token)
        reason = finish_reason(tokens, settings, stop_when)
        if reason is not None:
            return Generation(tokens, 0, reason)
        if position < len(draft) and token != draft[position]:
            _truncate(cache, prompt_length + position)  # keep the prompt and the agreed draft prefix
            break
    # Either the draft ran out without a stop, or the model disagreed: continue token by token,
    # by the model's own fixed-shape steps where it has them (the static-cache decoder).
    decode = getattr(model, "decode", None)
    if decode is not None:
        steps, reason = decode(cache, tokens, settings, stop_when)
        return Generation(tokens, steps, reason)
    steps = 0
    while True:
        logits = model.logits(model.embed(torch.tensor([[tokens[-1]]], device=prompt_embeds.device)), cache)[-1]
        steps += 1
        tokens.append(_next_token(logits, tokens, settings))
        reason = finish_reason(tokens, settings, stop_when)
        if reason is not None:
            return Generation(tokens, steps, reason)


_UNSUPPORTED_PROCESSORS = ("no_repeat_ngram_size", "min_new_tokens", "min_length", "bad_words_ids", "suppress_tokens")


def settings_from_dir(directory: str | Path, tokenizer: ChatTokenizer) -> DecodingSettings:
    """Stop ids from the tokenizer files and the repetition penalty of ``generation_config.json``
    (HF generate applies it in greedy mode too; Qwen2-7B-Instruct's file sets 1.05)."""
    path = Path(directory) / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    active = [name for name in _UNSUPPORTED_PROCESSORS if config.get(name)]
    if active:
        log.warning("%s sets %s, which this decoder does not apply", path, ", ".join(active))
    return DecodingSettings(tokenizer.stop_ids, repetition_penalty=float(config.get("repetition_penalty", 1.0)))


def plan(
    model: LanguageModel,
    tokenizer: ChatTokenizer,
    prompt_embeds: torch.Tensor,
    settings: DecodingSettings,
    canonical_plan: str = CANONICAL_PLAN_TEXT,
) -> PlanResult:
    """Step 0: the -CoT model's plan, verified against the canonical plan in one prefill."""
    generation = generate(model, prompt_embeds, settings, draft=tokenizer.encode(canonical_plan))
    return parse_plan(tokenizer.response_text(generation.tokens), fast_path=generation.fast_path)


def judge_qa(model: LanguageModel, tokenizer: ChatTokenizer, prompt_embeds: torch.Tensor,
             settings: DecodingSettings) -> JudgeResult:
    """Step 2 with the -QA model: voice-over iff the answer is exactly ``A``.

    The prefill holds the prompt and the letter ``A``, so one pass settles both usual answers: the
    first token either is not ``A`` (then the answer cannot be ``A`` once it is visible text) or is
    ``A`` followed by a stop token. Anything else goes on greedily until the answer is settled.
    """

    def settled(tokens: list[int]) -> bool:
        return tokenizer.decode(tokens).strip() not in ("", VOICE_OVER_ANSWER)

    generation = generate(model, prompt_embeds, settings, draft=tokenizer.encode(VOICE_OVER_ANSWER), stop_when=settled)
    text = tokenizer.response_text(generation.tokens)
    return JudgeResult(voice_over=parse_qa_answer(text), text=text)


def judge_cot(model: LanguageModel, tokenizer: ChatTokenizer, prompt_embeds: torch.Tensor,
              settings: DecodingSettings) -> JudgeResult:
    """Step 2 with the -CoT model: reasoning, then ``<CONCLUSION>`` and the letter.

    Decoding stops once ``<CONCLUSION>`` is followed by two visible characters, which is where
    upstream reads the letter (assuming, as the answer format has it, one conclusion tag).
    """

    def settled(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens)
        return CONCLUSION_TAG in text and len(text.split(CONCLUSION_TAG)[-1].rstrip()) >= 2

    generation = generate(model, prompt_embeds, settings, stop_when=settled)
    text = tokenizer.response_text(generation.tokens)
    return JudgeResult(voice_over=parse_cot_answer(text), text=text)
