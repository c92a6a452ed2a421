"""Triangle-triangle intersections: self-intersections of one mesh, and contacts between two.

Broad phase: every triangle gets a bounding sphere (its centroid and the largest centroid-to-
corner distance r); triangles are grouped by octave of r, SciPy ``cKDTree`` s on the centroids of
two groups return the pairs within the sum of the groups' largest radii, and pairs are kept when
their spheres and axis-aligned boxes overlap.

Narrow phase (vectorised numpy, float64), Moeller (1997) interval test:

- **Non-coplanar pair**: each triangle is cut by the other's plane in a segment lying on the
  line where the two planes meet; the triangles intersect iff the two segments overlap on that
  line by **more than a tolerance** (``1e-6`` of the mesh's bounding-box diagonal, mm).
  Touching at a point or along a zero-length overlap is not an intersection, so a triangle on
  one side of the other's plane, touching it at one corner at most, settles the pair at once.
- **Coplanar pair** (every vertex of one lies on the other's plane, up to float64 round-off): the
  triangles intersect iff their interiors overlap: on every in-plane edge normal of either
  triangle their projections overlap by more than the tolerance (2-D separating-axis test).

Zero-area triangles never intersect anything.

Adjacency rule for one mesh (which pairs may count as self-intersections):

- Triangles sharing **one vertex** are tested like any other pair: they share that point, so
  they count only when they also overlap beyond it (a fold or a spike passing through a
  neighbour), which the strict interval test detects.
- Triangles sharing **an edge** meet along it, and two non-coplanar planes meet only on that
  edge's line, so they count only when coplanar and overlapping (a triangle folded flat onto its
  neighbour).
- Triangles sharing **three vertices** (a duplicated face) always count.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from cardiocore.geometry.mesh import ArrayLike, as_mesh
from cardiocore.geometry.size_groups import octave_groups

RELATIVE_TOLERANCE = 1e-6
"""Overlap tolerance as a fraction of the bounding-box diagonal of the mesh(es)."""

RELATIVE_SNAP = 1e-10
"""Corners closer than this fraction of the diagonal to a plane lie on it (float64 round-off
only: a larger snap makes the two cuts of nearly coplanar neighbours inconsistent)."""

_SIZE_OCTAVES = 4
"""Size groups of the broad phase: octaves below the largest radius, the last holding the rest."""

_PAIR_CHUNK = 200_000
"""Candidate pairs tested at once in the narrow phase (bounds its memory to ~100 MB)."""


def _triangles(verts: ArrayLike, faces: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated corners (F, 3, 3) float64 mm and faces (F, 3) int64 as numpy arrays."""
    verts_t, faces_t = as_mesh(verts, faces, name=name)
    points = verts_t.detach().cpu().double().numpy()
    faces_np = faces_t.cpu().numpy()
    return points[faces_np], faces_np


