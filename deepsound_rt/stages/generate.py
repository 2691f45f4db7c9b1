"""Step-1 generation: conditions once per clip, then Euler steps of the guided velocity."""
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


def sample_latents(velocity: Graph, conditions: dict[str, torch.Tensor], x0: torch.Tensor, num_steps: int,
                   cfg_strength: float, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Integrate the guided flow from noise ``x0`` (t=0) to data (t=1) with ``num_steps`` Euler steps.

    Upstream applies no guidance below strength 1; strength 1 gives exactly that (v = v_cond).
    """
    cfg = torch.tensor(max(cfg_strength, 1.0), dtype=torch.float32)

    def velocity_fn(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return velocity.run({"x": x, "t": t, "cfg_strength": cfg, **conditions})["velocity"]

    return euler_sample(velocity_fn, x0, num_steps=num_steps, progress=progress)
