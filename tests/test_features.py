"""Feature extractors: Synchformer against its golden and manifest, CLIP against open_clip itself."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from safetensors.torch import save_file
from torch import nn
from torchvision.transforms import Normalize

from deepsound_rt.errors import InputError, WeightsError
from deepsound_rt.models.clip import (
    CLIP_DFN5B_H14_384,
    CLIP_MEAN,
    CLIP_STD,
    CLIP_TINY,
    CLIP_WEIGHT_FILES,
    TOKENIZER_NAME,
    ClipEncoder,
    clip_checkpoint_shapes,
)
from deepsound_rt.models.synchformer import (
    Synchformer,
    SynchformerConfig,
    checkpoint_shapes,
    frames_to_sync_input,
)
from deepsound_rt.models.weights import state_shapes
from deepsound_rt.stages.features import CLIP_FRAMES_PER_RUN, clip_image_features
from deepsound_rt.verify import check_golden
from deepsound_rt.verify.features import RUNNERS, synchformer_config_from_golden
from deepsound_rt.verify.golden import Golden, load_golden

SYNC_GOLDEN = "synchformer_small.json"
TINY_SYNC = SynchformerConfig(embed_dim=16, num_heads=2, depth=1)


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random (like the goldens), so no layer can hide behind a zero init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return module.eval()


def synchformer_goldens(goldens_dir: Path) -> list[Path]:
    paths = sorted(goldens_dir.glob("*.json"))
    return [p for p in paths if json.loads(p.read_text()).get("kind") == "synchformer"]


@pytest.fixture(scope="module")
def sync_golden(goldens_dir: Path) -> Golden:
    return load_golden(goldens_dir / SYNC_GOLDEN)


# --- Synchformer ---------------------------------------------------------------------------------


def test_synchformer_goldens_pass(goldens_dir: Path) -> None:
    paths = synchformer_goldens(goldens_dir)
    assert paths, "no synchformer golden found"
    for path in paths:
        report = check_golden(path, RUNNERS)
        assert report is not None and report.error is None, report
        compared = {c.tensor for c in report.comparisons}
        suggested = json.loads(path.read_text()).get("suggested_atol", {})
        stored_mids = {name for name in suggested if name.startswith("mid/")}
        assert {"out/sync_features"} | stored_mids <= compared
        assert report.passed, [(c.tensor, c.max_abs, c.atol) for c in report.comparisons]


def test_synchformer_manifest_matches(manifests_dir: Path) -> None:
    manifest = json.loads((manifests_dir / "synchformer_vfeat_extractor.json").read_text())
    expected = {k: tuple(v) for k, v in manifest.items() if not k.startswith("_")}
    ours = checkpoint_shapes()
    assert ours == expected
    assert len(ours) == manifest["_num_keys"]
    assert sum(torch.Size(s).numel() for s in ours.values()) == manifest["_total_parameters"]


def test_loader_drops_other_branches_and_names_bad_keys(sync_golden: Golden) -> None:
    config = synchformer_config_from_golden(sync_golden.meta)
    state = dict(sync_golden.state)
    model = Synchformer(config)
    other_branches = {"afeat_extractor.conv.weight": torch.zeros(3), "transformer.norm.bias": torch.zeros(2)}
    model.load_checkpoint({**state, **other_branches})
    assert torch.equal(model.vfeat_extractor.temp_embed, state["vfeat_extractor.temp_embed"])

    missing = "vfeat_extractor.blocks.1.timeattn.qkv.bias"
    with pytest.raises(WeightsError, match=missing.replace(".", r"\.")):
        model.load_checkpoint({k: v for k, v in state.items() if k != missing})
    unexpected = "vfeat_extractor.head.weight"
    with pytest.raises(WeightsError, match=unexpected.replace(".", r"\.")):
        model.load_checkpoint({**state, unexpected: torch.zeros(4, 4)})


@pytest.mark.parametrize(("frames", "segments"), [(200, 24), (207, 24), (250, 30), (16, 1)])
def test_segment_counts(frames: int, segments: int) -> None:
    """8 s and 10 s at 25 fps; frames that do not fill a last window are dropped."""
    assert Synchformer(TINY_SYNC).segment_count(frames) == segments


def test_shared_tubelets_equal_per_segment_embedding() -> None:
    """Embedding the video once and windowing its tubelets equals cutting 16-frame segments
    every 8 frames and running the checkpoint's Conv3d on each, as upstream does."""
    model = randomized(Synchformer(TINY_SYNC)).eval()
    generator = torch.Generator().manual_seed(3)
    video = torch.rand(2, 43, 3, 224, 224, generator=generator) * 2 - 1
    extractor = model.vfeat_extractor
    per_segment = []
    for start in range(0, 43 - 16 + 1, 8):
        segment = video[:, start : start + 16].transpose(1, 2)  # (B, C, 16, H, W)
        tokens = extractor.patch_embed_3d.proj(segment).flatten(2).transpose(1, 2)
        per_segment.append(extractor(tokens))
    expected = torch.stack(per_segment, dim=1).flatten(1, 2)
    with torch.inference_mode():
        torch.testing.assert_close(model(video), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("frames", "segments"), [(200, 24), (250, 30)])
