"""Exact closest points on a triangle mesh (distance, face, barycentric weights), memory-bounded.

The point-triangle test follows the Voronoi regions of the triangle (three vertex regions, three
edge regions, the interior), evaluated for many pairs at once and merged with ``torch.where``.
On CPU, candidate faces are pruned with SciPy KD-trees over face centroids, one tree per octave
of face size, and a per-pair lower bound from each face's plane; on other devices every point is
tested against every face, chunk by chunk. Both searches are exact.
"""

from __future__ import annotations

from itertools import chain
from typing import NamedTuple

import numpy as np
import torch
from scipy.spatial import cKDTree

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import ArrayLike, as_mesh
from cardiocore.geometry.size_groups import octave_groups

Components = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

_SIZE_OCTAVES = 12  # faces smaller than 2**-12 of the largest share the last size group
_THIN_FACE = 1e-6  # twice area / longest edge^2 below which a face's plane is not used to prune
_PRUNE_SLACK = 1e-7  # relative slack of the float64 pruning tests (conservative: only costs pairs)
_PARALLEL_QUERY_POINTS = 20_000  # KD-tree queries of fewer points run on one thread


class ClosestPoints(NamedTuple):
    """Nearest surface point of each query point on a triangle mesh.

    Attributes:
        distance: (P,) unsigned distance, mm; differentiable w.r.t. points and vertices.
        closest: (P, 3) nearest surface point, mm; differentiable w.r.t. vertices.
        face_index: (P,) int64 nearest face (on CPU the lowest index among equally near faces).
        barycentric: (P, 3) weights, non-negative and summing to 1, of the corners
            ``faces[face_index]`` in their given order: ``closest = sum_k barycentric[:, k] *
            verts[faces[face_index, k]]``. Not differentiable.
    """

    distance: torch.Tensor
    closest: torch.Tensor
    face_index: torch.Tensor
    barycentric: torch.Tensor


def _components(vectors: torch.Tensor) -> Components:
    """x, y and z of vectors (N, 3) as three contiguous (N,) tensors."""
    return tuple(vectors.t().contiguous().unbind(0))


class _Triangles(NamedTuple):
    """Triangles as corner a, edges ab and ac (x, y, z components) and their Gram entries."""

    a: Components
    ab: Components
    ac: Components
    ab_ab: torch.Tensor
    ab_ac: torch.Tensor
    ac_ac: torch.Tensor

    @classmethod
    def from_corners(cls, corners: torch.Tensor) -> _Triangles:
        """From corner positions (F, 3 corners, 3)."""
        a = corners[:, 0]
        ab, ac = corners[:, 1] - a, corners[:, 2] - a
        return cls(
            _components(a),
            _components(ab),
            _components(ac),
            (ab * ab).sum(-1),
            (ab * ac).sum(-1),
            (ac * ac).sum(-1),
        )

    def select(self, index: torch.Tensor | slice) -> _Triangles:
        """The triangles at ``index`` (an index tensor or a slice)."""

        def pick(field: Components | torch.Tensor) -> Components | torch.Tensor:
            return tuple(c[index] for c in field) if isinstance(field, tuple) else field[index]

        return _Triangles(*(pick(field) for field in self))


