"""The inputs of a batch: video files, folders of videos, and lists (CSV or JSONL) whose rows name a
video and, optionally, its output and its own run options.

A list's rows are read as they are written: a CSV's values are strings, a JSONL row's keep their
JSON types; checking and converting the options is the caller's (``RunOptions``). Paths in a list
are relative to the list's folder. A list that cannot be read at all is an :class:`InputError`;
a row that names no video becomes an item that fails alone.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from deepsound_rt.errors import InputError

LIST_SUFFIXES = (".csv", ".jsonl")
VIDEO_FILE_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
"""What a folder's files must end with to be taken as videos (other files in it are left alone)."""
VIDEO_COLUMN, OUTPUT_COLUMN = "video", "output"


@dataclass(frozen=True)
class BatchItem:
    """One video of a batch: its own run options (unchecked overrides), the output name its list
    gave (relative to the output folder), where it came from, and why it cannot run (a bad row)."""

    video: Path
    options: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None
    source: str = ""
    error: str | None = None


def expand_inputs(inputs: Iterable[Any]) -> list[BatchItem]:
    """Each input as items, in order: a :class:`BatchItem` as it is; a ``(video, options)`` pair; a
    folder as its video files (sorted, not recursive); a ``.csv``/``.jsonl`` file as its rows;
    anything else as a video path (a missing one fails alone when it runs)."""
    items: list[BatchItem] = []
    for entry in inputs:
        if isinstance(entry, BatchItem):
            items.append(entry)
        elif isinstance(entry, tuple):
            video, options = entry
            items.append(BatchItem(Path(video), dict(options)))
        else:
            path = Path(entry).expanduser()
            if path.is_dir():
                items.extend(BatchItem(video) for video in sorted(path.iterdir())
                             if video.is_file() and video.suffix.lower() in VIDEO_FILE_SUFFIXES)
            elif path.suffix.lower() in LIST_SUFFIXES:
                items.extend(read_list(path))
            else:
                items.append(BatchItem(path))
    return items


def read_list(path: Path) -> list[BatchItem]:
    """The rows of a CSV (a header row, then one row per video) or JSONL (one object per line)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the list ({getattr(error, 'strerror', None) or error})") from None
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _jsonl_rows(path, text)
    return [_item(path, line, row) for line, row in rows]


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or VIDEO_COLUMN not in [name.strip() for name in reader.fieldnames]:
        raise InputError(f"{path}: a CSV list needs a header row with a '{VIDEO_COLUMN}' column")
    for row in reader:
        if reader.restkey in row:
            raise InputError(f"{path} line {reader.line_num}: more values than the header has columns")
        values = {name.strip(): (value or "").strip() for name, value in row.items()}
        if any(values.values()):  # blank lines are no videos
            yield reader.line_num, {name: value for name, value in values.items() if value != ""}


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            row = json.loads(content)
        except json.JSONDecodeError as error:
            raise InputError(f"{path} line {line}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path} line {line}: each line must be a JSON object")
        yield line, row


def _item(path: Path, line: int, row: dict[str, Any]) -> BatchItem:
    source = f"{path.name} line {line}"
    row = dict(row)
    video, output = row.pop(VIDEO_COLUMN, None), row.pop(OUTPUT_COLUMN, None)
    if not isinstance(video, str) or not video:
        return BatchItem(path, source=source, error=f"{source}: no '{VIDEO_COLUMN}' given")
    if output is not None and not isinstance(output, str):
        return BatchItem(path.parent / video, source=source, error=f"{source}: '{OUTPUT_COLUMN}' must be a file name")
    return BatchItem(path.parent / Path(video).expanduser(), row, Path(output) if output else None, source)


class ResultLog:
    """A batch's results as JSON lines, appended and flushed to disk one by one as files finish,
    so a crash or kill loses nothing already done; a rerun appends to the same log."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, entry: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(entry, ensure_ascii=False) + "\n")
            log.flush()
            os.fsync(log.fileno())
