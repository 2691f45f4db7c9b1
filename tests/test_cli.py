"""The command line: exit codes, one-line errors, nothing half-written; verify can fail."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from deepsound_rt.cli import main
from deepsound_rt.config import PRESETS
from test_io import bad_inputs

SAMPLE_RATE = 44100


@pytest.fixture(scope="module")
def good_clip(tmp_path_factory) -> Path:
    from deepsound_rt.io.sample import make_test_video

    return make_test_video(tmp_path_factory.mktemp("clips") / "good.mp4", 2.0, 25, (160, 120))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("deepsound-rt: error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


def test_demo_writes_mp4_of_the_requested_duration(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    code, stdout, stderr = run_cli(capsys, "demo", "-o", out, "--duration", "2", "--steps", "3")  # --steps: the alias of --num-steps
    assert code == 0
    assert "RANDOM weights" in stderr
    assert "per-stage latency" in stdout and "vocoder" in stdout
    with av.open(str(out)) as container:
        assert len(container.streams.video) == 1
        audio = container.streams.audio[0]
        assert audio.rate == SAMPLE_RATE
        assert abs(float(audio.duration * audio.time_base) - 2.0) <= 512 / SAMPLE_RATE


@pytest.mark.parametrize(
    "case", ["missing", "directory", "text", "truncated", "corrupt", "wav", "zero_frames", "no_keyframes", "too_short"]
)
def test_bad_video_exits_2_and_writes_nothing(tmp_path, good_clip, capsys, case):
    (tmp_path / "in").mkdir()
    video, reason = bad_inputs(tmp_path / "in", good_clip)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run_cli(capsys, "run", video, "-o", out_dir / "x.mp4", "--preset", "dev", "--steps", "2")
    assert_user_error(code, err, reason)
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("output", "reason"),
    [("missing_dir/x.mp4", "does not exist"), ("x.avi", "unsupported output type"), ("d.mp4", "is a directory")],
)
def test_bad_output_exits_2_before_any_work(tmp_path, good_clip, capsys, output, reason):
    (tmp_path / "d.mp4").mkdir()
    code, _, err = run_cli(capsys, "run", good_clip, "-o", tmp_path / output, "--preset", "dev")
    assert_user_error(code, err, reason)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d.mp4"]


def test_output_over_input_is_refused(good_clip, capsys):
    code, _, err = run_cli(capsys, "run", good_clip, "-o", good_clip, "--preset", "dev")
    assert_user_error(code, err, "overwrite the input")


def official_weights_dir(folder: Path, preset: str, flow_state: dict) -> Path:
    """A directory with every file the preset names; the flow file holds ``flow_state``."""
    folder.mkdir()
    for spec in PRESETS[preset].files:
        torch.save({"placeholder": torch.zeros(1)}, folder / spec.names[0])
    torch.save(flow_state, folder / f"mmaudio_{preset}.pth")
    return folder


def test_missing_weights_directory(tmp_path, good_clip, capsys):
    code, _, err = run_cli(capsys, "run", good_clip, "-o", tmp_path / "x.wav", "--preset", "small_16k",
                           "--weights", tmp_path / "nowhere")
    assert_user_error(code, err, "weights directory not found")


def test_weights_directory_missing_a_file(tmp_path, good_clip, capsys):
    weights = official_weights_dir(tmp_path / "w", "small_16k", {"x": torch.zeros(1)})
    (weights / "synchformer_state_dict.pth").unlink()
    code, _, err = run_cli(capsys, "run", good_clip, "-o", tmp_path / "x.wav", "--preset", "small_16k",
                           "--weights", weights)
    assert_user_error(code, err, "synchformer_state_dict.pth")


def test_tampered_official_file_is_refused_by_checksum(tmp_path, good_clip, capsys):
    weights = official_weights_dir(tmp_path / "w", "small_16k", {"x": torch.zeros(1)})
    code, _, err = run_cli(capsys, "run", good_clip, "-o", tmp_path / "x.wav", "--preset", "small_16k",
                           "--weights", weights)
    assert_user_error(code, err, "mmaudio_small_16k.pth", "MD5 mismatch")


def test_wrong_checkpoint_names_missing_and_unexpected_keys(tmp_path, good_clip, capsys):
    weights = official_weights_dir(tmp_path / "w", "small_16k", {"not_a_flow_key": torch.zeros(3)})
    code, _, err = run_cli(capsys, "run", good_clip, "-o", tmp_path / "x.wav", "--preset", "small_16k",
                           "--weights", weights, "--no-checksum")
    assert_user_error(code, err, "mmaudio_small_16k.pth", "missing keys", "unexpected keys: not_a_flow_key")
    assert not (tmp_path / "x.wav").exists()


class Payload:
    """A pickled object that a weights-only loader must refuse to construct."""

    def __reduce__(self):
        return (print, ("arbitrary code ran",))


@pytest.mark.parametrize(("content", "message"), [
    ("garbage", "not a valid checkpoint"),
    ("random", "not a valid checkpoint"),
    ("pickle", "not a valid checkpoint"),  # a bare pickle: torch cannot even say what it would import
    ("torch_save", "holds code or objects other than tensors"),
])
def test_unreadable_or_unsafe_checkpoint(tmp_path, good_clip, capsys, content, message):
    """Named, refused, and never with torch's advice to retry with weights_only=False."""
    weights = official_weights_dir(tmp_path / "w", "small_16k", {})
    flow_file = weights / "mmaudio_small_16k.pth"
    if content == "garbage":
        flow_file.write_bytes(b"\x00not a checkpoint" * 100)
    elif content == "random":
        flow_file.write_bytes(np.random.default_rng(0).bytes(4096))
    elif content == "pickle":
        flow_file.write_bytes(pickle.dumps({"weight": Payload()}))
    else:
        torch.save({"weight": Payload()}, flow_file)
    code, _, err = run_cli(capsys, "run", good_clip, "-o", tmp_path / "x.wav", "--preset", "small_16k",
                           "--weights", weights, "--no-checksum")
    assert_user_error(code, err, message)
    assert str(flow_file) in err and "weights_only" not in err
    assert "arbitrary code ran" not in capsys.readouterr().out


