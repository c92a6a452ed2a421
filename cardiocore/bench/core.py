"""``cardio bench core``: the foundation's speed figures, each beside its target and a peer.

- winding-number occupancy of 100,000 query points against a 20,000-vertex mesh
  (ours vs the dense chunked exact sum);
- Chamfer between two 10,000-point sets (ours vs a dense ``torch.cdist`` and SciPy's ``cKDTree``);
- the pairwise Chamfer matrix behind 1-NNA, 500 vs 500 shapes of 2,048 points
  (ours vs a plain dense batched ``torch.cdist``);
- peak memory of the Chamfer search as the number of points doubles (linear for ours,
  quadratic for the dense matrix).

Every row is measured in this run; targets are printed beside the figures, never instead of them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from cardiocore.train.device import select_device

Row = dict[str, Any]

#: Problem sizes: the issue's figures, and a small set for smoke tests (``--quick``).
FULL_SIZES = {
    "occupancy": (100_000, 20_000),
    "chamfer": 10_000,
    "pairwise": (500, 2048),
    "memory": (2_500, 5_000, 10_000, 20_000),
}
QUICK_SIZES = {"occupancy": (5_000, 2_000), "chamfer": 2_000, "pairwise": (24, 256), "memory": (1_000, 2_000)}

COLUMNS = ("benchmark", "method", "device", "size", "median_s", "target_s", "ratio", "peak_mb", "note")


def run_core_benchmarks(device: str = "auto", quick: bool = False, progress: Callable[[str], None] = print) -> list[Row]:
    """Run the three core benchmarks on ``device`` and return their rows."""
    from cardiocore.bench.chamfer import bench_chamfer, bench_memory_scaling, bench_pairwise
    from cardiocore.bench.occupancy import bench_occupancy

    resolved = str(select_device(device))
    sizes = QUICK_SIZES if quick else FULL_SIZES
    if resolved == "cpu":
        progress(f"CPU run with {torch.get_num_threads()} torch threads")
    rows: list[Row] = []
    n_points, n_verts = sizes["occupancy"]
    progress(f"occupancy: {n_points:,} points vs a {n_verts:,}-vertex mesh ...")
    rows += bench_occupancy(device=resolved, n_points=n_points, n_verts=n_verts)
    progress(f"chamfer: {sizes['chamfer']:,} vs {sizes['chamfer']:,} points ...")
    rows += bench_chamfer(device=resolved, n=sizes["chamfer"])
    n_shapes, shape_points = sizes["pairwise"]
    progress(f"pairwise chamfer matrix: {n_shapes} x {n_shapes} shapes of {shape_points:,} points ...")
    rows += bench_pairwise(device=resolved, n_shapes=n_shapes, n_points=shape_points)
    progress(f"peak memory against the number of points: {', '.join(f'{n:,}' for n in sizes['memory'])} ...")
    rows += bench_memory_scaling(device=resolved, sizes=sizes["memory"], dense_up_to=sizes["memory"][-2])
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_rows(rows: list[Row]) -> str:
    """Rows as an aligned text table; columns the rows do not have are left out."""
    columns = [c for c in COLUMNS if any(c in row for row in rows)]
    columns += sorted({k for row in rows for k in row} - set(columns))
    table = [columns] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)
