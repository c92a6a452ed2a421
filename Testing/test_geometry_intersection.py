"""Self-intersections of one mesh and intersections between two (cardiocore.geometry.intersection)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cardiocore.errors import MeshError
from cardiocore.geometry import intersection
from cardiocore.geometry.intersection import (
    count_self_intersections,
    mesh_intersections,
    self_intersecting_faces,
)
from cardiocore.geometry.primitives import icosphere, torus
from cardiocore.geometry.surface import surface_from_mask
from grids import oblique_ijk_to_ras


def _merged(*meshes: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Several meshes as one vertex and face array (faces re-indexed)."""
    verts, faces, offset = [], [], 0
    for v, f in meshes:
        verts.append(v)
        faces.append(f + offset)
        offset += v.shape[0]
    return torch.cat(verts), torch.cat(faces)


def test_closed_surfaces_without_intersections_give_none() -> None:
    assert count_self_intersections(*icosphere(4, radius=10.0)) == 0
    assert count_self_intersections(*torus(R=20.0, r=6.0, n_major=64, n_minor=24)) == 0
    pairs = self_intersecting_faces(*icosphere(2))
    assert pairs.shape == (0, 2) and pairs.dtype == torch.int64


def test_marching_cubes_surface_on_oblique_grid_has_none() -> None:
    """Flat, exactly coplanar patches and float32 round-off of a voxel surface are not reported."""
    matrix = oblique_ijk_to_ras()
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in (40, 24, 14)), indexing="ij"), axis=-1)
    ras = ijk @ matrix[:3, :3].T + matrix[:3, 3]
    centre = ras.reshape(-1, 3).mean(axis=0)
    ball = np.linalg.norm(ras - centre, axis=-1) < 11.0
    box = (np.abs(ijk - [20, 12, 7]) <= [6, 3, 2]).all(axis=-1)  # flat faces, sharp edges
    for mask in (ball, box):
        assert count_self_intersections(*surface_from_mask(mask, matrix)) == 0


def test_vertex_pushed_through_the_sphere_is_found() -> None:
    verts, faces = icosphere(3, radius=10.0)
    moved = int(verts[:, 0].argmax())
    verts = verts.clone()
    verts[moved] = torch.tensor([-12.0, 0.0, 0.0])  # through the opposite side
    pairs = self_intersecting_faces(verts, faces)
    assert pairs.shape[0] > 0
    assert bool((pairs[:, 0] < pairs[:, 1]).all())
    # Every intersection involves one of the faces around the moved vertex.
    around = set((faces == moved).any(dim=1).nonzero().flatten().tolist())
    assert all(i in around or j in around for i, j in pairs.tolist())
    # A small inward dent keeps the surface simple.
    dented = icosphere(3, radius=10.0)[0].clone()
    dented[moved] *= 0.9
    assert count_self_intersections(dented, faces) == 0


def test_overlapping_spheres_merged_into_one_mesh() -> None:
    sphere_a = icosphere(3, radius=10.0)
    sphere_b = icosphere(3, radius=10.0, center=(8.0, 1.0, 0.5))
    verts, faces = _merged(sphere_a, sphere_b)
    pairs = self_intersecting_faces(verts, faces)
    n_a = sphere_a[1].shape[0]
    assert pairs.shape[0] > 0
    assert bool((pairs[:, 0] < n_a).all() and (pairs[:, 1] >= n_a).all())  # only across spheres
    # Every face of A with corners on both sides of B crosses B and must be found. B's faces lie
    # within 0.05 mm inside its sphere (chord sag), so "inside" is taken 0.1 mm deep.
    distance = (sphere_a[0][sphere_a[1]] - torch.tensor([8.0, 1.0, 0.5])).norm(dim=-1)
    straddling = set(((distance < 9.9).any(1) & (distance > 10.0).any(1)).nonzero().flatten().tolist())
    assert straddling <= set(pairs[:, 0].tolist())
    # The two-mesh form finds the same pairs.
    across = mesh_intersections(*sphere_a, *sphere_b)
    assert torch.equal(across, pairs - torch.tensor([0, n_a]))
    apart = mesh_intersections(*sphere_a, *icosphere(3, radius=10.0, center=(25.0, 0.0, 0.0)))
    assert apart.shape == (0, 2)


def test_search_among_some_faces_returns_exactly_their_pairs() -> None:
    """``among`` (used by untangle after its first round) finds the pairs with at least one of
    the given faces, no more and no fewer, whether given as a mask or as indices."""
    verts, faces = _merged(icosphere(3, radius=10.0), icosphere(3, radius=10.0, center=(8.0, 1.0, 0.5)))
    every = self_intersecting_faces(verts, faces)
    chosen = torch.zeros(faces.shape[0], dtype=torch.bool)
    chosen[every[::3, 0]] = True  # a third of the first faces of the pairs
    chosen[every[1::5, 1]] = True  # and some second faces
    chosen[:40] = True  # and faces that intersect nothing
    expected = every[chosen[every[:, 0]] | chosen[every[:, 1]]]
    assert 0 < expected.shape[0] < every.shape[0]
    assert torch.equal(self_intersecting_faces(verts, faces, among=chosen), expected)
    assert torch.equal(self_intersecting_faces(verts, faces, among=chosen.nonzero().flatten()), expected)
    assert self_intersecting_faces(verts, faces, among=torch.zeros_like(chosen)).shape == (0, 2)


