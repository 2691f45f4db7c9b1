"""Checkpoint loading that never unpickles arbitrary objects and fails loudly on key mismatches."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import WeightsError

_SAFETENSORS_SUFFIXES = {".safetensors"}
BLOCKED_GLOBAL = "GLOBAL"
"""What torch's weights-only unpickler names when a file asks to import something (code)."""


def load_state_file(path: str | Path) -> dict[str, torch.Tensor | object]:
    """Read a checkpoint (.pth/.pt via ``weights_only=True``, or .safetensors) onto the CPU.

    Returns the raw top-level mapping; callers pick sub-dicts such as ``["generator"]``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        if path.suffix in _SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        state = _torch_load_weights_only(path)
    except WeightsError:
        raise
    except pickle.UnpicklingError as exc:
        if BLOCKED_GLOBAL not in str(exc):
            raise WeightsError(f"{path}: not a valid checkpoint (unreadable, truncated, or a pickle of more "
                               "than tensors); refused") from None
        # torch's own text would suggest weights_only=False, which is exactly the unsafe path.
        raise WeightsError(f"{path}: refused: the checkpoint holds code or objects other than tensors, "
                           "so it was not loaded") from None
    except Exception:  # random bytes, a truncated or corrupt zip ...
        raise WeightsError(f"{path}: not a valid checkpoint (neither a PyTorch nor a safetensors file, or "
                           "truncated)") from None
    if not isinstance(state, Mapping):
        raise WeightsError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _torch_load_weights_only(path: Path) -> object:
    """``torch.load(weights_only=True)``, memory-mapped when the file is in the zip format (every
    current checkpoint); legacy-format files cannot be mapped and are read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)


def pick_sub_state(state: Mapping, key: str, path: str | Path) -> dict[str, torch.Tensor]:
    """Return ``state[key]`` when a checkpoint wraps its weights (BigVGAN's ``{"generator": ...}``)."""
    inner = state.get(key)
    if not isinstance(inner, Mapping):
        raise WeightsError(f"checkpoint {path} has no '{key}' dict (top-level keys: {_preview(state)})")
    return dict(inner)


def _preview(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "") if keys else "none"


def check_state_dict(
    expected: Mapping[str, tuple[int, ...] | torch.Size],
    state: Mapping[str, torch.Tensor],
    what: str,
) -> None:
    """Raise :class:`WeightsError` naming missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {'; '.join(wrong_shape[:3])}" + (" ..." if len(wrong_shape) > 3 else ""))
    if problems:
        raise WeightsError(f"{what} does not match the model: " + "; ".join(problems))


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict ``load_state_dict`` with a one-line error listing what does not match.

    Values are copied and cast to the module's own dtypes, so a bf16 checkpoint loads into an fp32
    module and vice versa.
    """
    expected = {k: v.shape for k, v in module.state_dict().items()}
    check_state_dict(expected, state, what)
    module.load_state_dict(state, strict=True)


def state_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a module's state dict; works on the meta device without allocating."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}
