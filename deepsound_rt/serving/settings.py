"""What a server is configured with, and the one place that turns it into Engines and run options."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..engine import Engine
from ..options import EngineConfig, RunOptions

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """A server's configuration; plain data, so it travels to Ray replicas as it is.

    ``devices``: one runner, with its own loaded Engine, per entry (a device may repeat: two CPU
    runners). ``exclusive``: this server alone uses ``data_dir`` (a single box); Ray replicas
    share it and find dead workers by their expired leases only.
    """

    engine: EngineConfig
    data_dir: Path
    devices: tuple[str, ...] = ("cpu",)
    token: str | None = None
    max_upload_bytes: int = 512 * MIB
    max_clip_seconds: float = 60.0
    queue_size: int = 32
    lease_seconds: float = 30.0
    exclusive: bool = True


def load_engine(config: EngineConfig, device: str) -> Engine:
    """The Engine of one runner: the server's engine options on that runner's device."""
    return Engine(replace(config, device=device))


def run_options(fields: dict) -> dict:
    """A job's run options from its form fields, validated as the CLI's are (``DeepSoundError``),
    as plain data for the job store."""
    return asdict(RunOptions(**fields))


def expand_devices(spec: str) -> tuple[str, ...]:
    """``auto``: one runner per CUDA GPU, else one on the CPU; otherwise a comma-separated list."""
    if spec == "auto":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return tuple(f"cuda:{index}" for index in range(count)) or ("cpu",)
    return tuple(part.strip() for part in spec.split(",") if part.strip())