def _area_vectors_and_longest_edges(
    corners: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twice-area normal vectors (F, 3), squared longest edge lengths (F,) and their edge (F,).

    Edge k runs from corner k to corner k + 1.
    """
    edges = corners.roll(-1, dims=1) - corners
    longest_sq, longest = (edges**2).sum(-1).max(dim=1)
    return torch.linalg.cross(edges[:, 0], -edges[:, 2], dim=-1), longest_sq, longest


def _corner_order(corners: torch.Tensor) -> torch.Tensor:
    """Corner order (F, 3) for the region tests: (0, 1, 2), or (i, j, j) for degenerate faces.

    The region tests assume a proper triangle. A face whose corners are (nearly) collinear or
    coincident is, as a point set, its longest edge (i, j); written as the triangle (i, j, j) the
    same tests reduce exactly to a point-segment test.
    """
    area_vectors, longest_sq, longest = _area_vectors_and_longest_edges(corners)
    degenerate = area_vectors.norm(dim=-1) <= 64 * torch.finfo(corners.dtype).eps * longest_sq
    order = torch.arange(3, device=corners.device).expand(corners.shape[0], 3)
    segment = torch.stack([longest, (longest + 1) % 3, (longest + 1) % 3], dim=1)
    return torch.where(degenerate[:, None], segment, order)


def _dot(x: Components, y: Components) -> torch.Tensor:
    return x[0] * y[0] + x[1] * y[1] + x[2] * y[2]


def _nearest_on_triangles(
    p: Components, tri: _Triangles
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared distance and barycentric weights (v, w) of corners b and c of the nearest point.

    ``p`` and ``tri`` components broadcast against each other; outputs have the broadcast shape.
    The nearest point is a + v ab + w ac.
    """
    ap = (p[0] - tri.a[0], p[1] - tri.a[1], p[2] - tri.a[2])
    d1, d2 = _dot(tri.ab, ap), _dot(tri.ac, ap)  # ab.ap, ac.ap
    d3, d4 = d1 - tri.ab_ab, d2 - tri.ab_ac  # ab.bp, ac.bp
    d5, d6 = d1 - tri.ab_ac, d2 - tri.ac_ac  # ab.cp, ac.cp
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    tiny = torch.finfo(d1.dtype).tiny
    # Each denominator is >= 0 inside its own region; clamping keeps every branch finite.
    v_face_denominator = (va + vb + vc).clamp_min(tiny)
    t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6)).clamp_min(tiny)
    t_ac = d2 / (d2 - d6).clamp_min(tiny)
    t_ab = d1 / (d1 - d3).clamp_min(tiny)
    zero, one = torch.zeros_like(d1), torch.ones_like(d1)
    v, w = vb / v_face_denominator, vc / v_face_denominator  # interior, the fallback region
    # Later regions take precedence: vertex A, then B, edge AB, C, edge AC, edge BC.
    regions = [
        ((va <= 0) & (d4 >= d3) & (d5 >= d6), 1 - t_bc, t_bc),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), zero, t_ac),
        ((d6 >= 0) & (d5 <= d6), zero, one),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), t_ab, zero),
        ((d3 >= 0) & (d4 <= d3), one, zero),
        ((d1 <= 0) & (d2 <= 0), zero, zero),
    ]
    for inside, region_v, region_w in regions:
        v, w = torch.where(inside, region_v, v), torch.where(inside, region_w, w)
    offset = [ap[k] - v * tri.ab[k] - w * tri.ac[k] for k in range(3)]
    return _dot(offset, offset), v, w


def _squared_distances(
    points: torch.Tensor,
    triangles: _Triangles,
    pair_point: torch.Tensor,
    pair_face: torch.Tensor,
    max_pairs: int,
) -> torch.Tensor:
    """Squared distance (N,) of each pair (point ``pair_point[n]``, face ``pair_face[n]``)."""
    parts = []
    for start in range(0, pair_point.shape[0], max_pairs):
        pp, pf = pair_point[start : start + max_pairs], pair_face[start : start + max_pairs]
        parts.append(_nearest_on_triangles(_components(points[pp]), triangles.select(pf))[0])
    return torch.cat(parts) if parts else points.new_zeros(0)


