"""Golden runners and manifest builders for the MLLM: the STC connector, the audio-visual splice, the
prompt/parsing facts, and the VideoLLaMA2.1-7B-AV and SigLIP checkpoint layouts.

Tensor runners build their modules from the golden's own JSON config; the facts runner returns
``check/<fact>`` = number of mismatches between our constants/functions and the facts file.
"""
from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

from ..models.mllm import prompt, videollama2, vision
from ..models.mllm.audio_projector import AudioProjector
from ..models.mllm.beats import BEATs, BEATsConfig
from ..models.mllm.decoding import DEFAULT_MAX_NEW_TOKENS
from ..models.mllm.stc import STCConfig, STCConnectorV35
from ..models.mllm.tiny import tiny_tokenizer
from ..models.mllm.videollama2 import encode_audio_fbank, encode_video_features, splice_embeddings
from ..models.weights import load_strict
from .golden import Golden

_PREFIXES = {
    "embed": "model.embed_tokens.",
    "stc": "model.mm_projector.",
    "beats": "model.audio_tower.",
    "projector": "model.mm_projector_a.",
}


def _sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@torch.inference_mode()
def run_stc(golden: Golden) -> dict[str, torch.Tensor]:
    """The connector on ``in/frames_features`` (B, T, N, C), with each stage's output."""
    connector = STCConnectorV35(STCConfig.from_dict(golden.meta["constructor_config"])).eval()
    load_strict(connector, golden.state, f"golden {golden.name} state")
    mids: dict[str, torch.Tensor] = {}
    tokens = connector(golden.inputs["frames_features"], intermediates=mids)
    return {"out/video_tokens": tokens} | {f"mid/{k}": v for k, v in mids.items()}


@torch.inference_mode()
def run_splice(golden: Golden) -> dict[str, torch.Tensor]:
    """``prepare_inputs_labels_for_multimodal`` with the vision tower's output given as input."""
    setup = golden.meta["setup"]
    state = golden.state
    stc = STCConnectorV35(STCConfig.from_dict(setup["stc"])).eval()  # no type given: v35, as VideoLLaMA2.1-AV
    load_strict(stc, _sub_state(state, _PREFIXES["stc"]), "golden STC state")
    audio_tower = BEATs(BEATsConfig.from_dict(setup["beats_config"])).eval()
    audio_tower.load_checkpoint(_sub_state(state, _PREFIXES["beats"]))
    projector_setup = setup["audio_projector"]
    if projector_setup["type"] != "mlp2x_gelu":
        raise ValueError(f"only the mlp2x_gelu audio projector is supported, got {projector_setup['type']!r}")
    projector = AudioProjector(projector_setup["in"], projector_setup["out"]).eval()
    projector.load_checkpoint(_sub_state(state, _PREFIXES["projector"]))
    embed = nn.Embedding(setup["vocab"], setup["llm_hidden"])
    load_strict(embed, _sub_state(state, _PREFIXES["embed"]), "golden embedding table")

    input_ids, attention_mask = golden.inputs["input_ids"][0], golden.inputs["attention_mask"]
    placeholders = torch.isin(input_ids, torch.tensor(list(prompt.MODAL_PLACEHOLDER_IDS.values())))
    if int(placeholders.sum()) != 1:
        raise ValueError("the splice golden must hold exactly one placeholder")
    split = int(placeholders.nonzero()[0, 0])
    video_tokens = encode_video_features(stc, golden.inputs["vision_tower_features"][0])
    audio_tokens = encode_audio_fbank(audio_tower, projector, golden.inputs["fbank"])
    inputs_embeds, new_mask = splice_embeddings(
        embed, input_ids[:split], input_ids[split + 1 :], [video_tokens, audio_tokens], attention_mask
    )
    return {
        "out/inputs_embeds": inputs_embeds,
        "out/attention_mask": new_mask,
        "mid/video_tokens": video_tokens,
        "mid/audio_tokens": audio_tokens,
    }


def _mismatches(pairs: list[tuple[object, object]]) -> torch.Tensor:
    return torch.tensor(sum(ours != theirs for ours, theirs in pairs))


def _quoted(text: str) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', text)


