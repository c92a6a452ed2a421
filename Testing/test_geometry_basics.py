"""Known-answer tests for cardiocore.geometry: primitives, mesh, laplacian, volume, sampling,
distance and surface."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from cardiocore.errors import MeshError, VolumeError
from cardiocore.geometry import distance as distance_module
from cardiocore.geometry.decimate import quadric_decimate
from cardiocore.geometry.distance import closest_points_on_mesh, point_to_mesh_distance
from cardiocore.geometry.grid import label_mask, occupied_box
from cardiocore.geometry.laplacian import cotangent_laplacian, uniform_laplacian
from cardiocore.geometry.mesh import (
    as_mesh,
    boundary_edges,
    boundary_loops,
    edge_index,
    face_areas,
    face_normals,
    is_closed,
    mesh_edges,
    vertex_areas,
    vertex_normals,
)
from cardiocore.geometry.primitives import box_mesh, icosphere, torus
from cardiocore.geometry.sampling import sample_surface
from cardiocore.geometry.surface import contour_points_on_slices, surface_from_mask
from cardiocore.geometry.value_checks import values_checked, values_trusted
from cardiocore.geometry.volume import cavity_volume_ml, close_boundary, enclosed_volume


def hemisphere_cup(
    radius: float, n_lon: int = 64, n_lat: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower half of a latitude-longitude sphere (z <= 0), open at the equator, faces outward.

    Ring 0 is the equator (the open rim); the last vertex is the south pole (the "apex").
    """
    polar = torch.linspace(math.pi / 2, math.pi, n_lat + 1, dtype=torch.float64)[:-1]
    azimuth = torch.arange(n_lon, dtype=torch.float64) * (2 * math.pi / n_lon)
    theta, phi = torch.meshgrid(polar, azimuth, indexing="ij")
    rings = torch.stack(
        [theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], dim=-1
    ).reshape(-1, 3)
    verts = torch.cat([rings, torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)]) * radius
    ring, step = torch.meshgrid(torch.arange(n_lat - 1), torch.arange(n_lon), indexing="ij")
    here, east = ring * n_lon + step, ring * n_lon + (step + 1) % n_lon
    quads = [
        torch.stack([here, east + n_lon, east], -1),
        torch.stack([here, here + n_lon, east + n_lon], -1),
    ]
    last = torch.arange(n_lon) + (n_lat - 1) * n_lon
    pole = torch.full_like(last, n_lat * n_lon)
    cap = torch.stack(
        [last, pole, (last - (n_lat - 1) * n_lon + 1) % n_lon + (n_lat - 1) * n_lon], -1
    )
    faces = torch.cat([q.reshape(-1, 3) for q in quads] + [cap])
    return verts, faces


def flat_grid(n: int = 7, jitter: float = 0.04) -> tuple[torch.Tensor, torch.Tensor]:
    """Irregular triangulated unit square in the z = 0 plane (float64)."""
    x, y = torch.meshgrid(
        torch.linspace(0, 1, n, dtype=torch.float64),
        torch.linspace(0, 1, n, dtype=torch.float64),
        indexing="ij",
    )
    interior = (x > 0) & (x < 1) & (y > 0) & (y < 1)
    x = x + interior * jitter * torch.sin(7 * y + 3 * x)
    y = y + interior * jitter * torch.cos(5 * x)
    verts = torch.stack([x.flatten(), y.flatten(), torch.zeros(n * n, dtype=torch.float64)], dim=1)
    i, j = torch.meshgrid(torch.arange(n - 1), torch.arange(n - 1), indexing="ij")
    p = i * n + j
    faces = torch.cat(
        [
            torch.stack([p, p + n, p + n + 1], -1).reshape(-1, 3),
            torch.stack([p, p + n + 1, p + 1], -1).reshape(-1, 3),
        ]
    )
    return verts, faces


# ---------------------------------------------------------------- primitives and mesh utilities


