"""VideoLLaMA2.1-7B-AV (DeepSound's -CoT / -QA fine-tunes): SigLIP + STC video tokens and BEATs +
MLP audio tokens spliced into a Qwen2 LLM's input embeddings in place of one ``<video>`` placeholder.

Module layout mirrors the checkpoint, so ``state_dict()`` keys are the checkpoint's: the Qwen2 body
is ``model.*`` with the multimodal parts attached to it (``model.mm_projector`` = STC v35,
``model.audio_tower`` = BEATs, ``model.mm_projector_a`` = audio MLP), and ``lm_head``. The SigLIP
tower is held outside the module tree, as upstream delay-loads it from its own checkpoint.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from safetensors import safe_open
from torch import nn
from transformers import Cache, DynamicCache, Qwen2Config, Qwen2Model, SiglipVisionConfig, SiglipVisionModel

from ...errors import WeightsError
from ..weights import check_state_dict, state_shapes
from .audio_projector import AudioProjector
from .beats import BEATs, BEATsConfig
from .prompt import ChatTokenizer
from .stc import STCConfig, STCConnectorV35
from .vision import CHECKPOINT_PREFIX as SIGLIP_PREFIX
from .vision import ATTENTION, NUM_FRAMES, SELECT_LAYER, patch_features

log = logging.getLogger(__name__)

_QWEN2_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
    "rope_scaling", "tie_word_embeddings", "use_sliding_window", "sliding_window", "max_window_layers",
    "attention_dropout", "bos_token_id", "eos_token_id",
)
_SIGLIP_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
    "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout",
)
# Upstream ignores these when it loads the LLM checkpoint (the vision tower is delay-loaded).
_IGNORED_LLM_PREFIXES = ("model.vision_tower.",)
# A full SiglipModel checkpoint also holds the text tower and the contrastive logit scale/bias.
_IGNORED_SIGLIP_PREFIXES = ("text_model.", "logit_scale", "logit_bias")


@dataclass(frozen=True)
class VideoLLaMA2Config:
    """Everything that shapes the model; ``from_dict`` reads a checkpoint's config.json."""

    llm: Qwen2Config
    stc: STCConfig
    beats: BEATsConfig
    audio_llm_width: int
    num_frames: int = NUM_FRAMES
    select_layer: int = SELECT_LAYER

    @classmethod
    def from_dict(cls, config: Mapping) -> "VideoLLaMA2Config":
        """From config.json. Upstream always builds BEATs as ``BEATsConfig()`` (delay-loaded), so that
        is used unless the json has an ``audio_tower_config`` dict (our extension, for tiny models);
        the audio projector maps the BEATs width to ``hidden_size_a``."""
        beats = BEATsConfig.from_dict(config["audio_tower_config"]) if "audio_tower_config" in config else BEATsConfig()
        if config.get("mm_projector_a_type", "mlp2x_gelu") != "mlp2x_gelu":
            raise ValueError(f"only the mlp2x_gelu audio projector is supported, got {config['mm_projector_a_type']!r}")
        if config.get("mm_vision_select_feature", "patch") != "patch":
            raise ValueError(f"only 'patch' vision features are supported, got {config['mm_vision_select_feature']!r}")
        llm = Qwen2Config(**{k: config[k] for k in _QWEN2_FIELDS if k in config})
        audio_width = int(config.get("mm_hidden_size_a", beats.encoder_embed_dim))
        if audio_width != beats.encoder_embed_dim:
            raise ValueError(f"mm_hidden_size_a {audio_width} != BEATs width {beats.encoder_embed_dim}")
        return cls(
            llm=llm,
            stc=STCConfig.from_dict(config),
            beats=beats,
            audio_llm_width=int(config.get("hidden_size_a", llm.hidden_size)),
            num_frames=int(config.get("num_frames", NUM_FRAMES)),
            select_layer=int(config.get("mm_vision_select_layer", SELECT_LAYER)),
        )


VIDEOLLAMA2_1_7B_AV = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False, "use_sliding_window": False,
    "sliding_window": 131072, "max_window_layers": 28, "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "mm_projector_type": "stc_connector_v35", "mm_hidden_size": 1152,
    "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "num_frames": 16,
    "mm_projector_a_type": "mlp2x_gelu", "mm_hidden_size_a": 768, "hidden_size_a": 3584,
}
"""config.json of VideoLLaMA2.1-7B-AV as the reference manifest assumes it (Qwen2-7B-Instruct sizes)."""


def encode_video_features(stc: STCConnectorV35, frame_features: torch.Tensor) -> torch.Tensor:
    """(T, patches, C) vision features of one video -> (tokens, hidden) LLM tokens."""
    return stc(frame_features.unsqueeze(0))[0]


def encode_audio_fbank(beats: BEATs, projector: nn.Module, fbank: torch.Tensor) -> torch.Tensor:
    """(1, frames, 128) raw fbank -> (tokens, hidden) LLM tokens (BEATs then the audio MLP)."""
    features = beats.extract_features(fbank)
    tokens = projector(features)
    return tokens.reshape(fbank.shape[0], -1, tokens.shape[-1])[0]


