"""Surfaces from binary masks in RAS millimetres: triangles (marching cubes), and the boundary
contours on the slices of a thick-slice stack (marching squares)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from skimage.measure import find_contours, marching_cubes

from cardiocore.errors import VolumeError
from cardiocore.geometry.grid import checked_matrix, occupied_box
from cardiocore.geometry.mesh import ArrayLike
from cardiocore.geometry.volume import enclosed_volume


def surface_from_mask(
    mask: ArrayLike, ijk_to_ras: ArrayLike, level: float = 0.5, smoothing_mm: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed surface of a mask by marching cubes, in RAS mm with outward-facing triangles.

    The mask is padded with background so the surface closes at the array border. Vertices found
    in voxel (IJK) coordinates are mapped through ``ijk_to_ras``, so oblique and anisotropic grids
    give correct millimetres; faces are then oriented outward whatever the sign of the matrix
    determinant (the enclosed volume is positive).

    Args:
        mask: (I, J, K) array, bool or numeric (e.g. a probability map), numpy or torch.
        ijk_to_ras: (4, 4) homogeneous matrix from voxel indices to RAS mm.
        level: iso-value separating inside (above) from outside.
        smoothing_mm: standard deviation in mm of an optional Gaussian blur of the mask before
            meshing (0 disables it); converted to voxels per axis from the matrix column norms.

    Returns:
        verts (V, 3) float32 RAS mm and faces (F, 3) int64, on the CPU.

    Raises:
        VolumeError: a mask that is not 3-D or has no voxel above ``level``, a bad matrix, or a
            negative smoothing.
    """
    raw = np.asarray(torch.as_tensor(mask).detach().cpu())
    matrix = checked_matrix(ijk_to_ras)
    if raw.ndim != 3:
        raise VolumeError("mask", f"must be a 3-D (I, J, K) array, got shape {raw.shape}")
    if smoothing_mm < 0:
        raise VolumeError("smoothing_mm", f"must be >= 0, got {smoothing_mm}")
    sigma_voxels = smoothing_mm / np.linalg.norm(matrix[:3, :3], axis=0)
    pad = 1 + math.ceil(3 * float(sigma_voxels.max()))
    # Only the box around the voxels above the level (with two pads of margin, so a blur sees
    # the same neighbourhood) is meshed: a small structure in a large volume costs little.
    box = occupied_box(raw > level, 2 * pad)
    if box is None:
        raise VolumeError("mask", f"has no voxel above level {level}, so there is no surface")
    start = np.array([axis.start for axis in box])
    values = raw[box].astype(np.float64)
    padded = np.pad(values, pad, mode="constant", constant_values=min(0.0, float(raw.min())))
    if smoothing_mm > 0:
        padded = gaussian_filter(padded, sigma_voxels, mode="nearest")
    ijk, faces, _, _ = marching_cubes(padded, level=level, allow_degenerate=False)
    ras = (ijk - pad + start) @ matrix[:3, :3].T + matrix[:3, 3]

    verts_t = torch.from_numpy(ras).to(torch.get_default_dtype())
    faces_t = torch.from_numpy(faces.astype(np.int64))
    if float(enclosed_volume(verts_t.double(), faces_t)) < 0:
        faces_t = faces_t.flip(1)
    return verts_t, faces_t


def contour_points_on_slices(mask: ArrayLike, ijk_to_ras: ArrayLike, axis: int) -> torch.Tensor:
    """Points on the in-plane boundary of a mask on each of its slices along ``axis``, RAS mm.

    For stacks of thick or widely spaced slices (a cine short-axis stack): what is known is the
    outline on each slice, not a surface between them, which marching cubes would put half-way.
    Each slice is padded with background, so an outline touching the slice edge closes there.

    Args:
        mask: (I, J, K) bool or numeric array (inside above 0.5), numpy or torch.
        ijk_to_ras: (4, 4) voxel-to-RAS matrix, mm.
        axis: the slice axis (0, 1 or 2).

    Returns:
        (P, 3) float32 points on the slices' planes (P = 0 for an empty mask).
    """
    raw = np.asarray(torch.as_tensor(mask).detach().cpu()) > 0.5
    matrix = checked_matrix(ijk_to_ras)
    if raw.ndim != 3:
        raise VolumeError("mask", f"must be a 3-D (I, J, K) array, got shape {raw.shape}")
    in_plane = [a for a in range(3) if a != axis]
    points = []
    for index in np.flatnonzero(raw.any(axis=tuple(in_plane))):
        plane = np.pad(np.take(raw, index, axis=axis).astype(np.float64), 1)
        for contour in find_contours(plane, 0.5):
            ijk = np.empty((contour.shape[0], 3))
            ijk[:, in_plane] = contour - 1.0
            ijk[:, axis] = index
            points.append(ijk)
    if not points:
        return torch.zeros(0, 3, dtype=torch.float32)
    ijk = np.concatenate(points)
    return torch.as_tensor(ijk @ matrix[:3, :3].T + matrix[:3, 3], dtype=torch.float32)
