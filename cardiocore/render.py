"""Offscreen PNG renderings of surface meshes with matplotlib (no VTK, no display needed).

Used by ``cardio demo`` and the reports of the methods. Faces are flat-shaded with a Lambertian
head-light so shapes read well in a static picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)
import numpy as np  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

from cardiocore.geometry.mesh import as_mesh  # noqa: E402


@dataclass
class SceneMesh:
    """One mesh to draw: ``verts (V, 3)`` in mm, ``faces (F, 3)``, an RGB colour in [0, 1], opacity."""

    verts: np.ndarray
    faces: np.ndarray
    color: tuple[float, float, float]
    opacity: float = 1.0
    label: str = ""


def _view_direction(elevation: float, azimuth: float) -> np.ndarray:
    """Unit vector from the scene towards the matplotlib camera (degrees, matplotlib convention)."""
    el, az = np.radians(elevation), np.radians(azimuth)
    return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


def _shaded_faces(mesh: SceneMesh, light: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangles ``(F, 3, 3)`` and their RGBA colours ``(F, 4)`` under a two-sided head-light."""
    verts, faces = (t.detach().cpu().numpy() for t in as_mesh(mesh.verts, mesh.faces, name=mesh.label or "mesh"))
    triangles = verts[faces]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    brightness = 0.35 + 0.65 * np.abs(normals @ light)  # two-sided: open surfaces show their inside
    colors = np.clip(np.outer(brightness, mesh.color), 0.0, 1.0)
    return triangles, np.c_[colors, np.full(len(colors), mesh.opacity)]


def _draw_panel(axes, meshes: Sequence[SceneMesh], light: np.ndarray, centre: np.ndarray, half: float) -> None:
    # One collection for every mesh: matplotlib sorts faces by depth within a collection only.
    shaded = [_shaded_faces(mesh, light) for mesh in meshes]
    axes.add_collection3d(
        Poly3DCollection(np.concatenate([t for t, _ in shaded]), facecolors=np.concatenate([c for _, c in shaded]), linewidths=0)
    )
    for set_limits, c in zip((axes.set_xlim, axes.set_ylim, axes.set_zlim), centre):
        set_limits(c - half, c + half)
    axes.set_box_aspect((1, 1, 1))
    axes.set_xlabel("R (mm)")
    axes.set_ylabel("A (mm)")
    axes.set_zlabel("S (mm)")
    labelled = [m for m in meshes if m.label]
    if labelled:
        handles = [plt.Rectangle((0, 0), 1, 1, color=m.color) for m in labelled]
        axes.legend(handles, [m.label for m in labelled], loc="upper left", fontsize=8, frameon=False)


def render_panels(
    panels: Sequence[tuple[str, Sequence[SceneMesh]]],
    path: str | Path,
    elevation: float = 20.0,
    azimuth: float = -60.0,
    panel_px: int = 700,
) -> Path:
    """Render each ``(title, meshes)`` panel side by side into one PNG at ``path``.

    All panels share one view and one mm scale, so sizes compare directly. Returns the path.
    """
    light = _view_direction(elevation, azimuth)
    points = np.concatenate([np.asarray(m.verts, dtype=float).reshape(-1, 3) for _, meshes in panels for m in meshes])
    centre = (points.max(0) + points.min(0)) / 2
    half = float((points.max(0) - points.min(0)).max()) / 2
    figure = plt.figure(figsize=(len(panels) * panel_px / 100, panel_px / 100), dpi=100)
    for index, (title, meshes) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index, projection="3d")
        _draw_panel(axes, meshes, light, centre, half)
        axes.view_init(elev=elevation, azim=azimuth)
        axes.set_title(title)
    path = Path(path)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def render_meshes(meshes: Sequence[SceneMesh], path: str | Path, title: str = "", **view: float) -> Path:
    """Render ``meshes`` together into one PNG at ``path`` (one panel of :func:`render_panels`)."""
    return render_panels([(title, meshes)], path, **view)
