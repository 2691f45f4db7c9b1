"""Every exportable graph as one registry entry: where its module comes from, the inputs it is
traced and checked with, its dynamic axes, and how close ONNX Runtime must come to torch.

Adding a graph is one :class:`GraphSpec` in :data:`GRAPH_SPECS`; a new model family also adds
one loader to :data:`FAMILY_LOADERS` returning its graph modules by name. The separator and MLLM
graphs' loaders, inputs and checks live in ``steps.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..backends.base import Graph
from ..config import Preset
from ..models.graphs import GENERATOR_GRAPHS
from ..models.loading import load_generator_models
from ..models.mmaudio.network import SYNC_FPS
from ..models.step_graphs import MLLM_AUDIO, MLLM_DECODER, MLLM_GRAPHS, MLLM_VISION, SEPARATOR_CORE, SEPARATOR_GRAPHS
from . import steps
from .detector import detector_example_inputs, load_detector_module, write_detector_onnx
from .manifest import AxisRange
from .onnx import trace_to_onnx
from .typed import typed_inputs, typed_modules

INPUT_SEED = 1234
PROMPTS = ("waves crashing on rocks", "")


@dataclass
class ExportContext:
    """One preset at one duration; model families are built on first use and kept."""

    preset: Preset
    duration_s: float
    lengths: Mapping[str, int]  # latent, clip, sync tokens
    weights: Path | None = None
    random_weights: bool = False
    dtype: str = "fp32"  # the export's: bf16/fp16 graphs are traced from typed copies of the modules
    _modules: dict[str, Mapping[str, nn.Module]] = field(default_factory=dict)
    _typed: dict[str, Mapping[str, nn.Module]] = field(default_factory=dict)

    @property
    def sync_frames(self) -> int:
        """25 fps frames the video loader hands over for ``duration_s``."""
        return int(SYNC_FPS * self.duration_s)

    def modules(self, family: str) -> Mapping[str, nn.Module]:
        if family not in self._modules:
            self._modules[family] = FAMILY_LOADERS[family](self)
        return self._modules[family]

    def module(self, spec: GraphSpec) -> nn.Module:
        return self.modules(spec.family)[spec.name]

    def typed_modules(self, family: str) -> Mapping[str, nn.Module]:
        """The family's modules in the export's dtype (the fp32 ones themselves for fp32), cast once."""
        if self.dtype == "fp32":
            return self.modules(family)
        if family not in self._typed:
            self._typed[family] = typed_modules(self.modules(family), self.dtype)
        return self._typed[family]


InputBuilder = Callable[[ExportContext, Mapping[str, int]], dict[str, torch.Tensor]]
Outputs = Callable[[], dict[str, torch.Tensor]]
ParityRuns = Callable[[ExportContext, Graph, bool], tuple[Outputs, Outputs]]


@dataclass(frozen=True)
class GraphSpec:
    """How to export and check one graph.

    ``inputs(ctx, sizes)`` builds deterministic inputs with each dynamic axis at ``sizes[axis]``:
    the export traces at the ``opt`` sizes, ``verify`` runs at ``check_sizes`` (small, so the
    full-size graphs stay cheap on a CPU, and a size other than the traced one proves the axis
    really is dynamic). ``write_onnx`` replaces tracing for graphs that ship as ONNX. ``parity``
    replaces the one-call check where one call proves too little (the decoder: a prefill, then a
    step on the cache the graph returned): it gives (torch run, graph run), each returning named
    outputs, the torch run in the export's dtype when asked (``typed``). Parity passes when
    max |ort - torch| <= atol + rtol * max |torch| (typed graphs: ``verify.export_parity``).
    """

    name: str
    family: str
    inputs: InputBuilder
    axes: Callable[[ExportContext], dict[str, AxisRange]] = lambda ctx: {}
    check_sizes: Callable[[ExportContext], dict[str, int]] = lambda ctx: {}
    atol: float = 1e-4
    rtol: float = 1e-4
    write_onnx: Callable[[Path], None] | None = None
    parity: ParityRuns | None = None

    def export(self, ctx: ExportContext, path: Path) -> None:
        if self.write_onnx is not None:
            self.write_onnx(path)
            return
        opt_sizes = {axis: size.opt for axis, size in self.axes(ctx).items()}
        module = ctx.typed_modules(self.family)[self.name]
        inputs = typed_inputs(self.inputs(ctx, opt_sizes), ctx.dtype, module.signature.fp32_inputs)
        trace_to_onnx(module, inputs, self.axes(ctx), path)

    def check_inputs(self, ctx: ExportContext) -> dict[str, torch.Tensor]:
        sizes = {axis: size.opt for axis, size in self.axes(ctx).items()} | self.check_sizes(ctx)
        return self.inputs(ctx, sizes)

    def parity_runs(self, ctx: ExportContext, graph: Graph, typed: bool = False) -> tuple[Outputs, Outputs]:
        """(torch run, graph run) for ``verify``: by default the module and the graph on
        ``check_inputs``; ``typed``: the torch run in the export's dtype, fed as the torch backend
        feeds it."""
        if self.parity is not None:
            return self.parity(ctx, graph, typed)
        module = (ctx.typed_modules if typed else ctx.modules)(self.family)[self.name]
        inputs = self.check_inputs(ctx)
        torch_inputs = typed_inputs(inputs, ctx.dtype, module.signature.fp32_inputs) if typed else inputs

        def on_torch() -> dict[str, torch.Tensor]:
            with torch.inference_mode():
                outputs = module(*(torch_inputs[name] for name in module.signature.inputs))
            return dict(zip(module.signature.outputs, outputs if isinstance(outputs, tuple) else (outputs,)))

        return on_torch, lambda: graph.run(inputs)


# -- generator ------------------------------------------------------------------------------------


def _generator_modules(ctx: ExportContext) -> dict[str, nn.Module]:
    """fp32 networks on the CPU with the duration's tables, wrapped as the torch backend wraps them."""
    models = load_generator_models(ctx.preset, ctx.weights, torch.device("cpu"), torch.float32,
                                   random_weights=ctx.random_weights)
    models.set_sequence_lengths(ctx.lengths["latent"], ctx.lengths["clip"], ctx.lengths["sync"])
    return {name: module.eval() for name, module in models.graph_modules().items()}


