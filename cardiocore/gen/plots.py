"""PNG figures of CardioGen's evaluation: clinical histograms, a latent interpolation strip and a
grid of generated shapes (matplotlib, Agg backend; meshes drawn by :mod:`cardiocore.render`).

Every function writes one PNG atomically (a reader sees the old file or the complete new one)
and refuses to replace an existing file unless ``overwrite=True``. Returns the path written.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402 (the backend must be chosen first)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cardiocore.errors import CardioInputError  # noqa: E402
from cardiocore.render import SceneMesh, render_panels  # noqa: E402
from cardiocore.train.atomic import atomic_write  # noqa: E402

ArrayLike = torch.Tensor | np.ndarray

GENERATED_COLOR = (0.85, 0.33, 0.25)
REAL_COLOR = (0.25, 0.45, 0.75)
SHAPE_COLOR = (0.80, 0.42, 0.38)
PANEL_PX = 320
"""Pixels per mesh panel in the strip and the grid."""


def _target(path: str | Path, overwrite: bool) -> Path:
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise CardioInputError(str(target), "must be a .png file")
    if target.exists() and not overwrite:
        raise CardioInputError(str(target), "already exists", "choose another path or pass overwrite=True")
    return target


def _save_figure(figure: plt.Figure, target: Path) -> Path:
    try:
        with atomic_write(target) as stream:
            figure.savefig(stream, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(figure)
    return target


def _meshes(meshes: ArrayLike | Sequence[ArrayLike], faces: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Meshes of one template as (n, V, 3) float64 and the shared faces (F, 3) int64."""
    items = [np.asarray(torch.as_tensor(m).detach().cpu(), dtype=np.float64) for m in meshes]
    shapes = {item.shape for item in items}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[1] != 3:
        raise CardioInputError("meshes", f"must be n >= 1 meshes (V, 3) mm of one template, got {sorted(shapes)}")
    return np.stack(items), np.asarray(torch.as_tensor(faces).cpu(), dtype=np.int64)


def clinical_histograms(
    generated: Mapping[str, ArrayLike],
    real: Mapping[str, ArrayLike],
    columns: Sequence[str],
    path: str | Path,
    *,
    bins: int = 20,
    overwrite: bool = False,
) -> Path:
    """Overlaid density histograms, generated against real, one panel per clinical index.

    Args:
        generated, real: ``{index: values (N,)}`` (NaN values are left out).
        columns: the indices to draw, in order (each in both mappings); units in their names.
        path: the PNG to write.
        bins: bins per panel, shared by both sets.
        overwrite: replace an existing file.
    """
    target = _target(path, overwrite)
    missing = [c for c in columns if c not in generated or c not in real]
    if not columns or missing:
        raise CardioInputError("columns", f"must name indices present in both sets; missing {missing}")
    ncols = min(len(columns), 3)
    nrows = -(-len(columns) // ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        gen = np.asarray(generated[column], dtype=np.float64).reshape(-1)
        ref = np.asarray(real[column], dtype=np.float64).reshape(-1)
        gen, ref = gen[np.isfinite(gen)], ref[np.isfinite(ref)]
        both = np.concatenate([gen, ref])
        edges = np.histogram_bin_edges(both, bins=bins) if both.size else bins
        for values, color, label in ((ref, REAL_COLOR, "real"), (gen, GENERATED_COLOR, "generated")):
            if values.size:
                ax.hist(values, bins=edges, density=True, alpha=0.55, color=color,
                        label=f"{label} (n={values.size}, mean {values.mean():.3g})")
        ax.set_xlabel(column)
        ax.set_ylabel("density")
        ax.legend(fontsize=7, frameon=False)
    for ax in axes.flat[len(columns):]:
        ax.set_visible(False)
    figure.tight_layout()
    return _save_figure(figure, target)


def interpolation_strip(
    meshes: ArrayLike | Sequence[ArrayLike], faces: ArrayLike, path: str | Path, *, overwrite: bool = False
) -> Path:
    """A latent interpolation (n, V, 3) mm as one row of panels, t = 0 ... 1, one shared mm scale."""
    target = _target(path, overwrite)
    shapes, faces_np = _meshes(meshes, faces)
    steps = np.linspace(0.0, 1.0, len(shapes)) if len(shapes) > 1 else np.zeros(1)
    panels = [(f"t = {t:.2f}", [SceneMesh(v, faces_np, SHAPE_COLOR)]) for t, v in zip(steps, shapes)]
    return _render_rows([panels], target)


def shape_grid(
    meshes: ArrayLike | Sequence[ArrayLike],
    faces: ArrayLike,
    path: str | Path,
    ncols: int = 4,
    *,
    titles: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Generated shapes (n, V, 3) mm in a grid of ``ncols`` columns (row by row), one mm scale.

    ``titles``: one per shape (default "sample 1", "sample 2", ...).
    """
    target = _target(path, overwrite)
    if int(ncols) < 1:
        raise CardioInputError("ncols", f"must be at least 1, got {ncols}")
    shapes, faces_np = _meshes(meshes, faces)
    names = list(titles) if titles is not None else [f"sample {i + 1}" for i in range(len(shapes))]
    if len(names) != len(shapes):
        raise CardioInputError("titles", f"has {len(names)} titles for {len(shapes)} shapes")
    panels = [(name, [SceneMesh(v, faces_np, SHAPE_COLOR)]) for name, v in zip(names, shapes)]
    rows = [panels[start:start + int(ncols)] for start in range(0, len(panels), int(ncols))]
    return _render_rows(rows, target)


def _render_rows(rows: Sequence[Sequence[tuple[str, list[SceneMesh]]]], target: Path) -> Path:
    """Render each row of ``(title, meshes)`` panels with :func:`render_panels` and stack the rows
    into one PNG at ``target``. Every panel also holds an invisible triangle spanning the bounding
    box of all meshes, so all rows get the same view and mm scale (render_panels fits one row)."""
    everything = np.concatenate([m.verts.reshape(-1, 3) for row in rows for _, meshes in row for m in meshes])
    frame = _bounding_frame(everything.min(axis=0), everything.max(axis=0))
    images = []
    with tempfile.TemporaryDirectory(prefix="cardiogen-plot-") as scratch:
        for index, row in enumerate(rows):
            framed = [(title, [*meshes, frame]) for title, meshes in row]
            images.append(mpimg.imread(render_panels(framed, Path(scratch) / f"row{index}.png", panel_px=PANEL_PX)))
    height = sum(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    canvas = np.ones((height, width, 4), dtype=np.float32)
    top = 0
    for image in images:
        rgba = image if image.shape[2] == 4 else np.concatenate([image, np.ones((*image.shape[:2], 1))], axis=2)
        canvas[top:top + image.shape[0], : image.shape[1]] = rgba
        top += image.shape[0]
    with atomic_write(target) as stream:
        plt.imsave(stream, canvas, format="png")
    return target


def _bounding_frame(low: np.ndarray, high: np.ndarray) -> SceneMesh:
    """A fully transparent triangle whose corners span the box [low, high] (mm)."""
    verts = np.array([low, high, [low[0], high[1], low[2]]])
    return SceneMesh(verts, np.array([[0, 1, 2]]), (1.0, 1.0, 1.0), opacity=0.0)