def _bounding_spheres(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (F, 3) and radii (F,) of spheres around each triangle."""
    centroids = corners.mean(axis=1)
    radii = np.linalg.norm(corners - centroids[:, None], axis=2).max(axis=1)
    return centroids, radii


def _candidate_pairs(
    corners_a: np.ndarray, corners_b: np.ndarray, same: bool, tolerance: float, among: np.ndarray | None = None
) -> np.ndarray:
    """Pairs (P, 2) (index in A, index in B) whose bounding spheres and boxes overlap.

    With ``same`` (A is B) each unordered pair appears once with ``i < j``. ``among`` (M,)
    indices into A: only pairs with at least one of these faces (default: all pairs).

    The faces are grouped by size (:func:`cardiocore.geometry.size_groups.octave_groups`: a few
    stretched triangles would otherwise set the reach of every query, ~25x more centre pairs
    than the spheres allow on a 2,000-face mesh); two groups are searched within the sum of
    their largest radii.
    """
    centres_a, radii_a = _bounding_spheres(corners_a)
    centres_b, radii_b = (centres_a, radii_a) if same else _bounding_spheres(corners_b)
    rows = np.arange(len(centres_a)) if among is None else np.unique(np.asarray(among, dtype=np.int64))
    if rows.size == 0 or len(centres_b) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    groups_b = [(members, radii_b[members].max(), cKDTree(centres_b[members]))
                for members in octave_groups(radii_b, _SIZE_OCTAVES)]
    first, second, gap = [], [], []
    for members_a in (rows[group] for group in octave_groups(radii_a[rows], _SIZE_OCTAVES)):
        tree_a, largest_a = cKDTree(centres_a[members_a]), radii_a[members_a].max()
        for members_b, largest_b, tree_b in groups_b:
            found = tree_a.sparse_distance_matrix(tree_b, largest_a + largest_b + tolerance, output_type="ndarray")
            first.append(members_a[found["i"]])
            second.append(members_b[found["j"]])
            gap.append(found["v"])
    first, second, gap = np.concatenate(first), np.concatenate(second), np.concatenate(gap)
    if same:
        # Each unordered pair once, as (low, high): a pair of two listed faces is found from
        # both, so keep it from its lower face; one listed face finds it once.
        listed = np.zeros(len(centres_a), dtype=bool)
        listed[rows] = True
        keep = (first != second) & ((first < second) | ~listed[second])
        first, second, gap = np.minimum(first, second)[keep], np.maximum(first, second)[keep], gap[keep]
    keep = gap <= radii_a[first] + radii_b[second] + tolerance
    low_a, high_a = corners_a.min(axis=1), corners_a.max(axis=1)
    low_b, high_b = (low_a, high_a) if same else (corners_b.min(axis=1), corners_b.max(axis=1))
    first, second = first[keep], second[keep]
    boxes = (low_a[first] <= high_b[second] + tolerance) & (low_b[second] <= high_a[first] + tolerance)
    keep = boxes.all(axis=1)
    return np.stack([first[keep], second[keep]], axis=1)


def _plane_distances(corners: np.ndarray, normals: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """Signed distances (P, 3) of triangle corners (P, 3, 3) to planes (unit normal, point)."""
    return np.einsum("pkc,pc->pk", corners - origins[:, None], normals)


def _segment_on_line(corners: np.ndarray, distances: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Interval (P, 2) along ``direction`` (P, 3) covered by each triangle's cut with a plane.

    ``distances`` (P, 3) are the corners' signed distances to the plane, already snapped to 0
    within the tolerance; the cut holds the corners on the plane and the points where an edge
    crosses it. Triangles that do not reach the plane get an empty interval (+inf, -inf).
    """
    along = np.einsum("pkc,pc->pk", corners, direction)  # (P, 3) corner positions on the line
    d_next = np.roll(distances, -1, axis=1)
    a_next = np.roll(along, -1, axis=1)
    crosses = distances * d_next < 0
    ratio = np.divide(distances, distances - d_next, out=np.zeros_like(distances), where=crosses)
    crossing = along + (a_next - along) * ratio
    on_plane = distances == 0
    values = np.concatenate([np.where(crosses, crossing, np.nan), np.where(on_plane, along, np.nan)], axis=1)
    valid = ~np.isnan(values)
    low = np.where(valid, values, np.inf).min(axis=1)
    high = np.where(valid, values, -np.inf).max(axis=1)
    return np.stack([low, high], axis=1)


def _coplanar_overlap(tri_a: np.ndarray, tri_b: np.ndarray, normals: np.ndarray, tolerance: float) -> np.ndarray:
    """Whether coplanar triangles (P, 3, 3) overlap in area: no in-plane edge normal separates them."""
    overlap = np.full(tri_a.shape[0], True)
    for tri in (tri_a, tri_b):
        edges = np.roll(tri, -1, axis=1) - tri  # (P, 3, 3)
        axes = np.cross(edges, normals[:, None, :])  # in-plane edge normals
        axes /= np.maximum(np.linalg.norm(axes, axis=2, keepdims=True), np.finfo(float).tiny)
        proj_a = np.einsum("pkc,pmc->pkm", axes, tri_a)  # (P, axis, corner)
        proj_b = np.einsum("pkc,pmc->pkm", axes, tri_b)
        gap = np.minimum(proj_a.max(2), proj_b.max(2)) - np.maximum(proj_a.min(2), proj_b.min(2))
        overlap &= (gap > tolerance).all(axis=1)
    return overlap


def _meets_plane_at_most_at_a_corner(distances: np.ndarray) -> np.ndarray:
    """Whether each triangle, from its corners' snapped signed distances (P, 3) to a plane, lies
    on one side of it, touching it at no more than one corner: the cut is then at most a point,
    so the pair cannot overlap by more than the tolerance (the common case of neighbours that
    share a vertex, settled without the interval test)."""
    on_plane = (distances == 0).sum(axis=1) <= 1
    return on_plane & ((distances >= 0).all(axis=1) | (distances <= 0).all(axis=1))


def _intersecting(
    tri_a: np.ndarray, tri_b: np.ndarray, shared_edge: np.ndarray, tolerance: float
) -> np.ndarray:
    """Exact test (module docstring) for aligned triangle pairs (P, 3, 3); bool (P,)."""
    normal_a = np.cross(tri_a[:, 1] - tri_a[:, 0], tri_a[:, 2] - tri_a[:, 0])
    normal_b = np.cross(tri_b[:, 1] - tri_b[:, 0], tri_b[:, 2] - tri_b[:, 0])
    tiny = np.finfo(float).tiny
    normal_a /= np.maximum(np.linalg.norm(normal_a, axis=1, keepdims=True), tiny)
    normal_b /= np.maximum(np.linalg.norm(normal_b, axis=1, keepdims=True), tiny)
    dist_b = _plane_distances(tri_b, normal_a, tri_a[:, 0])  # B's corners to A's plane
    dist_a = _plane_distances(tri_a, normal_b, tri_b[:, 0])
    snap = tolerance * RELATIVE_SNAP / RELATIVE_TOLERANCE
    dist_a[np.abs(dist_a) <= snap] = 0.0
    dist_b[np.abs(dist_b) <= snap] = 0.0
    coplanar = (dist_b == 0).all(axis=1) & (dist_a == 0).all(axis=1)
    one_side = _meets_plane_at_most_at_a_corner(dist_b) | _meets_plane_at_most_at_a_corner(dist_a)
    result = np.zeros(tri_a.shape[0], dtype=bool)

    general = ~coplanar & ~one_side & ~shared_edge
    if general.any():
        direction = np.cross(normal_a[general], normal_b[general])
        direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), tiny)
        origin = tri_a[general, :1]
        seg_a = _segment_on_line(tri_a[general] - origin, dist_a[general], direction)
        seg_b = _segment_on_line(tri_b[general] - origin, dist_b[general], direction)
        overlap = np.minimum(seg_a[:, 1], seg_b[:, 1]) - np.maximum(seg_a[:, 0], seg_b[:, 0])
        result[general] = overlap > tolerance
    if coplanar.any():
        result[coplanar] = _coplanar_overlap(tri_a[coplanar], tri_b[coplanar], normal_a[coplanar], tolerance)
    return result


