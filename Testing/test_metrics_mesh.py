"""Violation rates, Laplacian smoothness energy and clinical LV indices on analytic shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.primitives import icosphere
from cardiocore.metrics.clinical import ejection_fraction, long_axis_length, lv_indices
from cardiocore.metrics.smoothness import laplacian_smoothness_energy
from cardiocore.metrics.violation import (
    mask_violation_rate,
    surface_violation_rate,
    violation_rate,
    volume_violation_rate,
)

# --- violation rates ------------------------------------------------------------------------

BIG = icosphere(2, radius=10.0)


def small_sphere(center: tuple[float, float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    return icosphere(1, radius=3.0, center=center)


@pytest.mark.parametrize(
    ("center", "inside_fraction"),
    [((0.0, 0.0, 0.0), 1.0), ((30.0, 0.0, 0.0), 0.0)],
)
def test_small_sphere_fully_inside_or_outside(
    center: tuple[float, float, float], inside_fraction: float
) -> None:
    verts, faces = small_sphere(center)
    gen = torch.Generator().manual_seed(0)
    assert violation_rate(verts, *BIG, rule="disjoint").item() == inside_fraction
    assert violation_rate(verts, *BIG, rule="inside").item() == 1.0 - inside_fraction
    svr = surface_violation_rate(verts, faces, *BIG, rule="disjoint", n_points=300, generator=gen)
    vr = volume_violation_rate(verts, faces, *BIG, rule="inside", n_points=600, generator=gen)
    assert svr.item() == inside_fraction
    assert vr.item() == 1.0 - inside_fraction


def test_half_overlapping_sphere_matches_analytic_fractions() -> None:
    # Small sphere (r = 3) centred on the big sphere's surface (R = d = 10). A surface point
    # c + r u is inside when u_x < -r / (2 d): area fraction (1 - r / (2 d)) / 2 = 0.425.
    # A ball point at radius s is inside when u_x < -s / (2 d); averaging over s (density
    # 3 s^2 / r^3) gives the volume fraction 1/2 - 3 r / (16 d) = 0.44375. The coarse
    # polyhedral spheres shift both by about -0.02 (measured with 20,000 samples: 0.414, 0.413).
    verts, faces = small_sphere((10.0, 0.0, 0.0))
    svr = surface_violation_rate(verts, faces, *BIG, rule="disjoint", n_points=1500,
                                 generator=torch.Generator().manual_seed(1))
    assert svr.item() == pytest.approx(0.425, abs=0.05)
    vr_disjoint, vr_inside = (
        volume_violation_rate(verts, faces, *BIG, rule=rule, n_points=3000,
                              generator=torch.Generator().manual_seed(2))
        for rule in ("disjoint", "inside")
    )
    assert vr_disjoint.item() == pytest.approx(0.44375, abs=0.05)
    # Same samples under the two rules: every interior point violates exactly one of them.
    assert vr_disjoint.item() + vr_inside.item() == pytest.approx(1.0, abs=1e-6)


def test_mask_violation_rate_hand_case() -> None:
    a, b = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)
    a[0:2, 0:2, 0:2] = True  # 8 voxels
    b[1:4, 0:4, 0:4] = True  # covers the 4 voxels of a with i = 1
    assert mask_violation_rate(a, b, rule="disjoint") == pytest.approx(0.5)
    assert mask_violation_rate(a, b, rule="inside") == pytest.approx(0.5)
    assert mask_violation_rate(np.zeros_like(a), b) == 0.0
    with pytest.raises(CardioInputError, match="rule"):
        mask_violation_rate(a, b, rule="overlap")


# --- Laplacian smoothness energy ------------------------------------------------------------


def flat_grid(n: int = 12, spacing: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Regular triangulated n x n grid in the plane z = 0."""
    x, y = torch.meshgrid(torch.arange(n) * spacing, torch.arange(n) * spacing, indexing="ij")
    verts = torch.stack([x, y, torch.zeros_like(x)], dim=-1).reshape(-1, 3).float()
    index = torch.arange(n * n).reshape(n, n)
    a, b, c, d = index[:-1, :-1], index[1:, :-1], index[1:, 1:], index[:-1, 1:]
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    return verts, faces


@pytest.mark.parametrize("kind", ["uniform", "cotangent"])
def test_flat_grid_has_zero_energy(kind: str) -> None:
    assert laplacian_smoothness_energy(*flat_grid(), kind=kind).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("kind", ["uniform", "cotangent"])
