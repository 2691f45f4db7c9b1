"""One :class:`GraphSpec` per graph, declared beside its module, and the registry that export,
the backends, loading, ``verify --export`` and the Engine all read.

A graph is a module with named tensor inputs and outputs: what one backend call runs. Its spec
says everything the rest of the package needs to know about it: names, dynamic axes and their
sizes, which inputs stay float32, how to build the module and sample inputs for an export (fp32,
or typed: bf16/fp16), how close ONNX Runtime must come to torch, which networks it runs, whether
our fused kernels serve its torch form and whether it is worth compiling or capturing as a CUDA
graph. Adding a graph is one ``register_graph(GraphSpec(...))`` beside its module.
"""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import nn

from ..errors import DeepSoundError
from ..weights_dir import WeightsSource

if TYPE_CHECKING:
    from ..backends.base import Graph
    from ..config import Preset

# Modules that declare graph specs, imported on the registry's first use (in this order).
SPEC_MODULES = (
    "deepsound_rt.models.graphs",
    "deepsound_rt.models.detector",
    "deepsound_rt.models.bs_roformer_graph",
    "deepsound_rt.models.mllm.graphs",
)
INPUT_SEED = 1234
"""Seed of every spec's sample inputs."""


@dataclass(frozen=True)
class AxisRange:
    """Sizes a dynamic axis may take: TensorRT profiles use all three, ONNX Runtime any in range."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.opt <= self.max:
            raise ValueError(f"axis range needs 0 < min <= opt <= max, got {self}")


def up_to(minimum: int, size: int) -> AxisRange:
    """An axis sized by the duration: anything from ``minimum`` up to the exported duration."""
    return AxisRange(min(minimum, size), size, size)


@dataclass
class ExportContext:
    """One preset at one duration with one weights source and one graph type: what module
    builders, axis ranges and sample inputs are functions of. Networks are built on first use and
    kept (``shared``)."""

    preset: Preset
    duration_s: float
    lengths: Mapping[str, int]  # latent, clip, sync tokens
    weights_source: WeightsSource
    weights: Path | None = None
    dtype: torch.dtype = torch.float32  # the export's: bf16/fp16 graphs are traced from typed copies
    _shared: dict[str, Any] = field(default_factory=dict)

    def shared(self, key: str, build: Callable[[ExportContext], Any]) -> Any:
        """``build(self)`` once per context (a family's networks, which several graphs run)."""
        if key not in self._shared:
            self._shared[key] = build(self)
        return self._shared[key]

    def module(self, spec: GraphSpec) -> nn.Module:
        """The eval-mode fp32 CPU module ``spec`` exports, with our kernels off (exports trace torch)."""
        return self.shared(f"graph:{spec.name}", spec.build)

    def typed_module(self, spec: GraphSpec) -> nn.Module:
        """:meth:`module` in the export's dtype: what a typed graph is traced from."""
        return self.typed(f"graph:{spec.name}", spec.build)

    def typed(self, key: str, build: Callable[[ExportContext], nn.Module]) -> nn.Module:
        """``shared(key, build)`` in the export's dtype (itself in fp32): a copy cast once as the
        Engine casts its networks (``module.to(dtype)``), so the fp32 islands the models keep
        (rotary tables, timestep frequencies, the VAE's and separator's norms) stay fp32 and the
        originals stay fp32. All copies share one deepcopy memo: what the originals share (one
        CLIP under the image and text graphs) the copies share too."""
        module = self.shared(key, build)
        if self.dtype == torch.float32:
            return module
        memo = self.shared("typed:memo", lambda ctx: {})
        return self.shared(f"typed:{key}", lambda ctx: copy.deepcopy(module, memo).to(ctx.dtype))

    def rng(self) -> torch.Generator:
        return torch.Generator().manual_seed(INPUT_SEED)


InputBuilder = Callable[[ExportContext, Mapping[str, int]], dict[str, torch.Tensor]]
Outputs = Callable[[], dict[str, torch.Tensor]]
ParityRuns = Callable[[ExportContext, "Graph", bool], tuple[Outputs, Outputs]]
ALL_SOURCES = frozenset(source.value for source in WeightsSource)


def _no_axes(ctx: ExportContext) -> dict[str, AxisRange]:
    return {}


def _no_sizes(ctx: ExportContext) -> dict[str, int]:
    return {}


@dataclass(frozen=True)
class GraphSpec:
    """Everything known about one graph.

    ``build(ctx)`` makes the module to export; ``sample_inputs(ctx, sizes)`` deterministic inputs
    with each dynamic axis at ``sizes[axis]``: the export traces at the ``opt`` sizes of
    ``axes(ctx)``, ``verify`` runs at ``check_sizes(ctx)`` (small, so full-size graphs stay cheap
    on a CPU, and a size other than the traced one proves an axis dynamic). Parity passes when
    max |ort - torch| <= atol + rtol * max |torch| (typed graphs: ``verify.export_parity``).
    ``write_onnx`` replaces tracing for graphs that ship as ONNX (they stay fp32 in a typed
    export); ``parity`` replaces the one-call check where one call proves too little (it gives
    (torch run, graph run), the torch run in the export's dtype when asked: ``typed``). ``io``
    gives names that depend on the module (the LLM decoder's per-layer caches).
    ``exported_with``: the weights sources whose default export includes the graph.
    """

    name: str
    family: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    build: Callable[[ExportContext], nn.Module]
    sample_inputs: InputBuilder
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    fp32_inputs: frozenset[str] = frozenset()
    axes: Callable[[ExportContext], dict[str, AxisRange]] = _no_axes
    check_sizes: Callable[[ExportContext], dict[str, int]] = _no_sizes
    atol: float = 1e-4
    rtol: float = 1e-4
    networks: tuple[str, ...] = ()  # the networks (weight files) its module runs
    kernels: bool = False  # our fused kernels serve its torch form
    cuda_graph: bool = False  # fixed shapes per clip and many small kernels: worth a CUDA graph
    compile: bool = False  # elementwise work between its matmuls that inductor fuses: worth torch.compile
    compile_per_item: bool = False  # compiled, it runs its batch one item at a time (the batch size varies)
    exported_with: frozenset[str] = ALL_SOURCES
    write_onnx: Callable[[Path], None] | None = None
    parity: ParityRuns | None = None
    io: Callable[[nn.Module], dict[str, Any]] | None = None

    def bound(self, module: nn.Module) -> GraphSpec:
        """This spec with the names ``module`` declares, where they depend on it."""
        return self if self.io is None else replace(self, **self.io(module))

    def opt_sizes(self, ctx: ExportContext) -> dict[str, int]:
        return {axis: size.opt for axis, size in self.axes(ctx).items()}

    def check_inputs(self, ctx: ExportContext) -> dict[str, torch.Tensor]:
        return self.sample_inputs(ctx, self.opt_sizes(ctx) | self.check_sizes(ctx))

    def input_dtype(self, name: str, value: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
        """The type input ``name`` enters the module in when it runs in ``dtype``: floating inputs
        in ``dtype`` except ``fp32_inputs``; integer inputs (token ids) as they are."""
        if not value.is_floating_point():
            return value.dtype
        return torch.float32 if name in self.fp32_inputs else dtype

    def typed_inputs(self, ctx: ExportContext, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs`` as the module takes them in the export's dtype (:meth:`input_dtype`)."""
        return {name: value.to(self.input_dtype(name, value, ctx.dtype)) for name, value in inputs.items()}

    def parity_runs(self, ctx: ExportContext, graph: Graph, typed: bool = False) -> tuple[Outputs, Outputs]:
        """(torch run, graph run) for ``verify``: by default the module and the graph on
        ``check_inputs``; ``typed``: the torch run in the export's dtype (the module's typed copy
        on typed inputs), what a typed graph's tolerance is measured from."""
        if self.parity is not None:
            return self.parity(ctx, graph, typed)
        module = ctx.typed_module(self) if typed else ctx.module(self)
        inputs = self.check_inputs(ctx)
        torch_inputs = self.typed_inputs(ctx, inputs) if typed else inputs
        spec = self.bound(module)

        def on_torch() -> dict[str, torch.Tensor]:
            with torch.inference_mode():
                outputs = module(*(torch_inputs[name] for name in spec.inputs))
            return dict(zip(spec.outputs, outputs if isinstance(outputs, tuple) else (outputs,)))

        return on_torch, lambda: graph.run(inputs)


_REGISTRY: dict[str, GraphSpec] = {}
_loaded = False


def register_graph(spec: GraphSpec) -> GraphSpec:
    """Add ``spec``; from then on export, the backends and verify know the graph."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"graph '{spec.name}' is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def graph_specs() -> dict[str, GraphSpec]:
    """Every registered spec, by name, in declaration order (generator, detector, separator, MLLM)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in SPEC_MODULES:
            importlib.import_module(module)
    return dict(sorted(_REGISTRY.items(), key=lambda item: _declared_in(item[1])))


def _declared_in(spec: GraphSpec) -> int:
    """Rank of the module that declares ``spec`` in SPEC_MODULES (others last), whatever was imported first."""
    module = spec.build.__module__
    return SPEC_MODULES.index(module) if module in SPEC_MODULES else len(SPEC_MODULES)


def graph_spec(name: str) -> GraphSpec:
    specs = graph_specs()
    if name not in specs:
        raise DeepSoundError(f"unknown graph '{name}' (known: {', '.join(specs)})")
    return specs[name]


def default_graphs(source: WeightsSource) -> tuple[str, ...]:
    """What an export holds unless told: the generator's graphs and the detector, and with tiny
    random weights also the separator and MLLM graphs (at full size these are opt-in: the decoder
    alone is ~30 GB in fp32, and the MLLM exports from random weights only)."""
    return tuple(name for name, spec in graph_specs().items() if source.value in spec.exported_with)
