"""Many videos in one command: inputs expanded from files, folders and lists, and `deepsound-rt run`
over a batch that meets a bad file and the leftovers of a killed run (dev preset)."""
from __future__ import annotations

import json

import pytest
import soundfile
from PIL import Image

from deepsound_rt.cli import BATCH_LOG_NAME, main
from deepsound_rt.errors import DeepSoundError, InputError
from deepsound_rt.io.batch import BatchItem, expand_inputs
from deepsound_rt.io.sample import make_test_video
from deepsound_rt.options import RunOptions, with_row


def test_inputs_expand_from_files_folders_and_lists(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("b.mp4", "a.MOV", "notes.txt"):
        (folder / name).write_bytes(b"")
    (tmp_path / "list.csv").write_text("video,prompt,seed,output\nclips/b.mp4,rain,7,rain.wav\n\n,wind,,\n")
    (tmp_path / "list.jsonl").write_text('{"video": "x.mp4", "duration": 2.5}\n\n{"video": "y.mp4"}\n')
    items = expand_inputs([folder, tmp_path / "list.csv", tmp_path / "list.jsonl", tmp_path / "z.mkv"])
    assert [item.video for item in items] == [folder / "a.MOV", folder / "b.mp4", folder / "b.mp4", tmp_path / "list.csv",
                                              tmp_path / "x.mp4", tmp_path / "y.mp4", tmp_path / "z.mkv"]
    assert items[2].options == {"prompt": "rain", "seed": "7"} and str(items[2].output) == "rain.wav"
    assert items[3].error == "list.csv line 4: no 'video' given"
    assert items[4].options == {"duration": 2.5}
    assert with_row(RunOptions(), items[2].options) == RunOptions(prompt="rain", seed=7)
    with pytest.raises(DeepSoundError, match="seed must be a number"):
        with_row(RunOptions(), {"seed": "seven"})
    (tmp_path / "bad.csv").write_text("clip,prompt\nx.mp4,rain\n")
    with pytest.raises(InputError, match="'video' column"):
        expand_inputs([tmp_path / "bad.csv"])
    assert expand_inputs([BatchItem(tmp_path / "v.mp4")]) == [BatchItem(tmp_path / "v.mp4")]


def test_a_batch_survives_a_bad_file_and_resumes_after_a_kill(tmp_path, capsys):
    """The state a killed run leaves (one output written and logged, a temporary file of the next)
    is resumed: the done video is skipped, the bad one fails alone with its message, the rest run
    with their rows' options, and the log gains a line each; exit 1 because one failed."""
    make_test_video(tmp_path / "done.mp4", 1.0, 25, (32, 24))
    make_test_video(tmp_path / "next.mp4", 1.0, 25, (32, 24))
    (tmp_path / "bad.mp4").write_bytes(b"this is not a video")
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(row) for row in [
        {"video": "done.mp4"}, {"video": "bad.mp4"},
        {"video": "next.mp4", "prompt": "rain", "seed": 3, "mode": "s4", "judge": "vad", "output": "rain.wav"}]))
    out = tmp_path / "out"
    out.mkdir()
    done_bytes = (tmp_path / "done.mp4").read_bytes()
    (out / "done.mp4").write_bytes(done_bytes)  # written (by rename) before the kill
    (out / ".rain.tmp-0badf00d.wav").write_bytes(b"half")  # being written when it was killed
    log = out / BATCH_LOG_NAME
    log.write_text(json.dumps({"input": str(tmp_path / "done.mp4"), "status": "ok"}) + "\n")

    code = main(["run", str(tmp_path / "list.jsonl"), "-o", str(out), "--preset", "dev", "--num-steps", "1",
                 "--mode", "gen", "--plot"])
    assert code == 1
    assert (out / "done.mp4").read_bytes() == done_bytes
    assert soundfile.info(out / "rain.wav").frames == 44100  # the whole 1 s video
    assert Image.open(out / "rain.png").size == (1000, 720)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry["status"] for entry in entries] == ["ok", "skipped", "failed", "ok"]
    assert entries[2]["input"].endswith("bad.mp4") and "bad.mp4" in entries[2]["error"]
    assert entries[3]["output"] == str(out / "rain.wav") and entries[3]["error"] is None
    assert entries[3]["steps"][:2] == ["plan", "generate"] and entries[3]["decisions"]["judge"] in ("voice-over",
                                                                                                    "no voice-over")
    assert entries[3]["seconds"] > 0
    printed = capsys.readouterr()
    assert "bad.mp4" in printed.err and "skipped" in printed.out and "failed" in printed.out
