"""Clinical indices of LV meshes in a cohort's layout (endocardium and epicardium regions of one mesh).

Each mesh (V, 3) in mm holds both surfaces; ``regions["endocardium"]`` and
``regions["epicardium"]`` give their vertices, and the faces whose corners all lie in a region
form that surface. The indices are :func:`cardiocore.metrics.clinical.lv_indices` (cavity and
myocardial volume in ml, mass in g at 1.05 g/ml, long axis in mm, sphericity, mean wall
thickness in mm), one value per mesh.

Ejection fraction needs an end-diastolic and an end-systolic mesh of one subject:
:func:`pair_ejection_fraction` takes their cavity volumes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import region_faces
from cardiocore.geometry.volume import MM3_PER_ML, close_boundary, enclosed_volume
from cardiocore.metrics.clinical import lv_indices

CLINICAL_COLUMNS = (
    "cavity_ml",
    "myocardial_volume_ml",
    "myocardial_mass_g",
    "long_axis_mm",
    "sphericity_index",
    "wall_thickness_mm",
)
"""Per-mesh index columns returned by :func:`lv_shape_indices` (units in the names)."""

_FIELDS = (
    "cavity_volume_ml",
    "myocardial_volume_ml",
    "myocardial_mass_g",
    "long_axis_mm",
    "sphericity_index",
    "mean_wall_thickness_mm",
)


def lv_shape_indices(
    verts: torch.Tensor | np.ndarray, faces: torch.Tensor | np.ndarray, regions: Mapping[str, torch.Tensor]
) -> dict[str, np.ndarray]:
    """Clinical indices of N LV meshes.

    Args:
        verts: (N, V, 3) or (V, 3) meshes in mm.
        faces: (F, 3) shared triangles.
        regions: "endocardium" and "epicardium" vertex indices.

    Returns:
        ``{column: (N,) float64}`` for every name in :data:`CLINICAL_COLUMNS`.
    """
    shapes = torch.as_tensor(verts).detach().double().cpu()
    if shapes.dim() == 2:
        shapes = shapes.unsqueeze(0)
    if shapes.dim() != 3 or shapes.shape[-1] != 3:
        raise CardioInputError("verts", f"must be meshes (N, V, 3) mm, got shape {tuple(shapes.shape)}")
    missing = {"endocardium", "epicardium"} - set(regions)
    if missing:
        raise CardioInputError("regions", f"lack {sorted(missing)}", "give the endocardium and epicardium vertex indices")
    endo = torch.as_tensor(regions["endocardium"]).long().cpu()
    epi = torch.as_tensor(regions["epicardium"]).long().cpu()
    endo_faces = region_faces(faces, endo, shapes.shape[1])
    epi_faces = region_faces(faces, epi, shapes.shape[1])
    rows = [lv_indices(shape[endo], endo_faces, shape[epi], epi_faces) for shape in shapes]
    return {column: np.array([getattr(row, field) for row in rows]) for column, field in zip(CLINICAL_COLUMNS, _FIELDS)}


def surface_volumes_ml(verts: torch.Tensor | np.ndarray, faces: torch.Tensor | np.ndarray) -> np.ndarray:
    """Volumes (N,) ml enclosed by N surfaces (N, V, 3) mm of one topology (F, 3), open boundaries
    (the LV base) closed first: the cavity volume of :func:`lv_shape_indices`, batched, without the
    per-mesh work of the other indices."""
    shapes = torch.as_tensor(verts).detach().double().cpu()
    closed_verts, closed_faces = close_boundary(shapes, faces)
    return (enclosed_volume(closed_verts, closed_faces).abs() / MM3_PER_ML).numpy()


def pair_ejection_fraction(edv_ml: np.ndarray, esv_ml: np.ndarray) -> np.ndarray:
    """Ejection fraction (N,) in % of N subjects from their ED and ES cavity volumes (N,) ml."""
    edv, esv = np.asarray(edv_ml, dtype=np.float64), np.asarray(esv_ml, dtype=np.float64)
    if edv.shape != esv.shape:
        raise CardioInputError("esv_ml", f"has shape {esv.shape}, EDV has {edv.shape}: give one pair per subject")
    if not bool(np.all(edv > 0)):
        raise CardioInputError("edv_ml", "end-diastolic volumes must be positive")
    return 100.0 * (edv - esv) / edv