def _tolerance(*corner_sets: np.ndarray) -> float:
    points = np.concatenate([c.reshape(-1, 3) for c in corner_sets])
    return RELATIVE_TOLERANCE * max(float(np.linalg.norm(points.max(0) - points.min(0))), 1e-12)


def _test_pairs(
    corners_a: np.ndarray,
    corners_b: np.ndarray,
    pairs: np.ndarray,
    shared: np.ndarray,
    tolerance: float,
) -> np.ndarray:
    """Rows of ``pairs`` (P, 2) that intersect; ``shared`` (P,) counts the vertices they share."""
    hits = np.zeros(pairs.shape[0], dtype=bool)
    for start in range(0, pairs.shape[0], _PAIR_CHUNK):
        block = slice(start, start + _PAIR_CHUNK)
        first, second = pairs[block, 0], pairs[block, 1]
        hits[block] = _intersecting(corners_a[first], corners_b[second], shared[block] == 2, tolerance)
    hits |= shared == 3
    return pairs[hits]


def self_intersecting_faces(verts: ArrayLike, faces: ArrayLike, among: ArrayLike | None = None) -> torch.Tensor:
    """Pairs of faces of one mesh that intersect, under the adjacency rule of the module docstring.

    Args:
        verts: vertex positions (V, 3), mm.
        faces: triangles (F, 3) int64.
        among: (F,) bool or face indices: only pairs with at least one of these faces are found
            (default all), e.g. the faces that moved since a check found none among the others.

    Returns:
        (K, 2) int64 tensor of face indices ``(i, j)`` with ``i < j``, rows sorted; K = 0 for a
        mesh without self-intersections.

    Raises:
        MeshError: an invalid mesh (see :func:`cardiocore.geometry.mesh.as_mesh`).
    """
    corners, faces_np = _triangles(verts, faces, "self-intersection mesh")
    tolerance = _tolerance(corners)
    subset = None
    if among is not None:
        subset = torch.as_tensor(among).cpu().numpy()
        subset = np.flatnonzero(subset) if subset.dtype == bool else subset.astype(np.int64)
    pairs = _candidate_pairs(corners, corners, same=True, tolerance=tolerance, among=subset)
    shared = (faces_np[pairs[:, 0], :, None] == faces_np[pairs[:, 1], None, :]).sum(axis=(1, 2))
    hits = _test_pairs(corners, corners, pairs, shared, tolerance)
    hits = hits[np.lexsort((hits[:, 1], hits[:, 0]))]
    return torch.from_numpy(np.ascontiguousarray(hits, dtype=np.int64))


def count_self_intersections(verts: ArrayLike, faces: ArrayLike) -> int:
    """Number of intersecting face pairs of one mesh (:func:`self_intersecting_faces`)."""
    return int(self_intersecting_faces(verts, faces).shape[0])


def mesh_intersections(
    verts_a: ArrayLike, faces_a: ArrayLike, verts_b: ArrayLike, faces_b: ArrayLike
) -> torch.Tensor:
    """Pairs (face of A, face of B) that intersect, for two separate meshes.

    No pair is adjacent (the meshes share no vertex indices), so every pair goes through the
    exact test; coincident vertices alone touch at a point and do not count, while coplanar
    faces that overlap in area (a shared wall) do.

    Args:
        verts_a, faces_a: first mesh, (V_a, 3) mm and (F_a, 3) int64.
        verts_b, faces_b: second mesh.

    Returns:
        (K, 2) int64 tensor of (index into ``faces_a``, index into ``faces_b``), rows sorted.
    """
    corners_a, _ = _triangles(verts_a, faces_a, "mesh A")
    corners_b, _ = _triangles(verts_b, faces_b, "mesh B")
    tolerance = _tolerance(corners_a, corners_b)
    pairs = _candidate_pairs(corners_a, corners_b, same=False, tolerance=tolerance)
    hits = _test_pairs(corners_a, corners_b, pairs, np.zeros(pairs.shape[0], dtype=np.int64), tolerance)
    hits = hits[np.lexsort((hits[:, 1], hits[:, 0]))]
    return torch.from_numpy(np.ascontiguousarray(hits, dtype=np.int64))
