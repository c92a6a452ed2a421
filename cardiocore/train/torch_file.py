"""Reading files written with ``torch.save`` safely, with errors a user can act on."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from cardiocore.errors import WeightsError

DAMAGED_HINT = "the file may be truncated or damaged: copy it again"


def load_tensors(path: Path, what: str, map_location: str | torch.device = "cpu",
                 damaged_hint: str = DAMAGED_HINT) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, never code from the file.

    Args:
        path: an existing file (the caller reports a missing one in its own words).
        what: the kind of file, for messages (e.g. "CardioGen model").
        damaged_hint: what to do with a truncated or damaged file.

    Raises:
        WeightsError: a file that is not a PyTorch file of tensors and plain data (torch's own
            message then suggests ``weights_only=False``, i.e. running the file's code, and is
            not passed on), or a damaged one (the first line of torch's message).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(str(path), f"cannot be read as a {what}: it is not a PyTorch file of tensors and plain "
                                      "data (another kind of file, or one holding code objects, which are never "
                                      "loaded)", "check the path") from error
    except Exception as error:  # torch raises several types for damaged files (truncated zip, EOF, ...)
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        reason = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
        raise WeightsError(str(path), f"cannot be read as a {what} ({reason})", damaged_hint) from error
