"""Seeded left-ventricle surface phantoms (ED and ES) with known volumes, in vertex correspondence.

Frame and units: RAS millimetres in a canonical LV frame. The long axis is +S (z), pointing from
the apex to the base; the base plane is z = 0 with its centre at the origin, the apex at z < 0.

Shape: each surface (endocardium, epicardium) is a truncated prolate ellipsoid, open at the base
plane, sampled on one parametric grid: an apex vertex, then ``n_longitudinal`` rings of
``n_circumferential`` vertices from apex to base (the last ring is the base boundary). Endocardium
and epicardium share the grid, so vertex ``i`` of the endocardium faces vertex ``i`` of the
epicardium, and every phantom built with the same grid size has the same faces, whatever the
phase, subject or parameters. A seed adds smooth low-order harmonic perturbations of the in-plane
radius (the base ring stays in the plane z = 0).

Both surfaces are oriented with normals pointing away from the cavity, so closing the base with a
centroid fan (``cardiocore.geometry.volume.close_boundary``) gives a positive enclosed volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq

from cardiocore.errors import CardioInputError
from cardiocore.geometry.volume import MM3_PER_ML, close_boundary, enclosed_volume

# Height of the base plane above the ellipsoid's centre, as a fraction of the long semi-axis.
BASE_FRACTION = 0.25
# ES contraction: longitudinal shortening per unit of radial contraction, and how much less the
# base contracts radially than the apex (0 = uniform).
LONGITUDINAL_PER_RADIAL = 0.4
BASAL_RADIAL_SPARING = 0.35
# Standard deviations of the seeded harmonic perturbations, keyed (circumferential order m,
# longitudinal order n): relative changes of the in-plane radius.
PERTURBATION_STD = {
    (0, 1): 0.04,
    (0, 2): 0.02,
    (1, 0): 0.03,
    (1, 1): 0.02,
    (2, 0): 0.03,
    (2, 1): 0.015,
    (3, 0): 0.015,
}
# Physiological ranges drawn by ``lv_cohort`` (uniform).
COHORT_RANGES = {
    "edv_ml": (90.0, 180.0),
    "ef_percent": (50.0, 70.0),
    "sphericity": (0.5, 0.7),
    "wall_thickness_mm": (8.0, 12.0),
}


@dataclass(frozen=True)
class LVPhantom:
    """One LV phantom at one phase.

    Attributes:
        phase: "ED" or "ES".
        endo_verts: endocardial vertices (Ve, 3), mm.
        epi_verts: epicardial vertices (Vp, 3), mm (Vp == Ve, same parametric grid).
        endo_faces: endocardial triangles (F, 3) int64, indices into ``endo_verts``.
        epi_faces: epicardial triangles (F, 3) int64, indices into ``epi_verts``.
        cavity_ml: endocardial cavity volume with the base closed, ml.
        myocardium_ml: myocardial volume (closed epicardium minus closed endocardium), ml.
        edv_ml, ef_percent, sphericity, wall_thickness_mm, seed: the subject's parameters.
    """

    phase: str
    endo_verts: torch.Tensor
    epi_verts: torch.Tensor
    endo_faces: torch.Tensor
    epi_faces: torch.Tensor
    cavity_ml: float
    myocardium_ml: float
    edv_ml: float
    ef_percent: float
    sphericity: float
    wall_thickness_mm: float
    seed: int | None

    @property
    def verts(self) -> torch.Tensor:
        """Combined vertices (Ve + Vp, 3): endocardium first, then epicardium (CAP atlas layout)."""
        return torch.cat([self.endo_verts, self.epi_verts])

    @property
    def faces(self) -> torch.Tensor:
        """Combined triangles (2F, 3) indexing ``verts``: endocardial faces, then epicardial."""
        return torch.cat([self.endo_faces, self.epi_faces + self.endo_verts.shape[0]])


def lv_grid_faces(n_circumferential: int, n_longitudinal: int) -> torch.Tensor:
    """Triangles of the shared LV grid: apex vertex 0, then rings of ``n_circumferential`` vertices.

    Returns:
        (n_circumferential * (2 * n_longitudinal - 1), 3) int64, oriented so that the normals of a
        cup whose rings run counter-clockwise seen from the base point away from the cavity.
    """
    n_c, n_l = n_circumferential, n_longitudinal
    j = torch.arange(n_c)
    j_next = (j + 1) % n_c
    apex_fan = torch.stack([torch.zeros_like(j), 1 + j_next, 1 + j], dim=1)
    rings = torch.arange(n_l - 1).unsqueeze(1)
    lower, lower_next = 1 + rings * n_c + j, 1 + rings * n_c + j_next
    upper, upper_next = lower + n_c, lower_next + n_c
    first = torch.stack([lower, lower_next, upper], dim=-1).reshape(-1, 3)
    second = torch.stack([lower_next, upper_next, upper], dim=-1).reshape(-1, 3)
    return torch.cat([apex_fan, first, second]).to(torch.int64)


def _perturbation(s: np.ndarray, phi: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Relative in-plane radius change delta(s, phi) from seeded low-order harmonics.

    Args:
        s: normalised height on the grid, 0 at the apex and 1 at the base, shape (K, 1).
        phi: circumferential angle in radians, shape (1, J).
        rng: random generator, or None for no perturbation.

    Returns:
        delta (K, J), dimensionless.
    """
    delta = np.zeros(np.broadcast_shapes(s.shape, phi.shape))
    if rng is None:
        return delta
    for (m, n), std in PERTURBATION_STD.items():
        amplitude = std * float(np.clip(rng.standard_normal(), -2.5, 2.5))
        phase = rng.uniform(0.0, 2.0 * math.pi)
        delta = delta + amplitude * np.cos(m * phi - phase) * np.cos(n * math.pi * s)
    return delta


