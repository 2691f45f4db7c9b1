"""Step-1 generation: conditions once per clip (or window), then Euler steps of the guided velocity."""
from __future__ import annotations

from typing import Callable

import torch

from ..backends.base import Graph
from ..models.mmaudio.sampler import euler_sample


def prepare_conditions(graph: Graph, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor,
                       negative_text_f: torch.Tensor) -> dict[str, torch.Tensor]:
    """The conditions once per clip: ``paired_*`` tensors, conditional and unconditional stacked as a
    batch of two (the velocity graph's inputs)."""
    return graph.run({"clip_f": clip_f, "sync_f": sync_f, "text_f": text_f, "negative_text_f": negative_text_f})


def stack_conditions(per_window: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Several windows' [cond; uncond] conditions as one batch: [cond_1 .. cond_B; uncond_1 .. uncond_B],
    the order the velocity graph splits its doubled batch in."""
    if len(per_window) == 1:
        return per_window[0]
    return {name: torch.cat([c[name][:1] for c in per_window] + [c[name][1:] for c in per_window])
            for name in per_window[0]}


def sample_latents(velocity: Graph, conditions: dict[str, torch.Tensor], x0: torch.Tensor, num_steps: int,
                   cfg_strength: float, progress: Callable[[int, int], None] | None = None,
                   held: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate the guided flow from noise ``x0`` (t=0) to data (t=1) with ``num_steps`` Euler steps;
    ``x0`` may hold several windows (conditions stacked by :func:`stack_conditions`). ``held``: known
    leading latents the sample follows (inpainting, see ``euler_sample``).

    Upstream applies no guidance below strength 1; strength 1 gives exactly that (v = v_cond).
    """
    cfg = torch.tensor(max(cfg_strength, 1.0), dtype=torch.float32)

    def velocity_fn(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return velocity.run({"x": x, "t": t, "cfg_strength": cfg, **conditions})["velocity"]

    return euler_sample(velocity_fn, x0, num_steps=num_steps, progress=progress, held=held)
