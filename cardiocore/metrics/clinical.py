"""Clinical left-ventricle indices from endocardium and epicardium meshes.

Inputs are the endocardial (cavity) and epicardial surfaces in RAS mm, usually open at the base
(the mitral/aortic plane); open boundaries are closed with a centroid fan before any volume is
taken (:func:`cardiocore.geometry.volume.cavity_volume_ml`, orientation-independent).

Definitions:

- cavity volume (ml): volume enclosed by the closed endocardium.
- myocardial volume (ml): closed-epicardium volume minus closed-endocardium volume.
- myocardial mass (g): myocardial volume x 1.05 g/ml (``MYOCARDIAL_DENSITY_G_PER_ML``).
- long-axis length (mm): for an open endocardium, the distance from the centroid of its largest
  boundary loop (the base) to the farthest endocardial vertex (the apex); for a closed one, its
  extent along its first principal axis.
- sphericity index (dimensionless): cavity volume / volume of a sphere whose diameter is the
  long-axis length, ``V / (pi L^3 / 6)``; a sphere scores 1, an elongated ventricle less.
- mean wall thickness (mm): area-weighted mean over epicardial vertices of the distance to the
  (unclosed) endocardial surface.
- ejection fraction (%): ``100 (EDV - ESV) / EDV`` from end-diastolic and end-systolic cavity
  volumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.distance import point_to_mesh_distance
from cardiocore.geometry.mesh import as_mesh, boundary_loops, vertex_areas
from cardiocore.geometry.volume import MM3_PER_ML, cavity_volume_ml

ArrayLike = torch.Tensor | np.ndarray

MYOCARDIAL_DENSITY_G_PER_ML = 1.05
"""Density of myocardium used for mass, g/ml."""


@dataclass(frozen=True)
class LVIndices:
    """Left-ventricle indices of one cardiac phase (definitions in the module docstring)."""

    cavity_volume_ml: float
    myocardial_volume_ml: float
    myocardial_mass_g: float
    long_axis_mm: float
    sphericity_index: float
    mean_wall_thickness_mm: float


def long_axis_length(verts: ArrayLike, faces: ArrayLike) -> float:
    """Long-axis length of a cavity surface, mm (base centroid to apex; module docstring)."""
    verts_t, faces_t = as_mesh(verts, faces, name="endocardium")
    points = verts_t.detach().double()
    loops = boundary_loops(faces_t)
    if loops:
        base = max(loops, key=len).to(points.device)
        base_centre = points[base].mean(dim=0)
        return float(torch.linalg.vector_norm(points - base_centre, dim=-1).max())
    centred = points - points.mean(dim=0)
    axis = torch.linalg.svd(centred, full_matrices=False)[2][0]
    projection = centred @ axis
    return float(projection.max() - projection.min())


def ejection_fraction(edv_ml: float, esv_ml: float) -> float:
    """Ejection fraction ``100 (EDV - ESV) / EDV`` in %.

    Args:
        edv_ml: end-diastolic cavity volume, ml (> 0).
        esv_ml: end-systolic cavity volume, ml (0 <= ESV <= EDV).

    Returns:
        EF in percent.
    """
    if not edv_ml > 0:
        raise CardioInputError("edv_ml", f"end-diastolic volume must be positive, got {edv_ml}")
    if not 0 <= esv_ml <= edv_ml:
        raise CardioInputError("esv_ml", f"end-systolic volume {esv_ml} ml must lie in "
                               f"[0, EDV = {edv_ml}] ml", "check that ED and ES are not swapped")
    return 100.0 * (edv_ml - esv_ml) / edv_ml


def lv_indices(
    endo_verts: ArrayLike, endo_faces: ArrayLike, epi_verts: ArrayLike, epi_faces: ArrayLike
) -> LVIndices:
    """Cavity and myocardial indices of one phase from endocardium and epicardium meshes.

    Args:
        endo_verts, endo_faces: endocardial surface (V, 3) mm and (F, 3) int64, open or closed.
        epi_verts, epi_faces: epicardial surface, open or closed.

    Returns:
        :class:`LVIndices` (ml, g, mm, dimensionless).
    """
    endo_v, endo_f = as_mesh(endo_verts, endo_faces, name="endocardium")
    epi_v, epi_f = as_mesh(epi_verts, epi_faces, name="epicardium")
    epi_v = epi_v.to(endo_v)
    cavity = cavity_volume_ml(endo_v, endo_f)
    myocardium = cavity_volume_ml(epi_v, epi_f) - cavity
    if myocardium <= 0:
        raise CardioInputError("epicardium", f"encloses no more volume than the endocardium "
                               f"(myocardial volume {myocardium:.3f} ml)",
                               "check that endocardium and epicardium are not swapped")
    long_axis = long_axis_length(endo_v, endo_f)
    with torch.no_grad():
        distance, _ = point_to_mesh_distance(epi_v, endo_v, endo_f)
        weights = vertex_areas(epi_v, epi_f)
        thickness = float((distance * weights).sum() / weights.sum())
    return LVIndices(
        cavity_volume_ml=cavity,
        myocardial_volume_ml=myocardium,
        myocardial_mass_g=myocardium * MYOCARDIAL_DENSITY_G_PER_ML,
        long_axis_mm=long_axis,
        sphericity_index=cavity * MM3_PER_ML / (math.pi * long_axis**3 / 6.0),
        mean_wall_thickness_mm=thickness,
    )