def _ellipsoid_cup(
    radial_axis: float,
    long_axis: float,
    centre_z: float,
    s: np.ndarray,
    phi: np.ndarray,
    delta: np.ndarray,
) -> np.ndarray:
    """Grid points of a prolate ellipsoid (semi-axes radial, radial, long) centred at (0, 0, centre_z),
    cut by the plane z = 0.

    Args:
        s: (K, 1) normalised heights in [0, 1] (0 = apex, 1 = base ring on z = 0).
        phi: (1, J) angles; delta: (K, J) relative in-plane radius perturbation.

    Returns:
        (1 + (K - 1) * J, 3) vertices: the apex, then the rings for s[1:], mm.
    """
    theta_base = math.acos(centre_z / long_axis)
    theta = s * theta_base
    rho = radial_axis * np.sin(theta) * (1.0 + delta)
    z = np.broadcast_to(centre_z - long_axis * np.cos(theta), rho.shape)
    rings = np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=-1)[1:].reshape(-1, 3)
    return np.concatenate([[[0.0, 0.0, centre_z - long_axis]], rings])


def _contract(endo: np.ndarray, amount: float) -> np.ndarray:
    """ES contraction of ED endocardial vertices (N, 3): radial shrinking (less at the base) and
    longitudinal shortening towards the fixed base plane, both growing with ``amount`` in [0, 1)."""
    apex_z = endo[:, 2].min()
    height = endo[:, 2] / apex_z  # 1 at the apex, 0 at the base plane
    radial = 1.0 - amount * (1.0 - BASAL_RADIAL_SPARING * (1.0 - height))
    longitudinal = 1.0 - LONGITUDINAL_PER_RADIAL * amount
    return endo * np.stack([radial, radial, np.full_like(radial, longitudinal)], axis=1)


