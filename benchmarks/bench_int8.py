"""int8 language-model weights against the checkpoint's precision: logit differences over the plan
and judge prompts, the judge's A-versus-B preference, and whether greedy decoding picks the same
tokens. Writes bench_int8.json and bench_int8.md.

    python benchmarks/bench_int8.py --out benchmarks/results/cpu-epyc-2core/int8

Two models:

- ``tiny``: the dev preset's MLLM (float32) on the real prompts: the bundled sample video's 1352
  video tokens for the plan; those and 1496 audio tokens (a 2 s noise clip) for the judge.
- ``7B``: VideoLLaMA2.1-7B-AV's language model at full size with seeded random weights, drawn as
  transformers initialises Qwen2 (weights normal(0, 0.02), zero biases, unit norms; ``lm_head`` as
  PyTorch's default linear) and stored in bf16, on the same chat prompts but with fewer media tokens
  (``--media-tokens`` video, and as many audio, drawn like the embedding rows): a CPU needs an hour
  for a 2,900-token prefill of 7B weights in float32. Random weights have no outlier channels, so
  real checkpoints may quantise worse.

Both precisions compute in float32 (this CPU has no fast bf16 matmul): the reference runs the bf16
weights exactly (each layer upcast while it runs), the int8 model the int8 weights, so a difference
is the weights' rounding alone. Memory stays near the int8 model's size: the bf16 checkpoint is
written once, layer by layer, to ``--cache`` and memory-mapped (page cache, evictable), and int8
replaces each layer in place.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from deepsound_rt.io.sample import sample_clip_path
from deepsound_rt.models.mllm.audio_input import audio_features
from deepsound_rt.models.mllm.prompt import PLAN_QUESTION, VOICE_OVER_QUESTION, prompt_ids
from deepsound_rt.models.mllm.quantize import llm_linears, quantize_llm_int8
from deepsound_rt.models.mllm.tiny import tiny_tokenizer
from deepsound_rt.models.mllm.videollama2 import VIDEOLLAMA2_1_7B_AV, VideoLLaMA2AV, VideoLLaMA2Config
from deepsound_rt.models.mllm.vision import video_pixels
from deepsound_rt.stages.reason import MLLMReasoner, to_16k_mono
from deepsound_rt.weights_dir import DEV_SEED

SEED = 20250328


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@torch.inference_mode()
def greedy(model: VideoLLaMA2AV, embeds: torch.Tensor, new_tokens: int) -> dict:
    """Logits at every prompt position (float32, (L, vocab)) and ``new_tokens`` greedy tokens."""
    cache = model.new_cache()
    logits = model.logits(embeds.float(), cache, num_logits=embeds.shape[1])
    tokens = [int(logits[-1].argmax())]
    while len(tokens) < new_tokens:
        step = model.logits(model.embed(torch.tensor([[tokens[-1]]])).float(), cache)[-1]
        tokens.append(int(step.argmax()))
    return {"logits": logits, "tokens": tokens}


def compare(reference: dict, quantized: dict, answer_ids: tuple[int, int] | None) -> dict:
    """Max and mean |Δlogit| over prompt positions and vocabulary (and relative to the reference's
    logit spread), how often the arg-max differs, greedy tokens, the judge's A-minus-B logit."""
    ref, q = reference["logits"], quantized["logits"]
    delta = (q - ref).abs()
    top2 = ref.topk(2, dim=-1).values
    result = {
        "positions": ref.shape[0],
        "max_abs_logit_diff": float(delta.max()),
        "mean_abs_logit_diff": float(delta.mean()),
        "reference_logit_std": float(ref.std()),
        "argmax_differs_at": int((q.argmax(-1) != ref.argmax(-1)).sum()),
        "median_top1_margin": float((top2[:, 0] - top2[:, 1]).median()),
        "greedy_tokens_equal": reference["tokens"] == quantized["tokens"],
        "greedy_tokens": len(reference["tokens"]),
        "first_divergence": next((i for i, (a, b) in enumerate(zip(reference["tokens"], quantized["tokens"]))
                                  if a != b), None),
    }
    if answer_ids is not None:  # the judge: A (voice-over) against B, at the answer's first position
        a, b = answer_ids
        result["judge_a_minus_b"] = [float(ref[-1, a] - ref[-1, b]), float(q[-1, a] - q[-1, b])]
        result["judge_decision_equal"] = (result["judge_a_minus_b"][0] > 0) == (result["judge_a_minus_b"][1] > 0)
    return result


def answer_ids(tokenizer) -> tuple[int, int]:
    (a,), (b,) = tokenizer.encode("A"), tokenizer.encode("B")
    return a, b


# --- tiny: the dev MLLM on the real prompts ------------------------------------------------------