@pytest.mark.parametrize("subdivisions", [0, 2, 3])
def test_icosphere_counts_radius_and_topology(subdivisions: int) -> None:
    verts, faces = icosphere(subdivisions, radius=7.0, center=(1.0, -2.0, 3.0))
    assert verts.shape == (10 * 4**subdivisions + 2, 3)
    assert faces.shape == (20 * 4**subdivisions, 3)
    radii = (verts - torch.tensor([1.0, -2.0, 3.0])).norm(dim=1)
    torch.testing.assert_close(radii, torch.full_like(radii, 7.0))
    assert is_closed(faces)
    n_edges = mesh_edges(faces).shape[0]
    assert n_edges == 3 * faces.shape[0] // 2
    assert verts.shape[0] - n_edges + faces.shape[0] == 2  # Euler characteristic of a sphere


def test_torus_topology_and_volume() -> None:
    verts, faces = torus(R=3.0, r=1.0, n_major=96, n_minor=48)
    n_edges = mesh_edges(faces).shape[0]
    assert verts.shape[0] - n_edges + faces.shape[0] == 0  # genus 1
    exact = 2 * math.pi**2 * 3.0 * 1.0**2
    assert float(enclosed_volume(verts.double(), faces)) == pytest.approx(exact, rel=5e-3)


def test_edges_and_edge_index_of_a_single_quad() -> None:
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    assert mesh_edges(faces).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [2, 3]]
    index = edge_index(faces)
    assert index.shape == (2, 10)
    assert set(map(tuple, index.t().tolist())) == {
        (0, 1),
        (1, 0),
        (0, 2),
        (2, 0),
        (0, 3),
        (3, 0),
        (1, 2),
        (2, 1),
        (2, 3),
        (3, 2),
    }
    assert sorted(map(tuple, boundary_edges(faces).tolist())) == [(0, 1), (1, 2), (2, 3), (3, 0)]
    (loop,) = boundary_loops(faces)
    assert loop.roll(-int((loop == 0).nonzero())).tolist() == [0, 1, 2, 3]


def test_face_and_vertex_quantities_on_sphere() -> None:
    verts, faces = icosphere(4, radius=5.0)
    normals = vertex_normals(verts, faces)
    radial = verts / verts.norm(dim=1, keepdim=True)
    assert float((normals * radial).sum(dim=1).min()) > 0.999
    assert float((face_normals(verts, faces) * verts[faces].mean(1)).sum(1).min()) > 0  # outward
    total_area = float(face_areas(verts, faces).sum())
    assert total_area == pytest.approx(4 * math.pi * 25.0, rel=5e-3)
    assert float(vertex_areas(verts, faces).sum()) == pytest.approx(total_area, rel=1e-5)


def test_unit_right_triangle_quantities_and_batching() -> None:
    verts = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    faces = torch.tensor([[0, 1, 2]])
    torch.testing.assert_close(face_areas(verts, faces), torch.tensor([3.0]))
    torch.testing.assert_close(face_normals(verts, faces), torch.tensor([[0.0, 0.0, 1.0]]))
    torch.testing.assert_close(vertex_areas(verts, faces), torch.ones(3))
    batch = torch.stack([verts, 2 * verts])
    torch.testing.assert_close(face_areas(batch, faces), torch.tensor([[3.0], [12.0]]))
    assert vertex_normals(batch, faces).shape == (2, 3, 3)


BAD_MESHES = {
    "no vertices": (np.zeros((0, 3)), np.array([[0, 1, 2]]), "no vertices"),
    "no faces": (np.eye(3), np.zeros((0, 3), dtype=np.int64), "no faces"),
    "quads": (np.eye(4, 3), np.array([[0, 1, 2, 3]]), "(F, 3)"),
    "2-D vertices": (np.eye(3, 2), np.array([[0, 1, 2]]), "(V, 3)"),
    "NaN": (np.array([[0, 0, 0], [1, 0, 0], [0, np.nan, 0]]), np.array([[0, 1, 2]]), "NaN"),
    "inf": (np.array([[0, 0, 0], [1, 0, 0], [0, np.inf, 0]]), np.array([[0, 1, 2]]), "infinite"),
    "index too large": (np.eye(3), np.array([[0, 1, 3]]), "only 3 vertices"),
    "negative index": (np.eye(3), np.array([[0, 1, -1]]), "span [-1, 1]"),
    "degenerate": (np.eye(3), np.array([[0, 1, 2], [1, 1, 2]]), "degenerate"),
    "float faces": (np.eye(3), np.array([[0.0, 1.0, 2.0]]), "integer"),
}