def splice_embeddings(
    embed: Callable[[torch.Tensor], torch.Tensor],
    ids_before: torch.Tensor,
    ids_after: torch.Tensor,
    media_tokens: Iterable[torch.Tensor],
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream ``prepare_inputs_labels_for_multimodal`` for one sequence with one placeholder.

    ``inputs_embeds`` = [embed(ids before) ; media tokens in order (video, then audio) ; embed(ids
    after)], the placeholder dropped. ``attention_mask`` is the mask of the original ids (before,
    placeholder, after; all ones by default) with ones PREPENDED up to the new length, as upstream
    pads it (not placed where the media tokens went).
    """
    parts = [embed(ids_before), *media_tokens, embed(ids_after)]
    inputs_embeds = torch.cat([part.to(parts[0].dtype) for part in parts]).unsqueeze(0)
    old_length = ids_before.numel() + 1 + ids_after.numel()
    if attention_mask is None:
        attention_mask = torch.ones(1, old_length, dtype=torch.long, device=inputs_embeds.device)
    extra = torch.ones(1, inputs_embeds.shape[1] - old_length, dtype=attention_mask.dtype, device=attention_mask.device)
    return inputs_embeds, torch.cat([extra, attention_mask], dim=1)


class VideoLLaMA2AV(nn.Module):
    """The audio-visual LLM: ``encode_video``, ``encode_audio``, ``splice``, then ``logits`` steps."""

    def __init__(self, config: VideoLLaMA2Config, vision_tower: SiglipVisionModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config.llm)
        self.model.mm_projector = STCConnectorV35(config.stc)
        self.model.audio_tower = BEATs(config.beats)
        self.model.mm_projector_a = AudioProjector(config.beats.encoder_embed_dim, config.audio_llm_width)
        self.lm_head = nn.Linear(config.llm.hidden_size, config.llm.vocab_size, bias=False)
        # A list hides the tower from state_dict() (its weights have their own checkpoint); _apply
        # and train() forward to it so .to()/.eval() still reach it.
        self._vision_tower = [vision_tower]

    @property
    def vision_tower(self) -> SiglipVisionModel:
        tower = self._vision_tower[0]
        if tower is None:
            raise RuntimeError("this VideoLLaMA2AV has no vision tower")
        return tower

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "VideoLLaMA2AV":
        if self._vision_tower[0] is not None:
            self._vision_tower[0]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> "VideoLLaMA2AV":
        if self._vision_tower[0] is not None:
            self._vision_tower[0].train(mode)
        return super().train(mode)

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(ids)

    def encode_video(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(T, 3, 384, 384) SigLIP pixels -> (T/2 · 13 · 13, hidden) video tokens."""
        features = patch_features(self.vision_tower, pixel_values, self.config.select_layer)
        return encode_video_features(self.model.mm_projector, features.to(self.dtype))

    def encode_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        """(1, frames, 128) raw Kaldi fbank -> ((frames // 16) · 8, hidden) audio tokens."""
        return encode_audio_fbank(self.model.audio_tower, self.model.mm_projector_a, fbank.to(self.dtype))

    def splice(
        self,
        ids_before: torch.Tensor,
        ids_after: torch.Tensor,
        video_tokens: torch.Tensor,
        audio_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, L, hidden) inputs_embeds and (1, L) attention mask; video then audio replace the
        placeholder between ``ids_before`` and ``ids_after``."""
        media = [video_tokens] if audio_tokens is None else [video_tokens, audio_tokens]
        return splice_embeddings(self.embed, ids_before.to(self.device), ids_after.to(self.device), media)

    def new_cache(self) -> DynamicCache:
        """An empty cache for :meth:`logits`."""
        return DynamicCache(config=self.config.llm)

    def logits(self, inputs_embeds: torch.Tensor, cache: Cache, num_logits: int = 1) -> torch.Tensor:
        """Run (1, n, hidden) new embeddings through the LLM on top of ``cache`` (a transformers
        Cache, extended in place); float32 logits (num_logits, vocab) of the last positions only."""
        hidden = self.model(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True).last_hidden_state
        return self.lm_head(hidden[0, -num_logits:]).float()

    @classmethod
    def from_pretrained_dir(
        cls,
        llm_dir: str | Path,
        siglip_dir: str | Path,
        dtype: torch.dtype = torch.float16,
        device: str | torch.device = "cpu",
    ) -> tuple["VideoLLaMA2AV", ChatTokenizer]:
        """Load a VideoLLaMA2.1-7B-AV(-CoT/-QA) directory and a SigLIP directory (HF layout:
        config.json, ``*.safetensors`` shards with an index json, tokenizer files).

        The model is built on the meta device and each tensor is read from its shard straight onto
        ``device`` in ``dtype``: nothing is randomly initialised, nothing is held twice.
        """
        llm_dir, siglip_dir, device = Path(llm_dir), Path(siglip_dir), torch.device(device)
        config = VideoLLaMA2Config.from_dict(_read_config(llm_dir))
        siglip_config = siglip_config_from_dir(siglip_dir)
        with torch.device("meta"):
            model = cls(config, SiglipVisionModel(siglip_config))
        load_safetensors_into(model, _shard_files(llm_dir), device, dtype, f"{llm_dir}", _IGNORED_LLM_PREFIXES)
        load_safetensors_into(
            model.vision_tower, _shard_files(siglip_dir), device, dtype, f"{siglip_dir}", _IGNORED_SIGLIP_PREFIXES,
            strip_prefix=SIGLIP_PREFIX,
        )
        model.rebuild_nonpersistent_buffers(device)
        return model.eval(), ChatTokenizer.from_dir(llm_dir)

    def rebuild_nonpersistent_buffers(self, device: torch.device) -> None:
        """Recreate the buffers no checkpoint stores (rotary frequencies in float32, as transformers
        builds them whatever the model dtype; SigLIP position ids)."""
        self.model.rotary_emb = type(self.model.rotary_emb)(config=self.config.llm).to(device)
        tower = self._vision_tower[0]
        if tower is not None:
            embeddings = tower.embeddings
            positions = torch.arange(embeddings.num_positions, device=device).expand((1, -1))
            embeddings.register_buffer("position_ids", positions, persistent=False)


def siglip_config_from_dir(directory: Path) -> SiglipVisionConfig:
    """The vision config of a SiglipModel or SiglipVisionModel config.json."""
    config = _read_config(directory)
    config = config.get("vision_config", config)
    return SiglipVisionConfig(**{k: config[k] for k in _SIGLIP_FIELDS if k in config}, attn_implementation=ATTENTION)


def _read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise WeightsError(f"{directory}: no config.json (expected an HF-style checkpoint directory)")
    return json.loads(path.read_text())


def _shard_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: those its index json names, else every one there."""
    indexes = sorted(directory.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = json.loads(indexes[0].read_text()).get("weight_map", {})
        files = [directory / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise WeightsError(f"{directory}: shards named in {indexes[0].name} are missing: {', '.join(absent)}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{directory}: no *.safetensors weights")
    return files


def load_safetensors_into(
    module: nn.Module,
    files: Iterable[Path],
    device: torch.device,
    dtype: torch.dtype,
    what: str,
    ignored_prefixes: tuple[str, ...] = (),
    strip_prefix: str = "",
) -> None:
    """Fill a (meta-device) module from safetensors files, one tensor at a time, strictly.

    Keys that name one shared tensor (BEATs' per-layer copies of its relative-bias table) are
    satisfied by any one of them, as safetensors stores a shared tensor once; copies that are all
    present must agree. Missing, unexpected or mis-shaped keys raise :class:`WeightsError` naming them.
    """
    targets = module.state_dict(keep_vars=True)
    aliases: dict[int, list[str]] = defaultdict(list)
    for key, tensor in targets.items():
        aliases[id(tensor)].append(key)
    loaded: dict[str, torch.Tensor] = {}
    unexpected: dict[str, torch.Tensor] = {}  # shapes only, on the meta device
    for path in files:
        with safe_open(str(path), framework="pt", device=str(device)) as shard:
            for stored in shard.keys():
                key = stored[len(strip_prefix) :] if strip_prefix and stored.startswith(strip_prefix) else stored
                if stored.startswith(ignored_prefixes):
                    continue
                if key not in targets:
                    unexpected[stored] = torch.empty(shard.get_slice(stored).get_shape(), device="meta")
                    continue
                tensor = shard.get_tensor(stored)
                loaded[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    for group in aliases.values():
        present = [k for k in group if k in loaded]
        for key in present[1:]:
            if not torch.equal(loaded[key], loaded[present[0]]):
                raise WeightsError(f"{what}: {key} differs from {present[0]}, but the model shares them")
        loaded.update({k: loaded[present[0]] for k in group if present and k not in loaded})
    check_state_dict({k: v.shape for k, v in targets.items()}, loaded | unexpected, what)
    for key, tensor in loaded.items():
        _assign(module, key, tensor)


def _assign(module: nn.Module, key: str, tensor: torch.Tensor) -> None:
    owner_path, _, name = key.rpartition(".")
    owner = module.get_submodule(owner_path)
    if name in owner._parameters:
        owner._parameters[name] = nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[name] = tensor


def checkpoint_shapes(config: Mapping = VIDEOLLAMA2_1_7B_AV) -> dict[str, tuple[int, ...]]:
    """{checkpoint key: shape} of VideoLLaMA2.1-7B-AV without its vision tower (meta device)."""
    with torch.device("meta"):
        return state_shapes(VideoLLaMA2AV(VideoLLaMA2Config.from_dict(config)))