def measure_tiny(new_tokens: int) -> dict:
    reasoner = MLLMReasoner.random(seed=DEV_SEED)
    model, tokenizer = reasoner.model, reasoner.tokenizer
    with torch.inference_mode():
        pixels = video_pixels(sample_clip_path(), model.config.num_frames, 2.0)
        noise = np.random.default_rng(0).standard_normal(2 * 44100).astype(np.float32) * 0.1
        video = model.encode_video(pixels)
        audio = model.encode_audio(audio_features(to_16k_mono(noise, 44100)))
        prompts = {"plan": reasoner.prompt_embeds(PLAN_QUESTION, [video]),
                   "judge": reasoner.prompt_embeds(VOICE_OVER_QUESTION, [video, audio])}
    quantized = copy.deepcopy(model)
    quantize_llm_int8(quantized)
    out = {}
    for name, embeds in prompts.items():
        out[name] = compare(greedy(model, embeds, new_tokens), greedy(quantized, embeds, new_tokens),
                            answer_ids(tokenizer) if name == "judge" else None)
        out[name]["prompt_tokens"] = embeds.shape[1]
    return out


# --- 7B: streamed from a memory-mapped bf16 checkpoint -------------------------------------------


def _llm_parts(model: VideoLLaMA2AV) -> dict[str, dict[str, torch.Tensor]]:
    """{file: {key: meta tensor}}: one file per decoder layer, one for embedding, norm and head."""
    parts: dict[str, dict[str, torch.Tensor]] = {"head": {}}
    for key, tensor in model.state_dict().items():
        if key.startswith("model.layers."):
            parts.setdefault(f"layer{int(key.split('.')[2]):02d}", {})[key] = tensor
        elif key in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            parts["head"][key] = tensor
    return parts


def write_checkpoint(cache: Path, config: VideoLLaMA2Config) -> None:
    """The random bf16 language model, one part at a time (seeded per part, so a rerun that finds
    some parts written draws the rest the same)."""
    with torch.device("meta"):
        model = VideoLLaMA2AV(config)
    cache.mkdir(parents=True, exist_ok=True)
    for index, (part, tensors) in enumerate(sorted(_llm_parts(model).items())):
        path = cache / f"{part}.pt"
        if path.is_file():
            continue
        generator = torch.Generator().manual_seed(SEED + index)
        state = {}
        for key, meta in tensors.items():
            value = torch.empty(meta.shape, dtype=torch.float32)
            if key.endswith("norm.weight"):
                value.fill_(1.0)
            elif key.endswith(".bias"):
                value.zero_()
            elif key == "lm_head.weight":
                bound = 1 / math.sqrt(meta.shape[1])  # nn.Linear's kaiming_uniform(a=sqrt(5))
                value.uniform_(-bound, bound, generator=generator)
            else:
                value.normal_(0.0, config.llm.initializer_range, generator=generator)
            state[key] = value.to(torch.bfloat16)
            del value
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
        log(f"wrote {path.name}")


def load_mapped(cache: Path, config: VideoLLaMA2Config) -> VideoLLaMA2AV:
    """The language model with its parameters memory-mapped from ``cache`` (the multimodal parts
    stay on the meta device: the prompts come as embeddings)."""
    with torch.device("meta"):
        model = VideoLLaMA2AV(config)
    for path in sorted(cache.glob("*.pt")):
        state = torch.load(path, mmap=True, weights_only=True)
        model.load_state_dict(state, strict=False, assign=True)
    model.rebuild_nonpersistent_buffers(torch.device("cpu"))
    return model.eval().requires_grad_(False)


class Upcast:
    """While a module runs, its plain bf16 parameters are float32 copies (int8 ones stay int8)."""

    def __init__(self, model: VideoLLaMA2AV):
        modules = [m for m in [*model.model.layers.modules(), model.model.norm, model.lm_head] if m._parameters]
        self.handles = [h for m in modules for h in (m.register_forward_pre_hook(self.before),
                                                    m.register_forward_hook(self.after))]

    @staticmethod
    def before(module: nn.Module, _args) -> None:
        module._bf16 = dict(module._parameters)
        for name, value in module._bf16.items():
            if value is not None and not is_traceable_wrapper_subclass(value) and value.dtype == torch.bfloat16:
                module._parameters[name] = nn.Parameter(value.float(), requires_grad=False)

    @staticmethod
    def after(module: nn.Module, _args, _output) -> None:
        module._parameters.update(module._bf16)
        del module._bf16


def media_embeddings(count: int, width: int, seed: int) -> torch.Tensor:
    """Stand-ins for media tokens, distributed as the embedding rows (normal(0, 0.02))."""
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.02


