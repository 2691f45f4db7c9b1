"""CLIP image and text encoders as MMAudio uses them (open_clip DFN5B ViT-H-14, quick GELU).

MMAudio loads ``hf-hub:apple/DFN5B-CLIP-ViT-H-14-384`` (the Hugging Face repo is now named
``apple/DFN5B-CLIP-ViT-H-14-378``). We never touch the hub: the model is built from its config
and the weights come from a local directory holding one of :data:`CLIP_WEIGHT_FILES`:

- ``open_clip_model.safetensors`` (preferred: no pickle), or
- ``open_clip_pytorch_model.bin`` (read with ``torch.load(weights_only=True)``).

Both are plain open_clip ``CLIP`` state dicts (686 keys, 986,714,881 elements).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from ..errors import InputError, WeightsError
from .weights import load_state_file, load_strict, state_shapes

log = logging.getLogger(__name__)

CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
"""File names looked for in a CLIP weights directory, in order of preference."""

TOKENIZER_NAME = "ViT-H-14-378-quickgelu"
"""MMAudio's tokenizer: open_clip's bundled CLIP BPE (same as ViT-H-14), works offline."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipConfig:
    """open_clip ``model_cfg`` of a ViT CLIP, plus the frame size the pipeline feeds it.

    ``image_size`` only fixes the patch grid: the DFN5B config says 378 while MMAudio feeds 384 px
    frames; the stride-14 patch conv sees the same 27 x 27 grid and ignores the last 6 pixels.
    """

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_head_width: int
    text_width: int
    text_heads: int
    text_layers: int
    context_length: int = 77
    vocab_size: int = 49408
    quick_gelu: bool = True
    frame_size: int = 384

    def model_cfg(self) -> dict:
        """The dict open_clip's ``CLIP(**cfg)`` takes (the ``model_cfg`` of open_clip_config.json)."""
        return {
            "embed_dim": self.embed_dim,
            "quick_gelu": self.quick_gelu,
            "vision_cfg": {
                "image_size": self.image_size,
                "layers": self.vision_layers,
                "width": self.vision_width,
                "head_width": self.vision_head_width,
                "patch_size": self.patch_size,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": self.vocab_size,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
            },
        }


CLIP_DFN5B_H14_384 = ClipConfig(
    embed_dim=1024,
    image_size=378,
    patch_size=14,
    vision_width=1280,
    vision_layers=32,
    vision_head_width=80,
    text_width=1024,
    text_heads=16,
    text_layers=24,
)
"""apple/DFN5B-CLIP-ViT-H-14-384 (open_clip_config.json of the HF repo)."""

CLIP_TINY = ClipConfig(
    embed_dim=64,
    image_size=384,
    patch_size=32,
    vision_width=64,
    vision_layers=2,
    vision_head_width=32,
    text_width=64,
    text_heads=2,
    text_layers=2,
)
"""Same architecture and tokenizer at toy width, for tests and demos with random weights."""


def build_clip(config: ClipConfig = CLIP_DFN5B_H14_384) -> CLIP:
    """An open_clip CLIP with random weights, in eval mode; never touches the network."""
    return CLIP(**config.model_cfg()).eval()


def clip_checkpoint_shapes(config: ClipConfig = CLIP_DFN5B_H14_384) -> dict[str, tuple[int, ...]]:
    """{key: shape} a CLIP weight file must hold, built on the meta device."""
    with torch.device("meta"):
        return state_shapes(build_clip(config))


def find_clip_weights(directory: str | Path) -> Path:
    """The first of :data:`CLIP_WEIGHT_FILES` present in ``directory``."""
    for name in CLIP_WEIGHT_FILES:
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    raise WeightsError(f"no CLIP weights in {directory}: expected one of {', '.join(CLIP_WEIGHT_FILES)}")