def _nearest_faces_brute_force(
    points: torch.Tensor, triangles: _Triangles, max_pairs: int
) -> torch.Tensor:
    """Nearest face (P,) of each point, testing every point-face pair ``max_pairs`` at a time."""
    n_points, n_faces = points.shape[0], triangles.ab_ab.shape[0]
    face_chunk = max(1, min(n_faces, max_pairs))
    point_chunk = max(1, max_pairs // face_chunk)
    best_face = torch.zeros(n_points, dtype=torch.int64, device=points.device)
    for p_start in range(0, n_points, point_chunk):
        p = tuple(points[p_start : p_start + point_chunk, k, None] for k in range(3))  # (p, 1)
        best_sq = torch.full_like(p[0][:, 0], torch.inf)
        chunk_face = torch.zeros_like(best_sq, dtype=torch.int64)
        for f_start in range(0, n_faces, face_chunk):
            sq, _, _ = _nearest_on_triangles(
                p, triangles.select(slice(f_start, f_start + face_chunk))
            )
            chunk_sq, local = sq.min(dim=1)
            better = chunk_sq < best_sq
            best_sq = torch.where(better, chunk_sq, best_sq)
            chunk_face = torch.where(better, local + f_start, chunk_face)
        best_face[p_start : p_start + chunk_face.shape[0]] = chunk_face
    return best_face


class _FaceBounds(NamedTuple):
    """Float64 pruning data of faces, one row (F, 7) a face: centroid (3), unit plane normal (3,
    zero for faces too thin to trust theirs) and radius (the largest centroid-corner distance)."""

    table: torch.Tensor

    @classmethod
    def from_corners(cls, corners: torch.Tensor) -> _FaceBounds:
        """From float64 corner positions (F, 3 corners, 3)."""
        centroids = corners.mean(dim=1)
        area_vectors, longest_sq, _ = _area_vectors_and_longest_edges(corners)
        twice_area = area_vectors.norm(dim=-1, keepdim=True)
        thin = twice_area[:, 0] <= _THIN_FACE * longest_sq
        normals = torch.where(thin[:, None], 0.0, area_vectors / twice_area.clamp_min(1e-300))
        radius = (corners - centroids[:, None]).norm(dim=-1).amax(dim=1)
        return cls(torch.cat([centroids, normals, radius[:, None]], dim=1))

    @property
    def centroids(self) -> torch.Tensor:
        """Face centroids (F, 3)."""
        return self.table[:, :3]

    @property
    def radius(self) -> torch.Tensor:
        """Largest centroid-corner distance (F,) of each face."""
        return self.table[:, 6]

    def size_groups(self) -> list[np.ndarray]:
        """Face indices grouped by octave of radius, so that radii in a group differ < 2x."""
        return octave_groups(self.radius.numpy(), _SIZE_OCTAVES + 1)

    def may_be_nearer(
        self, points_and_bound_sq: torch.Tensor, pair_point: torch.Tensor, pair_face: torch.Tensor
    ) -> torch.Tensor:
        """Whether each pair's face may lie within the bound of its point (N,) bool.

        ``points_and_bound_sq`` (P, 4) holds each point and its squared distance bound. A face
        lies in its plane within ``radius`` of its centroid c, so its distance to p is at least
        sqrt(h^2 + max(0, l - radius)^2), h and l the normal and in-plane parts of p - c.
        """
        point, face = points_and_bound_sq[pair_point], self.table[pair_face]
        offset = point[:, :3] - face[:, :3]
        height_sq = (offset * face[:, 3:6]).sum(dim=1) ** 2
        centre_sq = (offset * offset).sum(dim=1)
        lateral = (centre_sq - height_sq).clamp_min(0).sqrt()
        lower_sq = height_sq + (lateral - face[:, 6]).clamp_min(0) ** 2
        return lower_sq <= point[:, 3] + _PRUNE_SLACK * centre_sq


def _query_workers(n_points: int) -> int:
    """Threads for the KD-tree queries of a call over ``n_points`` points: all cores (-1) for
    large calls, one below :data:`_PARALLEL_QUERY_POINTS`, where starting the threads costs more
    than they save (the resolution step's thousands of small queries spent ~0.2 s starting them)."""
    return -1 if n_points >= _PARALLEL_QUERY_POINTS else 1


def _nearest_faces_kdtree(
    points: torch.Tensor, corners: torch.Tensor, max_pairs: int
) -> torch.Tensor:
    """Nearest face (P,) of each point (the lowest index on ties), in float64, testing few faces.

    Each point's exact distance to the face with the nearest centroid bounds its distance from
    above by ``bound``. A face with centroid c and radius r can only be nearer if
    ``|p - c| <= bound + r``: KD-trees over the centroids, one per octave of face size (so that r
    is tight), list those faces, :meth:`_FaceBounds.may_be_nearer` drops those whose plane keeps
    them too far, and only the rest are evaluated. Points are grouped so that each group lists
    about ``max_pairs`` candidate pairs.
    """
    points, corners = points.double(), corners.double()
    triangles = _Triangles.from_corners(corners)
    faces = _FaceBounds.from_corners(corners)
    points_np, centroids_np = points.numpy(), faces.centroids.numpy()
    workers = _query_workers(len(points_np))
    _, nearest = cKDTree(centroids_np).query(points_np, workers=workers)
    nearest_sq, _, _ = _nearest_on_triangles(
        _components(points), triangles.select(torch.from_numpy(nearest))
    )
    bound = nearest_sq.sqrt()
    points_and_bound_sq = torch.cat([points, nearest_sq[:, None]], dim=1)
    groups = []
    for ids in faces.size_groups():
        reach = (bound.numpy() + float(faces.radius[ids].max())) * (1 + _PRUNE_SLACK)
        groups.append((ids, cKDTree(centroids_np[ids]), reach))
    counts = sum(
        tree.query_ball_point(points_np, reach, workers=workers, return_length=True)
        for _, tree, reach in groups
    )
    group_of_point = np.cumsum(counts) // max_pairs
    starts = np.flatnonzero(np.diff(group_of_point, prepend=-1)).tolist() + [len(points_np)]

    best_face = torch.empty(points.shape[0], dtype=torch.int64)
    for start, stop in zip(starts[:-1], starts[1:], strict=True):
        pair_point, pair_face = [], []
        for ids, tree, reach in groups:
            found = tree.query_ball_point(points_np[start:stop], reach[start:stop], workers=workers)
            lengths = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
            pair_point.append(np.repeat(np.arange(start, stop), lengths))
            listed = np.fromiter(chain.from_iterable(found), np.int64, count=int(lengths.sum()))
            pair_face.append(ids[listed])
        pp = torch.from_numpy(np.concatenate(pair_point))
        pf = torch.from_numpy(np.concatenate(pair_face))
        keep = faces.may_be_nearer(points_and_bound_sq, pp, pf)
        pp, pf = pp[keep], pf[keep]
        sq = _squared_distances(points, triangles, pp, pf, max_pairs)
        local = pp - start
        best_sq = torch.full((stop - start,), torch.inf, dtype=sq.dtype)
        best_sq.scatter_reduce_(0, local, sq, reduce="amin")
        tied = sq == best_sq[local]
        lowest = torch.full((stop - start,), len(corners), dtype=torch.int64)
        best_face[start:stop] = lowest.scatter_reduce_(0, local[tied], pf[tied], reduce="amin")
    return best_face


def closest_points_on_mesh(
    points: ArrayLike, verts: ArrayLike, faces: ArrayLike, max_pairs: int = 2**20
) -> ClosestPoints:
    """Exact nearest surface point, distance, face and barycentric weights of each point.

    Point-face pairs are evaluated ``max_pairs`` at a time (roughly 150 bytes each), so memory
    stays bounded. Degenerate (collinear or coincident-corner) faces count as their longest
    edge. The nearest face is found without gradients; ``closest`` and ``distance`` are then
    recomputed from it, so they are differentiable with respect to ``verts`` (and ``distance``
    also to ``points``). On CPU the search runs in float64 whatever the input dtype.

    Args:
        points: query points (P, 3), mm.
        verts: mesh vertices (V, 3), mm.
        faces: triangles (F, 3) int64.
        max_pairs: point-face pairs evaluated per chunk (raise it on a GPU for speed).

    Returns:
        :class:`ClosestPoints` with distance (P,), closest (P, 3), face_index (P,) and
        barycentric (P, 3), on the device and in the dtype of ``verts``.

    Raises:
        MeshError: unusable mesh (see :func:`as_mesh`).
        CardioInputError: points not (P, 3) or not finite, or ``max_pairs`` < 1.
    """
    verts_t, faces_t = as_mesh(verts, faces, name="closest_points_on_mesh mesh")
    points_t = torch.as_tensor(points, device=verts_t.device).to(verts_t.dtype)
    if points_t.dim() != 2 or points_t.shape[1] != 3:
        raise CardioInputError("points", f"must have shape (P, 3), got {tuple(points_t.shape)}")
    if not bool(torch.isfinite(points_t.detach()).all()):
        raise CardioInputError("points", "contain NaN or infinite coordinates")
    if max_pairs < 1:
        raise CardioInputError("max_pairs", f"must be >= 1, got {max_pairs}")
    with torch.no_grad():
        query = points_t.detach()
        order = _corner_order(verts_t.detach()[faces_t])
        corners = verts_t.detach()[faces_t.gather(1, order)]  # (F, 3 corners, 3)
        if verts_t.device.type == "cpu":
            face_index = _nearest_faces_kdtree(query, corners, max_pairs)
        else:
            triangles = _Triangles.from_corners(corners)
            face_index = _nearest_faces_brute_force(query, triangles, max_pairs)
        nearest = _Triangles.from_corners(corners[face_index])
        _, v, w = _nearest_on_triangles(_components(query), nearest)
        ordered = torch.stack([1 - v - w, v, w], dim=1).clamp_min(0)
        ordered = ordered / ordered.sum(dim=1, keepdim=True)
        barycentric = torch.zeros_like(ordered).scatter_add_(1, order[face_index], ordered)
    closest = (barycentric.unsqueeze(-1) * verts_t[faces_t[face_index]]).sum(dim=1)
    return ClosestPoints((points_t - closest).norm(dim=-1), closest, face_index, barycentric)


def point_to_mesh_distance(
    points: ArrayLike, verts: ArrayLike, faces: ArrayLike, max_pairs: int = 2**20
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact unsigned distance from each point to the nearest triangle of a mesh.

    The distance and closest point of :func:`closest_points_on_mesh` (same arguments, errors
    and gradients).

    Returns:
        distance (P,) in mm and closest (P, 3), the nearest surface point of each query.
    """
    result = closest_points_on_mesh(points, verts, faces, max_pairs)
    return result.distance, result.closest
