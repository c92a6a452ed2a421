"""Exact unsigned distance from points to a triangle mesh, chunked so memory stays bounded.

The point-triangle test follows the Voronoi regions of the triangle (three vertex regions, three
edge regions, the interior), evaluated for many pairs at once and merged with ``torch.where``.
On CPU, candidate faces are first pruned with SciPy KD-trees (a face can only be nearest if its
centroid lies within the distance to the nearest face corner plus the largest face radius); on
other devices every point is tested against every face, chunk by chunk. Both paths are exact.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.spatial import cKDTree

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import ArrayLike, as_mesh

Components = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


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

        def components(vectors: torch.Tensor) -> Components:
            return tuple(vectors.t().contiguous().unbind(0))

        return cls(
            components(a),
            components(ab),
            components(ac),
            (ab * ab).sum(-1),
            (ab * ac).sum(-1),
            (ac * ac).sum(-1),
        )

    def select(self, index: torch.Tensor | slice) -> _Triangles:
        """The triangles at ``index`` (an index tensor or a slice)."""

        def pick(field: Components | torch.Tensor) -> Components | torch.Tensor:
            return tuple(c[index] for c in field) if isinstance(field, tuple) else field[index]

        return _Triangles(*(pick(field) for field in self))


def _corner_order(corners: torch.Tensor) -> torch.Tensor:
    """Corner order (F, 3) for the region tests: (0, 1, 2), or (i, j, j) for degenerate faces.

    The region tests assume a proper triangle. A face whose corners are (nearly) collinear or
    coincident is, as a point set, its longest edge (i, j); written as the triangle (i, j, j) the
    same tests reduce exactly to a point-segment test.
    """
    edges = corners.roll(-1, dims=1) - corners  # edge k runs from corner k to corner k + 1
    squared_lengths = (edges**2).sum(-1)
    longest_sq, longest = squared_lengths.max(dim=1)
    twice_area = torch.linalg.cross(edges[:, 0], -edges[:, 2], dim=-1).norm(dim=-1)
    degenerate = twice_area <= 64 * torch.finfo(corners.dtype).eps * longest_sq
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


def _nearest_faces_brute_force(
    points: torch.Tensor, triangles: _Triangles, max_pairs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest face (P,) and its weights (v, w) as (P, 2), testing every point-face pair."""
    n_points, n_faces = points.shape[0], triangles.ab_ab.shape[0]
    face_chunk = max(1, min(n_faces, max_pairs))
    point_chunk = max(1, max_pairs // face_chunk)
    best_face = torch.zeros(n_points, dtype=torch.int64, device=points.device)
    best_weights = points.new_zeros(n_points, 2)
    for p_start in range(0, n_points, point_chunk):
        p = tuple(points[p_start : p_start + point_chunk, k, None] for k in range(3))  # (p, 1)
        rows = torch.arange(p_start, p_start + p[0].shape[0], device=points.device)
        best_sq = torch.full_like(p[0][:, 0], torch.inf)
        for f_start in range(0, n_faces, face_chunk):
            sq, v, w = _nearest_on_triangles(
                p, triangles.select(slice(f_start, f_start + face_chunk))
            )
            chunk_sq, local = sq.min(dim=1)
            better = chunk_sq < best_sq
            best_sq = torch.where(better, chunk_sq, best_sq)
            local = local[:, None]
            weights = torch.cat([v.gather(1, local), w.gather(1, local)], dim=1)
            best_face[rows[better]] = local[better, 0] + f_start
            best_weights[rows[better]] = weights[better]
    return best_face, best_weights


def _nearest_faces_kdtree(
    points: torch.Tensor, corners: torch.Tensor, triangles: _Triangles, max_pairs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest face (P,) and its weights (v, w) as (P, 2), testing only candidate faces.

    The nearest face corner bounds the distance from above by ``bound``; a face whose centroid is
    farther than ``bound + radius`` (radius: largest centroid-to-corner distance of any face)
    cannot hold a nearer point, so only faces inside that ball are tested. Points are grouped so
    that each group has about ``max_pairs`` candidate pairs.
    """
    centroids = corners.mean(dim=1)
    face_radius = float((corners - centroids[:, None]).norm(dim=-1).max())
    points_np = points.numpy()
    bound, _ = cKDTree(corners.reshape(-1, 3).numpy()).query(points_np, workers=-1)
    search_radius = bound * (1 + 1e-6) + face_radius
    centroid_tree = cKDTree(centroids.numpy())
    counts = centroid_tree.query_ball_point(
        points_np, search_radius, workers=-1, return_length=True
    )
    group_of_point = np.cumsum(counts) // max_pairs
    group_starts = np.flatnonzero(np.diff(group_of_point, prepend=-1)).tolist() + [len(points_np)]

    best_face = torch.zeros(points.shape[0], dtype=torch.int64)
    best_weights = points.new_zeros(points.shape[0], 2)
    best_sq = torch.full((points.shape[0],), torch.inf, dtype=points.dtype)
    for p_start, p_stop in zip(group_starts[:-1], group_starts[1:], strict=True):
        candidates = centroid_tree.query_ball_point(
            points_np[p_start:p_stop], search_radius[p_start:p_stop], workers=-1
        )
        pair_point = torch.from_numpy(np.repeat(np.arange(p_start, p_stop), counts[p_start:p_stop]))
        pair_face = torch.from_numpy(np.concatenate(candidates).astype(np.int64))
        for start in range(0, pair_point.shape[0], max_pairs):
            pp, pf = pair_point[start : start + max_pairs], pair_face[start : start + max_pairs]
            p = tuple(points[pp, k] for k in range(3))
            sq, v, w = _nearest_on_triangles(p, triangles.select(pf))
            best_sq.scatter_reduce_(0, pp, sq, reduce="amin")
            winners = sq <= best_sq[pp]  # ties may overwrite each other: all are nearest
            best_face[pp[winners]] = pf[winners]
            best_weights[pp[winners]] = torch.stack([v[winners], w[winners]], dim=1)
    return best_face, best_weights


def point_to_mesh_distance(
    points: ArrayLike, verts: ArrayLike, faces: ArrayLike, max_pairs: int = 2**20
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact unsigned distance from each point to the nearest triangle of a mesh.

    Point-face pairs are evaluated ``max_pairs`` at a time (roughly 150 bytes each), so memory
    stays bounded. Degenerate (collinear or coincident-corner) faces count as their longest
    edge. The nearest face is found without gradients; the returned values are then recomputed
    from it, so they are differentiable with respect to both ``points`` and ``verts``.

    Args:
        points: query points (P, 3), mm.
        verts: mesh vertices (V, 3), mm.
        faces: triangles (F, 3) int64.
        max_pairs: point-face pairs evaluated per chunk (raise it on a GPU for speed).

    Returns:
        distance (P,) in mm and closest (P, 3), the nearest surface point of each query.
    """
    verts_t, faces_t = as_mesh(verts, faces, name="point_to_mesh_distance mesh")
    points_t = torch.as_tensor(points, device=verts_t.device).to(verts_t.dtype)
    if points_t.dim() != 2 or points_t.shape[1] != 3:
        raise CardioInputError("points", f"must have shape (P, 3), got {tuple(points_t.shape)}")
    if not bool(torch.isfinite(points_t.detach()).all()):
        raise CardioInputError("points", "contain NaN or infinite coordinates")
    if max_pairs < 1:
        raise CardioInputError("max_pairs", f"must be >= 1, got {max_pairs}")
    with torch.no_grad():
        order = _corner_order(verts_t.detach()[faces_t])
        corner_verts = faces_t.gather(1, order)
        corners = verts_t.detach()[corner_verts]  # (F, 3 corners, 3)
        triangles = _Triangles.from_corners(corners)
        if verts_t.device.type == "cpu":
            best_face, weights = _nearest_faces_kdtree(
                points_t.detach(), corners, triangles, max_pairs
            )
        else:
            best_face, weights = _nearest_faces_brute_force(points_t.detach(), triangles, max_pairs)
    barycentric = torch.cat([1 - weights.sum(dim=1, keepdim=True), weights], dim=1)
    closest = (barycentric.unsqueeze(-1) * verts_t[corner_verts[best_face]]).sum(dim=1)
    return (points_t - closest).norm(dim=-1), closest
