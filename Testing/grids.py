"""Test grids: oblique, anisotropic IJK-to-RAS matrices that catch axis-order and LPS/RAS mistakes."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

#: Spacing (mm) and origin (RAS mm) of the standard oblique test grid.
OBLIQUE_SPACING = np.array([0.7, 1.3, 2.5])
OBLIQUE_ORIGIN = np.array([-40.0, 25.0, 12.5])


def rotation(axis: int, degrees: float) -> np.ndarray:
    """(3, 3) right-handed rotation about RAS axis 0 (R), 1 (A) or 2 (S)."""
    return Rotation.from_rotvec(np.radians(degrees) * np.eye(3)[axis]).as_matrix()


def oblique_ijk_to_ras(
    spacing: np.ndarray = OBLIQUE_SPACING,
    origin: np.ndarray = OBLIQUE_ORIGIN,
    about_s_deg: float = 30.0,
    about_r_deg: float = 20.0,
) -> np.ndarray:
    """(4, 4) grid matrix: ``spacing`` mm voxels, rotated ``about_r_deg`` about R then ``about_s_deg``
    about S, with ``origin`` off zero."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation(2, about_s_deg) @ rotation(0, about_r_deg) @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix
