"""Reading reference goldens: ``NAME.json`` (what to run) + ``NAME.safetensors`` (tensors by group)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_ATOL = 1e-4


@dataclass
class Golden:
    """One golden: its JSON description and its tensors split by prefix (state/in/out/mid/raw)."""

    path: Path
    meta: dict
    groups: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def name(self) -> str:
        return self.path.stem

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        return self.groups.get(prefix, {})

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self.group("state")

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return self.group("in")

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        return self.group("out")

    def tensor(self, name: str) -> torch.Tensor:
        """A tensor by its full name, e.g. ``"out/mel"``."""
        prefix, key = name.split("/", 1)
        return self.groups[prefix][key]

    def atol(self, name: str) -> float:
        """Tolerance for a compared tensor: the golden's ``suggested_atol`` entry, else its
        ``tolerance`` field (a number, {name: number}, or {"atol"|"suggested_atol": number} for
        every tensor). Without one: 0 for integer tensors (indices must match exactly), one unit in
        the last place of the largest value for bfloat16 tensors (they are rounded results), else
        :data:`DEFAULT_ATOL`."""
        suggested = self.meta.get("suggested_atol") or {}
        if name in suggested:
            return float(suggested[name])
        tol = self.meta.get("tolerance")
        if isinstance(tol, (int, float)):
            return float(tol)
        if isinstance(tol, dict):
            for key in (name, name.split("/", 1)[-1]):
                if isinstance(tol.get(key), (int, float)):
                    return float(tol[key])
        stored = self._stored(name)
        if stored is not None and not stored.is_floating_point():
            return 0.0
        if stored is not None and stored.dtype == torch.bfloat16 and stored.numel():
            largest = float(stored.float().abs().max())
            return 2.0 ** (math.floor(math.log2(largest)) - 7) if largest > 0 else 0.0
        if isinstance(tol, dict):
            for key in ("atol", "suggested_atol"):
                if isinstance(tol.get(key), (int, float)):
                    return float(tol[key])
        return DEFAULT_ATOL

    def _stored(self, name: str) -> torch.Tensor | None:
        try:
            return self.tensor(name)
        except (KeyError, ValueError):
            return None


def load_golden(json_path: str | Path) -> Golden:
    """Load a golden from its JSON path; tensors come from the sibling file the JSON names."""
    from safetensors.torch import load_file

    json_path = Path(json_path)
    meta = json.loads(json_path.read_text())
    tensor_file = json_path.with_name(meta.get("file", json_path.stem + ".safetensors"))
    groups: dict[str, dict[str, torch.Tensor]] = {}
    if tensor_file.is_file():
        for name, tensor in load_file(str(tensor_file)).items():
            prefix, key = name.split("/", 1)
            groups.setdefault(prefix, {})[key] = tensor
    return Golden(path=json_path, meta=meta, groups=groups)