def _all_pairs_tested(corners_a: np.ndarray, corners_b: np.ndarray, same: bool) -> set[tuple[int, int]]:
    """Reference without a broad phase: every pair through the exact test (faces share no vertex)."""
    first, second = np.meshgrid(np.arange(len(corners_a)), np.arange(len(corners_b)), indexing="ij")
    pairs = np.stack([first.ravel(), second.ravel()], axis=1)
    if same:
        pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    tolerance = intersection._tolerance(corners_a, corners_b)
    hits = intersection._test_pairs(corners_a, corners_b, pairs, np.zeros(len(pairs), dtype=np.int64), tolerance)
    return {tuple(map(int, pair)) for pair in hits}


def test_broad_phase_keeps_every_pair_among_triangles_of_very_different_sizes() -> None:
    """The broad phase groups faces by size; triangles from 0.05 to 40 mm across, scattered in a
    box, must give exactly the pairs that testing every pair gives (one soup and two soups)."""
    rng = np.random.default_rng(3)

    def soup(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        centres = rng.uniform(-30.0, 30.0, (n, 1, 3))
        sizes = 10.0 ** rng.uniform(-1.3, 1.6, (n, 1, 1))
        corners = centres + sizes * rng.normal(size=(n, 3, 3))
        return torch.from_numpy(corners.reshape(-1, 3)), torch.arange(3 * n).reshape(n, 3)

    verts, faces = soup(300)
    corners = verts.numpy()[faces.numpy()]
    expected = _all_pairs_tested(corners, corners, same=True)
    assert len(expected) > 100
    assert {tuple(p) for p in self_intersecting_faces(verts, faces).tolist()} == expected
    chosen = torch.from_numpy(rng.random(300) < 0.2)
    found = {tuple(p) for p in self_intersecting_faces(verts, faces, among=chosen).tolist()}
    assert found == {p for p in expected if chosen[p[0]] or chosen[p[1]]}
    other_verts, other_faces = soup(200)
    expected = _all_pairs_tested(corners, other_verts.numpy()[other_faces.numpy()], same=False)
    assert len(expected) > 100
    assert {tuple(p) for p in mesh_intersections(verts, faces, other_verts, other_faces).tolist()} == expected


def _pair(a: list[list[float]], b: list[list[float]], shared: int) -> int:
    """Self-intersections of two triangles whose first ``shared`` corners are the same vertices."""
    verts = torch.tensor(a + b[shared:], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], list(range(shared)) + list(range(3, 6 - shared))])
    return count_self_intersections(verts, faces)


def test_adjacency_rule() -> None:
    o, x, y = [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    # One shared vertex: counts only when the triangles overlap beyond it.
    assert _pair([o, x, y], [o, [1.0, 1.0, 1.0], [1.0, 1.0, -1.0]], shared=1) == 1
    assert _pair([o, x, y], [o, [-1.0, -1.0, 1.0], [-1.0, -1.0, -1.0]], shared=1) == 0
    assert _pair([o, x, y], [o, [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], shared=1) == 0  # coplanar fan
    assert _pair([o, x, y], [o, [1.0, 0.2, 0.0], [0.2, 1.0, 0.0]], shared=1) == 1  # coplanar overlap
    # One shared edge: never counts unless folded flat onto the neighbour.
    assert _pair([o, x, y], [o, x, [0.5, -1.0, 0.3]], shared=2) == 0
    assert _pair([o, x, y], [o, x, [0.3, 0.4, 0.0]], shared=2) == 1
    # Not adjacent: touching at a point is no intersection, crossing is.
    assert _pair([o, x, y], [[1.0, 0.0, 0.0], [2.0, 0.0, 1.0], [2.0, 0.0, -1.0]], shared=0) == 0
    assert _pair([o, x, y], [[0.2, 0.2, -1.0], [0.2, 0.2, 1.0], [3.0, 3.0, 0.0]], shared=0) == 1
    # A zero-area triangle never counts, even through the middle of another.
    assert _pair([o, x, y], [[0.2, 0.2, -1.0], [0.2, 0.2, 1.0], [0.2, 0.2, 0.5]], shared=0) == 0
    # A duplicated face always counts.
    verts = torch.tensor([o, x, y])
    assert count_self_intersections(verts, torch.tensor([[0, 1, 2], [0, 2, 1]])) == 1


def test_bad_mesh_is_reported() -> None:
    with pytest.raises(MeshError, match="vertices"):
        self_intersecting_faces(torch.zeros(3, 2), torch.tensor([[0, 1, 2]]))
