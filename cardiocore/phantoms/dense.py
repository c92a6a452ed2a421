"""Seeded 2D+t short-axis DENSE phantom with a prescribed time to onset of shortening per sector.

Image convention: ``field[..., i, j]`` is the pixel in row i, column j; x = j * spacing and
y = i * spacing (mm); component 0 of a displacement is along x, component 1 along y. Angles are
measured at the LV centre from +x towards +y.

Motion model (Lagrangian, frame 0 is the reference, so its displacement is zero): each material
point moves radially. The endocardial radius of angle theta follows the stretch curve f(theta, t)
of its sector; points in the wall keep the area between them and the endocardium (incompressible
myocardium, so the wall thickens as it shortens): r' = sqrt((R_endo f)^2 + r^2 - R_endo^2). The
cavity scales by f. Before its activation time a sector is slightly stretched (late regions are
pulled by the early ones); from its activation time on it shortens quickly towards
``peak_shortening``; after end-systole every sector relaxes back. Sector curves are blended
across sector borders by a narrow smooth window, so the field is smooth on the pixel scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from cardiocore.errors import CardioInputError

# Time constants (ms): pre-activation stretching, shortening after activation, relaxation.
_PRE_STRETCH_MS = 60.0
_SHORTENING_MS = 30.0
_RELAXATION_MS = 120.0
# Width (standard deviation) of the border blending window, as a fraction of a sector.
_BLEND_FRACTION = 0.15


@dataclass(frozen=True)
class DensePhantom:
    """A 2D+t short-axis displacement phantom.

    Attributes:
        displacement: (T, 2, H, W) float32 Lagrangian displacement in mm (x, y) of the material
            point at each frame-0 pixel centre; frame 0 is zero (up to rounding).
        mask: (H, W) bool myocardium (annulus) at frame 0.
        sectors: (H, W) int16 sector number 1..n_sectors inside the mask, 0 outside.
        activation_ms: (n_sectors,) prescribed time to onset of circumferential shortening, ms.
        times_ms: (T,) time of each frame, ms (frame t at t * frame_ms).
        spacing_mm: pixel size, mm.
        centre_xy_mm: (2,) LV centre (x, y), mm.
        radii_mm: (endocardial, epicardial) radius at frame 0, mm.
        first_sector_angle_deg: angle where sector 1 starts; sectors follow with increasing angle.
    """

    displacement: np.ndarray
    mask: np.ndarray
    sectors: np.ndarray
    activation_ms: np.ndarray
    times_ms: np.ndarray
    spacing_mm: float
    centre_xy_mm: np.ndarray
    radii_mm: tuple[float, float]
    first_sector_angle_deg: float


def _random_activation(n_sectors: int, earliest_ms: float, latest_ms: float, seed: int | None) -> np.ndarray:
    """Activation times (ms) of a dyssynchronous (LBBB-like) pattern: early on one side of the
    ventricle, late on the opposite side; seeded location, timing and jitter (None: a fixed one)."""
    rng = None if seed is None else np.random.default_rng(seed)
    centres = (np.arange(n_sectors) + 0.5) * 2.0 * math.pi / n_sectors
    latest_angle = math.pi if rng is None else rng.uniform(0.0, 2.0 * math.pi)
    span = latest_ms - earliest_ms
    onset = earliest_ms + (0.1 * span if rng is None else rng.uniform(0.0, 0.3) * span)
    spread = 0.6 * span if rng is None else rng.uniform(0.4, 0.7) * span
    jitter = np.zeros(n_sectors) if rng is None else rng.normal(0.0, 0.05 * span, n_sectors)
    pattern = onset + spread * (1.0 - np.cos(centres - latest_angle)) / 2.0 + jitter
    return np.clip(pattern, earliest_ms, latest_ms)


def _systolic_stretch(
    times_ms: np.ndarray, onset_ms: np.ndarray, pre_stretch: float, peak_shortening: float
) -> np.ndarray:
    """Endocardial stretch without relaxation: towards 1 + pre_stretch until the onset, then
    shortening towards 1 - peak_shortening. Broadcasts times against onsets."""
    before = pre_stretch * (1.0 - np.exp(-np.minimum(times_ms, onset_ms) / _PRE_STRETCH_MS))
    since = np.maximum(times_ms - onset_ms, 0.0)
    return 1.0 + before - (before + peak_shortening) * (1.0 - np.exp(-since / _SHORTENING_MS))


def _stretch_curves(
    times_ms: np.ndarray, activation_ms: np.ndarray, pre_stretch: float, peak_shortening: float, end_systole_ms: float
) -> np.ndarray:
    """Endocardial circumferential stretch (S, T) of each sector over time (1 = reference length)."""
    t, onset = times_ms[None, :], activation_ms[:, None]
    systolic = _systolic_stretch(t, onset, pre_stretch, peak_shortening)
    at_end_systole = _systolic_stretch(np.float64(end_systole_ms), onset, pre_stretch, peak_shortening)
    relaxed = 1.0 + (at_end_systole - 1.0) * np.exp(-np.maximum(t - end_systole_ms, 0.0) / _RELAXATION_MS)
    return np.where(t <= end_systole_ms, systolic, relaxed)


def _sector_windows(angle: np.ndarray, n_sectors: int, first_angle: float) -> np.ndarray:
    """Smooth periodic partition of unity (S, ...) over angle: ~1 inside each sector, blending
    across its borders over a Gaussian of ``_BLEND_FRACTION`` of the sector width."""
    width = 2.0 * math.pi / n_sectors
    centres = first_angle + (np.arange(n_sectors) + 0.5) * width
    offset = np.angle(np.exp(1j * (angle[None] - centres.reshape((-1,) + (1,) * angle.ndim))))
    scale = math.sqrt(2.0) * _BLEND_FRACTION * width
    windows = 0.5 * (erf((offset + width / 2.0) / scale) - erf((offset - width / 2.0) / scale))
    return windows / windows.sum(axis=0, keepdims=True)


def dense_phantom(
    n_frames: int = 25,
    frame_ms: float = 30.0,
    n_sectors: int = 18,
    activation_ms: np.ndarray | None = None,
    seed: int | None = None,
    size: int = 48,
    spacing_mm: float = 2.5,
    radii_mm: tuple[float, float] = (20.0, 32.0),
    peak_shortening: float = 0.25,
    pre_stretch: float = 0.01,
    end_systole_ms: float | None = None,
    first_sector_angle_deg: float = 0.0,
) -> DensePhantom:
    """A short-axis DENSE displacement phantom whose sectors start shortening at known times.

    Args:
        n_frames: number of frames T (>= 3).
        frame_ms: time between frames, ms.
        n_sectors: circumferential sectors (18 in the LMA papers).
        activation_ms: (n_sectors,) time to onset of shortening per sector, ms; drawn from ``seed``
            (a dyssynchronous pattern between 1 frame and 4 frames before end-systole) when None.
        seed: seed of the drawn activation pattern (None: a fixed pattern).
        size: image height and width, pixels.
        spacing_mm: pixel size, mm.
        radii_mm: endocardial and epicardial radius at frame 0, mm.
        peak_shortening: endocardial circumferential shortening reached after activation
            (0.25 = the endocardial circumference shrinks by up to 25 %).
        pre_stretch: endocardial stretch approached before activation (0.01 = 1 % longer).
        end_systole_ms: start of relaxation, ms; 45 % of the sequence when None.
        first_sector_angle_deg: angle (from +x towards +y) where sector 1 starts.

    Returns:
        DensePhantom (displacement in mm).

    Raises:
        CardioInputError: inconsistent sizes, radii that do not fit the image, or activation
            times outside [0, end-systole].
    """
    if int(n_frames) < 3 or int(n_sectors) < 1 or int(size) < 8 or not frame_ms > 0 or not spacing_mm > 0:
        raise CardioInputError(
            "DENSE phantom geometry",
            f"needs n_frames >= 3, n_sectors >= 1, size >= 8 and positive frame_ms and spacing, got "
            f"{n_frames}, {n_sectors}, {size}, {frame_ms}, {spacing_mm}",
        )
    endo_mm, epi_mm = (float(r) for r in radii_mm)
    half_width_mm = (size - 1) / 2.0 * spacing_mm
    if not 0.0 < endo_mm < epi_mm < half_width_mm:
        raise CardioInputError(
            "radii_mm", f"need 0 < endocardial < epicardial < {half_width_mm:.1f} mm, got {radii_mm}"
        )
    times = np.arange(int(n_frames)) * float(frame_ms)
    end_systole = 0.45 * times[-1] if end_systole_ms is None else float(end_systole_ms)
    if activation_ms is None:
        latest = end_systole - 4.0 * frame_ms
        if latest <= frame_ms:
            raise CardioInputError(
                "end_systole_ms",
                f"{end_systole:.0f} ms leaves no room for drawn activation times",
                "give activation_ms",
            )
        activation = _random_activation(int(n_sectors), float(frame_ms), latest, seed)
    else:
        activation = np.asarray(activation_ms, dtype=float).reshape(-1)
        if activation.shape != (int(n_sectors),):
            raise CardioInputError("activation_ms", f"needs {n_sectors} values, got {activation.size}")
    if np.any(activation < 0.0) or np.any(activation > end_systole):
        raise CardioInputError(
            "activation_ms",
            f"must lie in [0, {end_systole:.0f}] ms (end-systole), got {activation.min():.0f}..{activation.max():.0f}",
        )

    centre = np.full(2, half_width_mm)
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    x, y = cols * spacing_mm - centre[0], rows * spacing_mm - centre[1]
    radius, angle = np.hypot(x, y), np.arctan2(y, x)
    first_angle = math.radians(first_sector_angle_deg)

    curves = _stretch_curves(times, activation, pre_stretch, peak_shortening, end_systole)  # (S, T)
    stretch = np.einsum("st,shw->thw", curves, _sector_windows(angle, int(n_sectors), first_angle))
    # r' - r written as (r'^2 - r^2) / (r' + r) in the wall, to stay accurate for tiny motions.
    squared_change = endo_mm**2 * (stretch**2 - 1.0)
    wall_shift = squared_change / (np.sqrt(np.maximum(radius**2 + squared_change, 0.0)) + radius + 1e-12)
    radial_shift = np.where(radius >= endo_mm, wall_shift, radius * (stretch - 1.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        unit_x = np.where(radius > 0, x / radius, 0.0)
        unit_y = np.where(radius > 0, y / radius, 0.0)
    displacement = np.stack([radial_shift * unit_x, radial_shift * unit_y], axis=1).astype(np.float32)

    mask = (radius >= endo_mm) & (radius <= epi_mm)
    sector_width = 2.0 * math.pi / n_sectors
    sector_index = np.floor(np.mod(angle - first_angle, 2.0 * math.pi) / sector_width).astype(np.int16)
    sectors = np.where(mask, np.minimum(sector_index, n_sectors - 1) + 1, 0).astype(np.int16)
    return DensePhantom(
        displacement=displacement,
        mask=mask,
        sectors=sectors,
        activation_ms=activation,
        times_ms=times,
        spacing_mm=float(spacing_mm),
        centre_xy_mm=centre,
        radii_mm=(endo_mm, epi_mm),
        first_sector_angle_deg=float(first_sector_angle_deg),
    )
