"""What an export directory holds and the checks that refuse a corrupt or mismatched one.

``manifest.json`` names every graph's files (with SHA-256), its inputs and outputs, its dynamic
axes with their (min, opt, max) sizes, the opset and precision, and the weights it was exported
from. An export is written into a folder beside its target and renamed into place when complete,
so a reader never sees half an export.
"""
from __future__ import annotations

import hashlib
import json
import math
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
BAKED_LENGTH_INPUTS = {"latent": ("flow_velocity", "x"), "clip": ("flow_conditions", "clip_f"),
                       "sync": ("flow_conditions", "sync_f")}
"""Which flow-graph input fixes each sequence length (axis 1): the shapes an export is made for."""
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
            manifest = cls(graphs=graphs, **data)
            manifest._check_consistent(path)
            return manifest
        except ExportError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"{path} is corrupt ({type(exc).__name__}: {exc}); re-export") from None

    def _check_consistent(self, path: Path) -> None:
        """Refuse a manifest that contradicts itself (edited, or corrupt in a way JSON still
        parses): file names must be plain names in the export's own folder, and the duration,
        the recorded sequence lengths and the flow graphs' input shapes must agree."""
        names = [name for record in self.graphs.values() for name in record.files]
        outside = [name for name in names if name != Path(name).name or name in ("", ".", "..")]
        if outside:
            raise ExportError(f"{path} names a file outside its folder ({outside[0]!r}): refused; re-export")
        try:
            expected = sequence_lengths_for(self.preset, float(self.duration_s))
        except ExportError as exc:
            raise ExportError(f"{path}: {exc}; re-export") from None
        if not expected == self.sequence_lengths == self.baked_lengths():
            raise ExportError(f"{path} contradicts itself: {float(self.duration_s):g} s means {_lengths_text(expected)}, "
                              f"but it records {_lengths_text(self.sequence_lengths)} and its flow graphs take "
                              f"{_lengths_text(self.baked_lengths())} (edited or corrupt); re-export")

    def baked_lengths(self) -> dict[str, int]:
        """The sequence lengths the flow graphs' recorded input shapes fix (the recorded lengths
        for those the export has no flow graph for)."""
        lengths = dict(self.sequence_lengths)
        for key, (graph, tensor) in BAKED_LENGTH_INPUTS.items():
            record = self.graphs.get(graph)
            spec = next((t for t in record.inputs if t.name == tensor), None) if record is not None else None
            if spec is not None:
                lengths[key] = spec.shape[1]
        return lengths

    def check_compatible(self, preset_name: str, duration_s: float, directory: str | Path = "",
                         video_s: float | None = None) -> None:
        """Refuse an export of another preset, or of a duration with other sequence lengths.
        ``video_s``: how long the input video is (None: at least ``duration_s``), so that the
        message offers generating the export's own duration only where that is possible."""
        where = f"export {directory} " if directory else "the export "
        if preset_name != self.preset:
            raise ExportError(f"{where}is of preset '{self.preset}', not '{preset_name}': "
                              f"export it with `deepsound-rt export --preset {preset_name}`")
        wanted = sequence_lengths_for(preset_name, duration_s)
        made_for = self.baked_lengths()
        if wanted != made_for:
            other = f" or generate {self.duration_s:g} s (`--duration {self.duration_s:g}`)"
            if video_s is not None and video_s < self.duration_s:
                other = f" (the video is {video_s:.2f} s, too short for the export's {self.duration_s:g} s)"
            elif video_s is None and duration_s < self.duration_s:
                other += " if the video lasts that long"
            raise ExportError(
                f"{where}was made for {self.duration_s:g} s clips ({_lengths_text(made_for)}); "
                f"{duration_s:g} s needs {_lengths_text(wanted)}: these are baked into the flow graphs, so "
                f"export again with `--duration {duration_s:g}`{other}")

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
            self._check_interface(directory, name)

    def _check_interface(self, directory: Path, name: str) -> None:
        """The graph file's declared inputs and outputs (read without its weights) against the manifest's."""
        import onnx

        from .onnx import tensor_specs

        record = self.graphs[name]
        try:
            declared = tensor_specs(onnx.load(str(directory / record.onnx_file), load_external_data=False))
        except Exception:  # a file that matches its hash but is no ONNX model: the manifest lies
            raise ExportError(f"{directory / record.onnx_file} is not an ONNX model; re-export") from None
        if declared != (record.inputs, record.outputs):
            raise ExportError(f"{directory / record.onnx_file} takes other inputs or outputs than the manifest "
                              "says (edited manifest?); re-export")


def sequence_lengths_for(preset_name: str, duration_s: float) -> dict[str, int]:
    """{latent, clip, sync} token counts of ``preset_name`` at ``duration_s`` (ExportError if too short)."""
    from ..config import PRESETS
    from ..models.mmaudio.network import sequence_lengths

    if preset_name not in PRESETS:
        raise ExportError(f"unknown preset '{preset_name}' (choose from {', '.join(sorted(PRESETS))})")
    preset = PRESETS[preset_name]
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not 0 < duration_s < math.inf:
        raise ExportError(f"duration must be a finite number of seconds > 0, got {duration_s!r}")
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
