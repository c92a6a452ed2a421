"""Occupancy benchmark: the fast winding number beside the dense exact sum, in one run.

The mesh is a torus (a closed, non-convex surface) of about ``n_verts`` vertices and ~2x as
many triangles, 80 mm across; the query points are uniform in its bounding box enlarged by 10 %,
so they mix far, near and inside points. Both methods are timed here, on the same inputs; the
dense sum is also the reference for the accuracy figures of the fast one. Timing, peak memory and
the row schema come from :mod:`cardiocore.bench.measure` (``ratio``: this row's time over the fast
winding number's, so ours = 1.0 and the dense sum's ratio is how many times slower it is).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

from cardiocore.bench.measure import (
    Row,
    add_ratios,
    benchmark_row,
    measure_methods,
    median_seconds,
    peak_memory_mb,
)
from cardiocore.geometry.primitives import torus
from cardiocore.geometry.winding import fast_winding_number, winding_number

#: Seconds allowed for 100,000 points against a 20,000-vertex mesh (CPU: 2 threads; CUDA: H100).
TARGET_S = {"cpu": 3.0, "cuda": 0.020}
_TARGET_SIZE = (100_000, 20_000)


def bench_mesh(n_verts: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Closed torus (R = 30 mm, r = 10 mm) with about ``n_verts`` vertices, twice as many faces."""
    n_minor = max(3, round(math.sqrt(n_verts / 2)))
    n_major = max(3, n_verts // n_minor)
    verts, faces = torus(R=30.0, r=10.0, n_major=n_major, n_minor=n_minor)
    return verts.to(device), faces.to(device)


def bench_points(verts: torch.Tensor, n_points: int, seed: int = 0) -> torch.Tensor:
    """``n_points`` uniform points (n_points, 3) in the bounding box of ``verts`` enlarged by 10 %."""
    generator = torch.Generator().manual_seed(seed)
    low, high = verts.amin(dim=0).cpu(), verts.amax(dim=0).cpu()
    margin = 0.1 * (high - low)
    unit = torch.rand(n_points, 3, generator=generator, dtype=verts.dtype)
    return (low - margin + unit * (high - low + 2 * margin)).to(verts.device)


def _peak_mb_keeping(
    fn: Callable[[], torch.Tensor], device: torch.device
) -> tuple[float | None, torch.Tensor]:
    """:func:`peak_memory_mb` of ``fn``, and the result of its last call."""
    results: list[torch.Tensor] = []

    def run() -> None:
        results.clear()  # the previous result is not part of this call's peak
        results.append(fn())

    peak = peak_memory_mb(run, device)
    return peak, results[0]


def bench_occupancy(
    device: str = "cpu",
    n_points: int = 100_000,
    n_verts: int = 20_000,
    repeats: int = 5,
    dense_points: int | None = 10_000,
    dense_repeats: int = 1,
    beta: float = 2.0,
) -> list[Row]:
    """Time the fast winding number and the dense chunked exact sum on the same inputs.

    Args:
        device: ``"cpu"`` or a CUDA device.
        n_points: query points; n_verts: vertices of the torus.
        repeats: timed runs of the fast method (after one warm-up run); the median is reported.
        dense_points: the dense sum is timed on the first ``dense_points`` points and its time
            scaled to ``n_points`` (its cost is exactly linear in the points; ``None`` = all).
            The accuracy of the fast method is measured on those points.
        dense_repeats: timed runs of the dense sum (its peak-memory run is its warm-up).
        beta: accuracy parameter of the fast method.

    Returns:
        Two rows (fast, then dense) in the schema of :mod:`cardiocore.bench.measure`:
        ``median_s`` (seconds for all ``n_points``), ``target_s`` (at the target size only),
        ``ratio`` (this time / the fast method's: fast 1.0, dense how many times slower),
        ``peak_mb`` (the dense sum's measured on its ``dense_points``), and the extra keys
        ``threads``, ``max_abs_err`` and ``hard_disagreements`` (points whose w > 1/2 label differs
        from the exact one) against the exact sum.
    """
    dev = torch.device(device)
    verts, faces = bench_mesh(n_verts, dev)
    points = bench_points(verts, n_points)
    n_dense = n_points if dense_points is None else min(n_points, dense_points)
    subset = points[:n_dense]
    size = f"{n_points:,} pts x {verts.shape[0]:,}-vert mesh ({faces.shape[0]:,} faces)"
    is_target_size = (n_points, n_verts) == _TARGET_SIZE
    target = TARGET_S.get(dev.type) if is_target_size else None

    def fast() -> torch.Tensor:
        return fast_winding_number(points, verts, faces, beta=beta)

    def dense() -> torch.Tensor:
        return winding_number(subset, verts, faces)

    with torch.no_grad():
        fast_median = median_seconds(fast, dev, repeats)
        fast_peak, fast_w = _peak_mb_keeping(fast, dev)
        dense_peak, exact_w = _peak_mb_keeping(dense, dev)  # also the dense sum's warm-up
        scale = n_points / n_dense
        dense_median = median_seconds(dense, dev, dense_repeats, warmup=0) * scale
    error = (fast_w[:n_dense] - exact_w).abs()
    disagreements = int(((fast_w[:n_dense] > 0.5) != (exact_w > 0.5)).sum())
    fast_note = f"tree build included; accuracy on {n_dense:,} points vs the exact sum"
    dense_note = "reference" if scale == 1 else (
        f"timed on {n_dense:,} points, scaled x{scale:.3g} (linear in points); peak_mb unscaled"
    )
    threads = torch.get_num_threads()
    return add_ratios([
        benchmark_row("occupancy", f"fast winding number (kd-tree, beta={beta})", dev, size, fast_median,
                      fast_peak, target, fast_note,
                      threads=threads, max_abs_err=float(error.max()), hard_disagreements=disagreements),
        benchmark_row("occupancy", "dense chunked exact sum", dev, size, dense_median, dense_peak, None,
                      dense_note, threads=threads, max_abs_err=0.0, hard_disagreements=0),
    ])


def occupancy_memory_scaling(
    device: str = "cpu",
    point_counts: tuple[int, ...] = (10_000, 20_000, 40_000),
    n_verts: int = 1_000,
    methods: tuple[str, ...] = ("fast", "exact"),
) -> list[Row]:
    """Peak extra memory of each method as the number of query points grows.

    Both methods work in chunks of points, so beyond a constant workspace the memory is the
    output (and, for the tree, the pair lists of a chunk): ``bytes_per_point`` falls as points
    grow and ``marginal_bytes_per_point`` (extra bytes per extra point since the previous
    count) stays constant, i.e. memory is linear in the points, never quadratic. The exact
    sum's marginal cost is its 4-byte float32 output.

    Returns:
        One row per (method, point count), method by method, in the schema of
        :mod:`cardiocore.bench.measure` (``median_s`` of a single run; ``ratio`` against the
        first of ``methods`` at the same count), with the extra keys ``n_points``,
        ``bytes_per_point`` and ``marginal_bytes_per_point`` (None for the smallest count, and
        both None where ``peak_mb`` is).
    """
    dev = torch.device(device)
    verts, faces = bench_mesh(n_verts, dev)
    functions = {"fast": fast_winding_number, "exact": winding_number}
    by_method: dict[str, list[Row]] = {method: [] for method in methods}
    for count in sorted(point_counts):
        points = bench_points(verts, count)
        runs = {method: partial(functions[method], points, verts, faces) for method in methods}
        size = f"{count:,} pts x {verts.shape[0]:,}-vert mesh"
        with torch.no_grad():
            measured = measure_methods("occupancy memory", size, dev, runs, 1)
        for row in measured:
            by_method[row["method"]].append({**row, "n_points": count})
    rows: list[Row] = []
    for own in by_method.values():
        for previous, row in zip([None, *own], own):
            row["bytes_per_point"] = _bytes_per_point(row)
            row["marginal_bytes_per_point"] = None if previous is None else _bytes_per_point(row, previous)
        rows += own
    return rows


def _bytes_per_point(row: Row, previous: Row | None = None) -> float | None:
    """Peak bytes per query point of ``row``, or per extra point since ``previous``; None without peaks."""
    if row["peak_mb"] is None or (previous is not None and previous["peak_mb"] is None):
        return None
    base_mb, base_points = (0.0, 0) if previous is None else (previous["peak_mb"], previous["n_points"])
    return (row["peak_mb"] - base_mb) * 2**20 / (row["n_points"] - base_points)
