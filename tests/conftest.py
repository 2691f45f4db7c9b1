"""Shared test fixtures: where the reference goldens and manifests live.

Without the reference data the golden and manifest tests skip, so a checkout without
``../shared`` still tests everything else. Under CI (``CI`` set) a missing or empty reference
fails them instead, naming where it was looked for: CI must never pass by skipping them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def reference_candidates() -> list[Path]:
    """``$DEEPSOUND_REFERENCE`` when set, else ``../shared/reference`` beside the checkout."""
    if os.environ.get("DEEPSOUND_REFERENCE"):
        return [Path(os.environ["DEEPSOUND_REFERENCE"])]
    return [REPO.parent / "shared" / "reference"]


def reference_root() -> Path | None:
    """The first candidate whose ``goldens/`` and ``manifests/`` both hold JSON files."""
    for candidate in reference_candidates():
        if all(any(Path(candidate, sub).glob("*.json")) for sub in ("goldens", "manifests")):
            return candidate
    return None


def missing_reference(what: str) -> None:
    """Skip the calling test, or fail it under CI, because reference data ``what`` is missing."""
    where = ", ".join(str(path) for path in reference_candidates())
    message = f"reference data missing: {what} (looked in {where}; set DEEPSOUND_REFERENCE)"
    if under_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _reference_subdir(name: str) -> Path:
    root = reference_root()
    if root is None:
        missing_reference(f"no {name}")
    return root / name


@pytest.fixture(scope="session")
def goldens_dir() -> Path:
    return _reference_subdir("goldens")


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    return _reference_subdir("manifests")


@pytest.fixture(scope="session")
def goldens_by_kind(goldens_dir: Path) -> dict[str, list[Path]]:
    """kind -> golden JSON paths: tests pick goldens by kind, never by file name."""
    found: dict[str, list[Path]] = {}
    for path in sorted(goldens_dir.glob("*.json")):
        found.setdefault(json.loads(path.read_text()).get("kind", ""), []).append(path)
    return found


@pytest.fixture(scope="session")
def dev_export(tmp_path_factory) -> Path:
    """`deepsound-rt export --preset dev`, as a user runs it, once per session (minutes on 2 cores);
    tests that damage it work on a copy."""
    from deepsound_rt.cli import main

    out = tmp_path_factory.mktemp("exports") / "dev"
    assert main(["export", "--preset", "dev", "--out", str(out), "--no-verify"]) == 0
    return out
