"""Sparse short-axis slices cut from a 3D label volume, each with its own plane-to-RAS matrix.

A slice is a 2D image ``image[i, j]`` whose pixel (i, j) lies at RAS
``slice_to_ras @ (i, j, 0, 1)``: the first two columns of ``slice_to_ras`` are the in-plane pixel
steps (mm), the third is the slice normal (the LV long axis, apex to base) times the slice
spacing, the fourth the RAS position of pixel (0, 0). The true 3D anatomy of every pixel is thus
known, which is what a sparse-slice reconstruction needs to be scored against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

from cardiocore.errors import CardioInputError, VolumeError
from cardiocore.geometry.grid import checked_matrix, label_mask
from cardiocore.phantoms.heart import LABEL, HeartPhantom

LV_LABELS = (LABEL["LV cavity"], LABEL["LV myocardium"])
# Default slices cover the LV extent along the long axis less this fraction at each end.
_END_MARGIN = 0.1


@dataclass(frozen=True)
class SliceStack:
    """Short-axis slices of a label volume.

    Attributes:
        images: (S, size, size) labels sampled (nearest neighbour) at the pixel centres, same dtype
            as the volume; slices ordered from apex to base.
        slice_to_ras: (S, 4, 4) matrix of each slice, pixel (i, j, 0) -> RAS mm.
        long_axis: (3,) unit LV long axis in RAS, apex to base (the slice normal).
        centre_ras: (3,) RAS point (mm) of the axis line that the slice centres lie on.
        positions_mm: (S,) signed distance of each slice from ``centre_ras`` along ``long_axis``.
    """

    images: np.ndarray
    slice_to_ras: np.ndarray
    long_axis: np.ndarray
    centre_ras: np.ndarray
    positions_mm: np.ndarray


def lv_long_axis(points_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal axis of LV points by PCA, oriented from apex to base.

    The LV is a cup, wide at the base and tapering to the apex, so its points' projections onto the
    long axis are skewed towards the apex; the axis is signed so that this skewness is negative.

    Args:
        points_ras: (N, 3) RAS points of the LV (cavity and myocardium), mm.

    Returns:
        (unit axis (3,), centroid (3,) mm).
    """
    centroid = points_ras.mean(axis=0)
    centred = points_ras - centroid
    _, vectors = np.linalg.eigh(centred.T @ centred)
    axis = vectors[:, -1]
    if np.mean((centred @ axis) ** 3) > 0.0:
        axis = -axis
    return axis, centroid


def _in_plane_axes(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors completing ``normal`` to a right-handed frame (e1, e2, normal)."""
    reference = np.eye(3)[int(np.argmin(np.abs(normal)))]
    e1 = reference - (reference @ normal) * normal
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(normal, e1)


def short_axis_stack(
    mask_or_phantom: np.ndarray | HeartPhantom,
    ijk_to_ras: np.ndarray | None = None,
    n_slices: int = 8,
    long_axis: np.ndarray | None = None,
    slice_spacing_mm: float | None = None,
    in_plane_spacing_mm: float = 1.5,
    size: int = 96,
    lv_labels: tuple[int, ...] = LV_LABELS,
) -> SliceStack:
    """Cut ``n_slices`` short-axis slices perpendicular to the LV long axis.

    Args:
        mask_or_phantom: a HeartPhantom, or a (I, J, K) label map (integer) or LV mask (bool).
        ijk_to_ras: (4, 4) voxel-to-RAS matrix of the volume; taken from the phantom when None.
        n_slices: number of slices (>= 1).
        long_axis: (3,) LV long axis in RAS (apex to base); estimated from the LV voxels by PCA
            when None.
        slice_spacing_mm: distance between slices; None spreads them over the LV's extent along
            the axis less 10 % at each end.
        in_plane_spacing_mm: pixel size in the slice, mm.
        size: pixels per side of each square slice.
        lv_labels: labels that make up the LV in a label map (ignored for a bool mask).

    Returns:
        SliceStack; slice centres lie on the line through the LV centroid along the axis.

    Raises:
        VolumeError: a volume that is not 3D, or a singular or missing ``ijk_to_ras``.
        CardioInputError: no LV voxels, a zero long axis, or non-positive sizes.
    """
    if isinstance(mask_or_phantom, HeartPhantom):
        volume, ijk_to_ras = mask_or_phantom.labels, mask_or_phantom.ijk_to_ras
    else:
        volume = np.asarray(mask_or_phantom)
    if volume.ndim != 3:
        raise VolumeError("volume", f"must be a 3D (I, J, K) array, got shape {volume.shape}")
    if ijk_to_ras is None:
        raise VolumeError("ijk_to_ras", "a (4, 4) voxel-to-RAS matrix is required for an array input")
    ijk_to_ras = checked_matrix(ijk_to_ras)
    bad_slice_spacing = slice_spacing_mm is not None and not slice_spacing_mm > 0
    if int(n_slices) < 1 or int(size) < 1 or not in_plane_spacing_mm > 0 or bad_slice_spacing:
        raise CardioInputError(
            "slice geometry",
            f"needs n_slices >= 1, size >= 1 and positive spacings, got {n_slices}, {size}, "
            f"{in_plane_spacing_mm}, {slice_spacing_mm}",
        )

    lv_mask = volume if volume.dtype == bool else label_mask(volume, lv_labels)
    if not lv_mask.any():
        raise CardioInputError("volume", "contains no LV voxels", f"expected labels {lv_labels} or a bool mask")
    lv_points = np.argwhere(lv_mask) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    axis, centre = lv_long_axis(lv_points)
    if long_axis is not None:
        given = np.asarray(long_axis, dtype=float).reshape(3)
        if not np.linalg.norm(given) > 0:
            raise CardioInputError("long_axis", "must be a non-zero 3-vector")
        axis = given / np.linalg.norm(given)

    heights = (lv_points - centre) @ axis
    low, high = heights.min(), heights.max()
    if slice_spacing_mm is None:
        margin = _END_MARGIN * (high - low)
        positions = np.linspace(low + margin, high - margin, int(n_slices))
        step = positions[1] - positions[0] if n_slices > 1 else in_plane_spacing_mm
    else:
        step = float(slice_spacing_mm)
        positions = 0.5 * (low + high) + (np.arange(int(n_slices)) - (n_slices - 1) / 2.0) * step

    e1, e2 = _in_plane_axes(axis)
    half_width = (size - 1) / 2.0 * in_plane_spacing_mm
    matrices = np.tile(np.eye(4), (len(positions), 1, 1))
    matrices[:, :3, 0] = e1 * in_plane_spacing_mm
    matrices[:, :3, 1] = e2 * in_plane_spacing_mm
    matrices[:, :3, 2] = axis * step
    matrices[:, :3, 3] = centre + positions[:, None] * axis - half_width * (e1 + e2)

    pixels = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), axis=-1).reshape(-1, 2)
    pixel_h = np.concatenate([pixels, np.zeros((pixels.shape[0], 1)), np.ones((pixels.shape[0], 1))], axis=1)
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    source = volume.astype(np.uint8) if volume.dtype == bool else volume
    images = []
    for matrix in matrices:
        ijk = (ras_to_ijk @ matrix @ pixel_h.T)[:3]
        sampled = map_coordinates(source, ijk, order=0, mode="constant", cval=0)
        images.append(sampled.reshape(size, size).astype(volume.dtype))
    return SliceStack(
        images=np.stack(images),
        slice_to_ras=matrices,
        long_axis=axis,
        centre_ras=centre,
        positions_mm=positions,
    )
