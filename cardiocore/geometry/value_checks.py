"""Switch for the checks of geometric inputs that read their values (finite coordinates, face
indices in range, no faces repeating a vertex, a surface with area).

Shape and dtype checks always run. The value checks read a result back from the tensor's device,
so on a GPU each one waits for every queued kernel: inside an optimisation loop whose meshes were
checked once before it, they turn a stream of asynchronous steps into a series of stalls.
:func:`values_trusted` skips them for the code it wraps (in this thread or task only); that code
then answers for its own inputs (e.g. by checking that its loss stays finite).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_CHECK_VALUES: contextvars.ContextVar[bool] = contextvars.ContextVar("cardiocore_check_values", default=True)


def values_checked() -> bool:
    """True unless inside :func:`values_trusted`."""
    return _CHECK_VALUES.get()


@contextlib.contextmanager
def values_trusted() -> Iterator[None]:
    """Skip the value checks of mesh and point inputs inside the ``with`` block."""
    token = _CHECK_VALUES.set(False)
    try:
        yield
    finally:
        _CHECK_VALUES.reset(token)
