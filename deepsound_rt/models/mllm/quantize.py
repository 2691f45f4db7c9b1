"""Weight-only int8 for the MLLM's language model, made at load time from the checkpoint's weights
(no separate file): symmetric, one step per output channel.

Row ``i`` of a linear weight becomes ``q_i · s_i`` with ``s_i = max_j |w_ij| / 127.5`` and
``q_ij = round(w_ij / s_i)`` clamped to [-128, 127], so every weight moves by at most ``s_i / 2``
and the layer's output ``i`` on an input ``x`` by at most ``(s_i / 2) · ‖x‖₁``: the bound the tests
check layer by layer. torchao's ``Int8Tensor`` holds the weights and runs the linear (int8 to the
activation dtype, matmul, times the step).

Quantised: every projection of every decoder layer, 86 % of the 7B model's parameters. Kept: the
norms, the vision and audio towers and the projectors (not the LLM), the embedding table (a lookup
reads one row, and torchao would dequantise the whole table per call) and ``lm_head``: torchao's
eager kernel converts a weight to the activation dtype for each matmul, and for the 545M-value
head that temporary (1.0 GiB in bf16) would outweigh what int8 saves (0.5 GiB), at the step whose
peak the ``low`` tier is about. The largest temporary left is one MLP projection (136 MB).
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import DeepSoundError
from .videollama2 import VideoLLaMA2AV

INT8_HALF_RANGE = 127.5
"""Half the width of [-128, 127]: a channel's step is its largest |weight| over this."""


def llm_linears(model: VideoLLaMA2AV) -> list[tuple[str, nn.Linear]]:
    """(checkpoint name, module) of the decoder layers' linear layers, in execution order."""
    return [(f"model.layers.{name}", module) for name, module in model.model.layers.named_modules()
            if isinstance(module, nn.Linear)]


def channel_steps(weight: torch.Tensor) -> torch.Tensor:
    """(out, 1) float32 steps. Computed in float32 whatever the weight's dtype: torchao's own choice
    computes them in the weight's dtype, and a bf16-rounded step lets a row's largest weight round
    past the clamp (an error up to 0.75 steps instead of 0.5)."""
    largest = weight.detach().abs().amax(dim=1, keepdim=True).float()
    return (largest / INT8_HALF_RANGE).clamp_min(torch.finfo(torch.float32).tiny)


def require_torchao():
    """torchao's (Int8Tensor, PerRow), or a one-line error saying how to install it."""
    try:
        from torchao.quantization import Int8Tensor, PerRow
    except ImportError as exc:
        raise DeepSoundError("int8 MLLM weights need torchao 0.18 or newer: "
                             f"pip install 'deepsound_rt[int8]' ({exc})") from None
    return Int8Tensor, PerRow


def quantize_llm_int8(model: VideoLLaMA2AV, work_device: torch.device | None = None) -> None:
    """Replace the LLM's linear weights by int8 ones, in place, one layer at a time.

    Each weight is quantised on ``work_device`` (default: where it lies; a GPU does the 7B model in
    about a second where a CPU takes minutes) and the result goes back where the weight was, so
    at most one layer exists twice at any moment. Outputs keep the model's dtype.
    """
    Int8Tensor, PerRow = require_torchao()
    for _, linear in llm_linears(model):
        weight = linear.weight
        home = weight.device
        work = weight.detach().to(work_device or home)
        quantized = Int8Tensor.from_hp(work, PerRow(), scale=channel_steps(work))
        linear.weight = nn.Parameter(quantized.to(home), requires_grad=False)
        del work, quantized
