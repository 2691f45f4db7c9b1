"""deepsound_rt: inference runtime for step-by-step video-to-audio generation (DeepSound-V1 style)."""
from .errors import DeepSoundError, InputError, OutputError, WeightsError

__all__ = ["Engine", "EngineConfig", "RunOptions", "WeightsSource", "GenerationResult", "DeepSoundResult",
           "DeepSoundError", "InputError", "OutputError", "WeightsError"]
_LAZY = {"Engine": "engine", "EngineConfig": "options", "RunOptions": "options", "WeightsSource": "options",
         "GenerationResult": "results", "DeepSoundResult": "results"}


def __getattr__(name: str):
    # The Engine pulls in torch and every model; import it only when asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'deepsound_rt' has no attribute {name!r}")
