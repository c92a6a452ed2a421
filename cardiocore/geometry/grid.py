"""Voxel grids: the check every function that reads a voxel-to-RAS matrix runs first."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cardiocore.errors import VolumeError
from cardiocore.geometry.mesh import ArrayLike


def checked_matrix(matrix: ArrayLike, what: str = "ijk_to_ras") -> np.ndarray:
    """A finite (4, 4) affine matrix (last row 0, 0, 0, 1) with an invertible 3x3 part, as
    float64; otherwise a VolumeError naming ``what`` (an image's voxel-to-RAS matrix, a pose, ...)."""
    array = np.asarray(torch.as_tensor(matrix).detach().cpu(), dtype=np.float64)
    if array.shape != (4, 4):
        raise VolumeError(what, f"must be a 4x4 matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise VolumeError(what, "contains NaN or infinite entries")
    if not np.array_equal(array[3], [0.0, 0.0, 0.0, 1.0]):
        raise VolumeError(what, f"last row must be [0, 0, 0, 1], got {array[3].tolist()}")
    if abs(np.linalg.det(array[:3, :3])) < 1e-12:
        raise VolumeError(what, "has a singular 3x3 part (zero spacing or collapsed axes)")
    return array


def label_mask(labels: np.ndarray, values: int | Sequence[int]) -> np.ndarray:
    """Voxels (I, J, K) bool whose label is ``values`` or any of several values (a union).

    One comparison per value: for the few values of a label coding that is far faster on a
    whole CT volume than ``np.isin``, which sorts.
    """
    mask = np.zeros(np.shape(labels), dtype=bool)
    for value in np.atleast_1d(np.asarray(values)).tolist():
        mask |= labels == int(value)
    return mask