def _rng() -> torch.Generator:
    return torch.Generator().manual_seed(INPUT_SEED)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _clip_image_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    size = ctx.preset.clip.frame_size
    return {"frames": torch.rand(1, sizes["clip_frames"], 3, size, size, generator=_rng())}


def _clip_text_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    tokens = ctx.modules("generator")["clip_text"].clip.tokenize(list(PROMPTS))
    return {"tokens": tokens[: sizes["texts"]]}


def _sync_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    size = ctx.preset.synchformer.image_size
    return {"frames": torch.rand(1, sizes["sync_frames"], 3, size, size, generator=_rng()) * 2 - 1}


def _condition_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    flow, rng = ctx.preset.flow, _rng()
    return {
        "clip_f": _unit(torch.randn(1, ctx.lengths["clip"], flow.clip_dim, generator=rng)),
        "sync_f": torch.randn(1, ctx.lengths["sync"], flow.sync_dim, generator=rng),
        "text_f": _unit(torch.randn(1, flow.text_seq_len, flow.text_dim, generator=rng)),
        "negative_text_f": _unit(torch.randn(1, flow.text_seq_len, flow.text_dim, generator=rng)),
    }


def _velocity_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Paired conditions as the conditions graph makes them, so magnitudes are realistic."""
    conditions = ctx.modules("generator")["flow_conditions"]
    with torch.inference_mode():
        paired = conditions(*_condition_inputs(ctx, sizes).values())
    x = torch.randn(1, ctx.lengths["latent"], ctx.preset.flow.latent_dim, generator=_rng())
    return {"x": x, "t": torch.tensor(0.37), "cfg_strength": torch.tensor(4.5),
            **{name: value.clone() for name, value in zip(conditions.signature.outputs, paired)}}


def _vae_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    return {"latents": torch.randn(1, sizes["latent_frames"], ctx.preset.flow.latent_dim, generator=_rng())}


def _vocoder_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Log-mel-like values (around -5, spread 2), not unit noise."""
    mel = torch.randn(1, ctx.preset.vocoder.num_mels, sizes["mel_frames"], generator=_rng())
    return {"mel": 2 * mel - 5}


