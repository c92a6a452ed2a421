"""Counting what a GPU would pay for, on any device: the aten operations a piece of code
dispatches (each a kernel launch on a GPU, but for views) and those that make the host wait for
the device (reading a value back, ``nonzero``, ``unique``, boolean-mask indexing: their results
depend on the data; a tensor made from host data, which must be copied there).

On the CPU these dispatch the same aten operations as on a GPU, so a loop meant to run on a GPU
can be checked for waits, and its launches counted, without one (sizes that depend on the
device, such as chunk lengths, must be set to the GPU's for the count to be the GPU's).
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

WAITING = frozenset({
    "aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
    "aten._unique2.default", "aten.unique_consecutive.default", "aten.unique_dim.default",
    "aten.repeat_interleave.Tensor", "aten.lift_fresh.default",
})
"""Operations whose result the host must wait for (``.item()``, ``bool()``, ``int()`` of a tensor
dispatch ``_local_scalar_dense``), and ``lift_fresh``: a tensor made from host data
(``torch.tensor`` of a list), which a GPU loop must copy to the device, and a blocking copy to a
GPU first waits for the work queued before it."""

VIEWS = frozenset({
    "aten.view.default", "aten._unsafe_view.default", "aten.unsqueeze.default", "aten.squeeze.dim",
    "aten.select.int", "aten.slice.Tensor", "aten.detach.default", "aten.permute.default",
    "aten.expand.default", "aten.t.default", "aten.transpose.int", "aten.unbind.int", "aten.split.Tensor",
    "aten.split_with_sizes.default", "aten.alias.default", "aten.reshape.default",
})
"""Operations that launch no kernel (they cost host time only)."""

_MACHINERY = ("torch/utils/_python_dispatch.py", "torch/_ops.py", "torch/_tensor.py", "torch/functional.py",
              "torch/overrides.py", "torch/_dynamo/eval_frame.py", "torch/_compile.py")


class DispatchCounter(TorchDispatchMode):
    """``with DispatchCounter() as counter:`` counts ``counter.dispatches``, ``counter.launches``
    (dispatches that are not views) and records ``counter.waits``: each waiting operation called
    directly from the package named ``package`` (torch's own, e.g. an optimiser reading its
    step count on the host, are not the caller's), as ``"op in function:line"``.
    ``counter.by_op`` counts the launches per operation."""

    def __init__(self, package: str = "cardiocore") -> None:
        super().__init__()
        self.package = package
        self.dispatches = 0
        self.launches = 0
        self.by_op: Counter[str] = Counter()
        self.waits: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = str(func)
        self.dispatches += 1
        if name not in VIEWS:
            self.launches += 1
            self.by_op[name] += 1
        masked = name.startswith(("aten.index.", "aten.index_put")) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if name in WAITING or masked:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.endswith(_MACHINERY):
                frame = frame.f_back
            if frame is not None and f"/{self.package}/" in frame.f_code.co_filename:
                self.waits.append(f"{name} in {frame.f_code.co_name}:{frame.f_lineno}")
        return func(*args, **(kwargs or {}))