def _check_parameters(edv_ml, ef_percent, sphericity, wall_thickness_mm, n_c, n_l) -> None:
    checks = [
        ("edv_ml", edv_ml, 5.0, 1000.0, "an adult LV holds about 90-180 ml at ED"),
        ("ef_percent", ef_percent, 5.0, 90.0, "ejection fraction in percent, e.g. 60"),
        ("sphericity", sphericity, 0.25, 1.0, "short/long semi-axis ratio, e.g. 0.6"),
        ("wall_thickness_mm", wall_thickness_mm, 1.0, 40.0, "myocardial wall in mm, e.g. 10"),
    ]
    for name, value, low, high, hint in checks:
        if not (low <= float(value) <= high):
            raise CardioInputError(name, f"must lie in [{low}, {high}], got {value}", hint)
    if int(n_c) < 3 or int(n_l) < 2:
        raise CardioInputError("grid size", f"needs n_circumferential >= 3 and n_longitudinal >= 2, got {n_c}, {n_l}")


class _CavityVolume:
    """Fast cavity volume (ml) of grid surfaces for the root solvers: the base is closed with a
    centroid fan whose triangles ``close_boundary`` builds once for the shared grid."""

    def __init__(self, template: np.ndarray, faces: torch.Tensor, n_base: int) -> None:
        self.closed_faces = close_boundary(torch.as_tensor(template), faces)[1]
        self.n_base = n_base

    def __call__(self, verts: np.ndarray) -> float:
        closed = np.concatenate([verts, verts[-self.n_base :].mean(axis=0, keepdims=True)])
        return abs(float(enclosed_volume(torch.as_tensor(closed), self.closed_faces))) / MM3_PER_ML

    def myocardium(self, endo: np.ndarray, epi: np.ndarray) -> float:
        return self(epi) - self(endo)


def lv_phantom_pair(
    edv_ml: float = 130.0,
    ef_percent: float = 60.0,
    sphericity: float = 0.6,
    wall_thickness_mm: float = 10.0,
    n_circumferential: int = 48,
    n_longitudinal: int = 16,
    seed: int | None = None,
) -> tuple[LVPhantom, LVPhantom]:
    """One subject's LV at end-diastole and end-systole, in vertex correspondence.

    ED: the endocardial ellipsoid has semi-axes (sphericity * c, sphericity * c, c) with c solved so
    that the closed cavity holds exactly ``edv_ml`` (the shape scales uniformly, so the cube law is
    exact for the discrete mesh); the epicardium is the ellipsoid with the same centre and every
    semi-axis ``wall_thickness_mm`` longer, cut by the same base plane.
    ES: the ED endocardium contracts radially (less at the base) and shortens towards the base
    plane by an amount solved (Brent) so that (EDV - ESV) / EDV equals ``ef_percent``; the ES
    epicardium lies along the ED wall directions, thickened by a factor solved so that the
    myocardial volume equals the ED one (incompressible myocardium).

    Args:
        edv_ml: end-diastolic cavity volume, ml.
        ef_percent: ejection fraction, percent.
        sphericity: short/long semi-axis ratio of the unperturbed endocardium (1 = hemisphere-like).
        wall_thickness_mm: ED wall thickness (equal at the equator and the apex), mm.
        n_circumferential, n_longitudinal: grid size (vertices per ring, rings per surface).
        seed: random seed of the shape perturbation; None gives the unperturbed ellipsoids.

    Returns:
        (ED phantom, ES phantom).

    Raises:
        CardioInputError: a parameter outside its plausible range.
    """
    _check_parameters(edv_ml, ef_percent, sphericity, wall_thickness_mm, n_circumferential, n_longitudinal)
    rng = None if seed is None else np.random.default_rng(seed)
    s = np.linspace(0.0, 1.0, n_longitudinal + 1)[:, None]
    phi = np.linspace(0.0, 2.0 * math.pi, n_circumferential, endpoint=False)[None, :]
    delta = _perturbation(s, phi, rng)
    faces = lv_grid_faces(n_circumferential, n_longitudinal)

    unit_endo = _ellipsoid_cup(sphericity, 1.0, -BASE_FRACTION, s, phi, delta)
    volume = _CavityVolume(unit_endo, faces, n_circumferential)
    long_axis = (edv_ml / volume(unit_endo)) ** (1.0 / 3.0)
    centre_z = -BASE_FRACTION * long_axis
    ed_endo = unit_endo * long_axis
    ed_epi = _ellipsoid_cup(
        sphericity * long_axis + wall_thickness_mm, long_axis + wall_thickness_mm, centre_z, s, phi, delta
    )

    esv_ml = edv_ml * (1.0 - ef_percent / 100.0)
    amount = brentq(lambda a: volume(_contract(ed_endo, a)) - esv_ml, 0.0, 0.95, xtol=1e-10)
    es_endo = _contract(ed_endo, amount)
    ed_myocardium = volume.myocardium(ed_endo, ed_epi)
    wall = ed_epi - ed_endo
    thickening = brentq(lambda k: volume.myocardium(es_endo, es_endo + k * wall) - ed_myocardium, 0.5, 6.0, xtol=1e-10)
    es_epi = es_endo + thickening * wall

    def build(phase: str, endo: np.ndarray, epi: np.ndarray) -> LVPhantom:
        dtype = torch.get_default_dtype()
        return LVPhantom(
            phase=phase,
            endo_verts=torch.as_tensor(endo, dtype=dtype),
            epi_verts=torch.as_tensor(epi, dtype=dtype),
            endo_faces=faces,
            epi_faces=faces.clone(),
            cavity_ml=volume(endo),
            myocardium_ml=volume.myocardium(endo, epi),
            edv_ml=float(edv_ml),
            ef_percent=float(ef_percent),
            sphericity=float(sphericity),
            wall_thickness_mm=float(wall_thickness_mm),
            seed=seed,
        )

    return build("ED", ed_endo, ed_epi), build("ES", es_endo, es_epi)


