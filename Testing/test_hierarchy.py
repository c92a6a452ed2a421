"""Quadric decimation and the pooling hierarchy (cardiocore.geometry.decimate / .hierarchy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_file

from cardiocore.errors import CardioInputError, MeshError, WeightsError
from cardiocore.geometry.decimate import quadric_decimate
from cardiocore.geometry.distance import closest_points_on_mesh
from cardiocore.geometry.hierarchy import MeshHierarchy
from cardiocore.geometry.mesh import boundary_edges, boundary_loops, mesh_edges
from cardiocore.geometry.primitives import icosphere, torus
from cardiocore.geometry.volume import cavity_volume_ml, enclosed_volume


def _edge_face_counts(faces: torch.Tensor) -> torch.Tensor:
    """How many faces use each undirected edge."""
    half = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2)
    return torch.unique(half.sort(dim=1).values, dim=0, return_counts=True)[1]


def _assert_oriented_manifold(faces: torch.Tensor, closed: bool) -> None:
    """Every edge in two faces (one if open and on the boundary), each directed edge used once."""
    counts = _edge_face_counts(faces)
    assert int(counts.max()) <= 2
    if closed:
        assert bool((counts == 2).all())
    half = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2)
    assert torch.unique(half, dim=0).shape[0] == half.shape[0], "inconsistent orientation"
    assert torch.unique(faces.sort(dim=1).values, dim=0).shape[0] == faces.shape[0], "duplicate faces"


def _mean_edge_length(verts: torch.Tensor, faces: torch.Tensor) -> float:
    edges = mesh_edges(faces)
    return float((verts[edges[:, 0]] - verts[edges[:, 1]]).norm(dim=1).mean())


def _open_cup() -> tuple[torch.Tensor, torch.Tensor]:
    """Sphere of radius 20 mm with everything below z = -10 mm cut away: one rim loop."""
    verts, faces = icosphere(4, radius=20.0)
    faces = faces[(verts[faces][..., 2] > -10.0).all(dim=1)]
    used = torch.unique(faces)
    remap = torch.full((verts.shape[0],), -1, dtype=torch.int64)
    remap[used] = torch.arange(used.shape[0])
    return verts[used], remap[faces]


@pytest.fixture(scope="module")
def sphere() -> tuple[torch.Tensor, torch.Tensor]:
    return icosphere(4, radius=30.0)  # 2,562 vertices


@pytest.fixture(scope="module")
def sphere_hierarchy(sphere: tuple[torch.Tensor, torch.Tensor]) -> MeshHierarchy:
    return MeshHierarchy.build(*sphere, factors=(4, 4))


def test_sphere_decimation_keeps_volume_closed_manifold_and_orientation(sphere):
    verts, faces = sphere
    coarse = quadric_decimate(verts, faces, 641)
    assert coarse.verts.shape == (641, 3) and coarse.kept.shape == (641,)
    assert torch.equal(coarse.verts, verts[coarse.kept])
    assert bool((coarse.kept.diff() > 0).all())
    _assert_oriented_manifold(coarse.faces, closed=True)
    # Euler characteristic of a sphere: V - E + F = 2.
    assert 641 - mesh_edges(coarse.faces).shape[0] + coarse.faces.shape[0] == 2
    fine_volume = float(enclosed_volume(verts.double(), faces))
    coarse_volume = float(enclosed_volume(coarse.verts.double(), coarse.faces))
    assert coarse_volume > 0  # still outward
    assert coarse_volume / fine_volume == pytest.approx(1.0, abs=0.03)


def test_open_cup_keeps_its_single_rim_loop():
    verts, faces = _open_cup()
    fine_rim = set(boundary_edges(faces).flatten().tolist())
    for target in (verts.shape[0] // 4, verts.shape[0] // 16, 12):
        coarse = quadric_decimate(verts, faces, target)
        assert coarse.verts.shape[0] == target
        _assert_oriented_manifold(coarse.faces, closed=False)
        loops = boundary_loops(coarse.faces)
        assert len(loops) == 1 and loops[0].shape[0] >= 3
        # The rim stays on the rim: coarse boundary vertices are fine boundary vertices.
        assert set(coarse.kept[loops[0]].tolist()) <= fine_rim


def test_closest_triangle_weights_hand_computed():
    """The corners and barycentric weights the up-sampling matrices are built from."""
    verts = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    faces = torch.tensor([[0, 1, 2]])
    points = torch.tensor([
        [0.5, 0.5, 3.0],  # above the interior
        [-1.0, -1.0, 0.0],  # beyond corner 0
        [1.0, -2.0, 1.0],  # beyond the middle of edge 0-1
        [2.0, 2.0, 0.0],  # beyond the middle of edge 1-2
        [0.0, 2.0, 0.0],  # on corner 2
    ])
    nearest = closest_points_on_mesh(points.double(), verts.double(), faces)
    corners, weights = faces[nearest.face_index], nearest.barycentric
    assert torch.equal(corners, faces.expand(5, 3))
    expected = torch.tensor([
        [0.5, 0.25, 0.25],
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.0],
        [0.0, 0.5, 0.5],
        [0.0, 0.0, 1.0],
    ], dtype=torch.float64)
    assert torch.allclose(weights, expected, atol=1e-12)


def test_down_matrix_selects_kept_vertices(sphere_hierarchy):
    h = sphere_hierarchy
    for level in range(h.n_levels - 1):
        down = h.down[level].to_dense()
        assert down.shape == (h.n_vertices[level + 1], h.n_vertices[level])
        assert torch.equal(down.sum(dim=1), torch.ones(down.shape[0]))
        assert torch.equal((down != 0).sum(dim=1), torch.ones(down.shape[0], dtype=torch.int64))
        assert torch.equal(down.argmax(dim=1), h.kept[level])
        assert torch.equal(h.downsample(h.verts[level], level), h.verts[level + 1])


def test_up_matrix_is_barycentric_and_interpolates(sphere_hierarchy):
    h = sphere_hierarchy
    for level in range(h.n_levels - 1):
        up = h.up[level].to_dense()
        assert up.shape == (h.n_vertices[level], h.n_vertices[level + 1])
        assert bool((up >= 0).all())
        assert torch.allclose(up.sum(dim=1), torch.ones(up.shape[0]), atol=1e-6)
        assert bool(((up != 0).sum(dim=1) <= 3).all())
        # Kept vertices are reproduced exactly (one-hot rows).
        assert torch.allclose(up[h.kept[level]], torch.eye(h.n_vertices[level + 1]), atol=1e-6)
        fine = h.verts[level]
        error = (h.upsample(h.verts[level + 1], level) - fine).norm(dim=1).mean()
        assert float(error) < 0.1 * _mean_edge_length(fine, h.faces[level])


def test_up_down_round_trip_reproduces_smooth_field(sphere_hierarchy):
    h = sphere_hierarchy
    fine = h.verts[0].double()
    field = torch.stack([fine[:, 0], torch.sin(fine[:, 1] / 15.0), fine[:, 0] * fine[:, 2] / 30.0], dim=1)
    round_trip = h.upsample(h.downsample(field, 0), 0)
    relative = (round_trip - field).norm(dim=1).mean() / field.norm(dim=1).mean()
    assert round_trip.dtype == torch.float64
    assert float(relative) < 0.01


def test_batched_features_match_single_and_carry_gradients(sphere_hierarchy):
    h = sphere_hierarchy
    x = torch.randn(3, h.n_vertices[1], 5, requires_grad=True)
    up = h.upsample(x, 0)
    assert up.shape == (3, h.n_vertices[0], 5)
    assert torch.allclose(up[1], h.upsample(x[1], 0), atol=1e-6)
    down = h.downsample(up, 0)
    assert down.shape == (3, h.n_vertices[1], 5)
    down.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    with pytest.raises(CardioInputError, match="downsample input"):
        h.downsample(x, 0)
    with pytest.raises(CardioInputError, match="level"):
        h.upsample(x, 5)


def test_four_level_hierarchy_from_2450_vertices():
    verts, faces = torus(40.0, 12.0, n_major=70, n_minor=35)  # 2,450 vertices, closed
    h = MeshHierarchy.build(verts, faces, factors=(4, 4, 4, 4))
    assert h.n_vertices == [2450, 613, 154, 39, 10]
    for level in range(5):
        _assert_oriented_manifold(h.faces[level], closed=True)
        edges = mesh_edges(h.faces[level])
        both_ways = torch.cat([edges, edges.flip(1)])
        assert h.edge_index[level].shape == (2, both_ways.shape[0])
        assert torch.equal(torch.unique(h.edge_index[level].t(), dim=0), torch.unique(both_ways, dim=0))
    for level in range(4):
        assert h.down[level].is_sparse and h.up[level].is_sparse
        assert h.down[level].dtype == torch.float32 and h.up[level].dtype == torch.float32
    x = torch.randn(2, 10, 4)
    for level in reversed(range(4)):
        x = h.upsample(x, level)
    assert x.shape == (2, 2450, 4)


def test_save_load_round_trip(sphere_hierarchy, tmp_path):
    path = tmp_path / "hierarchy.pt"
    sphere_hierarchy.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["hierarchy.pt"]  # no temp file left behind
    loaded = MeshHierarchy.load(path)
    assert loaded.n_vertices == sphere_hierarchy.n_vertices
    for name in ("verts", "faces", "kept", "up_vertices", "up_weights", "edge_index"):
        for a, b in zip(getattr(loaded, name), getattr(sphere_hierarchy, name)):
            assert torch.equal(a, b), name
    for a, b in zip(loaded.up + loaded.down, sphere_hierarchy.up + sphere_hierarchy.down):
        assert torch.equal(a.to_dense(), b.to_dense())


def test_load_rejects_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(WeightsError, match="no such"):
        MeshHierarchy.load(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot be read"):
        MeshHierarchy.load(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": torch.zeros(3)}, foreign)
    with pytest.raises(WeightsError, match="not a cardiocore mesh-hierarchy"):
        MeshHierarchy.load(foreign)


def test_build_is_deterministic(sphere):
    verts, faces = sphere
    first = MeshHierarchy.build(verts.numpy(), faces.numpy(), factors=(4, 4))
    second = MeshHierarchy.build(verts, faces, factors=(4, 4))
    for name in ("verts", "faces", "kept", "up_vertices", "up_weights"):
        for a, b in zip(getattr(first, name), getattr(second, name)):
            assert torch.equal(a, b), name


def test_bad_input_is_named():
    verts, faces = icosphere(1)
    with pytest.raises(CardioInputError, match="target_vertices"):
        quadric_decimate(verts, faces, 2)
    with pytest.raises(MeshError, match="belong to no face"):
        quadric_decimate(torch.cat([verts, torch.zeros(1, 3)]), faces, 10)
    fin = torch.tensor([[faces[0, 0], faces[0, 1], verts.shape[0]]])
    with pytest.raises(MeshError, match="more than two faces"):
        quadric_decimate(torch.cat([verts, torch.ones(1, 3)]), torch.cat([faces, fin]), 10)
    with pytest.raises(CardioInputError, match="factor"):
        MeshHierarchy.build(verts, faces, factors=(1.0,))
    with pytest.raises(CardioInputError, match="fewer than a triangle"):
        MeshHierarchy.build(verts, faces, factors=(4, 4, 4))


@pytest.mark.shared_data
def test_cap_lv_endocardium_decimates_cleanly():
    atlas = np.load(shared_file("cap_lv_atlas/cap_lv_atlas_dev.npz"))
    verts = torch.as_tensor(atlas["mean_ed"].reshape(1682, 3)[:841], dtype=torch.float32)
    faces = torch.as_tensor(atlas["faces_endo"])
    h = MeshHierarchy.build(verts, faces, factors=(4, 4, 4))
    assert h.n_vertices == [841, 211, 53, 14]

    def base_loop(faces: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        # The apex is a pole of coincident vertices (a zero-size boundary loop); the base rim is
        # the only loop with extent.
        loops = [loop for loop in boundary_loops(faces) if float(points[loop].std(dim=0).sum()) > 1.0]
        assert len(loops) == 1
        return loops[0]

    fine_rim = base_loop(h.faces[0], h.verts[0])
    fine_radius = float((h.verts[0][fine_rim] - h.verts[0][fine_rim].mean(0)).norm(dim=1).mean())
    fine_volume = cavity_volume_ml(h.verts[0].double(), h.faces[0])
    for level in range(1, 4):
        points = h.verts[level]
        _assert_oriented_manifold(h.faces[level], closed=False)
        rim = base_loop(h.faces[level], points)
        radius = float((points[rim] - points[rim].mean(0)).norm(dim=1).mean())
        assert radius == pytest.approx(fine_radius, rel=0.25)
    assert cavity_volume_ml(h.verts[1].double(), h.faces[1]) == pytest.approx(fine_volume, rel=0.05)
    fine = h.verts[0]
    error = (h.upsample(h.verts[1], 0) - fine).norm(dim=1).mean()
    assert float(error) < 0.1 * _mean_edge_length(fine, h.faces[0])


@pytest.mark.cuda
def test_pooling_on_cuda_matches_cpu(sphere_hierarchy):
    on_gpu = sphere_hierarchy.to("cuda")
    x = torch.randn(2, sphere_hierarchy.n_vertices[0], 3)
    expected = sphere_hierarchy.upsample(sphere_hierarchy.downsample(x, 0), 0)
    result = on_gpu.upsample(on_gpu.downsample(x.cuda(), 0), 0)
    assert result.device.type == "cuda"
    assert torch.allclose(result.cpu(), expected, atol=1e-5)
