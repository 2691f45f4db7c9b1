"""Golden runners for the MMAudio flow network and the full-size checkpoint manifests."""
from __future__ import annotations

import dataclasses
import re

import torch

from ..models.mmaudio.network import VARIANTS, Conditions, FlowConfig, MMAudio, checkpoint_shapes
from ..models.mmaudio.sampler import euler_sample
from .golden import Golden

DEFAULT_CFG_STRENGTH = 4.5
DEFAULT_NUM_STEPS = 25
EXACT_INTERMEDIATES = {"mid/sync_interp_src_index", "mid/euler_t"}


def _call_setting(golden: Golden, line_marker: str, pattern: str) -> str | None:
    """A value written into the ``calls`` line that contains ``line_marker`` (e.g. the strength)."""
    for line in golden.meta.get("calls", []):
        match = re.search(pattern, line) if line_marker in line else None
        if match:
            return match.group(1)
    return None


def _cfg_strength(golden: Golden, line_marker: str) -> float:
    value = golden.meta.get("cfg_strength", _call_setting(golden, line_marker, r"cfg_strength=([0-9.]+)"))
    return DEFAULT_CFG_STRENGTH if value is None else float(value)


def _num_steps(golden: Golden) -> int:
    if "num_steps" in golden.meta:
        return int(golden.meta["num_steps"])
    points = _call_setting(golden, "Euler", r"linspace\(0, 1, (\d+)\)")
    return DEFAULT_NUM_STEPS if points is None else int(points) - 1


def build_from_golden(golden: Golden) -> MMAudio:
    """MMAudio from the golden's ``constructor``, set to the lengths of its input tensors, weights loaded."""
    constructor = golden.meta["constructor"]
    fields = {f.name for f in dataclasses.fields(FlowConfig)}
    cfg = FlowConfig(**{k: v for k, v in constructor.items() if k in fields})
    inputs = golden.inputs
    net = MMAudio(cfg, inputs["x_t"].shape[1], inputs["clip_f"].shape[1], inputs["sync_f"].shape[1])
    net.load_checkpoint(golden.state)
    return net.eval()


def _named(prefix: str, conditions: Conditions) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": tensor for name, tensor in conditions._asdict().items()}


def compute_flow_tensors(golden: Golden) -> dict[str, torch.Tensor]:
    """Run every call of a flow golden; returns its outputs and all the intermediates we can name."""
    net = build_from_golden(golden)
    inputs = golden.inputs
    velocity_cfg = _cfg_strength(golden, "out/v_cfg =")
    sampling_cfg = _cfg_strength(golden, "sampling")
    num_steps = _num_steps(golden)

    batch = inputs["x_t"].shape[0]
    cond = net.preprocess_conditions(inputs["clip_f"], inputs["sync_f"], inputs["text_f"])
    empty = net.get_empty_conditions(batch)
    empty_neg = net.get_empty_conditions(batch, negative_text_features=inputs["negative_text_f"])
    t, x_t = inputs["t"], inputs["x_t"]

    result = {
        **_named("mid/cond", cond),
        **_named("mid/empty", empty),
        **_named("mid/empty_negtext", empty_neg),
        "mid/t_emb": net.t_embed(t),
        "mid/sync_interp_src_index": net.sync_src_index,
        "mid/latent_rot": net.latent_rot,
        "mid/clip_rot": net.clip_rot,
        "mid/t_embed_freqs": net.t_embed.freqs,
        "out/flow_cond": net.predict_flow(x_t, t, cond),
        "out/flow_uncond": net.predict_flow(x_t, t, empty),
        "out/v_cfg": net.guided_velocity(t[0], x_t, cond, empty, velocity_cfg),
        "out/v_cfg_negtext": net.guided_velocity(t[0], x_t, cond, empty_neg, velocity_cfg),
    }

    times, states, velocities = [], [], []

    def velocity(step_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        times.append(step_t)
        states.append(x)
        velocities.append(net.guided_velocity(step_t, x, cond, empty, sampling_cfg))
        return velocities[-1]

    x1 = euler_sample(velocity, inputs["x0"], num_steps)
    result.update({f"mid/sample_x_after_step{k}": x for k, x in enumerate(states) if k > 0})
    result["mid/euler_t"] = torch.stack(times)
    result["mid/sample_v_step0"] = velocities[0]
    result[f"mid/sample_v_step{num_steps - 1}"] = velocities[-1]
    result["out/x1_normalized"] = x1
    result["out/x1"] = net.unnormalize(x1)
    return result


def run_flow_golden(golden: Golden) -> dict[str, torch.Tensor]:
    """The ``out/`` tensors of a ``mmaudio_flow_v1``/``v2`` golden, plus the intermediates that have
    a tolerance of their own or must match exactly (index map, time grid)."""
    compared = set(golden.meta.get("suggested_atol", {})) | EXACT_INTERMEDIATES
    return {k: v for k, v in compute_flow_tensors(golden).items() if k.startswith("out/") or k in compared}


RUNNERS = {"mmaudio_flow_v1": run_flow_golden, "mmaudio_flow_v2": run_flow_golden}
MANIFESTS = {f"mmaudio_{name}": (lambda name=name: checkpoint_shapes(name)) for name in VARIANTS}