def lv_phantom(
    phase: str = "ED",
    edv_ml: float = 130.0,
    ef_percent: float = 60.0,
    sphericity: float = 0.6,
    wall_thickness_mm: float = 10.0,
    n_circumferential: int = 48,
    n_longitudinal: int = 16,
    seed: int | None = None,
) -> LVPhantom:
    """One LV phantom at ``phase`` ("ED" or "ES"); see :func:`lv_phantom_pair` for the parameters.

    Raises:
        CardioInputError: an unknown phase or a parameter outside its plausible range.
    """
    phases = ("ED", "ES")
    if phase not in phases:
        raise CardioInputError("phase", f"must be one of {phases}, got {phase!r}")
    pair = lv_phantom_pair(edv_ml, ef_percent, sphericity, wall_thickness_mm, n_circumferential, n_longitudinal, seed)
    return pair[phases.index(phase)]


def lv_cohort(
    n: int,
    seed: int = 0,
    n_circumferential: int = 48,
    n_longitudinal: int = 16,
) -> list[tuple[LVPhantom, LVPhantom]]:
    """A seeded cohort of (ED, ES) LV pairs, all in vertex correspondence.

    Each subject draws EDV, EF, sphericity and wall thickness uniformly from ``COHORT_RANGES``
    (EDV 90-180 ml, EF 50-70 %, sphericity 0.5-0.7, wall 8-12 mm) and its own shape seed.

    Args:
        n: number of subjects (>= 1).
        seed: cohort seed; the same seed gives the same cohort.
        n_circumferential, n_longitudinal: grid size shared by every subject.

    Returns:
        list of n (ED, ES) tuples.
    """
    if int(n) < 1:
        raise CardioInputError("n", f"cohort size must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    cohort = []
    for _ in range(int(n)):
        params = {name: float(rng.uniform(low, high)) for name, (low, high) in COHORT_RANGES.items()}
        subject_seed = int(rng.integers(0, 2**31 - 1))
        cohort.append(
            lv_phantom_pair(
                **params, n_circumferential=n_circumferential, n_longitudinal=n_longitudinal, seed=subject_seed
            )
        )
    return cohort