def _up_to(minimum: int, size: int) -> AxisRange:
    """An axis sized by the duration: anything from ``minimum`` up to the exported duration."""
    return AxisRange(min(minimum, size), size, size)


GENERATOR_SPECS = (
    GraphSpec("clip_image", "generator", _clip_image_inputs,
              axes=lambda ctx: {"clip_frames": _up_to(1, ctx.lengths["clip"])},
              check_sizes=lambda ctx: {"clip_frames": min(2, ctx.lengths["clip"])}),
    GraphSpec("clip_text", "generator", _clip_text_inputs,
              axes=lambda ctx: {"texts": AxisRange(1, 2, 2)}),
    GraphSpec("sync", "generator", _sync_inputs,
              axes=lambda ctx: {"sync_frames": _up_to(16, ctx.sync_frames)},
              check_sizes=lambda ctx: {"sync_frames": min(24, ctx.sync_frames)}),
    GraphSpec("flow_conditions", "generator", _condition_inputs),
    GraphSpec("flow_velocity", "generator", _velocity_inputs),
    GraphSpec("vae_decode", "generator", _vae_inputs,
              axes=lambda ctx: {"latent_frames": _up_to(1, ctx.lengths["latent"])},
              check_sizes=lambda ctx: {"latent_frames": min(16, ctx.lengths["latent"])}),
    GraphSpec("vocoder", "generator", _vocoder_inputs,
              axes=lambda ctx: {"mel_frames": _up_to(2, 2 * ctx.lengths["latent"])},
              check_sizes=lambda ctx: {"mel_frames": min(32, 2 * ctx.lengths["latent"])}),
)

# -- detector -------------------------------------------------------------------------------------

DETECTOR_SPEC = GraphSpec(
    "detector", "detector", lambda ctx, sizes: detector_example_inputs(sizes["batch"]),
    axes=lambda ctx: {"batch": AxisRange(1, 1, 16)},
    check_sizes=lambda ctx: {"batch": 3},
    atol=1e-5,
    write_onnx=write_detector_onnx,
)

# -- separator and MLLM (steps 0, 2 and 3) ---------------------------------------------------------

STEP_SPECS = (
    GraphSpec(SEPARATOR_CORE, "separator", steps.separator_inputs, axes=steps.separator_axes,
              check_sizes=lambda ctx: {"chunks": 2, "frames": 64}),
    GraphSpec(MLLM_VISION, "mllm", steps.vision_inputs),
    GraphSpec(MLLM_AUDIO, "mllm", steps.audio_inputs),
    GraphSpec(MLLM_DECODER, "mllm", steps.decoder_inputs, axes=steps.decoder_axes, parity=steps.decoder_parity),
)

FAMILY_LOADERS: dict[str, Callable[[ExportContext], Mapping[str, nn.Module]]] = {
    "generator": _generator_modules,
    "detector": lambda ctx: {"detector": load_detector_module()},
    "separator": steps.separator_modules,
    "mllm": steps.mllm_modules,
}
GRAPH_SPECS: dict[str, GraphSpec] = {spec.name: spec for spec in (*GENERATOR_SPECS, DETECTOR_SPEC, *STEP_SPECS)}
DEFAULT_GRAPHS = (*GENERATOR_GRAPHS, "detector")
STEP_GRAPHS = (*SEPARATOR_GRAPHS, *MLLM_GRAPHS)


def default_graphs(preset: Preset) -> tuple[str, ...]:
    """What ``export_preset`` exports unless told: the generator's graphs and the detector, and for
    the tiny random preset also the separator and MLLM graphs (at full size these are opt-in: the
    decoder alone is ~30 GB in fp32, and the MLLM exports from random weights only)."""
    return (*DEFAULT_GRAPHS, *STEP_GRAPHS) if preset.random_weights else DEFAULT_GRAPHS