def test_noise_raises_energy_and_energy_scales_as_mm_squared(kind: str) -> None:
    verts, faces = icosphere(3, radius=20.0)
    smooth = laplacian_smoothness_energy(verts, faces, kind=kind).item()
    noise = 0.5 * torch.randn(verts.shape, generator=torch.Generator().manual_seed(2))
    noisy = laplacian_smoothness_energy(verts + noise, faces, kind=kind).item()
    assert noisy > 5 * smooth
    doubled = laplacian_smoothness_energy(2 * verts, faces, kind=kind).item()
    assert doubled == pytest.approx(4 * smooth, rel=1e-4)


def test_energy_is_differentiable() -> None:
    verts, faces = icosphere(2, radius=5.0)
    noise = 0.1 * torch.randn(verts.shape, generator=torch.Generator().manual_seed(3))
    verts = (verts + noise).requires_grad_()
    laplacian_smoothness_energy(verts, faces, kind="cotangent").backward()
    assert verts.grad is not None and bool(torch.isfinite(verts.grad).all())


# --- clinical indices -----------------------------------------------------------------------


def cup(radius: float, n_rings: int = 16, n_segments: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Outward-oriented hemispherical cup z <= 0, open at the base circle z = 0, apex at -radius."""
    polar = torch.linspace(math.pi / 2, math.pi, n_rings + 1, dtype=torch.float64)[:-1]
    azimuth = torch.arange(n_segments, dtype=torch.float64) * (2 * math.pi / n_segments)
    p, a = torch.meshgrid(polar, azimuth, indexing="ij")
    rings = torch.stack([p.sin() * a.cos(), p.sin() * a.sin(), p.cos()], dim=-1).reshape(-1, 3)
    verts = radius * torch.cat([rings, torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)])
    index = torch.arange(n_rings * n_segments).reshape(n_rings, n_segments)
    nxt = index.roll(-1, dims=1)
    upper, lower = index[:-1], index[1:]
    upper_next, lower_next = nxt[:-1], nxt[1:]
    quads = torch.cat([
        torch.stack([upper, lower, lower_next], -1).reshape(-1, 3),
        torch.stack([upper, lower_next, upper_next], -1).reshape(-1, 3),
    ])
    apex = torch.full((n_segments,), n_rings * n_segments)
    fan = torch.stack([index[-1], apex, nxt[-1]], -1)
    return verts, torch.cat([quads, fan])


def hemisphere_ml(radius: float) -> float:
    return 2.0 / 3.0 * math.pi * radius**3 / 1000.0


@pytest.mark.parametrize(("endo_r", "epi_r"), [(20.0, 30.0), (15.0, 27.0)])
def test_concentric_cups_give_analytic_indices(endo_r: float, epi_r: float) -> None:
    endo, epi = cup(endo_r), cup(epi_r)
    indices = lv_indices(*endo, *epi)
    myocardium = hemisphere_ml(epi_r) - hemisphere_ml(endo_r)
    # The inscribed polyhedral cups lose about 0.5 % of the analytic volumes.
    assert indices.cavity_volume_ml == pytest.approx(hemisphere_ml(endo_r), rel=0.01)
    assert indices.myocardial_volume_ml == pytest.approx(myocardium, rel=0.01)
    assert indices.myocardial_mass_g == pytest.approx(1.05 * myocardium, rel=0.01)
    assert indices.long_axis_mm == pytest.approx(endo_r, rel=1e-6)  # base centre to apex
    # Hemisphere of radius r against a sphere of diameter r: (2/3 pi r^3) / (pi r^3 / 6) = 4.
    assert indices.sphericity_index == pytest.approx(4.0, rel=0.01)
    assert indices.mean_wall_thickness_mm == pytest.approx(epi_r - endo_r, rel=0.01)
    # Face orientation must not matter.
    flipped = lv_indices(endo[0], endo[1].flip(1), epi[0], epi[1].flip(1))
    assert flipped.cavity_volume_ml == pytest.approx(indices.cavity_volume_ml)


def test_ejection_fraction_between_two_cup_sizes() -> None:
    edv = lv_indices(*cup(20.0), *cup(30.0)).cavity_volume_ml
    esv = lv_indices(*cup(15.0), *cup(27.0)).cavity_volume_ml
    assert ejection_fraction(edv, esv) == pytest.approx(100 * (1 - (15 / 20) ** 3), abs=0.3)
    assert ejection_fraction(120.0, 50.0) == pytest.approx(100 * 70 / 120)
    with pytest.raises(CardioInputError, match="swapped"):
        ejection_fraction(50.0, 120.0)
    with pytest.raises(CardioInputError, match="edv_ml"):
        ejection_fraction(0.0, 0.0)


def test_closed_cavity_long_axis_and_swapped_surfaces() -> None:
    sphere = icosphere(3, radius=10.0)
    assert long_axis_length(*sphere) == pytest.approx(20.0, rel=0.01)
    with pytest.raises(CardioInputError, match="swapped"):
        lv_indices(*cup(30.0), *cup(20.0))
