"""Chamfer benchmarks: ours against the plain dense ``torch.cdist`` and SciPy's ``cKDTree``.

Every figure is measured in the same run on the same inputs (uniform points in a 100 mm cube,
float32), timed and measured by :mod:`cardiocore.bench.measure`; the rows follow its schema
(``ratio``: this row's time over ours, so ours = 1.0). ``target_s`` is the project's target on the
GPU (None where none is stated, e.g. on CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

from cardiocore.bench.measure import Row, measure_methods
from cardiocore.metrics.distance import chamfer_distance, pairwise_chamfer

CHAMFER_TARGET_S = {"cuda": 0.0005}
"""Target for one 10,000 x 10,000-point Chamfer distance (H100); none is stated for CPU."""

PAIRWISE_TARGET_S = {"cuda": 1.0}
"""Target for the 500 x 500 Chamfer matrix of 2,048-point shapes (H100); none for CPU."""

CPU_PAIRWISE_SHAPES = 12
"""Shapes per set actually measured for the pairwise matrix on CPU; the full size is extrapolated."""


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


def bench_chamfer(device: str = "cpu", n: int = 10_000, repeats: int = 5) -> list[Row]:
    """Chamfer distance between two ``n``-point sets: ours vs dense ``torch.cdist`` vs ``cKDTree``.

    Args:
        device: ``"cpu"`` or a CUDA device.
        n: points per set.
        repeats: timed runs per method (median reported).

    Returns:
        Rows as in :mod:`cardiocore.bench.measure`: ours (``chamfer_distance``, default method), on CPU
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
    return measure_methods("chamfer", f"{n:,} vs {n:,} points", dev, methods, repeats,
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
        Rows as in :mod:`cardiocore.bench.measure`.
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
    rows = measure_methods("pairwise chamfer", f"{measured} x {measured} shapes of {n_points:,} points",
                           dev, methods, repeats, target if measured == n_shapes else None, notes)
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
        for row in measure_methods("chamfer memory scaling", f"{n:,} vs {n:,} points", dev, methods, 1):
            row["mb_per_kpoint"] = None if row["peak_mb"] is None else row["peak_mb"] / (n / 1000)
            rows.append(row)
    return rows