# --- verify ----------------------------------------------------------------------------------

SMALL_GOLDENS = ("snakebeta_activation1d", "mel_converter_16k")


def copy_goldens(source: Path, target: Path, names=SMALL_GOLDENS) -> Path:
    target.mkdir()
    for name in names:
        for suffix in (".json", ".safetensors"):
            shutil.copy(source / f"{name}{suffix}", target / f"{name}{suffix}")
    return target


def test_verify_passes_goldens_and_fails_a_perturbed_one(goldens_dir, tmp_path, capsys):
    from deepsound_rt import kernels

    folder = copy_goldens(goldens_dir, tmp_path / "g")
    code, out, _ = run_cli(capsys, "verify", "--goldens", folder, "--manifests", tmp_path)
    paths = ["torch", *kernels.available_paths()]
    assert code == 0 and out.count("PASS") == len(SMALL_GOLDENS) * len(paths)
    assert all(f"[{path}]" in out for path in paths)  # each line names its compute path

    tensors = load_file(str(folder / "mel_converter_16k.safetensors"))
    tensors["out/mel"] = tensors["out/mel"] + 1e-3  # beyond the 2e-5 tolerance
    save_file(tensors, str(folder / "mel_converter_16k.safetensors"))
    code, out, _ = run_cli(capsys, "verify", "--goldens", folder, "--manifests", tmp_path)
    assert code == 1
    assert "FAIL golden mel_converter_16k" in out and "PASS golden snakebeta_activation1d" in out


def test_verify_builds_from_the_golden_config_not_the_file_name(goldens_dir, tmp_path, capsys):
    folder = copy_goldens(goldens_dir, tmp_path / "g", names=("snakebeta_activation1d",))
    for suffix in (".json", ".safetensors"):
        (folder / f"snakebeta_activation1d{suffix}").rename(folder / f"renamed{suffix}")
    meta = json.loads((folder / "renamed.json").read_text())
    meta["file"] = "renamed.safetensors"
    (folder / "renamed.json").write_text(json.dumps(meta))
    code, out, _ = run_cli(capsys, "verify", "--goldens", folder, "--manifests", tmp_path)
    assert code == 0 and "PASS golden renamed (antialiased_snakebeta) [torch]" in out


def test_verify_manifest_passes_and_fails_on_a_missing_key(manifests_dir, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "verify", "--manifest", manifests_dir / "vae_16k.json")
    assert code == 0 and "PASS manifest vae_16k" in out

    manifest = json.loads((manifests_dir / "vae_16k.json").read_text())
    manifest.pop("decoder.conv_in.weight")
    manifest["decoder.extra.weight"] = [1]
    broken = tmp_path / "vae_16k.json"
    broken.write_text(json.dumps(manifest))
    code, out, _ = run_cli(capsys, "verify", "--manifest", broken)
    assert code == 1 and "FAIL manifest vae_16k" in out


def test_verify_without_known_goldens_is_a_user_error(tmp_path, capsys):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "x.json").write_text(json.dumps({"kind": "something_else"}))
    code, _, err = run_cli(capsys, "verify", "--goldens", tmp_path / "g", "--manifests", tmp_path)
    assert_user_error(code, err, "nothing to verify")


@pytest.mark.parametrize("content", ['{"a.weight": [4, ', '[1, 2]', '{"a.weight": "big"}', "\xff\xfe"])
def test_verify_refuses_a_broken_manifest_in_one_line(tmp_path, capsys, content):
    manifest = tmp_path / "vae_16k.json"
    manifest.write_bytes(content.encode("latin-1"))
    code, _, err = run_cli(capsys, "verify", "--manifest", manifest)
    assert_user_error(code, err, str(manifest))
