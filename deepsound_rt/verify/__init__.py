"""Prove our definitions against upstream: numerical goldens and full-size checkpoint manifests.

Goldens are dispatched on their JSON ``kind`` and each runner builds its module from the golden's
own config, so goldens of a known kind with other sizes, durations and seeds are checked the same
way. Manifests are dispatched on their file stem and compared without allocating weights.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import DeepSoundError
from .golden import Golden, load_golden

# module providing RUNNERS (kind -> runner) and MANIFESTS (manifest stem -> shapes builder)
_PROVIDERS = (
    "deepsound_rt.verify.flow",
    "deepsound_rt.verify.decoders",
    "deepsound_rt.verify.features",
    "deepsound_rt.verify.separator",
    "deepsound_rt.verify.audio_mllm",
    "deepsound_rt.verify.mllm",
)

Runner = Callable[[Golden], dict[str, torch.Tensor]]


def _registry(attr: str) -> dict[str, Callable]:
    merged: dict[str, Callable] = {}
    for name in _PROVIDERS:
        merged.update(getattr(importlib.import_module(name), attr))
    return merged


def golden_runners() -> dict[str, Runner]:
    """kind -> function computing that golden's tensors from its config, state and inputs."""
    return _registry("RUNNERS")


def manifest_builders() -> dict[str, Callable[[], dict[str, tuple[int, ...]]]]:
    """manifest stem -> function giving our full-size {checkpoint key: shape} (meta device)."""
    return _registry("MANIFESTS")


@dataclass
class Comparison:
    tensor: str
    max_abs: float
    atol: float

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.atol


@dataclass
class GoldenReport:
    name: str
    kind: str
    comparisons: list[Comparison]
    error: str | None = None
    path: str = "torch"  # the compute path that produced the numbers

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.comparisons) and all(c.passed for c in self.comparisons)

    @property
    def worst(self) -> Comparison | None:
        return max(self.comparisons, key=lambda c: (not c.passed, c.max_abs / c.atol if c.atol else 0.0), default=None)


CHECK_PREFIX = "check/"


def compare(golden: Golden, computed: dict[str, torch.Tensor]) -> list[Comparison]:
    """Max-abs error of every computed tensor that the golden stores; a missing ``out/`` tensor
    counts as an infinite error so a runner cannot pass by skipping an output. A runner checking
    facts rather than tensors returns ``check/<what>`` = its number of mismatches (must be 0)."""
    results = [Comparison(name, float(value), 0.0) for name, value in computed.items() if name.startswith(CHECK_PREFIX)]
    names = sorted({n for n in computed if not n.startswith(CHECK_PREFIX)} | {f"out/{k}" for k in golden.outputs})
    for name in names:
        try:
            expected = golden.tensor(name)
        except KeyError:
            continue
        got = computed.get(name)
        if got is None or tuple(got.shape) != tuple(expected.shape):
            results.append(Comparison(name, float("inf"), golden.atol(name)))
            continue
        diff = (got.detach().double().cpu() - expected.double()).abs()
        results.append(Comparison(name, float(diff.max()) if diff.numel() else 0.0, golden.atol(name)))
    return results


def kernel_runners() -> dict[str, Callable[[Golden, str], dict[str, torch.Tensor]]]:
    """kind -> runner taking a compute path, for the goldens our kernels reproduce."""
    from .kernels import RUNNERS_BY_PATH

    return RUNNERS_BY_PATH


def _run(golden: Golden, kind: str, path: str, runner: Callable[[], dict[str, torch.Tensor]]) -> GoldenReport:
    try:
        with torch.inference_mode():
            computed = runner()
    except Exception as exc:  # report and go on with the other goldens
        return GoldenReport(golden.name, kind, [], error=f"{type(exc).__name__}: {exc}", path=path)
    return GoldenReport(golden.name, kind, compare(golden, computed), path=path)


def check_golden(json_path: Path, runners: dict[str, Runner] | None = None) -> GoldenReport | None:
    """Run one golden with the torch definitions; ``None`` when its kind is not one we know."""
    runners = golden_runners() if runners is None else runners
    kind = json.loads(Path(json_path).read_text()).get("kind", "")
    if kind not in runners:
        return None
    golden = load_golden(json_path)
    return _run(golden, kind, "torch", lambda: runners[kind](golden))


def check_golden_on_every_path(json_path: Path) -> list[GoldenReport]:
    """Run one golden: once per compute path present (torch, cpp, cuda) for the kinds our
    kernels cover, else once with the torch definitions; empty when its kind is not one we know.
    The torch path runs the model definition (module, buffers) where there is one."""
    from .. import kernels

    kind = json.loads(Path(json_path).read_text()).get("kind", "")
    by_path, runners = kernel_runners(), golden_runners()
    if kind not in by_path and kind not in runners:
        return []
    golden = load_golden(json_path)
    paths = ["torch", *kernels.available_paths()] if kind in by_path else ["torch"]
    return [
        _run(golden, kind, path, (lambda: runners[kind](golden)) if path == "torch" and kind in runners
             else (lambda p=path: by_path[kind](golden, p)))
        for path in paths
    ]


def check_goldens(directory: Path) -> Iterator[GoldenReport]:
    for json_path in sorted(Path(directory).glob("*.json")):
        yield from check_golden_on_every_path(json_path)


@dataclass
class ManifestReport:
    name: str
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]
    num_keys: int
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and not (self.missing or self.unexpected or self.wrong_shape)


def check_manifest(path: Path) -> ManifestReport:
    """Compare a manifest's {key: shape} with our full-size definition, key for key."""
    path = Path(path)
    builders = manifest_builders()
    expected = _read_manifest(path)
    if path.stem not in builders:
        return ManifestReport(path.stem, [], [], [], len(expected), error="no definition for this manifest")
    ours = builders[path.stem]()
    return ManifestReport(
        name=path.stem,
        missing=sorted(k for k in expected if k not in ours),
        unexpected=sorted(k for k in ours if k not in expected),
        wrong_shape=sorted(f"{k}: ours {ours[k]} vs {expected[k]}" for k in expected if k in ours and ours[k] != expected[k]),
        num_keys=len(expected),
    )


def _read_manifest(path: Path) -> dict[str, tuple[int, ...]]:
    """{checkpoint key: shape} from a manifest file; anything else is the user's file to fix."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise DeepSoundError(f"manifest {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise DeepSoundError(f"manifest {path}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise DeepSoundError(f"manifest {path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    shapes = {k: v for k, v in data.items() if not k.startswith("_")} if isinstance(data, dict) else None
    if not shapes or not all(isinstance(v, list) and all(isinstance(d, int) for d in v) for v in shapes.values()):
        raise DeepSoundError(f"manifest {path}: expected a JSON object of checkpoint keys to shapes (lists of ints)")
    return {k: tuple(v) for k, v in shapes.items()}
