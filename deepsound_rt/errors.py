"""Errors the SDK raises for problems the user can fix (bad input, missing weights).

The CLI turns every :class:`DeepSoundError` into a one-line message and exit code 2;
anything else is a bug and keeps its traceback.
"""


class DeepSoundError(Exception):
    """A problem with the user's input, weights or environment, explained in one line."""


class InputError(DeepSoundError):
    """The input video is missing, unreadable or unusable."""


class OutputError(DeepSoundError):
    """The output cannot be written where the user asked."""


class WeightsError(DeepSoundError):
    """A weights directory or checkpoint file is missing, incomplete or does not match the model."""