@pytest.mark.parametrize("case", list(BAD_MESHES))
def test_as_mesh_rejects_bad_input_naming_the_mesh(case: str) -> None:
    verts, faces, problem = BAD_MESHES[case]
    with pytest.raises(MeshError) as error:
        as_mesh(verts, faces, name="left ventricle")
    assert "left ventricle" in str(error.value)
    assert problem in str(error.value)


def test_value_checks_are_skipped_only_inside_values_trusted() -> None:
    """Inside the block the value checks (which wait for a GPU) are off, shape checks still run,
    and they are back on after it, also when the block raised."""
    nan_verts, faces, _ = BAD_MESHES["NaN"]
    with values_trusted():
        verts, _ = as_mesh(nan_verts, faces)
        assert torch.isnan(verts).any()
        with pytest.raises(MeshError, match="no faces"):
            as_mesh(np.eye(3), np.zeros((0, 3), dtype=np.int64))
    with pytest.raises(MeshError, match="NaN"):
        as_mesh(nan_verts, faces)
    with pytest.raises(RuntimeError), values_trusted():
        raise RuntimeError("leaves the block")
    assert values_checked()


def test_as_mesh_converts_numpy_and_keeps_gradients() -> None:
    verts, faces = as_mesh(np.eye(3, dtype=np.int32), np.array([[0, 1, 2]], dtype=np.int32))
    assert verts.dtype == torch.get_default_dtype() and faces.dtype == torch.int64
    leaf = torch.eye(3, requires_grad=True)
    converted, _ = as_mesh(leaf, faces)
    assert converted.requires_grad
    with pytest.raises(MeshError, match="vertices must have shape"):
        as_mesh(torch.zeros(2, 3, 3), faces)
    assert as_mesh(torch.rand(2, 3, 3), faces, allow_batch=True)[0].shape == (2, 3, 3)


# ---------------------------------------------------------------- laplacians


def test_uniform_laplacian_of_cube() -> None:
    verts, faces = box_mesh()
    lap = uniform_laplacian(faces, verts.shape[0])
    assert lap.is_sparse and lap.is_coalesced()
    dense = lap.to_dense()
    degree = torch.bincount(mesh_edges(faces).flatten(), minlength=8).float()
    torch.testing.assert_close(dense.diagonal(), degree)
    # 12 cube edges + one diagonal per side; no diagonal touches corners 0 and 7.
    assert degree.tolist() == [3, 5, 5, 5, 5, 5, 5, 3]
    torch.testing.assert_close(dense.sum(dim=1), torch.zeros(8))
    torch.testing.assert_close(dense, dense.t())
    # L @ x = sum over neighbours of (x_i - x_j)
    x = torch.arange(8.0)
    expected = torch.zeros(8)
    for i, j in mesh_edges(faces).tolist():
        expected[i] += x[i] - x[j]
        expected[j] += x[j] - x[i]
    torch.testing.assert_close(lap @ x, expected)


def test_uniform_laplacian_rejects_too_few_vertices() -> None:
    _, faces = box_mesh()
    with pytest.raises(MeshError, match="n_verts is 5"):
        uniform_laplacian(faces, 5)


def test_cotangent_laplacian_annihilates_linear_functions_and_is_psd() -> None:
    verts, faces = flat_grid()
    lap = cotangent_laplacian(verts, faces)
    assert lap.is_coalesced() and lap.dtype == torch.float64
    dense = lap.to_dense()
    torch.testing.assert_close(dense, dense.t())
    torch.testing.assert_close(dense.sum(dim=1), torch.zeros(len(verts), dtype=torch.float64))
    linear = 2.0 * verts[:, 0] - 3.0 * verts[:, 1] + 0.5
    interior = torch.ones(7, 7, dtype=torch.bool)
    interior[[0, -1], :] = False
    interior[:, [0, -1]] = False
    residual = (dense @ linear)[interior.flatten()]
    torch.testing.assert_close(residual, torch.zeros_like(residual), atol=1e-12, rtol=0)
    assert float(torch.linalg.eigvalsh(dense).min()) > -1e-12


