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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# --- options: one line naming the allowed range, before any work --------------------------------


class EngineLoadReached(Exception):
    """Raised in place of loading models: every check before the Engine passed."""


@pytest.fixture
def stop_before_loading(monkeypatch):
    from deepsound_rt import cli

    def stop(config):
        raise EngineLoadReached(config)

    monkeypatch.setattr(cli, "_load_engine", stop)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from deepsound_rt.io.sample import make_test_video

    return make_test_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 1.0, 25, (64, 48))


@pytest.mark.parametrize(("options", "words"), [
    (["--seed", str(2**70)], ["seed", "[0, 2**63)"]),  # was: ValueError: Overflow when unpacking long long
    (["--seed", "-1"], ["seed", "[0, 2**63)"]),
    (["--seed", "1.5"], ["--seed", "invalid int value"]),
    (["--cfg", "nan"], ["cfg_strength", "finite", "[0, 100]"]),  # was: a whole generation, then NaN blamed on fp16
    (["--cfg", "inf"], ["cfg_strength", "finite"]),
    (["--cfg", "1e308"], ["cfg_strength", "[0, 100]"]),  # finite, but overflows the guided velocity
    (["--vad-share", "1.5"], ["vad_min_speech_share", "[0, 1]"]),
    (["--vad-share", "nan"], ["vad_min_speech_share", "[0, 1]"]),
    (["--steps", "100000"], ["num_steps", "[1, 1000]"]),  # was: accepted, minutes of silent work
    (["--steps", "0"], ["num_steps", "[1, 1000]"]),
    (["--duration", "-2"], ["duration", "> 0"]),
    (["--duration", "inf"], ["duration", "finite"]),
    (["--device", "gpu"], ["device", "cuda:N"]),
    (["--judge", "llm"], ["--judge", "invalid choice"]),  # argparse's own errors are one line too
    (["--frobnicate"], ["unrecognized arguments"]),
])
def test_bad_options_are_one_line_errors_before_any_file_is_opened(clip, tmp_path, capsys, stop_before_loading,
                                                                   options, words):
    code, _, err = run_cli(capsys, "run", clip, "-o", tmp_path / "x.wav", "--preset", "dev", *options)
    assert_one_line_error(code, err, *words)
    assert list(tmp_path.iterdir()) == []


