"""The one interface every stage talks to: a named graph that maps named tensors to named tensors.

Stages never learn which backend runs a graph; the Engine picks the backend per stage.
"""
from __future__ import annotations

from typing import Mapping, Protocol

import torch

Tensors = Mapping[str, torch.Tensor]


class Graph(Protocol):
    """A loaded network (or part of one) ready to run."""

    name: str
    backend: str

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        """Run once on named inputs; returns named outputs on the graph's device."""
        ...


class Backend(Protocol):
    name: str

    def available(self) -> bool:
        ...