def measure_7b(cache: Path, media_tokens: int, new_tokens: int) -> dict:
    config = VideoLLaMA2Config.from_dict(VIDEOLLAMA2_1_7B_AV)
    write_checkpoint(cache, config)
    model = load_mapped(cache, config)
    tokenizer = tiny_tokenizer()
    width = config.llm.hidden_size

    def embeds(question: str, media: list[torch.Tensor]) -> torch.Tensor:
        ids = prompt_ids(question, tokenizer)
        with torch.inference_mode():
            inputs, _ = model.splice(torch.tensor(ids.before), torch.tensor(ids.after), *media)
        return inputs.float()

    video = media_embeddings(media_tokens, width, 1)
    prompts = {"plan": embeds(PLAN_QUESTION, [video]),
               "judge": embeds(VOICE_OVER_QUESTION, [video, media_embeddings(media_tokens, width, 2)])}
    upcast = Upcast(model)
    reference = {}
    for name, inputs in prompts.items():
        log(f"7B bf16 reference: {name} ({inputs.shape[1]} prompt tokens)")
        reference[name] = greedy(model, inputs, new_tokens)
    log("7B: quantising the decoder layers")
    started = time.perf_counter()
    quantize_llm_int8(model)
    quantise_seconds = time.perf_counter() - started
    out = {"quantise_seconds": quantise_seconds,
           "int8_linear_bytes": sum(l.weight.qdata.numel() + l.weight.scale.numel() * 5 for _, l in llm_linears(model))}
    for name, inputs in prompts.items():
        log(f"7B int8: {name}")
        out[name] = compare(reference[name], greedy(model, inputs, new_tokens),
                            answer_ids(tokenizer) if name == "judge" else None)
        out[name]["prompt_tokens"] = inputs.shape[1]
    for handle in upcast.handles:
        handle.remove()
    return out


def markdown(report: dict) -> str:
    lines = ["# int8 language-model weights against bf16/fp32", "",
             f"Machine: {report['machine']}; torch {report['torch']}, torchao {report['torchao']}; {report['date']}", "",
             f"Command: `{report['command']}`", "",
             "| model | prompt | prompt tokens | max abs logit diff | mean abs logit diff | logit std | "
             "arg-max differs | greedy tokens equal | judge A-B (ref / int8) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in ("tiny", "7B"):
        for prompt in ("plan", "judge"):
            r = report.get(model, {}).get(prompt)
            if r is None:
                continue
            judge = "-" if "judge_a_minus_b" not in r else " / ".join(f"{v:+.3f}" for v in r["judge_a_minus_b"])
            lines.append(f"| {model} | {prompt} | {r['prompt_tokens']} | {r['max_abs_logit_diff']:.4f} | "
                         f"{r['mean_abs_logit_diff']:.5f} | {r['reference_logit_std']:.3f} | "
                         f"{r['argmax_differs_at']} of {r['positions']} | "
                         f"{'yes' if r['greedy_tokens_equal'] else 'no, from token ' + str(r['first_divergence'])}"
                         f" ({r['greedy_tokens']}) | {judge} |")
    lines += ["", report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/bench_int8"))
    parser.add_argument("--cache", type=Path, default=Path("out/bench_int8/checkpoint"),
                        help="where the random bf16 7B language model is written (15 GB) and mapped from")
    parser.add_argument("--media-tokens", type=int, default=64, help="7B: video (and audio) tokens per prompt")
    parser.add_argument("--new-tokens", type=int, default=8, help="7B: greedy tokens compared (tiny: 64)")
    parser.add_argument("--skip-7b", action="store_true")
    args = parser.parse_args(argv)
    import torchao

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_int8.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()} ({platform.platform()}), {torch.get_num_threads()} threads",
        "torch": torch.__version__, "torchao": torchao.__version__,
        "notes": (f"tiny: the dev MLLM (float32), real prompts (sample video; 2 s noise as the judged audio), "
                  f"64 greedy tokens. 7B: random bf16 weights, the chat prompts with {args.media_tokens} video "
                  f"(and {args.media_tokens} audio) tokens drawn like embedding rows, {args.new_tokens} greedy "
                  "tokens; both precisions computed in float32, so the difference is the int8 rounding of the "
                  "decoder layers' weights alone. 'arg-max differs': prompt positions whose next-token choice "
                  "changes under identical context."),
    }
    log("tiny")
    report["tiny"] = measure_tiny(64)
    (args.out / "bench_int8.json").write_text(json.dumps(report, indent=2))
    if not args.skip_7b:
        report["7B"] = measure_7b(args.cache, args.media_tokens, args.new_tokens)
    (args.out / "bench_int8.json").write_text(json.dumps(report, indent=2))
    (args.out / "bench_int8.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
