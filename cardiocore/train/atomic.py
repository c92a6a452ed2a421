"""Atomic file writes: a reader sees either the old file or the complete new one, never a part."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

NEW_FILE_MODE = 0o644
"""Permissions of a new file (a replaced file keeps its own): readable by others, like ``open``
under the usual umask, not the 0600 of a temporary file."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary stream whose bytes replace ``path`` only if the ``with`` block succeeds.

    The bytes go to a temporary file in the same folder (so the final rename stays on one file
    system), are flushed and fsync'ed, then ``os.replace`` swaps the file in and the folder is
    fsync'ed. An exception (or a crash) at any point leaves the previous ``path`` untouched and
    no temporary file behind (a crash may leave a hidden ``.<name>.*.tmp``, never ``path``).
    The file gets the permissions of the file it replaces, else :data:`NEW_FILE_MODE`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else NEW_FILE_MODE
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp_name, mode)
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    """Make a rename durable on POSIX; a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (JSON has no NaN or infinity) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Write ``value`` as indented JSON atomically; NaN and infinities become null, numpy and
    torch scalars plain numbers."""
    text = json.dumps(finite_or_none(value), indent=2, default=float, allow_nan=False)
    with atomic_write(path) as stream:
        stream.write((text + "\n").encode("utf-8"))
    return Path(path)

