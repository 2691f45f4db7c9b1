"""What an export directory holds and the checks that refuse a corrupt or mismatched one.

``manifest.json`` names every graph's files (with SHA-256), its inputs and outputs, its dynamic
axes with their (min, opt, max) sizes, the opset and precision, and the weights it was exported
from. An export is written into a folder beside its target and renamed into place when complete,
so a reader never sees half an export.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import DeepSoundError
from ..models.spec import AxisRange
from ..weights_dir import file_digest

MANIFEST_NAME = "manifest.json"
ENGINE_CACHE_DIR = "tensorrt"  # default TensorRT engine cache, inside the export directory
FORMAT_PREFIX = "deepsound_rt.export/"
FORMAT = FORMAT_PREFIX + "2"  # 2: the source records its weights source
# Position tables rebuilt for every duration; the duration itself is checked instead.
DURATION_TABLES = frozenset({"latent_rot", "clip_rot", "sync_src_index"})
FINGERPRINT_BUCKETS = 16
FINGERPRINT_RTOL = 1e-2  # bf16 rounding moves a sum of squares by ~1e-3 relative at most


class ExportError(DeepSoundError):
    """An export directory is missing, corrupt, stale, or made for another preset or duration."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: dtype name (``float32``, ``int64``) and shape (str = named axis)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class WeightsFingerprint:
    """Which weights a graph was exported from.

    ``sha256`` covers names, dtypes, shapes and bytes exactly (``verify`` rebuilds the fp32
    modules and compares it). ``structure`` and ``buckets`` (sums of squares per name bucket)
    survive a cast to bf16/fp16, so an Engine running its networks in another dtype can still
    tell the export's weights from other weights.
    """

    sha256: str
    structure: str
    buckets: tuple[float, ...]

    def same_weights(self, other: WeightsFingerprint) -> bool:
        if self.structure != other.structure:
            return False
        total = sum(self.buckets) or 1.0
        return all(abs(a - b) <= FINGERPRINT_RTOL * abs(a) + 1e-9 * total for a, b in zip(self.buckets, other.buckets))


@dataclass
class GraphRecord:
    """One exported graph. ``files`` maps each file name (``.onnx`` first, then external data) to
    its SHA-256."""

    name: str
    family: str
    files: dict[str, str]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_axes: dict[str, AxisRange]
    weights: WeightsFingerprint
    atol: float
    rtol: float
    tensorrt_incompatibilities: list[str] = field(default_factory=list)

    @property
    def onnx_file(self) -> str:
        return next(iter(self.files))

    @property
    def onnx_sha256(self) -> str:
        """One digest over all of the graph's files: what an engine built from it depends on."""
        return hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(self.files.items())).encode()).hexdigest()

    def to_json(self) -> dict:
        data = asdict(self)
        data["weights"]["buckets"] = list(self.weights.buckets)
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> GraphRecord:
        return cls(
            name=data["name"],
            family=data["family"],
            files=dict(data["files"]),
            inputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in data["inputs"]),
            outputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in data["outputs"]),
            dynamic_axes={k: AxisRange(**v) for k, v in data["dynamic_axes"].items()},
            weights=WeightsFingerprint(data["weights"]["sha256"], data["weights"]["structure"],
                                       tuple(data["weights"]["buckets"])),
            atol=float(data["atol"]),
            rtol=float(data["rtol"]),
            tensorrt_incompatibilities=list(data.get("tensorrt_incompatibilities", [])),
        )


