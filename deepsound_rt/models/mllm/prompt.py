"""DeepSound-V1's MLLM prompts, rendered and tokenised as VideoLLaMA2's ``mm_infer`` does, and the
rules that turn the MLLM's answers into decisions.

Rendering: one user turn ``"<video>\\n" + question`` through the checkpoint's chat template
(Qwen2-Instruct's; no system message is passed, so the template adds its default one) with the
assistant prefix appended. Tokenising: the prompt is split at ``<video>`` and each chunk is encoded
on its own, so BPE merges never cross the placeholder; the placeholder becomes id -201 and is later
replaced by the video (then audio) tokens.

Parsing follows ``pipeline/pipeline.py`` and ``pipeline/step2.py``; where upstream would crash
(IndexError, KeyError) or abort without output, ours falls back to a safe, logged answer.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer

from ...errors import WeightsError

log = logging.getLogger(__name__)

VIDEO_PLACEHOLDER = "<video>"
VIDEO_PLACEHOLDER_ID = -201
MODAL_PLACEHOLDER_IDS = {"<image>": -200, "<video>": -201, "<audio>": -202}
"""VideoLLaMA2's MODAL_INDEX_MAP: negative ids, never embedded; the splice looks for all three."""

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"

QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""Qwen2-7B-Instruct's template, which VideoLLaMA2.1 checkpoints inherit (assumed; a checkpoint's own
``tokenizer_config.json`` template takes precedence when present)."""

PLAN_QUESTION = "Generate high-quality audio from video step-by-step."
VOICE_OVER_QUESTION = (
    "Given a video and its corresponding audio, determine whether the audio contains voice-over? "
    "Options: A. Yes, B. No. Choose A or B."
)

CANONICAL_PLAN_STEPS = {
    1: "Step1: Generate audio from video.",
    2: "Step2: Given a video and its generated audio, determine whether the audio contains voice-over.",
    3: "Step3: Remove voice-over from audio.",
    4: "Step4: Determine whether the audio is silent.",
}
"""The only step lines the pipeline acts on (compared for exact equality upstream)."""

CANONICAL_PLAN_TEXT = "\n".join(CANONICAL_PLAN_STEPS.values())
"""The plan the -CoT model is expected to write, one step a line. The separator is our assumption
(upstream only needs each step to be cut at its first newline); the plan fast path verifies the
model's greedy choice token by token, so a wrong guess costs speed, never correctness."""

STEP_PATTERN = re.compile(r"(Step\d:.*?)(?=Step\d:|$)", re.DOTALL)
CONCLUSION_TAG = "<CONCLUSION>"
VOICE_OVER_ANSWER = "A"


class ChatTokenizer:
    """A ``tokenizers`` tokenizer plus what upstream takes from the checkpoint's tokenizer files:
    the chat template and the ids that end generation.

    Encoding never adds special tokens (``add_special_tokens=False``, as upstream); special tokens
    written in the text, such as ``<|im_start|>``, are matched as added tokens.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str = QWEN2_CHAT_TEMPLATE,
        stop_tokens: Sequence[str] = (IM_END,),
        extra_stop_ids: Iterable[int] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        ids = [tokenizer.token_to_id(token) for token in stop_tokens]
        if any(i is None for i in ids):
            raise ValueError(f"tokenizer lacks a stop token among {list(stop_tokens)}")
        self.stop_ids = frozenset(ids) | frozenset(extra_stop_ids)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def response_text(self, ids: Sequence[int]) -> str:
        """What ``mm_infer`` returns: ``batch_decode(skip_special_tokens=True)[0].strip()``."""
        return self.decode(ids).strip()

    @classmethod
    def from_dir(cls, directory: str | Path) -> "ChatTokenizer":
        """The tokenizer of an HF-style checkpoint directory.

        ``tokenizer.json`` is read with ``tokenizers``; a directory with only the slow files
        (vocab.json + merges.txt) goes through ``transformers.AutoTokenizer``. The chat template and
        eos token come from ``tokenizer_config.json`` (or ``chat_template.jinja``), further stop ids
        from ``generation_config.json``'s ``eos_token_id``, as HF ``generate`` uses them.
        """
        directory = Path(directory)
        tokenizer_file = directory / "tokenizer.json"
        if tokenizer_file.is_file():
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        else:
            tokenizer = _backend_of_auto_tokenizer(directory)
        config = _read_json(directory / "tokenizer_config.json")
        template_file = directory / "chat_template.jinja"
        chat_template = config.get("chat_template") or (
            template_file.read_text() if template_file.is_file() else QWEN2_CHAT_TEMPLATE
        )
        eos = config.get("eos_token") or IM_END
        eos = eos.get("content", IM_END) if isinstance(eos, dict) else eos
        generation_eos = _read_json(directory / "generation_config.json").get("eos_token_id") or []
        extra = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos)
        return cls(tokenizer, chat_template, stop_tokens=(eos,), extra_stop_ids=extra)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _backend_of_auto_tokenizer(directory: Path) -> Tokenizer:
    from transformers import AutoTokenizer

    try:
        auto = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as error:
        raise WeightsError(f"{directory}: no usable tokenizer files ({error})") from None
    backend = getattr(auto, "backend_tokenizer", None)
    if backend is None:
        raise WeightsError(f"{directory}: tokenizer has no tokenizers backend; add a tokenizer.json")
    return backend


def render_chat(question: str, chat_template: str = QWEN2_CHAT_TEMPLATE, modal_token: str = VIDEO_PLACEHOLDER) -> str:
    """``tokenizer.apply_chat_template([{"role": "user", "content": modal + "\\n" + question}],
    tokenize=False, add_generation_prompt=True)`` with the Jinja settings transformers uses."""
    messages = [{"role": "user", "content": f"{modal_token}\n{question}"}]
    return _compiled_template(chat_template).render(messages=messages, add_generation_prompt=True)


@lru_cache(maxsize=4)
def _compiled_template(chat_template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(chat_template)


def tokenize_multimodal(prompt: str, tokenizer: ChatTokenizer, modal_token: str = VIDEO_PLACEHOLDER) -> list[int]:
    """Upstream ``tokenizer_multimodal_token``: encode each chunk between placeholders separately
    (no special tokens added) and put the placeholder id between them."""
    placeholder_id = MODAL_PLACEHOLDER_IDS[modal_token]
    ids: list[int] = []
    for index, chunk in enumerate(prompt.split(modal_token)):
        if index:
            ids.append(placeholder_id)
        ids.extend(tokenizer.encode(chunk))
    return ids


@dataclass(frozen=True)
class PromptIds:
    """A prompt's token ids on either side of its single ``<video>`` placeholder."""

    before: list[int]
    after: list[int]


