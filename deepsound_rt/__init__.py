"""deepsound_rt: inference runtime for step-by-step video-to-audio generation (DeepSound-V1 style)."""
from .errors import DeepSoundError, InputError, OutputError, WeightsError

__all__ = ["Engine", "EngineConfig", "GenerationResult", "DeepSoundError", "InputError", "OutputError",
           "WeightsError"]


def __getattr__(name: str):
    # The Engine pulls in torch and every model; import it only when asked for.
    if name in ("Engine", "EngineConfig", "GenerationResult"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'deepsound_rt' has no attribute {name!r}")
