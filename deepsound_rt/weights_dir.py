"""Which weights load (official files or seeded random networks), where official checkpoint files live
in a user's weights directory, and whether they are intact."""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsError

DEV_SEED = 20250328
"""Seed of every random network (tiny or full size): the same weights on every machine and run."""


class WeightsSource(str, enum.Enum):
    """Where every network's weights come from, decided once (``EngineConfig.weights_source``)."""

    OFFICIAL = "official"  # the official checkpoint files
    TINY_RANDOM = "tiny-random"  # seeded random networks; the MLLM and separator at toy widths (dev)
    FULL_RANDOM = "full-random"  # seeded random networks at full size: latency and export checks

    @property
    def random(self) -> bool:
        return self is not WeightsSource.OFFICIAL


# Sub-folders the upstream projects use; a flat directory works too.
SEARCH_SUBDIRS = ("", "weights", "ext_weights", "bigvgan_v2_44khz_128band_512x", "DFN5B-CLIP-ViT-H-14-384")

# MD5 of the official files as MMAudio's downloader lists them (mmaudio/utils/download_utils.py).
OFFICIAL_MD5 = {
    "mmaudio_small_16k.pth": "af93cde404179f58e3919ac085b8033b",
    "mmaudio_small_44k.pth": "babd74c884783d13701ea2820a5f5b6d",
    "mmaudio_medium_44k.pth": "5a56b6665e45a1e65ada534defa903d0",
    "mmaudio_large_44k.pth": "fed96c325a6785b85ce75ae1aafd2673",
    "mmaudio_large_44k_v2.pth": "01ad4464f049b2d7efdaa4c1a59b8dfe",
    "v1-16.pth": "69f56803f59a549a1a507c93859fd4d7",
    "best_netG.pt": "eeaf372a38a9c31c362120aba2dde292",
    "v1-44.pth": "fab020275fa44c6589820ce025191600",
    "synchformer_state_dict.pth": "5b2f5594b0730f70e41e549b7c94390c",
}


@dataclass(frozen=True)
class WeightFile:
    """One checkpoint a preset needs: a role, the accepted file names (first preferred), what it is."""

    role: str
    names: tuple[str, ...]
    description: str


def find_weight_file(weights_dir: Path, spec: WeightFile) -> Path:
    """The first of ``spec.names`` found in ``weights_dir`` or its usual sub-folders."""
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        raise WeightsError(f"weights directory not found: {weights_dir}")
    for name in spec.names:
        for sub in SEARCH_SUBDIRS:
            candidate = weights_dir / sub / name
            if candidate.is_file():
                return candidate
    raise WeightsError(
        f"weights directory {weights_dir} lacks {' or '.join(spec.names)} ({spec.description})"
    )


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read once in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def check_official_checksum(path: Path) -> None:
    """Refuse a file that carries an official name but not the official content."""
    expected = OFFICIAL_MD5.get(path.name)
    if expected is not None and file_digest(path, "md5") != expected:
        raise WeightsError(f"{path} is not the official {path.name} (MD5 mismatch): re-download it")