def test_cotangent_weight_of_equilateral_pair() -> None:
    # Two equilateral triangles sharing edge (0, 1): w_01 = (cot 60 + cot 60) / 2 = 1/sqrt(3).
    h = math.sqrt(3) / 2
    verts = torch.tensor([[0, 0, 0], [1, 0, 0], [0.5, h, 0], [0.5, -h, 0]], dtype=torch.float64)
    lap = cotangent_laplacian(verts, torch.tensor([[0, 1, 2], [1, 0, 3]])).to_dense()
    assert float(lap[0, 1]) == pytest.approx(-1 / math.sqrt(3))
    assert float(lap[0, 2]) == pytest.approx(-0.5 / math.sqrt(3))


# ---------------------------------------------------------------- volume


def test_icosphere_volume_converges_to_ball_volume() -> None:
    exact = 4 / 3 * math.pi * 8.0**3
    errors = []
    for subdivisions in range(1, 5):
        verts, faces = icosphere(subdivisions, radius=8.0, center=(50.0, -20.0, 100.0))
        errors.append(exact - float(enclosed_volume(verts.double(), faces)))
    assert all(e > 0 for e in errors)  # inscribed polyhedron
    assert all(later < 0.3 * earlier for earlier, later in itertools.pairwise(errors))
    assert errors[-1] / exact < 3e-3


def test_box_volume_exact_and_reversed_faces_negative() -> None:
    verts, faces = box_mesh(size=(2.0, 3.0, 4.0), center=(10.0, -5.0, 7.0))
    assert float(enclosed_volume(verts, faces)) == pytest.approx(24.0, rel=1e-6)
    assert float(enclosed_volume(verts, faces.flip(1))) == pytest.approx(-24.0, rel=1e-6)


def test_volume_is_batched_and_differentiable() -> None:
    verts, faces = icosphere(2)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    batch = torch.stack([verts.double(), verts.double() * scale])
    volumes = enclosed_volume(batch, faces)
    assert volumes.shape == (2,)
    assert float(volumes[1].detach() / volumes[0].detach()) == pytest.approx(8.0)
    volumes[1].backward()  # d(s^3 V0)/ds = 3 s^2 V0
    assert float(scale.grad) == pytest.approx(12.0 * float(volumes[0].detach()))


def test_closed_hemisphere_cup_has_half_ball_volume() -> None:
    verts, faces = hemisphere_cup(radius=30.0)
    assert float((face_normals(verts, faces) * verts[faces].mean(dim=1)).sum(dim=1).min()) > 0
    assert not is_closed(faces)
    loops = boundary_loops(faces)
    assert len(loops) == 1 and loops[0].shape[0] == 64
    closed_verts, closed_faces = close_boundary(verts, faces)
    assert is_closed(closed_faces)
    assert closed_verts.shape[0] == verts.shape[0] + 1
    torch.testing.assert_close(
        closed_verts[-1], torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0
    )
    half_ball = 2 / 3 * math.pi * 30.0**3
    volume = float(enclosed_volume(closed_verts, closed_faces))
    assert volume == pytest.approx(half_ball, rel=5e-3)
    assert cavity_volume_ml(verts, faces) == pytest.approx(volume / 1000.0)
    # An inward-oriented (endocardial) cup still gives a positive cavity volume.
    assert cavity_volume_ml(verts, faces.flip(1)) == pytest.approx(volume / 1000.0)
    # Closing keeps the orientation of the input.
    assert float(enclosed_volume(*close_boundary(verts, faces.flip(1)))) == pytest.approx(-volume)


def test_close_boundary_handles_two_loops_and_closed_input() -> None:
    verts, faces = icosphere(3, radius=10.0)
    centres = verts[faces].mean(dim=1)
    tube = faces[centres[:, 2].abs() < 6.0]  # sphere with both polar caps cut away
    assert len(boundary_loops(tube)) == 2
    closed_verts, closed_faces = close_boundary(verts, tube)
    assert is_closed(closed_faces)
    assert float(enclosed_volume(closed_verts, closed_faces)) > 0
    same_verts, same_faces = close_boundary(verts, faces)
    assert same_verts.shape == verts.shape and torch.equal(same_faces, faces)


# ---------------------------------------------------------------- sampling


def test_sample_counts_follow_face_areas() -> None:
    verts, faces = box_mesh(size=(1.0, 2.0, 4.0))
    n = 40_000
    generator = torch.Generator().manual_seed(1234)
    _, face_index, _ = sample_surface(verts, faces, n, generator=generator)
    areas = face_areas(verts, faces).double()
    expected = n * areas / areas.sum()
    observed = torch.bincount(face_index, minlength=faces.shape[0]).double()
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert statistic < chi2.ppf(0.999, df=faces.shape[0] - 1)


