"""Chamfer benchmarks: ours against the plain dense ``torch.cdist`` and SciPy's ``cKDTree``.

Every figure is measured in the same run on the same inputs (uniform points in a 100 mm cube,
float32). Each row is a dict with:

- ``benchmark``, ``method``, ``device``, ``size`` (problem size in words);
- ``median_s``: median wall time of ``repeats`` runs after one warm-up (CUDA synchronised);
- ``target_s``: the project's target for this figure on the GPU (None where none is stated,
  e.g. on CPU); printed beside the figure, never instead of it;
- ``ratio``: this row's ``median_s`` divided by the ``median_s`` of our default method on the
  same problem (ours = 1.0; a peer with ratio 40 is 40 times slower than ours);
- ``peak_mb``: extra memory at the peak of one run, MiB: on CUDA ``torch.cuda.max_memory_allocated``
  above the starting allocation; on CPU the rise of the process's peak resident set size
  (Linux ``/proc/self/status`` VmHWM, reset before the run; None elsewhere), which also sees
  NumPy's and SciPy's allocations;
- ``note``: anything needed to read the row honestly (e.g. extrapolated figures).

Measuring CPU memory through the resident set size fixes glibc's mmap threshold at 128 KiB for the
rest of the process, so freed large blocks go back to the system and each run starts from a
resident size that reflects what is really in use.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from cardiocore.metrics.distance import chamfer_distance, pairwise_chamfer

Row = dict[str, Any]

CHAMFER_TARGET_S = {"cuda": 0.0005}
"""Target for one 10,000 x 10,000-point Chamfer distance (H100); none is stated for CPU."""

PAIRWISE_TARGET_S = {"cuda": 1.0}
"""Target for the 500 x 500 Chamfer matrix of 2,048-point shapes (H100); none for CPU."""

CPU_PAIRWISE_SHAPES = 12
"""Shapes per set actually measured for the pairwise matrix on CPU; the full size is extrapolated."""

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    """One memory field of ``/proc/self/status`` (VmRSS, VmHWM), KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _cpu_peak_mb(fn: Callable[[], object]) -> float | None:
    """Rise of the resident set size's high-water mark during one call, MiB.

    Linux only (None elsewhere): writing 5 to ``/proc/self/clear_refs`` resets the high-water
    mark ``VmHWM`` to the current resident size, so after the call ``VmHWM - VmRSS(before)`` is the
    peak extra memory, whoever allocated it (torch, NumPy or SciPy's C++).
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        baseline = _status_kib("VmRSS")
    except OSError:
        return None
    fn()
    return (_status_kib("VmHWM") - baseline) / 1024


def _peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Extra memory at the peak of one call, MiB (module docstring)."""
    if device.type != "cuda":
        return _cpu_peak_mb(fn)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - start) / 2**20


def _points(n: int, device: torch.device, seed: int, batch: Sequence[int] = ()) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (100.0 * torch.rand(*batch, n, 3, generator=gen)).to(device)


def _dense_chamfer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The plain alternative: the full distance matrix from ``torch.cdist``."""
    d = torch.cdist(a, b)
    return 0.5 * (d.min(dim=1).values.mean() + d.min(dim=0).values.mean())


def _kdtree_chamfer(a: torch.Tensor, b: torch.Tensor) -> float:
    """SciPy's KD-trees on host copies of the points (all cores)."""
    a_np, b_np = a.cpu().numpy(), b.cpu().numpy()
    d_ab = cKDTree(b_np).query(a_np, k=1, workers=-1)[0]
    d_ba = cKDTree(a_np).query(b_np, k=1, workers=-1)[0]
    return 0.5 * (float(np.mean(d_ab)) + float(np.mean(d_ba)))


def _rows(
    benchmark: str,
    size: str,
    device: torch.device,
    methods: dict[str, Callable[[], object]],
    repeats: int,
    target_s: float | None,
    notes: dict[str, str],
) -> list[Row]:
    """Time and measure each method; the first one is ours (ratio 1)."""
    rows = []
    for method, fn in methods.items():
        rows.append({
            "benchmark": benchmark,
            "method": method,
            "device": str(device),
            "size": size,
            "median_s": _median_seconds(fn, device, repeats),
            "target_s": target_s,
            "peak_mb": _peak_mb(fn, device),
            "note": notes.get(method, ""),
        })
    ours = rows[0]["median_s"]
    for row in rows:
        row["ratio"] = row["median_s"] / ours
    return rows


def bench_chamfer(device: str = "cpu", n: int = 10_000, repeats: int = 5) -> list[Row]:
    """Chamfer distance between two ``n``-point sets: ours vs dense ``torch.cdist`` vs ``cKDTree``.

    Args:
        device: ``"cpu"`` or a CUDA device.
        n: points per set.
        repeats: timed runs per method (median reported).

    Returns:
        Rows as in the module docstring: ours (``chamfer_distance``, default method), on CPU
        also our chunked brute force, the dense ``torch.cdist`` and SciPy ``cKDTree``.
    """
    dev = torch.device(device)
    a, b = _points(n, dev, seed=0), _points(n, dev, seed=1)
    methods: dict[str, Callable[[], object]] = {"ours": lambda: chamfer_distance(a, b)}
    notes = {"ours": "KD-tree indices, exact torch distances" if dev.type == "cpu" else
             "chunked brute force (addmm + argmin), exact distances"}
    if dev.type == "cpu":
        methods["ours (brute force)"] = lambda: chamfer_distance(a, b, method="brute")
        notes["ours (brute force)"] = "chunked torch path used on CUDA, timed on CPU"
    methods["dense torch.cdist"] = lambda: _dense_chamfer(a, b)
    methods["scipy cKDTree"] = lambda: _kdtree_chamfer(a, b)
    if dev.type == "cuda":
        notes["scipy cKDTree"] = "runs on the host, including the device-to-host copy"
    return _rows("chamfer", f"{n:,} vs {n:,} points", dev, methods, repeats,
                 CHAMFER_TARGET_S.get(dev.type), notes)


