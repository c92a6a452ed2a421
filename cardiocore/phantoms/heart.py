"""Seeded whole-heart label phantom: seven structures from analytic implicit shapes, on any grid.

The anatomy lives in world RAS millimetres, independent of the voxel grid: every voxel centre is
mapped to RAS with the grid's IJK-to-RAS matrix and labelled by the implicit shapes, so an
axis-aligned and an oblique, anisotropic grid sample the same heart.

Heart frame (mm): w is the LV long axis from apex to base, with the mitral/base plane at w = 0;
u points from the LV towards the RV (across the septum); v = w x u. Ventricles lie below the base
plane (w <= 0), atria and great arteries above it (w >= 0). The frame is rotated into RAS so that
the apex points left, anterior and inferior, as in a patient lying in a scanner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from cardiocore.errors import CardioInputError, VolumeError


@dataclass(frozen=True)
class Structure:
    """One labelled structure: display name, label value, RGB colour (0-255), MM-WHS label value."""

    name: str
    label: int
    color: tuple[int, int, int]
    mmwhs_label: int


HEART_STRUCTURES: tuple[Structure, ...] = (
    Structure("LV cavity", 1, (204, 62, 62), 500),
    Structure("LV myocardium", 2, (240, 180, 110), 205),
    Structure("RV", 3, (70, 110, 210), 600),
    Structure("LA", 4, (235, 110, 140), 420),
    Structure("RA", 5, (120, 180, 230), 550),
    Structure("aorta", 6, (200, 30, 30), 820),
    Structure("pulmonary artery", 7, (40, 60, 170), 850),
)
LABEL = {structure.name: structure.label for structure in HEART_STRUCTURES}
# Labels win over the ones after them where shapes overlap.
PRECEDENCE = ("LV cavity", "LV myocardium", "aorta", "pulmonary artery", "LA", "RA", "RV")

# Nominal shapes in the heart frame (u, v, w), mm: ellipsoids as (centre, semi-axes), vessels as
# (polyline, radius).
_LV_CENTRE = (0.0, 0.0, -12.0)
_LV_ENDO_AXES = (25.0, 25.0, 48.0)
_LV_WALL_MM = 10.0
_RV = ((18.0, 4.0, -18.0), (34.0, 44.0, 42.0))
_LA = ((-4.0, -16.0, 14.0), (22.0, 18.0, 20.0))
_RA = ((38.0, -2.0, 16.0), (16.0, 18.0, 20.0))
_AORTA = (((8.0, 10.0, -4.0), (8.0, 10.0, 26.0), (2.0, -2.0, 44.0), (-12.0, -18.0, 40.0)), 12.0)
_PA = (((28.0, 28.0, -4.0), (28.0, 28.0, 24.0), (14.0, 30.0, 42.0)), 11.0)
# Point of the heart frame placed at the RAS origin (roughly the centre of the heart's extent).
_HEART_CENTRE = (8.0, 2.0, -6.0)
# Seeded variation: relative size, position (mm) and orientation (degrees) standard deviations.
_SIZE_STD = 0.04
_SHIFT_STD_MM = 2.0
_TILT_STD_DEG = 6.0


def _nominal_rotation() -> np.ndarray:
    """Columns (u, v, w) of the heart frame in RAS: apex-to-base axis towards right, posterior and
    superior; u towards the right-anterior RV."""
    w = np.array([0.5, -0.5, 0.7])
    w /= np.linalg.norm(w)
    u = np.array([0.5, 0.8, 0.0])
    u -= (u @ w) * w
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(w, u), w], axis=1)


def _inside_ellipsoid(points: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    return (((points - centre) / axes) ** 2).sum(axis=-1) <= 1.0


def _inside_tube(points: np.ndarray, polyline: np.ndarray, radius: float) -> np.ndarray:
    """Points (N, 3) within ``radius`` of a polyline (M, 3): a chain of capsules."""
    inside = np.zeros(points.shape[0], dtype=bool)
    for start, end in zip(polyline[:-1], polyline[1:], strict=True):
        segment = end - start
        t = np.clip((points - start) @ segment / (segment @ segment), 0.0, 1.0)
        inside |= np.linalg.norm(points - start - t[:, None] * segment, axis=1) <= radius
    return inside


def _truncated_ellipsoid_ml(axes: np.ndarray, centre_w: float) -> float:
    """Volume (ml) of the part w <= 0 of an ellipsoid with semi-axes (a, b, c) centred at w = centre_w."""
    a, b, c = axes
    h = float(np.clip(-centre_w, -c, c))  # height of the cut above the centre
    return float(np.pi * a * b * ((h + c) - (h**3 + c**3) / (3.0 * c**2))) / 1000.0


@dataclass(frozen=True)
class HeartAnatomy:
    """The analytic heart: implicit shapes in the heart frame and the frame's pose in RAS.

    Attributes:
        rotation: (3, 3) columns (u, v, w) of the heart frame in RAS.
        centre_ras: (3,) RAS position (mm) of the heart-frame origin (the LV base-plane centre).
        lv_centre, lv_endo_axes, lv_epi_axes: LV ellipsoids (heart frame, mm), cut at w = 0.
        ellipsoids: name -> (centre, semi-axes) for RV, LA, RA (heart frame, mm).
        vessels: name -> (polyline (M, 3), radius) for the aorta and pulmonary artery.
    """

    rotation: np.ndarray
    centre_ras: np.ndarray
    lv_centre: np.ndarray
    lv_endo_axes: np.ndarray
    lv_epi_axes: np.ndarray
    ellipsoids: dict[str, tuple[np.ndarray, np.ndarray]]
    vessels: dict[str, tuple[np.ndarray, float]]

    @property
    def lv_long_axis(self) -> np.ndarray:
        """Unit LV long axis in RAS, from apex to base, (3,)."""
        return self.rotation[:, 2].copy()

    def to_heart_frame(self, points_ras: np.ndarray) -> np.ndarray:
        """RAS points (N, 3) mm -> heart-frame (u, v, w) mm."""
        return (np.asarray(points_ras, dtype=float) - self.centre_ras) @ self.rotation

    def to_ras(self, points_heart: np.ndarray) -> np.ndarray:
        """Heart-frame points (N, 3) or (3,) mm -> RAS (N, 3) mm."""
        return np.atleast_2d(points_heart) @ self.rotation.T + self.centre_ras

    def label_at(self, points_ras: np.ndarray) -> np.ndarray:
        """Structure label (see ``HEART_STRUCTURES``; 0 = background) at RAS points (N, 3) mm.

        Returns:
            int16 (N,).
        """
        p = self.to_heart_frame(np.asarray(points_ras, dtype=float).reshape(-1, 3))
        below_base, above_base = p[:, 2] <= 0.0, p[:, 2] >= 0.0
        lv_epi = below_base & _inside_ellipsoid(p, self.lv_centre, self.lv_epi_axes)
        masks = {
            "LV cavity": below_base & _inside_ellipsoid(p, self.lv_centre, self.lv_endo_axes),
            "LV myocardium": lv_epi,
            "RV": below_base & _inside_ellipsoid(p, *self.ellipsoids["RV"]) & ~lv_epi,
            "LA": above_base & _inside_ellipsoid(p, *self.ellipsoids["LA"]),
            "RA": above_base & _inside_ellipsoid(p, *self.ellipsoids["RA"]),
            "aorta": above_base & _inside_tube(p, *self.vessels["aorta"]),
            "pulmonary artery": above_base & _inside_tube(p, *self.vessels["pulmonary artery"]),
        }
        labels = np.zeros(p.shape[0], dtype=np.int16)
        for name in reversed(PRECEDENCE):
            labels[masks[name]] = LABEL[name]
        return labels

    def analytic_volumes_ml(self) -> dict[str, float]:
        """Exact volumes (ml) of the structures no other shape overrides: LV cavity and myocardium."""
        centre_w = float(self.lv_centre[2])
        cavity = _truncated_ellipsoid_ml(self.lv_endo_axes, centre_w)
        return {
            "LV cavity": cavity,
            "LV myocardium": _truncated_ellipsoid_ml(self.lv_epi_axes, centre_w) - cavity,
        }


def heart_anatomy(seed: int | None = None) -> HeartAnatomy:
    """The nominal heart (``seed=None``) or a seeded variant: sizes scaled by ~4 %, shapes shifted
    by ~2 mm and the whole heart tilted by ~6 degrees (standard deviations)."""
    rng = None if seed is None else np.random.default_rng(seed)

    def size() -> float:
        return 1.0 if rng is None else float(np.clip(1.0 + _SIZE_STD * rng.standard_normal(), 0.9, 1.1))

    def shift() -> np.ndarray:
        return np.zeros(3) if rng is None else np.clip(_SHIFT_STD_MM * rng.standard_normal(3), -5.0, 5.0)

    rotation = _nominal_rotation()
    if rng is not None:
        axis = rng.standard_normal(3)
        angle = np.deg2rad(np.clip(_TILT_STD_DEG * rng.standard_normal(), -15.0, 15.0))
        rotation = Rotation.from_rotvec(angle * axis / np.linalg.norm(axis)).as_matrix() @ rotation
    lv_scale = size()
    lv_centre = np.array(_LV_CENTRE) * lv_scale
    lv_endo = np.array(_LV_ENDO_AXES) * lv_scale
    wall = _LV_WALL_MM * size()
    ellipsoids = {
        name: (np.array(centre) + shift(), np.array(axes) * size())
        for name, (centre, axes) in (("RV", _RV), ("LA", _LA), ("RA", _RA))
    }
    vessels = {}
    for name, (polyline, radius) in (("aorta", _AORTA), ("pulmonary artery", _PA)):
        vessels[name] = (np.array(polyline) + shift(), radius * size())
    return HeartAnatomy(
        rotation=rotation,
        centre_ras=-(rotation @ np.array(_HEART_CENTRE)),
        lv_centre=lv_centre,
        lv_endo_axes=lv_endo,
        lv_epi_axes=lv_endo + wall,
        ellipsoids=ellipsoids,
        vessels=vessels,
    )


@dataclass(frozen=True)
class HeartPhantom:
    """A voxelised heart.

    Attributes:
        labels: (I, J, K) int16 label map (values from ``structures``; 0 = background).
        ijk_to_ras: (4, 4) float64 matrix from voxel indices to RAS mm.
        structures: the label table (name, label, colour, MM-WHS label).
        truth: the analytic anatomy (``label_at``, ``analytic_volumes_ml``, LV axis).
    """

    labels: np.ndarray
    ijk_to_ras: np.ndarray
    structures: tuple[Structure, ...]
    truth: HeartAnatomy


def grid_ijk_to_ras(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    direction: np.ndarray | None = None,
    origin: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """IJK-to-RAS (4, 4) of a grid; ``origin=None`` centres the grid on the RAS origin.

    Args:
        shape: (I, J, K) voxels; spacing: (3,) mm; direction: (3, 3) orthonormal direction cosines
            (columns = RAS directions of the I, J, K axes), identity when None.

    Raises:
        VolumeError: a non-positive size or spacing, or a direction matrix that is not orthonormal.
    """
    shape_a = np.asarray(shape, dtype=float)
    spacing_a = np.asarray(spacing, dtype=float)
    if shape_a.shape != (3,) or np.any(shape_a < 1):
        raise VolumeError("shape", f"must be three positive sizes, got {shape}")
    if spacing_a.shape != (3,) or not np.all(spacing_a > 0):
        raise VolumeError("spacing", f"must be three positive values in mm, got {spacing}")
    direction_a = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    if direction_a.shape != (3, 3) or not np.allclose(direction_a.T @ direction_a, np.eye(3), atol=1e-6):
        raise VolumeError("direction", "must be a (3, 3) orthonormal matrix of direction cosines")
    matrix = np.eye(4)
    matrix[:3, :3] = direction_a * spacing_a
    if origin is None:
        matrix[:3, 3] = -matrix[:3, :3] @ ((shape_a - 1.0) / 2.0)
    else:
        matrix[:3, 3] = np.asarray(origin, dtype=float)
    return matrix


def voxel_centres_ras(shape: tuple[int, int, int], ijk_to_ras: np.ndarray) -> np.ndarray:
    """RAS coordinates (I * J * K, 3) mm of every voxel centre, in C order of (i, j, k)."""
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    return ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]


def heart_label_phantom(
    shape: tuple[int, int, int] = (96, 96, 96),
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5),
    direction: np.ndarray | None = None,
    origin: tuple[float, float, float] | None = None,
    seed: int | None = None,
) -> HeartPhantom:
    """Label map of a seven-structure heart (MM-WHS-like) sampled at the voxel centres of a grid.

    Each voxel takes the label of the highest-precedence shape containing its centre (so no
    overlaps): LV cavity, then LV myocardium (which wraps the cavity except at the base plane,
    where the LA and aorta sit), aorta, pulmonary artery, LA, RA, RV. The heart spans about
    130 mm and is centred on the RAS origin, which the default grid (144 mm wide) centres on.

    Args:
        shape: grid size (I, J, K).
        spacing: voxel size (3,) mm.
        direction: (3, 3) orthonormal direction cosines, identity when None (oblique allowed).
        origin: RAS position of voxel (0, 0, 0) in mm; None centres the grid on the heart.
        seed: None for the nominal heart, an integer for a seeded variant.

    Returns:
        HeartPhantom with the label map, its IJK-to-RAS matrix, the structure table and the truth.
    """
    if origin is not None and np.asarray(origin).shape != (3,):
        raise CardioInputError("origin", f"must be three RAS coordinates in mm, got {origin}")
    ijk_to_ras = grid_ijk_to_ras(shape, spacing, direction, origin)
    anatomy = heart_anatomy(seed)
    labels = anatomy.label_at(voxel_centres_ras(shape, ijk_to_ras)).reshape(tuple(int(n) for n in shape))
    return HeartPhantom(labels=labels, ijk_to_ras=ijk_to_ras, structures=HEART_STRUCTURES, truth=anatomy)