def test_good_options_reach_the_engine(clip, tmp_path, capsys, stop_before_loading):
    """The seam the fuzz test relies on: valid options get as far as loading, with nothing written."""
    with pytest.raises(EngineLoadReached):
        main(["run", str(clip), "-o", str(tmp_path / "x.wav"), "--preset", "dev", "--steps", "1000", "--cfg", "0"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("field", "value", "words"), [
    ("seed", 1.5, "[0, 2**63)"), ("seed", None, "[0, 2**63)"), ("seed", 2**63, "[0, 2**63)"),
    ("duration", "abc", "> 0"), ("duration", True, "> 0"), ("prompt", None, "string"),
    ("negative_prompt", b"x", "string"), ("mode", None, "s4, s3, gen"),
])
def test_bad_run_options_through_the_api_are_deepsound_errors(field, value, words):
    """Once TypeError/RuntimeError deep in a run; now refused when the options are built."""
    from deepsound_rt.errors import DeepSoundError
    from deepsound_rt.options import RunOptions

    with pytest.raises(DeepSoundError) as raised:
        RunOptions(**{field: value})
    assert words in str(raised.value) and field.split("_")[-1] in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(("field", "value", "words"), [
    ("num_steps", 1001, "[1, 1000]"), ("num_steps", 2.0, "[1, 1000]"), ("cfg_strength", float("nan"), "[0, 100]"),
    ("cfg_strength", -1, "[0, 100]"), ("vad_min_speech_share", -0.1, "[0, 1]"), ("silence_max_share", 2, "[0, 1]"),
    ("silence_threshold_db", float("-inf"), "finite"), ("weights", 3, "path"), ("weights", "~no_such_user_x/w", "~"),
    ("cuda_graphs", "yes", "True or False"), ("backend", "tvm", "onnxruntime"),
])
def test_bad_engine_settings_are_deepsound_errors(field, value, words):
    from deepsound_rt.errors import DeepSoundError
    from deepsound_rt.options import EngineConfig

    with pytest.raises(DeepSoundError) as raised:
        EngineConfig(preset="dev", **{field: value})
    assert words in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(("options", "words"), [
    (["--runs", "0"], ["--runs", "at least 1"]),  # was: UnboundLocalError after loading every variant
    (["--runs", "-1"], ["--runs", "at least 1"]),
    (["--warmup", "-3"], ["--warmup", "at least 0"]),
    (["--variants", "nosuch"], ["unknown bench variant 'nosuch'", "eager fp32"]),  # was: ran every variant
    (["--quick", "--runs", "0"], ["--runs"]),  # --quick does not hide a bad value
    (["--steps", "5000"], ["num_steps", "[1, 1000]"]),
])
def test_bad_bench_settings_are_refused_before_any_engine_loads(tmp_path, capsys, options, words):
    code, _, err = run_cli(capsys, "bench", "--preset", "dev", "--out", tmp_path / "bench", *options)
    assert_one_line_error(code, err, *words)
    assert list(tmp_path.iterdir()) == []


# --- fuzz: any value of any option is refused in one line or accepted -------------------------

FUZZ = dict(max_examples=120, deadline=None, derandomize=True, database=None,
            suppress_health_check=list(HealthCheck))
"""Bounded and reproducible: a fixed number of examples drawn from a fixed seed, no example
database, so every run of `make test` checks the same values in a few seconds."""

WILD = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**80, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.binary(max_size=4),
    st.lists(st.integers(), max_size=2), st.sampled_from(["dev", "cpu", "auto", "fp16", "~", "~nobody_x", "on"]),
    st.just(Path("/nonexistent")))


def _fields(cls) -> list[str]:
    from dataclasses import fields

    return [f.name for f in fields(cls)]


def _outcome(build) -> None:
    """Only success or a one-line DeepSoundError may come out of ``build()``."""
    from deepsound_rt.errors import DeepSoundError

    try:
        build()
    except DeepSoundError as exc:
        assert str(exc) and "\n" not in str(exc), str(exc)


@given(data=st.data())
@settings(**FUZZ)
def test_fuzz_engine_config_and_run_options(data):
    from deepsound_rt.options import EngineConfig, RunOptions, with_overrides

    for cls in (EngineConfig, RunOptions):
        names = data.draw(st.lists(st.sampled_from(_fields(cls) + ["temperature"]), max_size=4, unique=True))
        values = {name: data.draw(WILD, label=name) for name in names}
        _outcome(lambda: with_overrides(cls(), values))
        _outcome(lambda: cls(**{k: v for k, v in values.items() if k != "temperature"}))


def _cli_options(command: str) -> list[tuple[str, bool]]:
    """(flag, takes a value) for every option of ``command``, read from the parser itself."""
    from deepsound_rt.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.choices)
    return [(action.option_strings[-1], action.nargs != 0) for action in subparsers.choices[command]._actions
            if action.option_strings and action.dest not in ("help", "output", "out")]


CLI_VALUES = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10),
    st.sampled_from(["dev", "small_16k", "cpu", "cuda:0", "fp32", "gen", "s3", "vad", "off", "onnxruntime", "0.5",
                     "detector", "1e-300", "1e308", "-0", "~nobody_x/x"]))


