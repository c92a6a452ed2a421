"""The Slicer baseline: per-segment marching cubes plus smoothing, as a user would otherwise do.

In Slicer, "Show 3D" / "Export to models" on a Segment Editor segmentation converts each
segment's binary labelmap to a closed surface with the default rule
(vtkBinaryLabelmapToClosedSurfaceConversionRule): discrete flying edges on the padded mask
(vertices at edge midpoints), optional decimation (default "Decimation factor" 0.0), then
windowed-sinc smoothing (20 iterations, pass band ``10^(-4 s)`` for the "Smoothing factor" s,
default 0.5, boundary fixed). We emulate it, not call it (the compute layer has no VTK):
marching cubes at level 0.5 of the padded mask (:func:`surface_from_mask`, the same vertices as
discrete flying edges), optional quadric decimation (:func:`quadric_decimate`; Slicer uses
vtkDecimatePro), then the same windowed-sinc filter with the same settings
(:func:`windowed_sinc_smooth`, :func:`slicer_smoothing_parameters`). Segments are meshed
independently, so nothing keeps neighbouring surfaces from crossing where they share a wall:
that is what the relational rules measure.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.decimate import quadric_decimate
from cardiocore.geometry.grid import label_mask
from cardiocore.geometry.mesh import ArrayLike
from cardiocore.geometry.smoothing import slicer_smoothing_parameters, windowed_sinc_smooth
from cardiocore.geometry.surface import surface_from_mask

SLICER_SMOOTHING_FACTOR = 0.5
"""Slicer's default closed-surface "Smoothing factor"."""

SLICER_DECIMATION_FACTOR = 0.0
"""Slicer's default closed-surface "Decimation factor" (fraction of vertices removed)."""


class _NamedLike(Protocol):
    name: str


class _RuleSetLike(Protocol):
    structures: Sequence[_NamedLike]


def segment_surface(
    mask: ArrayLike,
    ijk_to_ras: ArrayLike,
    smoothing_factor: float = SLICER_SMOOTHING_FACTOR,
    decimation_factor: float = SLICER_DECIMATION_FACTOR,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed surface of one segment, Slicer style (module docstring).

    Args:
        mask: binary mask (I, J, K).
        ijk_to_ras: (4, 4) matrix from voxel indices to RAS mm.
        smoothing_factor: Slicer's smoothing factor s in [0, 1] (0: no smoothing).
        decimation_factor: fraction in [0, 1) of vertices removed before smoothing.

    Returns:
        verts (V, 3) float32 RAS mm and faces (F, 3) int64, outward oriented, on the CPU.

    Raises:
        VolumeError: an empty mask or a bad matrix. CardioInputError: factors out of range.
    """
    if not 0.0 <= decimation_factor < 1.0:
        raise CardioInputError("decimation_factor", f"must lie in [0, 1), got {decimation_factor}")
    smoothing = slicer_smoothing_parameters(smoothing_factor)
    verts, faces = surface_from_mask(torch.as_tensor(np.asarray(mask), dtype=torch.float32), ijk_to_ras)
    if decimation_factor > 0:
        coarse = quadric_decimate(verts, faces, max(4, round(verts.shape[0] * (1.0 - decimation_factor))))
        verts, faces = coarse.verts, coarse.faces
    return windowed_sinc_smooth(verts, faces, **smoothing), faces


def baseline_meshes(
    labels: ArrayLike,
    ijk_to_ras: ArrayLike,
    label_of: Mapping[str, int | Sequence[int]],
    structures: Iterable[str] | None = None,
    smoothing_factor: float = SLICER_SMOOTHING_FACTOR,
    decimation_factor: float = SLICER_DECIMATION_FACTOR,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One Slicer-style surface per structure present in a label map.

    Args:
        labels: label map (I, J, K) int.
        ijk_to_ras: (4, 4) matrix from voxel indices to RAS mm.
        label_of: structure name -> label value (or several values whose union it is).
        structures: names to mesh, in this order; all of ``label_of`` when None. Structures with
            no voxel are left out (compare the keys with the request to list them).
        smoothing_factor, decimation_factor: as in :func:`segment_surface`.

    Returns:
        name -> (verts (V, 3) RAS mm, faces (F, 3) int64), the same form as the fit's output.

    Raises:
        CardioInputError: a requested structure without a label, or labels that are not 3-D.
    """
    labels_np = np.asarray(torch.as_tensor(labels).cpu())
    if labels_np.ndim != 3:
        raise CardioInputError("labels", f"must be a 3-D (I, J, K) label map, got shape {labels_np.shape}")
    names = list(label_of) if structures is None else list(structures)
    unknown = [name for name in names if name not in label_of]
    if unknown:
        raise CardioInputError("structures", f"{unknown} have no label in label_of",
                               f"known structures: {sorted(label_of)}")
    meshes = {}
    for name in names:
        mask = label_mask(labels_np, label_of[name])
        if mask.any():
            meshes[name] = segment_surface(mask, ijk_to_ras, smoothing_factor, decimation_factor)
    return meshes


def run_baseline_case(
    labels: ArrayLike,
    ijk_to_ras: ArrayLike,
    rules: _RuleSetLike,
    label_of: Mapping[str, int | Sequence[int]],
    smoothing_factor: float = SLICER_SMOOTHING_FACTOR,
    decimation_factor: float = SLICER_DECIMATION_FACTOR,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """The baseline on one case, timed, for the reconstruction benchmark.

    Meshes the structures of ``rules`` (in its order) that have a label in ``label_of`` and
    voxels in ``labels``.

    Returns:
        (meshes as in :func:`baseline_meshes`, wall-clock seconds).
    """
    names = [s.name for s in rules.structures if s.name in label_of]
    start = time.perf_counter()
    meshes = baseline_meshes(labels, ijk_to_ras, label_of, names, smoothing_factor, decimation_factor)
    return meshes, time.perf_counter() - start
