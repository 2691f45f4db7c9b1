"""Shared test fixtures: where the reference goldens and manifests live."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def reference_root() -> Path | None:
    """``$DEEPSOUND_REFERENCE`` or ``../shared/reference`` beside the checkout, if present."""
    candidates = [os.environ.get("DEEPSOUND_REFERENCE"), REPO.parent / "shared" / "reference"]
    for candidate in candidates:
        if candidate and Path(candidate, "goldens").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def goldens_dir() -> Path:
    root = reference_root()
    if root is None:
        pytest.skip("reference goldens not found (set DEEPSOUND_REFERENCE)")
    return root / "goldens"


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    root = reference_root()
    if root is None:
        pytest.skip("reference manifests not found (set DEEPSOUND_REFERENCE)")
    return root / "manifests"


@pytest.fixture(scope="session")
def goldens_by_kind(goldens_dir: Path) -> dict[str, list[Path]]:
    """kind -> golden JSON paths: tests pick goldens by kind, never by file name."""
    found: dict[str, list[Path]] = {}
    for path in sorted(goldens_dir.glob("*.json")):
        found.setdefault(json.loads(path.read_text()).get("kind", ""), []).append(path)
    return found
