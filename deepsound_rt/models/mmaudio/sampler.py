"""Euler integration of the flow ODE from noise (t=0) to data (t=1), as upstream's FlowMatching does."""
from __future__ import annotations

from typing import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], None]


def euler_sample(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    num_steps: int = 25,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Integrate ``dx/dt = velocity_fn(t, x)`` over t = linspace(0, 1, num_steps + 1) (float32).

    ``t`` is handed over as a 0-dim float32 CPU tensor; ``progress(done, num_steps)`` is called
    after each step with the number of steps completed.
    """
    times = torch.linspace(0, 1, num_steps + 1)
    x = x0
    for step in range(num_steps):
        t = times[step]
        x = x + (times[step + 1] - t) * velocity_fn(t, x)
        if progress is not None:
            progress(step + 1, num_steps)
    return x


def initial_noise(
    batch: int,
    latent_seq_len: int,
    latent_dim: int,
    seed: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The starting noise upstream's ``generate`` draws: the first draw of a fresh seeded generator."""
    generator = torch.Generator(device).manual_seed(seed)
    return torch.randn(batch, latent_seq_len, latent_dim, generator=generator, device=device, dtype=dtype)