@functools.lru_cache(maxsize=32)  # once per text, not once per generation of a run
def _warn_if_truncated(tokenizer, text: str) -> None:
    room = tokenizer.context_length - 2  # start and end tokens
    tokens = tokenizer.encode(text)
    if len(tokens) > room:
        dropped = " ".join(tokenizer.decode(tokens[room:room + 8]).split())
        log.warning("a prompt of %d tokens was cut to CLIP's %d: the rest, from %r, is ignored", len(tokens), room,
                    dropped[:40])


def _causal_mask(context_length: int) -> torch.Tensor:
    """open_clip's additive causal text mask (0 on and below the diagonal, -inf above)."""
    return torch.full((context_length, context_length), float("-inf")).triu_(1)


class ClipEncoder(nn.Module):
    """MMAudio's CLIP conditions: per-frame image embeddings and per-token text hidden states."""

    def __init__(self, config: ClipConfig = CLIP_DFN5B_H14_384, model: CLIP | None = None):
        super().__init__()
        self.config = config
        self.model = build_clip(config) if model is None else model
        self.tokenizer = open_clip.get_tokenizer(TOKENIZER_NAME, context_length=config.context_length)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(3, 1, 1), persistent=False)

    @classmethod
    def from_weights(cls, path: str | Path, config: ClipConfig = CLIP_DFN5B_H14_384) -> ClipEncoder:
        """Load a weight file, or a directory holding one of :data:`CLIP_WEIGHT_FILES`.

        The model is built on the meta device and materialised empty, so the ~1B random
        parameters are never initialised only to be overwritten.
        """
        path = Path(path)
        state = load_state_file(find_clip_weights(path) if path.is_dir() else path)
        with torch.device("meta"):
            model = build_clip(config)
        model.to_empty(device="cpu")
        load_strict(model, state, f"CLIP checkpoint {path}")
        model.attn_mask = _causal_mask(config.context_length)  # a non-persistent buffer, not in the file
        return cls(config, model)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.token_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, context_length) int64 BPE ids: [SOT, tokens..., EOT, 0...], truncated to fit (with
        a warning naming what is dropped: CLIP never sees it)."""
        for text in texts:
            _warn_if_truncated(self.tokenizer, text)
        return self.tokenizer(list(texts))

    def normalized_images(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, 384, 384) frames in [0, 1] -> (B·T, 3, 384, 384) in the model dtype, normalised
        with CLIP's mean and std (cast first, as MMAudio casts the video before normalising)."""
        size = self.config.frame_size
        if tuple(frames.shape[2:]) != (3, size, size):
            raise InputError(f"CLIP frames must be (3, {size}, {size}), got {tuple(frames.shape[2:])}")
        images = frames.to(self.dtype).flatten(0, 1)
        return (images - self.mean.to(self.dtype)) / self.std.to(self.dtype)

    @torch.inference_mode()
    def encode_images(self, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """(B, T, 3, 384, 384) frames in [0, 1] -> (B, T, embed_dim) unit-norm image embeddings.

        ``batch_size`` bounds how many frames go through the tower at once (all when ``None``).
        """
        batch, length = frames.shape[:2]
        images = self.normalized_images(frames.to(self.device))
        chunks = images.split(batch_size or len(images))
        embeddings = torch.cat([self.model.encode_image(chunk, normalize=True) for chunk in chunks])
        return embeddings.view(batch, length, -1)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (B, context_length, text_width) unit-norm last hidden states (after ln_final).

        MMAudio patches open_clip to skip pooling and projection: the flow network attends over
        every token position, padding included.
        """
        return self.encode_tokens(self.tokenize(texts))

    @torch.inference_mode()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, context_length) token ids -> (B, context_length, text_width), as :meth:`encode_text`."""
        model = self.model
        tokens = tokens.to(self.device)
        hidden = model.token_embedding(tokens).to(self.dtype) + model.positional_embedding.to(self.dtype)
        hidden = model.transformer(hidden, attn_mask=model.attn_mask)
        return F.normalize(model.ln_final(hidden), dim=-1)
