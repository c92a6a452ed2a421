"""Generalized winding numbers, occupancy, voxelization and the occupancy benchmark."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cardiocore.bench.occupancy import bench_occupancy, occupancy_memory_scaling
from cardiocore.errors import CardioInputError, MeshError, VolumeError
from cardiocore.geometry.primitives import box_mesh, icosphere, torus
from cardiocore.geometry.voxelize import voxelize_mesh
from cardiocore.geometry.winding import (
    build_winding_tree,
    fast_winding_number,
    inside_mesh,
    occupancy,
    query_winding_tree,
    smooth_winding_number,
    winding_number,
)


@pytest.fixture(scope="module")
def sphere() -> tuple[torch.Tensor, torch.Tensor]:
    return icosphere(3, radius=10.0, center=(1.0, -2.0, 3.0))


def _radial_points(n: int, radii: tuple[float, ...], center=(0.0, 0.0, 0.0), seed: int = 0) -> torch.Tensor:
    """n random directions at each radius (len(radii) * n, 3) around ``center``."""
    directions = torch.nn.functional.normalize(
        torch.randn(n, 3, generator=torch.Generator().manual_seed(seed)), dim=1
    )
    return torch.cat([r * directions for r in radii]) + torch.tensor(center)


def test_sphere_inside_outside_and_surface(sphere):
    verts, faces = sphere
    inside = _radial_points(50, (0.0, 3.0, 9.0), center=(1.0, -2.0, 3.0))
    outside = _radial_points(50, (11.0, 20.0, 500.0), center=(1.0, -2.0, 3.0))
    assert torch.allclose(winding_number(inside, verts, faces), torch.ones(150), atol=1e-4)
    assert torch.allclose(winding_number(outside, verts, faces), torch.zeros(150), atol=1e-4)
    # Points on the surface: face centroids give 1/2; a vertex gets its interior solid angle
    # over 4 pi, a little under 1/2 on a convex polyhedron.
    centroids = verts[faces[:40]].mean(dim=1)
    assert torch.allclose(winding_number(centroids, verts, faces), torch.full((40,), 0.5), atol=1e-4)
    at_vertices = winding_number(verts, verts, faces)
    assert bool(((at_vertices > 0.44) & (at_vertices < 0.5)).all())


def test_box_and_reversed_orientation():
    verts, faces = box_mesh(size=(2.0, 4.0, 6.0), center=(1.0, 1.0, 1.0))
    points = torch.tensor(
        [[1.0, 1.0, 1.0], [1.9, 2.9, 3.9], [0.1, -0.9, -1.9], [3.1, 1.0, 1.0], [1.0, 1.0, -2.1]]
    )
    expected = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
    assert torch.allclose(winding_number(points, verts, faces), expected, atol=1e-5)
    assert torch.allclose(winding_number(points, verts, faces.flip(1)), -expected, atol=1e-5)
    assert torch.equal(occupancy(points, verts, faces), expected.bool())
    on_face = torch.tensor([[2.0, 1.5, 0.5], [1.0, 3.0, 1.0]])  # on the x = 2 and y = 3 faces
    assert torch.allclose(winding_number(on_face, verts, faces), torch.full((2,), 0.5), atol=1e-5)


def test_open_hemisphere_gives_fractional_values():
    verts, faces = icosphere(4)
    cap = faces[verts[faces].mean(dim=1)[:, 2] > 0]  # upper half, open along the equator
    below = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -2.0]])
    w = winding_number(below, verts, cap)
    # Seen from the centre a hemisphere covers half the sphere; from (0, 0, -2) the cap covers
    # the solid angle of its unit boundary disk: 2 pi (1 - 2 / sqrt(5)).
    assert w[0].item() == pytest.approx(0.5, abs=0.01)
    assert w[1].item() == pytest.approx(0.5 * (1 - 2 / math.sqrt(5)), abs=0.005)


def test_batched_equals_loop_and_numpy_float64(sphere):
    verts, faces = sphere
    generator = torch.Generator().manual_seed(1)
    batch_verts = verts * torch.tensor([1.0, 0.8, 1.3]).view(3, 1, 1)
    batch_points = torch.randn(3, 40, 3, generator=generator) * 8.0 + torch.tensor([1.0, -2.0, 3.0])
    batched = winding_number(batch_points, batch_verts, faces)
    looped = torch.stack(
        [winding_number(p, v, faces) for p, v in zip(batch_points, batch_verts, strict=True)]
    )
    assert batched.shape == (3, 40)
    assert torch.allclose(batched, looped, atol=1e-6)
    shared_points = winding_number(batch_points[0], batch_verts, faces)  # points broadcast over meshes
    assert torch.allclose(shared_points[1], winding_number(batch_points[0], batch_verts[1], faces), atol=1e-6)
    as_numpy = winding_number(batch_points[0].double().numpy(), verts.double().numpy(), faces.numpy())
    assert as_numpy.dtype == torch.float64
    assert torch.allclose(as_numpy.float(), winding_number(batch_points[0], verts, faces), atol=1e-5)
    fast_batched = fast_winding_number(batch_points, batch_verts, faces)
    assert torch.allclose(fast_batched, looped, atol=1e-2)


def test_chunking_gives_identical_results(sphere):
    verts, faces = sphere
    points = torch.randn(101, 3, generator=torch.Generator().manual_seed(2)) * 12.0
    reference = winding_number(points, verts, faces)
    assert torch.allclose(winding_number(points, verts, faces, chunk_size=7), reference, atol=1e-6)
    assert torch.allclose(winding_number(points, verts, faces, chunk_size=1000), reference, atol=1e-6)
    assert torch.allclose(
        fast_winding_number(points, verts, faces, query_chunk=16),
        fast_winding_number(points, verts, faces),
        atol=1e-6,
    )


def test_gradients_are_finite_and_soft_occupancy_moves_the_surface_outward():
    verts, faces = icosphere(3, radius=10.0)
    verts = verts.clone().requires_grad_(True)
    points = torch.tensor([[0.0, 0.0, 10.4], [0.0, 0.0, 3.0]], requires_grad=True)
    w = winding_number(points, verts, faces)
    w.sum().backward()
    assert torch.isfinite(verts.grad).all() and torch.isfinite(points.grad).all()

    # A point just outside: raising its soft occupancy must push the surface outward there.
    verts.grad = None
    outside = torch.tensor([[0.0, 0.0, 10.4]])
    soft = occupancy(outside, verts, faces, soft=True)
    assert 0.0 < soft.item() < 0.5
    soft.sum().backward()
    radial = verts.detach() / verts.detach().norm(dim=1, keepdim=True)
    assert torch.isfinite(verts.grad).all()
    assert (verts.grad * radial).sum().item() > 0  # d occupancy / d (outward motion) > 0
    nearest = verts.detach()[:, 2].argmax()
    assert (verts.grad[nearest] * radial[nearest]).sum().item() > 0
    with torch.no_grad():
        grown = occupancy(outside, verts * 1.03, faces, soft=True)
    assert grown.item() > soft.item()


def test_smooth_winding_number_matches_exact_away_from_the_surface(sphere):
    verts, faces = sphere
    points = _radial_points(30, (0.0, 4.0, 30.0), center=(1.0, -2.0, 3.0))
    expected = torch.cat([torch.ones(60), torch.zeros(30)])
    # At the centre of a sphere of radius R the smoothing gives (1 + s^2 / R^2)^(-3/2).
    smoothing = 1.5
    w = smooth_winding_number(points, verts, faces, smoothing=smoothing)
    assert w[0].item() == pytest.approx((1 + smoothing**2 / 100.0) ** -1.5, abs=5e-3)
    assert torch.allclose(w, expected, atol=0.05)
    hard = occupancy(points, verts, faces)
    assert torch.equal(hard, expected.bool())
    assert torch.equal(occupancy(points, verts, faces, soft=True) > 0.5, hard)


@pytest.mark.parametrize("shape", ["torus", "sphere"])
def test_fast_matches_exact_at_mixed_distances(shape):
    if shape == "torus":
        verts, faces = torus(R=30.0, r=10.0, n_major=80, n_minor=40)
    else:
        verts, faces = icosphere(4, radius=20.0)
    generator = torch.Generator().manual_seed(3)
    low, high = verts.amin(dim=0) * 1.3, verts.amax(dim=0) * 1.3
    uniform = low + torch.rand(3000, 3, generator=generator) * (high - low)
    on_surface = verts[torch.randint(0, verts.shape[0], (500,), generator=generator)]
    near = on_surface * (1.0 + 0.01 * torch.randn(500, 1, generator=generator))
    far = torch.randn(200, 3, generator=generator) * 500.0
    points = torch.cat([uniform, near, far])
    exact = winding_number(points, verts, faces)
    fast = fast_winding_number(points, verts, faces)
    assert (fast - exact).abs().max().item() < 1e-2
    away = (exact - 0.5).abs() > 0.25
    assert torch.equal(fast[away] > 0.5, exact[away] > 0.5)
    tree = build_winding_tree(verts, faces, leaf_size=8)
    assert (query_winding_tree(tree, points, beta=3.0) - exact).abs().max().item() < 5e-3
    assert torch.equal(
        occupancy(points, verts, faces, method="fast"), occupancy(points, verts, faces, method="exact")
    )


def test_inside_mesh_skips_points_outside_the_box_with_the_same_result():
    verts, faces = torus(R=20.0, r=6.0)
    generator = torch.Generator().manual_seed(3)
    points = torch.rand(3000, 3, generator=generator, dtype=verts.dtype) * 80.0 - 40.0  # many outside the box
    in_box = ((points >= verts.amin(0)) & (points <= verts.amax(0))).all(1)
    assert 0 < int(in_box.sum()) < 3000
    for method in ("exact", "fast"):
        expected = occupancy(points, verts, faces, method=method)
        assert torch.equal(inside_mesh(points, verts, faces, method=method), expected)
        assert bool(expected.any())
    far = points[~in_box][:5]
    assert not inside_mesh(far, verts, faces).any()


def test_voxelize_sphere_on_oblique_anisotropic_grid():
    radius, center = 20.0, torch.tensor([5.0, -3.0, 10.0], dtype=torch.float64)
    verts, faces = icosphere(4, radius=radius, center=center.tolist())
    a, b = 0.4, 0.3
    rot_z = torch.tensor(
        [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=torch.float64
    )
    rot_x = torch.tensor(
        [[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]], dtype=torch.float64
    )
    spacing = torch.tensor([0.9, 1.1, 1.6], dtype=torch.float64)
    ijk_to_ras = torch.eye(4, dtype=torch.float64)
    ijk_to_ras[:3, :3] = rot_z @ rot_x * spacing
    ijk_to_ras[:3, 3] = center - ijk_to_ras[:3, :3] @ torch.tensor([30.0, 25.0, 20.0], dtype=torch.float64)
    mask = voxelize_mesh(verts, faces, (60, 50, 40), ijk_to_ras.numpy())
    assert mask.shape == (60, 50, 40) and mask.dtype == torch.bool
    volume = mask.sum().item() * spacing.prod().item()
    assert volume == pytest.approx(4.0 / 3.0 * math.pi * radius**3, rel=0.015)
    assert mask[30, 25, 20] and not mask[0, 0, 0]
    # A grid that misses the mesh entirely is empty.
    shifted = ijk_to_ras.clone()
    shifted[:3, 3] += 1000.0
    assert not voxelize_mesh(verts, faces, (10, 10, 10), shifted).any()


def test_bad_inputs_raise_named_errors(sphere):
    verts, faces = sphere
    with pytest.raises(CardioInputError, match="points"):
        winding_number(torch.zeros(5, 2), verts, faces)
    with pytest.raises(MeshError):
        winding_number(torch.zeros(5, 3), verts, faces + 10_000)
    with pytest.raises(CardioInputError, match="method"):
        occupancy(torch.zeros(5, 3), verts, faces, method="magic")
    with pytest.raises(CardioInputError, match="beta"):
        fast_winding_number(torch.zeros(5, 3), verts, faces, beta=0.5)
    with pytest.raises(VolumeError, match="ijk_to_ras"):
        voxelize_mesh(verts, faces, (4, 4, 4), np.zeros((4, 4)))
    assert winding_number(torch.zeros(0, 3), verts, faces).shape == (0,)


def test_bench_smoke_returns_expected_fields():
    rows = bench_occupancy(n_points=600, n_verts=300, repeats=1, dense_points=200)
    assert [r["method"].split()[0] for r in rows] == ["fast", "dense"]
    for row in rows:
        for key in (
            "benchmark",
            "method",
            "device",
            "median_s",
            "target_s",
            "ratio",
            "max_abs_err",
            "peak_mb",
        ):
            assert key in row
        assert row["benchmark"] == "occupancy" and row["device"] == "cpu" and row["median_s"] > 0
    assert rows[0]["max_abs_err"] < 1e-2 and rows[0]["hard_disagreements"] == 0
    assert rows[0]["ratio"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(rows[1]["median_s"] / rows[0]["median_s"])
    scaling = occupancy_memory_scaling(point_counts=(200, 400), n_verts=100)
    assert [(r["method"], r["n_points"]) for r in scaling] == [
        ("fast", 200),
        ("fast", 400),
        ("exact", 200),
        ("exact", 400),
    ]
    assert all(r["peak_mb"] >= 0 for r in scaling)


@pytest.mark.cuda
def test_cuda_matches_cpu(sphere):
    verts, faces = sphere
    points = torch.randn(2000, 3, generator=torch.Generator().manual_seed(4)) * 12.0
    cpu_exact = winding_number(points, verts, faces)
    assert torch.allclose(
        winding_number(points.cuda(), verts.cuda(), faces.cuda()).cpu(), cpu_exact, atol=1e-4
    )
    assert torch.allclose(
        fast_winding_number(points.cuda(), verts.cuda(), faces.cuda()).cpu(), cpu_exact, atol=1e-2
    )
    mask = voxelize_mesh(verts.cuda(), faces.cuda(), (8, 8, 8), torch.eye(4))
    assert mask.device.type == "cuda"
