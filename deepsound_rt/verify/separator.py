"""Golden runners and the manifest builder for step 3: the BS-RoFormer network and the chunked demix.

Both runners build the model from the golden's own ``constructor_config`` (and the demix settings
from its ``demix_config``), so goldens of these kinds with other sizes, lengths and seeds are checked
the same way. Intermediates are returned only where the golden gives them a per-tensor tolerance:
these goldens' single ``tolerance`` is meant for the waveforms, not for STFT-scale values.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..models import bs_roformer
from ..models.bs_roformer import BSRoformer, BSRoformerConfig
from ..stages.separate import demix, plan_demix
from .golden import Golden


def _with_suggested_mids(
    golden: Golden, outputs: dict[str, torch.Tensor], mids: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    suggested = golden.meta.get("suggested_atol") or {}
    return outputs | {f"mid/{k}": v for k, v in mids.items() if f"mid/{k}" in suggested}


def model_from_golden(golden: Golden) -> BSRoformer:
    """An eval-mode BSRoformer built from the golden's ``constructor_config`` with ``state/`` loaded."""
    model = BSRoformer(BSRoformerConfig.from_dict(golden.meta["constructor_config"])).eval()
    model.load_checkpoint(golden.state)
    return model


@torch.inference_mode()
def run_bs_roformer(golden: Golden) -> dict[str, torch.Tensor]:
    """Separate ``in/raw_audio`` with every intermediate recorded."""
    model = model_from_golden(golden)
    mids: dict[str, torch.Tensor] = {}
    stem = model(golden.inputs["raw_audio"], intermediates=mids)
    return _with_suggested_mids(golden, {"out/recon_audio": stem}, mids)


def _chunk_layout_mismatches(
    golden: Golden, num_samples: int, chunk_size: int, num_overlap: int, batch_size: int
) -> int:
    """How many of the golden's discrete chunking facts our plan gets wrong (must be 0)."""
    plan = plan_demix(num_samples, chunk_size, num_overlap, batch_size)
    chunks = plan.chunks
    ours: dict[str, list] = {
        "starts": [c.start for c in chunks],
        "lengths": [c.length for c in chunks],
        "pad_modes": ["reflect" if c.reflect_padded else "constant" for c in chunks],
        "batches": [[chunks.index(c) for c in batch] for batch in plan.batches],
    }
    mids = golden.group("mid")
    derived = golden.meta.get("derived", {})
    reference: dict[str, list] = {
        "starts": mids["chunk_starts"].tolist() if "chunk_starts" in mids else None,
        "lengths": mids["chunk_lengths"].tolist() if "chunk_lengths" in mids else None,
        "pad_modes": derived.get("chunk_pad_modes"),
        "batches": derived.get("batches"),
    }
    mismatches = sum(ours[k] != v for k, v in reference.items() if v is not None)
    scalars = {
        "border": plan.border,
        "fade_size": plan.fade_size,
        "num_chunks": len(chunks),
        "reflect_padded": plan.border > 0,
    }
    return mismatches + sum(derived[k] != v for k, v in scalars.items() if k in derived)


@torch.inference_mode()
def run_demix(golden: Golden) -> dict[str, torch.Tensor]:
    """Demix ``in/mix`` with the golden's chunking settings; instrumental = mix − vocals."""
    model = model_from_golden(golden)
    settings = golden.meta["demix_config"]
    chunk_size = int(settings["audio.chunk_size"])
    num_overlap = int(settings["inference.num_overlap"])
    batch_size = int(settings["inference.batch_size"])
    mix = golden.inputs["mix"]
    chunk_inputs: list[torch.Tensor] = []
    chunk_outputs: list[torch.Tensor] = []

    def recording_model(batch: torch.Tensor) -> torch.Tensor:
        vocals = model(batch)
        chunk_inputs.append(batch)
        chunk_outputs.append(vocals)
        return vocals

    vocals = demix(recording_model, mix, chunk_size, num_overlap, batch_size)
    outputs = {
        "out/vocals": vocals,
        "out/instrumental": mix - vocals,
        "check/chunk_layout": torch.tensor(
            _chunk_layout_mismatches(golden, mix.shape[-1], chunk_size, num_overlap, batch_size)
        ),
    }
    mids = {"chunk_model_inputs": torch.cat(chunk_inputs), "chunk_model_outputs": torch.cat(chunk_outputs)}
    return _with_suggested_mids(golden, outputs, mids)


RUNNERS: dict[str, Callable[[Golden], dict[str, torch.Tensor]]] = {
    "bs_roformer": run_bs_roformer,
    "bs_roformer_demix": run_demix,
}

MANIFESTS: dict[str, Callable[[], dict[str, tuple[int, ...]]]] = {
    "bs_roformer_viperx_317": lambda: bs_roformer.checkpoint_shapes(),
}
