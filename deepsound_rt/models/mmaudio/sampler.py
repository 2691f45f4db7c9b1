"""Euler integration of the flow ODE from noise (t=0) to data (t=1), as upstream's FlowMatching does,
with the starting noise of a clip and of each window of a long one."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], None]


def euler_sample(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    num_steps: int = 25,
    progress: ProgressFn | None = None,
    held: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate ``dx/dt = velocity_fn(t, x)`` over t = linspace(0, 1, num_steps + 1) (float32).

    ``t`` is handed over as a 0-dim float32 CPU tensor; ``progress(done, num_steps)`` is called
    after each step with the number of steps completed.

    ``held`` (B, P, C): known data for the first P latents (inpainting, RePaint-style for flow
    matching). Before each step they are replaced by the point the known data's straight path
    from this sample's own noise has reached, ``t * held + (1 - t) * x0``, and at t = 1 by
    ``held`` itself: the rest of the sample is integrated next to latents that follow the known
    data, as the conditional flow (upstream's ``(1 - t) x0 + t x1``, min_sigma 0) would carry it.
    """
    times = torch.linspace(0, 1, num_steps + 1)
    x = x0
    for step in range(num_steps):
        t = times[step]
        if held is not None:
            x = _hold(x, t * held + (1 - t) * x0[:, : held.shape[1]])
        x = x + (times[step + 1] - t) * velocity_fn(t, x)
        if progress is not None:
            progress(step + 1, num_steps)
    return x if held is None else _hold(x, held)


def _hold(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``x`` with its first latents replaced by ``known``."""
    return torch.cat([known.to(x.dtype), x[:, known.shape[1]:]], dim=1)


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


def window_seed(seed: int, index: int) -> int:
    """The noise seed of window ``index`` of a long video: ``seed`` itself for the first (so a video
    of one window draws what it always drew), then one derived from (seed, index) by NumPy's
    SeedSequence, independent of how windows are batched."""
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)