def test_encode_video_with_sync_windows_8s_and_10s(frames: int, segments: int) -> None:
    """8 s and 10 s at 25 fps: segment k is frames 8k .. 8k+15 alone, 8 tokens each; frames past
    the last whole window (248 and 249 of 250) are never seen."""
    model = randomized(Synchformer(TINY_SYNC))
    video = torch.rand(1, frames, 3, 224, 224, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.inference_mode():
        features = model.encode_video_with_sync(video, batch_size=8)
        assert features.shape == (1, 8 * segments, TINY_SYNC.embed_dim)
        for k in (0, segments // 2, segments - 1):
            alone = model.encode_video_with_sync(video[:, 8 * k : 8 * k + 16])
            torch.testing.assert_close(features[:, 8 * k : 8 * k + 8], alone, atol=1e-5, rtol=0)
        tail = video.clone()
        tail[:, 8 * (segments - 1) + 16 :] = 0
        torch.testing.assert_close(model.encode_video_with_sync(tail, batch_size=8), features, atol=0, rtol=0)


def test_segments_are_windows_of_16_with_stride_8_and_batching_is_transparent() -> None:
    model = randomized(Synchformer(TINY_SYNC))
    generator = torch.Generator().manual_seed(1)
    videos = torch.rand(2, 41, 3, 224, 224, generator=generator) * 2 - 1
    features = model.encode_video_with_sync(videos)
    assert features.shape == (2, 4 * 8, 16)
    third_window = model.encode_video_with_sync(videos[1:, 16:32])
    torch.testing.assert_close(features[1:, 16:24], third_window, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode_video_with_sync(videos, batch_size=3), features, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode_video_with_sync(videos[:1]), features[:1], atol=1e-5, rtol=0)


def test_sync_input_conversion_and_checks() -> None:
    frames = torch.tensor([0, 128, 255], dtype=torch.uint8)
    torch.testing.assert_close(frames_to_sync_input(frames), torch.tensor([-1.0, 128 / 255 * 2 - 1, 1.0]))
    model = Synchformer(TINY_SYNC)
    with pytest.raises(InputError, match="16 frames"):
        model.encode_video_with_sync(torch.zeros(1, 15, 3, 224, 224))
    with pytest.raises(InputError, match="224"):
        model.encode_video_with_sync(torch.zeros(1, 16, 3, 256, 256))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_synchformer_half_precision_close_to_fp32(sync_golden: Golden, dtype: torch.dtype) -> None:
    model = Synchformer(synchformer_config_from_golden(sync_golden.meta)).to(dtype).eval()
    model.load_checkpoint(sync_golden.state)
    features = model.encode_video_with_sync(frames_to_sync_input(sync_golden.inputs["video_u8"]))
    reference = sync_golden.tensor("out/sync_features")
    assert features.dtype == dtype
    assert (features.float() - reference).abs().max() < 0.03 * reference.abs().max()


# --- CLIP ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip() -> ClipEncoder:
    torch.manual_seed(0)
    return ClipEncoder(CLIP_TINY)


def test_full_clip_config_is_open_clips_dfn5b_architecture() -> None:
    assert CLIP_DFN5B_H14_384.model_cfg() == open_clip.get_model_config(TOKENIZER_NAME)
    with torch.device("meta"):
        reference = CLIP(**open_clip.get_model_config(TOKENIZER_NAME))
    ours = clip_checkpoint_shapes()
    assert ours == state_shapes(reference)
    # 986,714,881 fp32 values: the official open_clip_pytorch_model.bin is 3,947,081,637 bytes
    assert len(ours) == 686 and sum(torch.Size(s).numel() for s in ours.values()) == 986_714_881
    assert ours["visual.positional_embedding"] == (27 * 27 + 1, 1280)


def test_full_clip_feature_shapes_on_meta() -> None:
    with torch.device("meta"):
        encoder = ClipEncoder(CLIP_DFN5B_H14_384)
        frames = torch.empty(1, 2, 3, 384, 384)
    assert encoder.encode_images(frames).shape == (1, 2, 1024)
    assert encoder.encode_text(["a dog barks", ""]).shape == (2, 77, 1024)


def test_clip_uses_quick_gelu(tiny_clip: ClipEncoder) -> None:
    assert isinstance(tiny_clip.model.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert isinstance(tiny_clip.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)


def test_tokenizer_is_deterministic_clip_bpe(tiny_clip: ClipEncoder) -> None:
    texts = ["a dog barking", "", "waves " * 100]
    tokens = tiny_clip.tokenize(texts)
    assert tokens.shape == (3, 77) and tokens.dtype == torch.int64
    assert torch.equal(tokens, tiny_clip.tokenize(texts))
    assert torch.equal(tokens, open_clip.get_tokenizer("ViT-H-14")(texts))
    start, end = 49406, 49407
    assert tokens[1, :3].tolist() == [start, end, 0]
    assert tokens[0, 0] == start and (tokens[0] == end).sum() == 1
    assert tokens[2, 0] == start and tokens[2, -1] == end  # truncated, still terminated


def test_tiny_clip_shapes_and_unit_norm(tiny_clip: ClipEncoder) -> None:
    frames = torch.rand(2, 3, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    images = tiny_clip.encode_images(frames, batch_size=4)
    assert images.shape == (2, 3, CLIP_TINY.embed_dim)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(2, 3))
    text = tiny_clip.encode_text(["a dog barking", ""])
    assert text.shape == (2, 77, CLIP_TINY.text_width)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2, 77))
    with pytest.raises(InputError, match="384"):
        tiny_clip.encode_images(torch.rand(1, 1, 3, 224, 224))


def test_encode_images_matches_mmaudio_preprocessing(tiny_clip: ClipEncoder) -> None:
    frames = torch.rand(1, 5, 3, 384, 384, generator=torch.Generator().manual_seed(2))
    normalize = Normalize(mean=list(CLIP_MEAN), std=list(CLIP_STD))
    with torch.inference_mode():
        expected = tiny_clip.model.encode_image(normalize(frames[0]), normalize=True)
    torch.testing.assert_close(tiny_clip.encode_images(frames, batch_size=2)[0], expected, atol=1e-5, rtol=0)


def test_clip_stage_runs_bounded_chunks_with_the_whole_batch_result(tiny_clip: ClipEncoder) -> None:
    """The stage splits the frames to bound activation memory; the embeddings must not change."""

    class RecordingGraph:
        def __init__(self) -> None:
            self.frame_counts: list[int] = []

        def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            self.frame_counts.append(inputs["frames"].shape[1])
            return {"features": tiny_clip.encode_images(inputs["frames"])}

    frames_u8 = torch.randint(0, 256, (2 * CLIP_FRAMES_PER_RUN + 5, 3, 384, 384), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(3))
    graph = RecordingGraph()
    features = clip_image_features(graph, frames_u8)
    assert graph.frame_counts == [CLIP_FRAMES_PER_RUN, CLIP_FRAMES_PER_RUN, 5]
    expected = tiny_clip.encode_images(frames_u8.unsqueeze(0).float() / 255.0)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)