def run_prompt_facts(golden: Golden) -> dict[str, torch.Tensor]:
    """Our prompts, ids and parsing rules against the facts file, one check per fact."""
    facts = golden.meta
    questions = facts["questions"]
    rendered = facts["rendered_prompts"]
    template = facts["chat_template"]["value"]
    tokenisation = facts["tokenisation"]
    parsing = facts["deepsound_parsing"]
    specials = facts["special_token_ids_qwen2"]
    tokenizer = tiny_tokenizer()

    chunk0, chunk1 = prompt.render_chat(prompt.PLAN_QUESTION).split(prompt.VIDEO_PLACEHOLDER)
    ids = prompt.tokenize_multimodal(prompt.render_chat(prompt.VOICE_OVER_QUESTION), tokenizer)
    before, after = prompt.render_chat(prompt.VOICE_OVER_QUESTION).split(prompt.VIDEO_PLACEHOLDER)
    step_lines = [s for s in _quoted(parsing["step0"]) if s.startswith("Step") and ":" in s and " " in s]
    regex_source = re.search(r're\.findall\(r"(.*?)", response', parsing["step0"]).group(1)
    cot_examples = ["<REASONING> x </REASONING>\n<CONCLUSION> A </CONCLUSION>", "<CONCLUSION>\nB.", "x<CONCLUSION>yA"]
    qa_examples = ["A", " A\n", "A.", "B", "a"]
    max_tokens = int(re.search(r"max_new_tokens=(\d+)", facts["generation"]["call"]).group(1))

    return {
        "check/chat_template": _mismatches([(prompt.QWEN2_CHAT_TEMPLATE, template)]),
        "check/questions": _mismatches(
            [(prompt.PLAN_QUESTION, questions["step0"]), (prompt.VOICE_OVER_QUESTION, questions["step2"])]
        ),
        "check/rendered_prompts": _mismatches(
            [
                (prompt.render_chat(prompt.PLAN_QUESTION, template), rendered["deepsound_step0_cot_plan"]),
                (prompt.render_chat(prompt.VOICE_OVER_QUESTION, template), rendered["deepsound_step2_voiceover"]),
            ]
        ),
        "check/prompt_chunks": _mismatches(
            [
                (chunk0, tokenisation["chunk0_for_deepsound"]),
                (chunk1, tokenisation["chunk1_prefix_for_deepsound"].replace("<question>", prompt.PLAN_QUESTION)),
            ]
        ),
        "check/chunked_tokenisation": _mismatches(
            [(ids, tokenizer.encode(before) + [prompt.VIDEO_PLACEHOLDER_ID] + tokenizer.encode(after))]
        ),
        "check/placeholder_ids": _mismatches(
            [(prompt.MODAL_PLACEHOLDER_IDS[name], facts["placeholder_ids"][name]) for name in prompt.MODAL_PLACEHOLDER_IDS]
        ),
        "check/special_tokens": _mismatches(
            [(token in specials, True) for token in (prompt.END_OF_TEXT, prompt.IM_START, prompt.IM_END)]
            + [(specials["eos_token"].split()[0], prompt.IM_END)]
        ),
        "check/plan_steps": _mismatches([(list(prompt.CANONICAL_PLAN_STEPS.values()), step_lines)]),
        "check/plan_regex": _mismatches([(prompt.STEP_PATTERN.pattern, regex_source)]),
        "check/cot_rule": _mismatches(
            [(prompt.cot_answer_letter(r), r.split(prompt.CONCLUSION_TAG)[-1][1]) for r in cot_examples]
            + [(prompt.CONCLUSION_TAG in parsing["step2_cot"], True)]
        ),
        "check/qa_rule": _mismatches(
            [(prompt.parse_qa_answer(r), r.strip() == "A") for r in qa_examples]
            + [('== "A"' in parsing["step2_qa"], True)]
        ),
        "check/max_new_tokens": _mismatches([(DEFAULT_MAX_NEW_TOKENS, max_tokens)]),
    }


RUNNERS: dict[str, Callable[[Golden], dict[str, torch.Tensor]]] = {
    "stc_connector": run_stc,
    "videollama2_av_splice": run_splice,
    "facts_videollama2_prompt": run_prompt_facts,
}

MANIFESTS: dict[str, Callable[[], dict[str, tuple[int, ...]]]] = {
    "videollama2_1_7b_av": videollama2.checkpoint_shapes,
    "siglip_so400m_patch14_384": vision.checkpoint_shapes,
}
