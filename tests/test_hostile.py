"""Hostile and careless input, as a new user or an attacker would give it (issue 13).

Every case asserts the exit code (2: a user-fixable problem, one line on stderr, no traceback),
what the line names, and that nothing is left behind: no partial output, no temporary folder,
and nothing of the user's deleted. Inputs are made here at test time; nothing large is checked in.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from deepsound_rt.cli import main
from deepsound_rt.export import ExportError, ExportManifest, export_preset
from deepsound_rt.export import exporter
from deepsound_rt.export.manifest import ENGINE_CACHE_DIR, MANIFEST_NAME

DETECTOR_ONLY = ["--graphs", "detector", "--no-verify"]  # the one graph that exports in a second


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *words: str) -> str:
    """Exit 2, exactly one stderr line that is our error (no traceback, no usage block), naming ``words``."""
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("deepsound-rt: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Everything under ``folder``: relative name -> SHA-256 of a file's bytes, 'dir', or a link's target."""
    def state(path: Path) -> str:
        if path.is_symlink():
            return f"-> {os.readlink(path)}"
        return "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()

    return {str(path.relative_to(folder)): state(path) for path in sorted(folder.rglob("*"))}


# --- export --out: never delete what is not ours, never leave half an export --------------------


@pytest.fixture(scope="module")
def detector_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "exp"
    export_preset("dev", out, graphs=["detector"])
    return out


@pytest.fixture
def old_export(detector_export, tmp_path) -> Path:
    """A copy of a finished export with a TensorRT engine cache inside, in a folder of its own."""
    import shutil

    out = Path(shutil.copytree(detector_export, tmp_path / "parent" / "exp"))
    (out / ENGINE_CACHE_DIR).mkdir()
    (out / ENGINE_CACHE_DIR / "detector-0123.engine").write_bytes(b"engine")
    return out


def foreign_manifest(folder: Path) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps({"name": "resnet50", "files": ["resnet50.onnx"]}))


@pytest.mark.parametrize("case", ["user_onnx", "foreign_manifest", "ours_plus_notes", "ours_plus_onnx",
                                  "manifest_names_outside", "manifest_not_json"])
def test_export_refuses_a_folder_that_holds_anything_not_ours_and_touches_nothing(old_export, capsys, case):
    """Before issue 13 the exporter deleted every .onnx, .onnx.data, .partial and manifest.json in
    the folder, a user's resnet50.onnx and a foreign manifest included."""
    folder = old_export
    if case in ("user_onnx", "foreign_manifest", "manifest_not_json"):
        folder = old_export.parent / "mine"
        folder.mkdir()
        (folder / "resnet50.onnx").write_bytes(b"\x08\x07user model")
        (folder / "resnet50.onnx.data").write_bytes(b"user weights")
        if case == "foreign_manifest":
            foreign_manifest(folder)
        if case == "manifest_not_json":
            (folder / MANIFEST_NAME).write_text("{not json")
    elif case == "ours_plus_notes":
        (folder / "notes.txt").write_text("mine")
    elif case == "ours_plus_onnx":
        (folder / "resnet50.onnx").write_bytes(b"user model")
    else:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        manifest["graphs"]["detector"]["files"]["../victim.txt"] = "0" * 64
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
        (old_export.parent / "victim.txt").write_text("not the exporter's")
    before = snapshot(old_export.parent)
    code, _, err = run_cli(capsys, "export", "--preset", "dev", "--out", folder, *DETECTOR_ONLY)
    assert_one_line_error(code, err, str(folder))
    assert snapshot(old_export.parent) == before  # untouched, and no staging folder beside it


def test_export_refuses_a_file_or_a_link_as_its_target(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    before = snapshot(tmp_path)
    for target, words in [("file", "not a directory"), ("link", "symbolic link"), ("loop", "symbolic link")]:
        code, _, err = run_cli(capsys, "export", "--preset", "dev", "--out", tmp_path / target, *DETECTOR_ONLY)
        assert_one_line_error(code, err, *words.split(" "))
    assert snapshot(tmp_path) == before


def test_reexport_replaces_only_what_the_old_manifest_names_and_keeps_the_engine_cache(old_export):
    manifest = json.loads((old_export / MANIFEST_NAME).read_text())
    manifest["graphs"]["gone"] = dict(manifest["graphs"]["detector"], files={"gone.onnx": "0" * 64})
    (old_export / MANIFEST_NAME).write_text(json.dumps(manifest))
    (old_export / "gone.onnx").write_bytes(b"old graph")  # named by the old manifest: ours to delete
    export_preset("dev", old_export, graphs=["detector"])
    assert sorted(os.listdir(old_export)) == ["detector.onnx", MANIFEST_NAME, ENGINE_CACHE_DIR]
    assert (old_export / ENGINE_CACHE_DIR / "detector-0123.engine").read_bytes() == b"engine"
    assert sorted(os.listdir(old_export.parent)) == ["exp"]  # no staging or retired folder left
    ExportManifest.load(old_export).check_files(old_export)


@pytest.mark.parametrize("interruption", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_an_interrupted_export_leaves_the_old_export_intact_and_no_temporary_folder(old_export, monkeypatch,
                                                                                    interruption):
    """The first graph is written, then the export fails: before issue 13 the old export was
    already deleted at this point and the folder held half a new one."""
    before = snapshot(old_export.parent)
    written = []

    def write_then_fail(spec, ctx, path):
        if written:
            raise interruption
        written.append(path)
        real_write(spec, ctx, path)

    real_write = exporter._write
    monkeypatch.setattr(exporter, "_write", write_then_fail)
    with pytest.raises(type(interruption)):
        export_preset("dev", old_export, graphs=["detector", "clip_text"])
    assert written and not written[0].parent.exists()  # the new graph went to a staging folder, now gone
    assert snapshot(old_export.parent) == before
    ExportManifest.load(old_export).check_files(old_export)


def test_an_export_into_a_new_nested_folder_leaves_only_the_export(tmp_path):
    export_preset("dev", tmp_path / "a" / "b", graphs=["detector"])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "a", "a/b", "a/b/detector.onnx", f"a/b/{MANIFEST_NAME}"]
    with pytest.raises(ExportError, match="new or empty"):  # a plain folder of other things stays refused
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "x.partial").write_text("")
        export_preset("dev", tmp_path / "c", graphs=["detector"])