def prompt_ids(question: str, tokenizer: ChatTokenizer) -> PromptIds:
    """Render ``question`` and tokenise it around the placeholder, as DeepSound's calls do."""
    ids = tokenize_multimodal(render_chat(question, tokenizer.chat_template), tokenizer)
    if ids.count(VIDEO_PLACEHOLDER_ID) != 1:
        raise ValueError("a DeepSound prompt must contain exactly one <video> placeholder")
    split = ids.index(VIDEO_PLACEHOLDER_ID)
    return PromptIds(before=ids[:split], after=ids[split + 1 :])


@dataclass
class PlanResult:
    """The step plan: ``steps`` maps step number to its exact line; ``defaulted`` means the model's
    text was unusable and ``steps`` is the canonical plan instead."""

    steps: dict[int, str]
    text: str
    fast_path: bool = False
    defaulted: bool = False


def split_plan_lines(response: str) -> list[str]:
    """Upstream's split: every ``StepN:`` up to the next one, stripped and cut at its first newline."""
    return [match.strip().split("\n")[0] for match in STEP_PATTERN.findall(response)]


def parse_plan(response: str, fast_path: bool = False) -> PlanResult:
    """Steps from the -CoT model's plan.

    Accepted: the four canonical steps, or a leading run of them (Step1; Step1-2; Step1-3), each
    line exactly as upstream compares it. Upstream aborts without output on an unknown line and
    crashes (KeyError) when Step4, or a step that a later one needs, is missing; here anything that
    is not a leading run of known steps gives the full canonical plan, flagged ``defaulted``. A plan
    without Step4 is kept as is: the orchestration then skips the silence check.
    """
    lines = split_plan_lines(response)
    expected = [CANONICAL_PLAN_STEPS[number] for number in range(1, len(lines) + 1)] if len(lines) <= len(CANONICAL_PLAN_STEPS) else None
    if lines and lines == expected:
        return PlanResult(steps=dict(enumerate(lines, start=1)), text=response, fast_path=fast_path)
    log.warning("unusable step plan from the MLLM, using the default four-step plan: %r", response[:60])
    return PlanResult(steps=dict(CANONICAL_PLAN_STEPS), text=response, fast_path=fast_path, defaulted=True)


def parse_qa_answer(response: str) -> bool:
    """-QA model: voice-over iff the whole (stripped) response is exactly ``A``."""
    return response.strip() == VOICE_OVER_ANSWER


def cot_answer_letter(response: str) -> str | None:
    """Upstream's ``response.split("<CONCLUSION>")[-1][1]``: the 2nd character after the last tag
    (the whole response when there is no tag). None where upstream would raise IndexError."""
    tail = response.split(CONCLUSION_TAG)[-1]
    return tail[1] if len(tail) > 1 else None


def parse_cot_answer(response: str) -> bool:
    """-CoT model: voice-over iff the conclusion letter is ``A``; a missing letter means no."""
    letter = cot_answer_letter(response)
    if letter is None:
        log.warning("no answer letter after %s in the MLLM's response; assuming no voice-over", CONCLUSION_TAG)
    return letter == VOICE_OVER_ANSWER


@dataclass
class JudgeResult:
    """Step-2 verdict and the text it was read from (for the CoT judge, cut after the letter)."""

    voice_over: bool
    text: str