def _dense_pairwise(a: torch.Tensor, b: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The plain alternative: ``torch.cdist`` on flat blocks of shape pairs."""
    n, m = a.shape[0], b.shape[0]
    out = torch.empty(n * m, dtype=a.dtype, device=a.device)
    for start in range(0, n * m, batch_size):
        stop = min(start + batch_size, n * m)
        pair = torch.arange(start, stop, device=a.device)
        d = torch.cdist(a.index_select(0, pair // m), b.index_select(0, pair % m))
        out[start:stop] = 0.5 * (d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1))
    return out.reshape(n, m)


def bench_pairwise(
    device: str = "cpu",
    n_shapes: int = 500,
    n_points: int = 2048,
    measured_shapes: int | None = None,
    repeats: int = 3,
) -> list[Row]:
    """The (n_shapes x n_shapes) Chamfer matrix behind 1-NNA: ours vs dense ``cdist`` per pair block.

    Args:
        device: ``"cpu"`` or a CUDA device.
        n_shapes: shapes per set in the reported problem.
        n_points: points per shape.
        measured_shapes: shapes per set actually timed (default: all on CUDA,
            ``CPU_PAIRWISE_SHAPES`` on CPU). When smaller than ``n_shapes`` the work scales with
            the number of pairs, so each measured row is followed by an extrapolated row
            ``median_s x (n_shapes / measured_shapes)^2``, labelled as such in ``method`` and
            ``note`` (its ``peak_mb`` is the measured one: memory is bounded per pair block).
        repeats: timed runs per method.

    Returns:
        Rows as in the module docstring.
    """
    dev = torch.device(device)
    measured = measured_shapes or (n_shapes if dev.type == "cuda" else min(n_shapes, CPU_PAIRWISE_SHAPES))
    a = _points(n_points, dev, seed=2, batch=(measured,))
    b = _points(n_points, dev, seed=3, batch=(measured,))
    block = max(1, (2**28 if dev.type == "cuda" else 2**23) // (n_points * n_points))
    methods: dict[str, Callable[[], object]] = {"ours": lambda: pairwise_chamfer(a, b)}
    notes = {"ours": "one KD-tree per shape" if dev.type == "cpu" else "batched brute force"}
    if dev.type == "cpu":
        methods["ours (brute force)"] = lambda: pairwise_chamfer(a, b, method="brute")
        notes["ours (brute force)"] = "batched torch path used on CUDA, timed on CPU"
    methods["dense torch.cdist per pair block"] = lambda: _dense_pairwise(a, b, block)
    target = PAIRWISE_TARGET_S.get(dev.type)
    rows = _rows("pairwise chamfer", f"{measured} x {measured} shapes of {n_points:,} points", dev,
                 methods, repeats, target if measured == n_shapes else None, notes)
    if measured == n_shapes:
        return rows
    scale = (n_shapes / measured) ** 2
    extrapolated = [
        {**row, "method": f"{row['method']} (extrapolated)",
         "size": f"{n_shapes} x {n_shapes} shapes of {n_points:,} points",
         "median_s": row["median_s"] * scale, "target_s": target,
         "note": f"measured at {measured} x {measured}, times ({n_shapes}/{measured})^2"}
        for row in rows
    ]
    return rows + extrapolated


def bench_memory_scaling(
    device: str = "cpu", sizes: Sequence[int] = (2_500, 5_000, 10_000, 20_000), dense_up_to: int = 10_000
) -> list[Row]:
    """Peak memory of one Chamfer distance against the number of points per set.

    Ours should grow linearly (a ``chunk x n`` block on the brute-force path, trees and index
    arrays on the KD-tree path); the dense ``torch.cdist`` grows quadratically and is measured
    only up to ``dense_up_to`` points. Each row adds ``mb_per_kpoint`` = peak_mb / (n / 1000).

    Args:
        device: ``"cpu"`` or a CUDA device.
        sizes: points per set.
        dense_up_to: largest size at which the dense matrix is measured.

    Returns:
        One row per (method, size), each timed once (``median_s`` of a single run).
    """
    dev = torch.device(device)
    rows = []
    for n in sizes:
        a, b = _points(n, dev, seed=4), _points(n, dev, seed=5)
        methods: dict[str, Callable[[], object]] = {"ours": lambda: chamfer_distance(a, b)}
        if dev.type == "cpu":
            methods["ours (brute force)"] = lambda: chamfer_distance(a, b, method="brute")
        if n <= dense_up_to:
            methods["dense torch.cdist"] = lambda: _dense_chamfer(a, b)
        for row in _rows("chamfer memory scaling", f"{n:,} vs {n:,} points", dev, methods, 1, None, {}):
            row["mb_per_kpoint"] = None if row["peak_mb"] is None else row["peak_mb"] / (n / 1000)
            rows.append(row)
    return rows