def manual_text_hidden_states(model: CLIP, tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """The patched encode_text written out from the weights: causal pre-norm blocks with QuickGELU."""
    state = model.state_dict()
    x = state["token_embedding.weight"][tokens] + state["positional_embedding"]
    length, width = x.shape[1:]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for i in range(len(model.transformer.resblocks)):
        prefix = f"transformer.resblocks.{i}."
        p = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        h = F.layer_norm(x, (width,), p["ln_1.weight"], p["ln_1.bias"])
        q, k, v = (h @ p["attn.in_proj_weight"].T + p["attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        attended = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + attended.transpose(1, 2).flatten(2) @ p["attn.out_proj.weight"].T + p["attn.out_proj.bias"]
        h = F.layer_norm(x, (width,), p["ln_2.weight"], p["ln_2.bias"])
        h = h @ p["mlp.c_fc.weight"].T + p["mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ p["mlp.c_proj.weight"].T + p["mlp.c_proj.bias"]
    x = F.layer_norm(x, (width,), state["ln_final.weight"], state["ln_final.bias"])
    return x / x.norm(dim=-1, keepdim=True)


def test_encode_text_matches_independent_computation(tiny_clip: ClipEncoder) -> None:
    texts = ["a dog barking in the rain", ""]
    expected = manual_text_hidden_states(tiny_clip.model, tiny_clip.tokenize(texts), CLIP_TINY.text_heads)
    torch.testing.assert_close(tiny_clip.encode_text(texts), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("file_name", CLIP_WEIGHT_FILES)
def test_clip_loads_local_weight_files(tiny_clip: ClipEncoder, tmp_path: Path, file_name: str) -> None:
    state = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    if file_name.endswith(".safetensors"):
        save_file(state, str(tmp_path / file_name))
    else:
        torch.save(state, tmp_path / file_name)
    loaded = ClipEncoder.from_weights(tmp_path, CLIP_TINY)
    assert torch.equal(loaded.model.attn_mask, tiny_clip.model.attn_mask)
    frames = torch.rand(1, 2, 3, 384, 384, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loaded.encode_images(frames), tiny_clip.encode_images(frames), atol=0, rtol=0)
    torch.testing.assert_close(loaded.encode_text(["rain"]), tiny_clip.encode_text(["rain"]), atol=0, rtol=0)


def test_clip_weight_errors(tiny_clip: ClipEncoder, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="open_clip_model.safetensors"):
        ClipEncoder.from_weights(tmp_path, CLIP_TINY)
    state = dict(tiny_clip.model.state_dict())
    state["visual.extra"] = torch.zeros(1)
    del state["ln_final.bias"]
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    with pytest.raises(WeightsError, match=r"ln_final\.bias.*visual\.extra"):
        ClipEncoder.from_weights(tmp_path, CLIP_TINY)