@dataclass
class ExportManifest:
    """An export: one preset at one duration (sequence lengths are baked into the flow graphs)."""

    preset: str
    duration_s: float
    sequence_lengths: dict[str, int]  # latent, clip, sync tokens at duration_s
    precision: str
    opset: int
    source: dict  # weights_source, seed, weights_dir, files {role: {name, sha256, bytes}}
    graphs: dict[str, GraphRecord]
    exporter: dict = field(default_factory=dict)  # torch / onnx versions
    format: str = FORMAT

    def save(self, directory: Path) -> Path:
        """Write atomically (temporary file, then rename) so a reader never sees half a manifest."""
        data = {k: v for k, v in asdict(self).items() if k != "graphs"}
        data["graphs"] = {name: record.to_json() for name, record in self.graphs.items()}
        path = Path(directory) / MANIFEST_NAME
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(data, indent=1))
        partial.replace(path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ExportManifest:
        path = Path(directory) / MANIFEST_NAME
        if not Path(directory).is_dir():
            raise ExportError(f"export directory not found: {directory}")
        if not path.is_file():
            raise ExportError(f"{directory} holds no {MANIFEST_NAME}: not an export, or its export was interrupted "
                              "(run `deepsound-rt export` again)")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ExportError(f"{path} has format {data.get('format')!r}, this version reads {FORMAT!r}: "
                                  "re-export with this version")
            graphs = {name: GraphRecord.from_json(record) for name, record in data.pop("graphs").items()}
            return cls(graphs=graphs, **data)
        except ExportError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"{path} is corrupt ({type(exc).__name__}: {exc}); re-export") from None

    def check_compatible(self, preset_name: str, duration_s: float, directory: str | Path = "") -> None:
        """Refuse an export of another preset, or of a duration with other sequence lengths."""
        where = f"export {directory} " if directory else "the export "
        if preset_name != self.preset:
            raise ExportError(f"{where}is of preset '{self.preset}', not '{preset_name}': "
                              f"export it with `deepsound-rt export --preset {preset_name}`")
        wanted = sequence_lengths_for(preset_name, duration_s)
        if wanted != self.sequence_lengths:
            raise ExportError(
                f"{where}was made for {self.duration_s:g} s ({_lengths_text(self.sequence_lengths)}); "
                f"{duration_s:g} s needs {_lengths_text(wanted)}: these are baked into the flow graphs, so "
                f"export again with `--duration {duration_s:g}` or generate {self.duration_s:g} s")

    def check_files(self, directory: str | Path, names: Iterable[str] | None = None) -> None:
        """SHA-256 of every file of the named graphs (all by default) against the manifest."""
        directory = Path(directory)
        for name in self.graphs if names is None else names:
            if name not in self.graphs:
                raise ExportError(f"export {directory} has no graph '{name}' (it has {', '.join(self.graphs)})")
            for file_name, expected in self.graphs[name].files.items():
                path = directory / file_name
                if not path.is_file():
                    raise ExportError(f"export {directory} lacks {file_name} (graph {name}); re-export")
                if file_digest(path) != expected:
                    raise ExportError(f"{path} does not match its manifest hash (corrupt or replaced); re-export")


def sequence_lengths_for(preset_name: str, duration_s: float) -> dict[str, int]:
    """{latent, clip, sync} token counts of ``preset_name`` at ``duration_s`` (ExportError if too short)."""
    from ..config import PRESETS
    from ..models.mmaudio.network import sequence_lengths

    if preset_name not in PRESETS:
        raise ExportError(f"unknown preset '{preset_name}' (choose from {', '.join(sorted(PRESETS))})")
    preset = PRESETS[preset_name]
    try:
        latent, clip, sync = sequence_lengths(duration_s, preset.sampling_rate, preset.hop_length)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    return {"latent": latent, "clip": clip, "sync": sync}


def _lengths_text(lengths: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in lengths.items()) + " tokens"


def _weight_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers (non-persistent ones too: the VAE graph's latent statistics), minus
    the per-duration position tables, sorted by name."""
    named = dict(module.named_parameters())
    named.update(module.named_buffers())
    return sorted((n, t) for n, t in named.items() if n.rsplit(".", 1)[-1] not in DURATION_TABLES)


def weights_fingerprint(module: nn.Module, exact: bool = True) -> WeightsFingerprint:
    """Fingerprint of ``module``'s weights; ``exact=False`` skips the byte hash (the fast check at load)."""
    digest = hashlib.sha256()
    structure = hashlib.sha256()
    buckets = [0.0] * FINGERPRINT_BUCKETS
    with torch.no_grad():
        for name, tensor in _weight_tensors(module):
            structure.update(f"{name}:{tuple(tensor.shape)}\n".encode())
            if tensor.is_floating_point():
                norm = torch.linalg.vector_norm(tensor, dtype=torch.float64)
                if not torch.isfinite(norm):  # masks hold -inf: count the finite entries only
                    norm = torch.linalg.vector_norm(tensor.masked_fill(~tensor.isfinite(), 0), dtype=torch.float64)
                buckets[zlib.crc32(name.encode()) % FINGERPRINT_BUCKETS] += float(norm) ** 2
            if exact:
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return WeightsFingerprint(digest.hexdigest() if exact else "", structure.hexdigest(), tuple(buckets))