def test_samples_lie_on_the_surface_and_are_reproducible() -> None:
    verts, faces = box_mesh(size=(2.0, 4.0, 6.0))
    points, face_index, barycentric = sample_surface(
        verts, faces, 5000, torch.Generator().manual_seed(7)
    )
    assert points.shape == (5000, 3) and face_index.shape == (5000,)
    assert float(barycentric.min()) >= 0
    torch.testing.assert_close(barycentric.sum(dim=1), torch.ones(5000))
    half = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close((points.abs() / half).max(dim=1).values, torch.ones(5000))
    again, _, _ = sample_surface(verts, faces, 5000, torch.Generator().manual_seed(7))
    assert torch.equal(points, again)


def test_samples_are_uniform_inside_a_triangle() -> None:
    verts = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    _, _, barycentric = sample_surface(
        verts, torch.tensor([[0, 1, 2]]), 40_000, torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(barycentric.mean(dim=0), torch.full((3,), 1 / 3), atol=6e-3, rtol=0)
    in_middle_triangle = (barycentric < 0.5).all(dim=1).float().mean()  # a quarter of the area
    assert float(in_middle_triangle) == pytest.approx(0.25, abs=0.01)


def test_sample_points_carry_gradients_to_vertices() -> None:
    verts, faces = icosphere(1)
    verts.requires_grad_(True)
    points, _, _ = sample_surface(verts, faces, 100, torch.Generator().manual_seed(0))
    points.sum().backward()
    assert float(verts.grad.sum()) == pytest.approx(300.0, rel=1e-5)


# ---------------------------------------------------------------- distance

TRIANGLE = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
REGION_CASES = {  # point -> (distance, closest point)
    "interior": ([0.2, 0.2, 3.0], 3.0, [0.2, 0.2, 0.0]),
    "on the face": ([0.1, 0.3, 0.0], 0.0, [0.1, 0.3, 0.0]),
    "vertex A": ([-1.0, -1.0, 0.5], 1.5, [0.0, 0.0, 0.0]),
    "vertex B": ([2.0, -0.5, 0.0], math.sqrt(1.25), [1.0, 0.0, 0.0]),
    "vertex C": ([-0.5, 2.0, 0.0], math.sqrt(1.25), [0.0, 1.0, 0.0]),
    "edge AB": ([0.5, -2.0, 0.0], 2.0, [0.5, 0.0, 0.0]),
    "edge AC": ([-3.0, 0.4, 1.0], math.sqrt(10.0), [0.0, 0.4, 0.0]),
    "edge BC": ([1.0, 1.0, -1.0], math.sqrt(1.5), [0.5, 0.5, 0.0]),
}


def test_point_to_triangle_distance_in_every_region() -> None:
    points = torch.tensor([case[0] for case in REGION_CASES.values()], dtype=torch.float64)
    distance, closest = point_to_mesh_distance(points, TRIANGLE, torch.tensor([[0, 1, 2]]))
    expected_distance = torch.tensor(
        [case[1] for case in REGION_CASES.values()], dtype=torch.float64
    )
    expected_closest = torch.tensor(
        [case[2] for case in REGION_CASES.values()], dtype=torch.float64
    )
    torch.testing.assert_close(distance, expected_distance)
    torch.testing.assert_close(closest, expected_closest)


def test_point_to_triangle_distance_matches_dense_sampling() -> None:
    generator = torch.Generator().manual_seed(5)
    points = torch.randn(300, 3, generator=generator, dtype=torch.float64) * 2
    distance, _ = point_to_mesh_distance(points, TRIANGLE, torch.tensor([[0, 1, 2]]))
    uv = torch.rand(100_000, 2, generator=generator, dtype=torch.float64)
    uv = torch.where(uv.sum(dim=1, keepdim=True) > 1, 1 - uv, uv)
    dense = torch.cat([uv, torch.zeros(len(uv), 1, dtype=torch.float64)], dim=1)
    sampled = torch.cdist(points, dense).min(dim=1).values
    assert float((distance - sampled).max()) <= 1e-9  # exact distance is never larger
    assert float((sampled - distance).max()) < 5e-3  # and the samples get close to it


@pytest.mark.parametrize(
    "corners",
    [[[0, 0, 0], [0, 0, 0], [2, 0, 0]], [[0, 0, 0], [2, 0, 0], [1, 0, 0]]],
    ids=["coincident corners", "collinear corners"],
)
def test_distance_to_degenerate_face_is_distance_to_its_segment(corners: list) -> None:
    points = torch.tensor([[0.5, 1.0, 0.0], [3.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.5, 0.0, 2.0]])
    distance, closest = point_to_mesh_distance(
        points, torch.tensor(corners, dtype=torch.float32), torch.tensor([[0, 1, 2]])
    )
    torch.testing.assert_close(distance, torch.tensor([1.0, 1.0, 1.0, 2.0]))
    torch.testing.assert_close(closest[:, 0], torch.tensor([0.5, 2.0, 0.0, 1.5]))


def test_point_to_sphere_distance_is_radial_gap() -> None:
    radius = 10.0
    verts, faces = icosphere(4, radius=radius, center=(5.0, 5.0, 5.0))
    generator = torch.Generator().manual_seed(11)
    directions = torch.nn.functional.normalize(torch.randn(1000, 3, generator=generator), dim=1)
    radii = torch.cat([torch.rand(990, generator=generator) * 10.0 + 5.0, torch.zeros(10)])
    points = 5.0 + directions * radii[:, None]
    distance, closest = point_to_mesh_distance(points, verts, faces, max_pairs=50_000)
    sagitta = 0.015  # largest gap between icosphere(4) of radius 10 and the true sphere
    assert float((distance - (radii - radius).abs()).abs().max()) < sagitta
    assert float(((closest - 5.0).norm(dim=1) - radius).abs().max()) < sagitta


def test_kdtree_and_brute_force_searches_agree() -> None:
    verts, faces = torus(R=4.0, r=1.5, n_major=32, n_minor=16)
    points = torch.randn(500, 3, generator=torch.Generator().manual_seed(2)) * 4
    triangles = distance_module._Triangles.from_corners(verts[faces])
    face_bf = distance_module._nearest_faces_brute_force(points, triangles, 4096)
    face_kd = distance_module._nearest_faces_kdtree(points, verts[faces], 4096)

    def gap(face: torch.Tensor) -> torch.Tensor:
        sq, _, _ = distance_module._nearest_on_triangles(
            distance_module._components(points), triangles.select(face)
        )
        return sq.sqrt()

    torch.testing.assert_close(gap(face_kd), gap(face_bf))


def brute_force_face_distances(
    points: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor
) -> torch.Tensor:
    """Distance (P, F) from every point to every face."""
    triangles = distance_module._Triangles.from_corners(verts[faces])
    squared, _, _ = distance_module._nearest_on_triangles(
        tuple(points[:, k, None] for k in range(3)), triangles
    )
    return squared.sqrt()


def decimated_torus() -> tuple[torch.Tensor, torch.Tensor]:
    """Torus decimated to 300 vertices: faces of very different sizes and shapes."""
    verts, faces = torus(R=20.0, r=8.0, n_major=48, n_minor=24)
    coarse = quadric_decimate(verts.double(), faces, 300)
    return coarse.verts, coarse.faces


@pytest.mark.parametrize("mesh", ["torus", "decimated torus"])
def test_closest_points_face_index_agrees_with_brute_force(mesh: str) -> None:
    if mesh == "torus":
        verts, faces = torus(R=20.0, r=8.0, n_major=24, n_minor=12)
        verts = verts.double()
    else:
        verts, faces = decimated_torus()
    generator = torch.Generator().manual_seed(8)
    on_surface, _, _ = sample_surface(verts, faces, 300, generator=generator)
    points = torch.cat([
        on_surface + torch.randn(300, 3, generator=generator, dtype=torch.float64) * 2.0,
        torch.randn(100, 3, generator=generator, dtype=torch.float64) * 30.0,  # far and inside
    ])
    result = closest_points_on_mesh(points, verts, faces)
    all_distances = brute_force_face_distances(points, verts, faces)
    nearest = all_distances.min(dim=1)
    torch.testing.assert_close(result.distance, nearest.values, rtol=0, atol=1e-9)
    chosen = all_distances.gather(1, result.face_index[:, None])[:, 0]
    torch.testing.assert_close(chosen, nearest.values, rtol=0, atol=1e-9)
    # The face is the lowest-index nearest one: brute force agrees wherever no other is as near.
    unique = (all_distances <= nearest.values[:, None] + 1e-9).sum(dim=1) == 1
    assert int(unique.sum()) > 200  # the rest lie nearest an edge or corner shared by faces
    assert torch.equal(result.face_index[unique], nearest.indices[unique])


def test_closest_points_barycentric_weights_rebuild_closest() -> None:
    verts, faces = decimated_torus()
    points = torch.randn(2000, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    result = closest_points_on_mesh(points * 25.0, verts, faces)
    assert bool((result.barycentric >= 0).all())
    torch.testing.assert_close(result.barycentric.sum(dim=1), torch.ones(2000, dtype=torch.float64))
    corners = verts[faces[result.face_index]]
    rebuilt = (result.barycentric[..., None] * corners).sum(dim=1)
    torch.testing.assert_close(rebuilt, result.closest, rtol=0, atol=1e-12)
    torch.testing.assert_close((points * 25.0 - rebuilt).norm(dim=1), result.distance)


def test_closest_points_barycentric_on_degenerate_face_uses_its_own_corners() -> None:
    # Corner 2 lies between corners 0 and 1: the face is the segment from corner 0 to 1.
    verts = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    point = torch.tensor([[3.0, 2.0, 0.0]])
    result = closest_points_on_mesh(point, verts, torch.tensor([[0, 1, 2]]))
    expected = torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(result.closest, expected)
    torch.testing.assert_close(
        result.barycentric, torch.tensor([[0.25, 0.75, 0.0]], dtype=torch.float64)
    )


def test_distance_gradient_points_along_the_normal() -> None:
    point = torch.tensor([[0.25, 0.25, 2.0]], dtype=torch.float64, requires_grad=True)
    distance, _ = point_to_mesh_distance(point, TRIANGLE, torch.tensor([[0, 1, 2]]))
    distance.sum().backward()
    torch.testing.assert_close(point.grad, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))


@pytest.mark.cuda
def test_distance_on_cuda_matches_cpu() -> None:
    verts, faces = icosphere(3, radius=10.0)
    points = torch.randn(2000, 3, generator=torch.Generator().manual_seed(4)) * 8
    cpu_distance, _ = point_to_mesh_distance(points, verts, faces)
    gpu_distance, gpu_closest = point_to_mesh_distance(points.cuda(), verts.cuda(), faces.cuda())
    assert gpu_closest.is_cuda
    torch.testing.assert_close(gpu_distance.cpu(), cpu_distance, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- surface from mask


def oblique_ball_mask(flip_axis: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Ball of radius 14 mm voxelised on a rotated, anisotropic grid.

    Returns the mask (I, J, K), the IJK-to-RAS matrix, the ball centre (3,) mm and its radius mm.
    """
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix() * [
        0.7,
        1.1,
        1.6,
    ]
    matrix[:3, 3] = [-40.0, 12.0, 100.0]
    if flip_axis:
        matrix[:3, 0] *= -1  # negative determinant, as in LPS-style or mirrored volumes
    shape = (60, 50, 40)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    ras = ijk @ matrix[:3, :3].T + matrix[:3, 3]
    centre = ras[30, 25, 20] + np.array([0.3, -0.2, 0.4])
    radius = 14.0
    return np.linalg.norm(ras - centre, axis=-1) < radius, matrix, centre, radius


@pytest.mark.parametrize("flip_axis", [False, True], ids=["positive det", "negative det"])
def test_surface_from_mask_on_oblique_anisotropic_grid(flip_axis: bool) -> None:
    mask, matrix, centre, radius = oblique_ball_mask(flip_axis)
    verts, faces = surface_from_mask(torch.from_numpy(mask), torch.from_numpy(matrix))
    assert is_closed(faces)
    volume = float(enclosed_volume(verts.double(), faces))
    assert volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.01)
    areas = face_areas(verts, faces)
    centroids = verts[faces].mean(dim=1)
    surface_centre = (centroids * areas[:, None]).sum(dim=0) / areas.sum()
    assert float((surface_centre - torch.tensor(centre).float()).norm()) < 0.1
    outward = (face_normals(verts, faces) * (centroids - torch.tensor(centre).float())).sum(dim=1)
    assert bool((outward > 0).all())
    distances = (verts - torch.tensor(centre).float()).norm(dim=1)
    assert float((distances - radius).abs().max()) < 1.0  # within about one voxel


def test_surface_smoothing_keeps_centre_and_outward_faces() -> None:
    mask, matrix, centre, radius = oblique_ball_mask(flip_axis=False)
    verts, faces = surface_from_mask(mask, matrix, smoothing_mm=1.0)
    volume = float(enclosed_volume(verts.double(), faces))
    assert volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.04)
    assert float((verts.mean(dim=0) - torch.tensor(centre).float()).norm()) < 0.2


def test_surface_from_mask_rejects_bad_input() -> None:
    with pytest.raises(VolumeError, match="mask: has no voxel above level"):
        surface_from_mask(np.zeros((4, 4, 4), dtype=bool), np.eye(4))
    with pytest.raises(VolumeError, match="mask: must be a 3-D"):
        surface_from_mask(np.ones((4, 4), dtype=bool), np.eye(4))
    singular = np.eye(4)
    singular[2, 2] = 0.0
    with pytest.raises(VolumeError, match="ijk_to_ras: has a singular"):
        surface_from_mask(np.ones((4, 4, 4), dtype=bool), singular)


@pytest.mark.parametrize("axis", [0, 2])
def test_contour_points_on_slices_lie_on_the_planes_on_each_outline(axis: int) -> None:
    """Discs of known radius on 3 of 5 thick slices of an oblique grid: the outline points lie on
    those slices' planes, at the disc's radius (within the pixel), and nowhere else."""
    spacing = [1.0, 1.0, 1.0]
    spacing[axis] = 12.0
    direction = Rotation.from_euler("xyz", [10, 25, -5], degrees=True).as_matrix()
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.array(spacing)
    shape = [60, 60, 60]
    shape[axis] = 5
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    in_plane = [a for a in range(3) if a != axis]
    radius = np.linalg.norm(ijk[..., in_plane] - 30.0, axis=-1)
    mask = (radius <= 20.0) & np.isin(ijk[..., axis], (1, 2, 4))
    points = contour_points_on_slices(mask, matrix, axis).double()
    back = (points - torch.tensor(matrix[:3, 3])) @ torch.linalg.inv(torch.tensor(matrix[:3, :3])).T
    planes = back[:, axis]
    torch.testing.assert_close(planes, planes.round(), atol=1e-4, rtol=0)
    assert sorted({int(k) for k in planes.round()}) == [1, 2, 4]
    in_plane_radius = (back[:, in_plane] - 30.0).norm(dim=1)
    assert float((in_plane_radius - 20.0).abs().max()) < 1.0
    assert contour_points_on_slices(np.zeros(shape, dtype=bool), matrix, axis).shape == (0, 3)


def test_label_mask_is_the_union_of_the_values():
    labels = np.array([[[0, 205, 500], [820, 205, 7]]])
    assert np.array_equal(label_mask(labels, 205), labels == 205)
    assert np.array_equal(label_mask(labels, [205, 500, 999]), np.isin(labels, [205, 500]))
    assert not label_mask(labels, []).any()
    fortran = np.asfortranarray(np.arange(60).reshape(3, 4, 5) % 7)  # a NIfTI volume's layout
    mask = label_mask(fortran, [2, 5])
    assert mask.flags.f_contiguous and np.array_equal(mask, np.isin(fortran, [2, 5]))


def test_occupied_box_is_the_set_voxels_box_widened_and_clipped():
    mask = np.zeros((10, 8, 6), dtype=np.int16)
    mask[2:5, 7, 1:3] = 3
    mask[6, 7, 2] = 1
    assert occupied_box(mask) == (slice(2, 7), slice(7, 8), slice(1, 3))
    assert occupied_box(mask, 2) == (slice(0, 9), slice(5, 8), slice(0, 5))
    assert occupied_box(mask, [0, 1, 3]) == (slice(2, 7), slice(6, 8), slice(0, 6))
    assert occupied_box(mask.astype(bool)) == occupied_box(mask)
    assert occupied_box(np.zeros((4, 4, 4), dtype=bool), 1) is None