@pytest.mark.parametrize("command", ["run", "export"])
def test_fuzz_command_line_options(command, clip, tmp_path_factory, capsys):
    """Random values for every option of run and export, parsed and checked up to the point where
    models would load (run) or the export would start writing (export)."""
    from unittest import mock

    from deepsound_rt import cli

    out = tmp_path_factory.mktemp("fuzz")
    options = _cli_options(command)
    head = (["run", str(clip), "-o", str(out / "x.wav")] if command == "run" else
            ["export", "--out", str(out / "exp"), "--preset", "dev"])

    @given(picked=st.lists(st.tuples(st.sampled_from(options), CLI_VALUES), max_size=5))
    @settings(**FUZZ)
    def check(picked):
        argv = head + [flag if not takes_value else f"{flag}={value}" for (flag, takes_value), value in picked]
        with mock.patch.object(cli, "_load_engine", side_effect=EngineLoadReached), \
                mock.patch.object(exporter, "_staged_export", side_effect=EngineLoadReached):
            try:
                code = main(argv)
            except EngineLoadReached:
                code = 0
        err = capsys.readouterr().err
        if code:
            assert_one_line_error(code, err)
        assert list(out.iterdir()) == [], argv  # nothing written either way

    check()


# --- exports: every recorded hash checked, messages that do not mislead ------------------------


