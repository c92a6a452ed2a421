"""Error types for bad input.

Every user-facing error names the input (a file path, a node name, an argument) and says what
is wrong with it and, where possible, what to do. Raising one of these must leave nothing
created or overwritten.
"""

from __future__ import annotations


class CardioInputError(ValueError):
    """Bad user input: a file, node, array or argument that cannot be used as given."""

    def __init__(self, what: str, problem: str, hint: str | None = None) -> None:
        self.what = what
        self.problem = problem
        self.hint = hint
        message = f"{what}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class MeshError(CardioInputError):
    """A mesh that is empty, non-triangular, has NaN coordinates or out-of-range faces."""


class VolumeError(CardioInputError):
    """A volume with zero spacing, a singular direction matrix or an unusable array."""


class WeightsError(CardioInputError):
    """Model weights that are missing, corrupt or from an incompatible version."""