@pytest.fixture
def damaged(dev_export, tmp_path) -> Path:
    """A copy of the session's dev export to damage."""
    import shutil

    return Path(shutil.copytree(dev_export, tmp_path / "copy"))


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    change(manifest)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def flip_and_rehash(folder: Path, file_name: str) -> None:
    """Tamper with a graph's weights and update the manifest's hash to match, as an attacker would."""
    path = folder / file_name
    raw = bytearray(path.read_bytes())
    for index in range(len(raw) // 4, len(raw) // 2, 97):
        raw[index] ^= 0x40
    path.write_bytes(bytes(raw))
    graph = file_name.split(".")[0]
    edit_manifest(folder, lambda m: m["graphs"][graph]["files"].__setitem__(file_name, hashlib.sha256(raw).hexdigest()))


def open_export(folder: Path):
    """An fp32 dev Engine on ONNX Runtime over ``folder``: where every check at load runs."""
    from deepsound_rt.engine import Engine, EngineConfig

    return Engine(EngineConfig(preset="dev", num_steps=2, backend="onnxruntime", export=folder))


def test_the_recorded_weights_sha256_is_checked_at_load(damaged):
    """Only the exact hash differs (the structure and norms still match, as for slightly other
    weights): once never read outside `verify --export`, now refused where the modules are fp32."""
    edit_manifest(damaged, lambda m: m["graphs"]["vae_decode"]["weights"].__setitem__("sha256", "0" * 64))
    with pytest.raises(ExportError, match="other weights than those loaded \\(graph vae_decode\\)"):
        open_export(damaged)


def test_the_detector_graph_is_checked_even_when_nothing_runs_it(damaged):
    (damaged / "detector.onnx").write_bytes(b"\x00" * 64)
    with pytest.raises(ExportError, match="detector.onnx does not match its manifest hash"):
        open_export(damaged)


def test_a_manifest_whose_shapes_disagree_with_its_graph_is_refused(damaged):
    edit_manifest(damaged, lambda m: m["graphs"]["clip_text"]["inputs"][0].__setitem__("shape", [2, 99]))
    with pytest.raises(ExportError, match="clip_text.onnx takes other inputs or outputs than the manifest says"):
        open_export(damaged)


@pytest.mark.parametrize("edit", ["duration", "duration_and_lengths", "file_outside", "duration_nan"])
def test_a_manifest_that_contradicts_itself_is_refused_in_one_line(damaged, edit):
    """Once: `made for 4 s (latent 345); 4 s needs latent 173`. The duration, the recorded lengths
    and the flow graphs' own input shapes must agree, or the manifest is edited or corrupt."""
    from deepsound_rt.export.manifest import sequence_lengths_for

    def change(manifest):
        if edit.startswith("duration"):
            manifest["duration_s"] = float("nan") if edit == "duration_nan" else 4.0
        if edit == "duration_and_lengths":  # consistent with each other, not with the graphs' shapes
            manifest["sequence_lengths"] = sequence_lengths_for("dev", 4.0)
        if edit == "file_outside":
            manifest["graphs"]["vocoder"]["files"] = {"/etc/hostname": "0" * 64}

    edit_manifest(damaged, change)
    with pytest.raises(ExportError) as raised:
        ExportManifest.load(damaged)
    message = str(raised.value)
    assert "\n" not in message and str(damaged) in message
    assert ("outside its folder" if edit == "file_outside" else "finite" if edit == "duration_nan" else
            "contradicts itself") in message


def test_a_consistent_rehash_is_caught_by_verify_not_by_the_manifest(damaged):
    """What the manifest does not protect against, stated as a test: weights flipped and the
    manifest's hash updated pass every check at load (they are self-consistent), and the parity
    run of `deepsound-rt verify --export` (each graph against its torch module) fails them."""
    from deepsound_rt.verify.export_parity import verify_export

    flip_and_rehash(damaged, "vae_decode.onnx.data")
    open_export(damaged)  # loads: the manifest catches corruption, not a deliberate re-hash
    [report] = verify_export(damaged, graphs=["vae_decode"])
    assert not report.passed, report


def test_a_clip_shorter_than_the_export_is_not_offered_an_impossible_duration(dev_export, tmp_path, capsys):
    """A 2 s video on an 8 s export: once told 'or generate 8 s'; now told what is possible."""
    from deepsound_rt.io.sample import make_test_video

    video = make_test_video(tmp_path / "short.mp4", 2.0, 25, (64, 48))
    code, _, err = run_cli(capsys, "run", video, "-o", tmp_path / "x.wav", "--preset", "dev", "--mode", "gen",
                           "--steps", "1", "--backend", "onnxruntime", "--export", dev_export)
    line = assert_one_line_error(code, err, "made for 8 s", "--duration 2", "the video is 2.00 s")
    assert "generate 8" not in line
    assert sorted(os.listdir(tmp_path)) == ["short.mp4"]


def test_the_export_length_message_offers_what_the_video_allows():
    from deepsound_rt.export.manifest import sequence_lengths_for

    manifest = ExportManifest("dev", 8.0, sequence_lengths_for("dev", 8.0), "fp32", 18, {}, {})
    for video_s, offered in [(None, "or generate 8 s (`--duration 8`)"), (20.0, "or generate 8 s (`--duration 8`)"),
                             (5.0, "the video is 5.00 s, too short")]:
        with pytest.raises(ExportError) as raised:
            manifest.check_compatible("dev", 5.0 if video_s != 20.0 else 10.0, video_s=video_s)
        assert offered in str(raised.value)


# --- runs: wasted work, silent truncation, silent options, progress, threads -------------------


@pytest.fixture(scope="module")
def engine():
    from deepsound_rt.engine import Engine, EngineConfig

    return Engine(EngineConfig(preset="dev", num_steps=2))


def test_non_finite_audio_is_blamed_on_the_dtype_that_ran():
    """An fp32 run once heard 'fp16 can overflow: try --dtype bf16 or fp32' (the Engine checks its
    vocoder's output with this before returning it)."""
    import torch

    from deepsound_rt.errors import DeepSoundError
    from deepsound_rt.stages.decode import check_finite

    check_finite(torch.zeros(8), torch.float32)
    for dtype, words in [(torch.float32, "float32"), (torch.bfloat16, "bfloat16"), (torch.float16, "--dtype bf16")]:
        waveform = torch.tensor([0.0, float("nan") if dtype != torch.bfloat16 else float("inf")])
        with pytest.raises(DeepSoundError) as raised:
            check_finite(waveform, dtype)
        assert words in str(raised.value) and ("try --dtype" in str(raised.value)) == (dtype == torch.float16)


def test_a_prompt_longer_than_clip_reads_is_reported_once(engine, caplog):
    """10,000 characters were once cut to CLIP's 75 tokens without a word (generate tokenizes
    through ``models.tokenize``)."""
    long_prompt = "waves crashing on rocks " * 400 + "and a dog barking"
    with caplog.at_level("WARNING"):
        engine.models.tokenize([long_prompt, ""])
        engine.models.tokenize([long_prompt, ""])  # the same text is not reported again
        engine.models.tokenize(["雨 ☔ on a tin roof, ünïcödé " * 4, "x " * 75])  # 75 tokens fit: no warning
    cut = [r.getMessage() for r in caplog.records if "cut to CLIP's 75" in r.getMessage()]
    assert len(cut) == 1 and "1604 tokens" in cut[0] and "waves crashing" in cut[0] and "\n" not in cut[0]


def test_options_a_random_preset_never_reads_are_reported_in_one_line(clip, tmp_path, capsys, caplog,
                                                                       stop_before_loading):
    """--weights and --separator with --preset dev (tiny random networks) were ignored silently:
    the CLI reports what the run never reads before loading, the Engine what it never loads."""
    from deepsound_rt.engine import Engine, EngineConfig

    weights, separator = tmp_path / "w", tmp_path / "sep.ckpt"
    weights.mkdir()
    with caplog.at_level("WARNING"), pytest.raises(EngineLoadReached):
        main(["run", str(clip), "-o", str(tmp_path / "out.wav"), "--preset", "dev", "--mode", "gen",
              "--judge", "qa", "--postprocess", "rm"])
    with caplog.at_level("WARNING"):
        Engine(EngineConfig(preset="dev", weights=weights, separator=separator, verify_checksums=False))
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ignored:")]
    assert warnings == ["ignored: judge=qa, postprocess=rm: mode gen stops before that step",
                        "ignored: weights, separator, verify_checksums=False: weights source tiny-random "
                        "builds random networks and reads no weight file"]


def test_plain_progress_when_stderr_is_not_a_terminal():
    """100,000 Euler steps once ran with nothing shown in a log; now a line at most every 5 s."""
    import io

    from rich.console import Console

    from deepsound_rt.console import PLAIN_PROGRESS_INTERVAL_S, ConsoleProgress
    from deepsound_rt.events import ProgressEvent

    stream, now = io.StringIO(), [0.0]
    with ConsoleProgress(Console(file=stream, force_terminal=False), clock=lambda: now[0]) as progress:
        for step in range(1, 1001):
            now[0] = step * 0.1  # 100 s of steps, 10 per second
            progress(ProgressEvent("sampling", step, 1000))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 100 // PLAIN_PROGRESS_INTERVAL_S
    assert lines[0] == "progress: sampling 50/1000 (5 s)" and lines[-1].startswith("progress: sampling 1000/1000")


def test_two_threads_with_two_durations_on_one_engine_get_what_each_would_get_alone(engine, clip, monkeypatch):
    """The flow network's position tables are per duration: two threads once raised 'clip_f has 8
    tokens, the network is set up for 16'. A pause after the tables are set lets the other thread in
    wherever nothing keeps it out; each thread's audio must be bit-identical to the same call alone."""
    import threading
    import time

    import numpy as np

    jobs = [(0.64, 1), (0.8, 2)]
    alone = [engine.generate(clip, duration=d, seed=s).waveform for d, s in jobs]
    set_lengths = engine.models.set_sequence_lengths

    def set_then_pause(*lengths):
        set_lengths(*lengths)
        time.sleep(0.3)

    monkeypatch.setattr(engine.models, "set_sequence_lengths", set_then_pause)
    together, errors = [None] * len(jobs), []

    def work(index):
        try:
            together[index] = engine.generate(clip, duration=jobs[index][0], seed=jobs[index][1]).waveform
        except Exception as exc:  # reported below, with the others' results
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for expected, got in zip(alone, together):
        np.testing.assert_array_equal(got, expected)
