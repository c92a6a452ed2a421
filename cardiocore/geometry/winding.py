"""Generalized winding numbers and occupancy of points with respect to a triangle mesh.

The generalized winding number w(p) of a triangle mesh is the signed solid angle the mesh
subtends at p, divided by 4 pi. For a closed, outward-oriented mesh it is 1 inside, 0 outside
and 1/2 on the surface; reversed orientation flips the sign; open or self-intersecting meshes
give fractional values that still classify inside/outside robustly (w > 1/2 is inside).

Three ways to compute it:

- :func:`winding_number`: exact sum of triangle solid angles (Van Oosterom & Strackee 1983),
  batched, chunked so memory stays bounded, differentiable w.r.t. points and vertices.
- :func:`fast_winding_number`: the tree approximation of Barill et al. (2018, "Fast winding
  numbers for soups and clouds"): far-away groups of triangles are replaced by their dipole and
  first moment, nearby triangles are summed exactly. The traversal works level by level on all
  (query, node) pairs at once, on CPU or CUDA.
- :func:`smooth_winding_number`: a regularised dipole sum (the winding number of the MIE loss of
  CardioReconstruct). The exact w of a closed mesh is piecewise constant, so its gradient vanishes
  everywhere off the surface; this smooth version has useful gradients near the surface.

:func:`occupancy` turns any of them into inside/outside labels (hard) or a sigmoid (soft).
Coordinates are in mm; all functions take numpy arrays or tensors and run on the device of
``verts``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import ArrayLike, as_mesh

#: (point, triangle) pairs evaluated at once on CPU: a chunk needs about 30 temporaries of
#: this many elements, i.e. ~120 MB in float32. CUDA uses 8 times more (~1 GB) to keep the
#: number of kernel launches down.
PAIR_BUDGET = 1 << 20

#: Default sigmoid sharpness k of the soft occupancy sigmoid(k (w - 1/2)). With the smooth
#: winding number, w rises across a flat patch of surface as 1/2 + 1/2 d / sqrt(d^2 + s^2)
#: (d the signed distance, s the smoothing length); with k = 10 the soft occupancy is 0.23 at
#: d = -s/4, 0.5 on the surface, 0.77 at d = +s/4 and 0.97 at d = +s: a transition about one
#: smoothing length (by default the mean edge length) wide.
DEFAULT_SHARPNESS = 10.0

#: ``method="auto"`` uses the tree for hard occupancy once points x faces exceeds this.
AUTO_FAST_PAIRS = 1 << 24

#: Triangles per leaf of the fast method's tree (leaves hold between this and twice this).
DEFAULT_LEAF_SIZE = 16

_FOUR_PI = 4.0 * math.pi

Method = Literal["auto", "exact", "fast", "smooth"]


# --------------------------------------------------------------------------------------------
# Input handling and the chunked pairwise sum shared by the exact and smooth winding numbers


def _as_points(points: ArrayLike, like: torch.Tensor, name: str = "points") -> torch.Tensor:
    """Query points (..., P, 3) as a float tensor on the device of ``like``."""
    points_t = torch.as_tensor(points, device=like.device)
    if not torch.is_floating_point(points_t):
        points_t = points_t.to(like.dtype)
    if points_t.dim() < 2 or points_t.shape[-1] != 3:
        raise CardioInputError(name, f"must have shape (..., P, 3), got {tuple(points_t.shape)}")
    return points_t


def _prepare(
    points: ArrayLike, verts: ArrayLike, faces: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated (points, verts, faces) with points and verts in one floating dtype."""
    verts_t, faces_t = as_mesh(verts, faces, allow_batch=True)
    points_t = _as_points(points, verts_t)
    dtype = torch.promote_types(points_t.dtype, verts_t.dtype)
    return points_t.to(dtype), verts_t.to(dtype), faces_t


def _pair_budget(device: torch.device) -> int:
    """(point, triangle) pairs per chunk on ``device``: see :data:`PAIR_BUDGET`."""
    return PAIR_BUDGET * (8 if device.type == "cuda" else 1)


def _components_first(corners: torch.Tensor) -> torch.Tensor:
    """(..., F, 3 corners, 3 xyz) -> (..., 3 corners, 3 xyz, F) so each coordinate is contiguous."""
    return corners.movedim(-3, -1).contiguous()


def _pairwise_sum(
    kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    points: torch.Tensor,
    face_data: torch.Tensor,
    chunk_size: int | None,
) -> torch.Tensor:
    """Sum ``kernel`` over all faces for every point, in bounded-memory chunks.

    Args:
        kernel: maps (points (..., 3, Pc), face_data chunk (..., *, Fc)) to (..., Pc).
        points: (..., P, 3).
        face_data: per-face tensor whose last dimension indexes faces (..., *, F).
        chunk_size: points per chunk; ``None`` picks it so a chunk holds ~:func:`_pair_budget`
            pairs.

    Returns:
        (..., P) summed over faces. When gradients are needed each chunk is checkpointed, so the
        backward pass also keeps only the inputs, never the (point, face) temporaries.
    """
    n_points, n_faces = points.shape[-2], face_data.shape[-1]
    batch = torch.broadcast_shapes(points.shape[:-2], face_data.shape[:-3])
    batch_size = math.prod(batch)
    budget = _pair_budget(points.device)
    face_chunk = min(n_faces, max(1, budget // batch_size))
    if chunk_size is None:
        chunk_size = max(1, budget // (face_chunk * batch_size))
    elif chunk_size < 1:
        raise CardioInputError("chunk_size", f"must be a positive number of points, got {chunk_size}")
    needs_grad = torch.is_grad_enabled() and (points.requires_grad or face_data.requires_grad)
    points_first = points.transpose(-1, -2)  # (..., 3, P)
    sums = []
    for p0 in range(0, n_points, chunk_size):
        chunk = points_first[..., p0 : p0 + chunk_size]
        total = None
        for f0 in range(0, n_faces, face_chunk):
            data = face_data[..., f0 : f0 + face_chunk]
            part = checkpoint(kernel, chunk, data, use_reentrant=False) if needs_grad else kernel(chunk, data)
            total = part if total is None else total + part
        sums.append(total)
    if not sums:
        return points.new_zeros(*batch, 0)
    return torch.cat(sums, dim=-1).expand(*batch, n_points)


# --------------------------------------------------------------------------------------------
# Exact winding number


def _solid_angles(
    a: tuple[torch.Tensor, ...],
    b: tuple[torch.Tensor, ...],
    c: tuple[torch.Tensor, ...],
    plane_tol: torch.Tensor,
) -> torch.Tensor:
    """Signed solid angles (sr) of triangles seen from the origin (Van Oosterom & Strackee).

    ``a``, ``b``, ``c`` are the corners relative to the query point, each a tuple of x, y, z
    tensors of one broadcastable shape. tan(Omega / 2) = det[a b c] / (|a||b||c| + (a.b)|c| +
    (b.c)|a| + (c.a)|b|). det = 2 area x (height of the point above the triangle's plane); where
    |det| <= ``plane_tol`` the point lies in the plane to rounding precision and the triangle
    contributes its principal value 0 (so surface points get w = 1/2 on a closed mesh, and
    zero-area triangles, which the tree uses as padding, contribute nothing).
    """
    tiny = torch.finfo(a[0].dtype).tiny
    la = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).clamp_min(tiny).sqrt()
    lb = (b[0] * b[0] + b[1] * b[1] + b[2] * b[2]).clamp_min(tiny).sqrt()
    lc = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).clamp_min(tiny).sqrt()
    det = (
        a[0] * (b[1] * c[2] - b[2] * c[1])
        + a[1] * (b[2] * c[0] - b[0] * c[2])
        + a[2] * (b[0] * c[1] - b[1] * c[0])
    )
    den = (
        la * lb * lc
        + (a[0] * b[0] + a[1] * b[1] + a[2] * b[2]) * lc
        + (b[0] * c[0] + b[1] * c[1] + b[2] * c[2]) * la
        + (c[0] * a[0] + c[1] * a[1] + c[2] * a[2]) * lb
    )
    in_plane = det.abs() <= plane_tol
    return 2.0 * torch.atan2(det.masked_fill(in_plane, 0.0), den.masked_fill(in_plane, 1.0))


def _in_plane_terms(corners: torch.Tensor) -> torch.Tensor:
    """Per-triangle terms of :func:`_plane_tolerance` (..., 2, F): 2 x area, and that times the
    triangle's largest coordinate magnitude, for ``corners`` (..., 3 corners, 3 xyz, F)."""
    e1 = [corners[..., 1, x, :] - corners[..., 0, x, :] for x in range(3)]
    e2 = [corners[..., 2, x, :] - corners[..., 0, x, :] for x in range(3)]
    double_area = torch.stack(
        [e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]]
    ).norm(dim=0)
    return torch.stack([double_area, double_area * corners.abs().amax(dim=(-3, -2))], dim=-2)


def _plane_tolerance(
    point_scale: torch.Tensor, double_area: torch.Tensor, scaled_area: torch.Tensor
) -> torch.Tensor:
    """|det| below which a point lies in a triangle's plane to rounding precision.

    Corners relative to the point carry rounding errors of eps x max(|p|, |v|), which move det
    = 2 area x height by about 2 area x that. ``point_scale`` is the largest coordinate
    magnitude of each point, ``double_area`` and ``scaled_area`` the two rows of
    :func:`_in_plane_terms`; all three broadcast.
    """
    eps = 16 * torch.finfo(double_area.dtype).eps
    return eps * torch.maximum(point_scale * double_area, scaled_area)


def _exact_kernel(points: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Winding number (..., Pc) of points (..., 3, Pc) w.r.t. triangles (..., 3, 3, Fc)."""
    rel = [tuple(corners[..., k, x, None, :] - points[..., x, :, None] for x in range(3)) for k in range(3)]
    point_scale = points.detach().abs().amax(dim=-2)[..., :, None]
    terms = _in_plane_terms(corners.detach())
    plane_tol = _plane_tolerance(point_scale, terms[..., 0, None, :], terms[..., 1, None, :])
    return _solid_angles(*rel, plane_tol).sum(dim=-1) / _FOUR_PI


def winding_number(
    points: ArrayLike, verts: ArrayLike, faces: ArrayLike, chunk_size: int | None = None
) -> torch.Tensor:
    """Exact generalized winding number: the sum of signed triangle solid angles over 4 pi.

    Args:
        points: query points (..., P, 3), mm.
        verts: mesh vertices (..., V, 3), mm; batch dimensions broadcast with those of points.
        faces: triangles (F, 3) int64 shared by the batch.
        chunk_size: points per chunk; ``None`` keeps ~PAIR_BUDGET (point, face) pairs per chunk
            (8x on CUDA), so peak memory is the output plus a constant: linear in the points.

    Returns:
        w (..., P) in the dtype of the inputs: 1 inside / 0 outside a closed outward-oriented
        mesh, 1/2 on it. Differentiable w.r.t. ``points`` and ``verts`` (for a closed mesh the
        gradient is zero off the surface: use :func:`smooth_winding_number` for a loss).
    """
    return _exact_winding(*_prepare(points, verts, faces), chunk_size)


def _exact_winding(
    points: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor, chunk_size: int | None
) -> torch.Tensor:
    """:func:`winding_number` for validated tensors."""
    corners = _components_first(verts[..., faces, :])
    return _pairwise_sum(_exact_kernel, points, corners, chunk_size)


# --------------------------------------------------------------------------------------------
# Smooth (regularised dipole) winding number


def _smooth_kernel(points: torch.Tensor, dipoles: torch.Tensor, smoothing_sq: float) -> torch.Tensor:
    """Regularised dipole sum (..., Pc) for points (..., 3, Pc) and dipoles (..., 2, 3, Fc).

    ``dipoles[..., 0, :, :]`` are face centroids, ``dipoles[..., 1, :, :]`` area vectors
    (area x unit normal, mm^2).
    """
    r = [dipoles[..., 0, x, None, :] - points[..., x, :, None] for x in range(3)]
    flux = (
        r[0] * dipoles[..., 1, 0, None, :]
        + r[1] * dipoles[..., 1, 1, None, :]
        + r[2] * dipoles[..., 1, 2, None, :]
    )
    dist_sq = r[0] * r[0] + r[1] * r[1] + r[2] * r[2] + smoothing_sq
    return (flux * dist_sq.rsqrt() / dist_sq).sum(dim=-1) / _FOUR_PI


def _mean_edge_length(verts: torch.Tensor, faces: torch.Tensor) -> float:
    """Mean length (mm) of the face edges of ``verts`` (..., V, 3), without gradient."""
    corners = verts.detach()[..., faces, :]
    return float((corners - corners.roll(1, dims=-2)).norm(dim=-1).mean())


def smooth_winding_number(
    points: ArrayLike,
    verts: ArrayLike,
    faces: ArrayLike,
    smoothing: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Smooth winding number: w(p) = 1/(4 pi) sum_f A_f n_f . (c_f - p) / (|c_f - p|^2 + s^2)^(3/2).

    The MIE formula of CardioReconstruct written per face (centroid c_f, area A_f, unit normal
    n_f) instead of per vertex: the dipoles are then exact per triangle and need no vertex-normal
    estimate. Far from the surface it equals the exact winding number; across the surface it
    rises smoothly over a width of about ``s``, so its gradient w.r.t. the vertices moves the
    surface towards points that should be inside.

    Args:
        points: query points (..., P, 3), mm.
        verts: mesh vertices (..., V, 3), mm.
        faces: triangles (F, 3) int64.
        smoothing: regularisation length s in mm; ``None`` uses the mean edge length (smaller
            values than the edge length make w bumpy near the vertices).
        chunk_size: points per chunk, as in :func:`winding_number`.

    Returns:
        w (..., P), differentiable w.r.t. ``points`` and ``verts``.
    """
    return _smooth_winding(*_prepare(points, verts, faces), smoothing, chunk_size)


def _smooth_winding(
    points: torch.Tensor,
    verts: torch.Tensor,
    faces: torch.Tensor,
    smoothing: float | None,
    chunk_size: int | None,
) -> torch.Tensor:
    """:func:`smooth_winding_number` for validated tensors."""
    if smoothing is None:
        smoothing = _mean_edge_length(verts, faces)
    elif smoothing < 0:
        raise CardioInputError("smoothing", f"must be a non-negative length in mm, got {smoothing}")
    corners = verts[..., faces, :]
    a, b, c = corners.unbind(dim=-2)
    area_vectors = 0.5 * torch.linalg.cross(b - a, c - a, dim=-1)
    dipoles = torch.stack([corners.mean(dim=-2), area_vectors], dim=-3)  # (..., 2, F, 3)
    dipoles = dipoles.transpose(-1, -2).contiguous()  # (..., 2, 3, F)
    kernel = partial(_smooth_kernel, smoothing_sq=float(smoothing) ** 2)
    return _pairwise_sum(kernel, points, dipoles, chunk_size)


# --------------------------------------------------------------------------------------------
# Fast winding number: a balanced kd-tree over triangles with far-field moments


#: Monomials of the far-field polynomial: r_i r_j (i <= j) and r_i r_j r_k (i <= j <= k).
_QUADRATIC = [(i, j) for i in range(3) for j in range(i, 3)]
_CUBIC = [(i, j, k) for i in range(3) for j in range(i, 3) for k in range(j, 3)]


def _symmetrise(tensor: torch.Tensor, monomials: list[tuple[int, ...]]) -> torch.Tensor:
    """Coefficients (N, len(monomials)) of the polynomial sum T[i, j, ...] r_i r_j ... ."""
    order = len(monomials[0])
    flat = tensor.reshape(tensor.shape[0], -1)
    lookup = {m: n for n, m in enumerate(monomials)}
    target = [lookup[tuple(sorted(idx))] for idx in torch.cartesian_prod(*[torch.arange(3)] * order).tolist()]
    target_t = torch.tensor(target, device=tensor.device)
    return flat.new_zeros(flat.shape[0], len(monomials)).index_add_(1, target_t, flat)


@dataclass(frozen=True)
class WindingTree:
    """Balanced kd-tree over the triangles of one mesh, with the far-field terms of every node.

    The tree is complete: level ``l`` holds ``2**l`` nodes, stored in heap order (node ``h`` has
    children ``2h + 1`` and ``2h + 2``); all leaves sit at level ``depth`` and hold between
    ``leaf_size`` and ``2 * leaf_size`` triangles. Per node (N nodes):

    Attributes:
        center: area-weighted centroid p~ of its triangles (N, 3), mm.
        radius: largest distance from ``center`` to a corner of its triangles (N,), mm.
        far_terms: coefficients (N, 23) of the far-field expansion (see :func:`_far_field`):
            dipole N (3), tr C (1), -3/2 L (3), -3 C on r_i r_j (6), 15/2 D on r_i r_j r_k (10).
        leaf_corners: corners of the triangles of every leaf (2**depth, 3, 3, m), coordinates
            first, padded with zero-area triangles up to the largest leaf size m.
        leaf_plane: in-plane tolerance terms of those triangles (2**depth, 2, m).
        depth: level of the leaves.
    """

    center: torch.Tensor
    radius: torch.Tensor
    far_terms: torch.Tensor
    leaf_corners: torch.Tensor
    leaf_plane: torch.Tensor
    depth: int


def _node_of_position(n_items: int, n_nodes: int, device: torch.device) -> torch.Tensor:
    """Node (0..n_nodes-1) of each sorted position when n_items are split into near-equal ranges.

    Node j owns positions [floor(j n_items / n_nodes), floor((j + 1) n_items / n_nodes)); these
    ranges nest from one level to the next, which makes the tree balanced and implicit.
    """
    positions = torch.arange(n_items, device=device)
    return ((positions + 1) * n_nodes - 1) // n_items


def build_winding_tree(verts: ArrayLike, faces: ArrayLike, leaf_size: int = DEFAULT_LEAF_SIZE) -> WindingTree:
    """Build the kd-tree of :func:`fast_winding_number` for one mesh (V, 3) + (F, 3).

    Each level splits every node at the median of its triangle centroids along the longest axis
    of their bounding box; all nodes of a level are split at once by two stable sorts.
    Cost O(F log^2 F), run without gradient on the device of ``verts``.
    """
    verts_t, faces_t = as_mesh(verts, faces)
    return _build_tree(verts_t, faces_t, leaf_size)


def _build_tree(verts: torch.Tensor, faces: torch.Tensor, leaf_size: int) -> WindingTree:
    """:func:`build_winding_tree` for an already validated mesh."""
    if leaf_size < 1:
        raise CardioInputError("leaf_size", f"must be a positive number of triangles, got {leaf_size}")
    with torch.no_grad():
        corners = verts[faces]  # (F, 3, 3)
        n_faces, device = corners.shape[0], corners.device
        depth = max(0, (n_faces // leaf_size).bit_length() - 1)
        centroids = corners.mean(dim=1)
        order = torch.arange(n_faces, device=device)
        for level in range(depth):
            node = _node_of_position(n_faces, 1 << level, device)
            sorted_centroids = centroids[order]
            index = node[:, None].expand(-1, 3)
            low = torch.full((1 << level, 3), math.inf, device=device, dtype=centroids.dtype)
            high = torch.full_like(low, -math.inf)
            low = low.scatter_reduce(0, index, sorted_centroids, "amin")
            high = high.scatter_reduce(0, index, sorted_centroids, "amax")
            axis = (high - low).argmax(dim=1)
            key = sorted_centroids.gather(1, axis[node, None]).squeeze(1)
            by_key = torch.sort(key, stable=True).indices
            by_node = torch.sort(node[by_key], stable=True).indices
            order = order[by_key[by_node]]
        corners, centroids = corners[order], centroids[order]
        return _tree_from_sorted(corners, centroids, depth)


def _tree_from_sorted(corners: torch.Tensor, centroids: torch.Tensor, depth: int) -> WindingTree:
    """Node moments of every level and the padded leaf table, from triangles in tree order."""
    n_faces, device, dtype = corners.shape[0], corners.device, corners.dtype
    n_nodes = (2 << depth) - 1
    area_vectors = 0.5 * torch.linalg.cross(
        corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1
    )
    areas = area_vectors.norm(dim=1)
    spread = corners - centroids[:, None, :]
    # Second moment of each triangle about its centroid, per unit area: sum_i e_i e_i^T / 12.
    triangle_cov = torch.einsum("tij,tik->tjk", spread, spread) / 12.0
    center = corners.new_zeros(n_nodes, 3)
    radius = corners.new_zeros(n_nodes)
    dipole = corners.new_zeros(n_nodes, 3)
    moment = corners.new_zeros(n_nodes, 3, 3)
    moment2 = corners.new_zeros(n_nodes, 3, 3, 3)
    for level in range(depth + 1):
        first = (1 << level) - 1
        node = _node_of_position(n_faces, 1 << level, device)
        rows = slice(first, 2 * first + 1)
        total_area = areas.new_zeros(1 << level).index_add_(0, node, areas)
        weighted = centroids.new_zeros(1 << level, 3).index_add_(0, node, areas[:, None] * centroids)
        plain = centroids.new_zeros(1 << level, 3).index_add_(0, node, centroids)
        count = torch.bincount(node, minlength=1 << level).to(dtype)
        level_center = torch.where(
            (total_area > 0)[:, None],
            weighted / total_area.clamp_min(torch.finfo(dtype).tiny)[:, None],
            plain / count[:, None],
        )
        offsets = centroids - level_center[node]
        spread_sq = offsets[:, :, None] * offsets[:, None, :] + triangle_cov
        corner_dist = (corners - level_center[node][:, None, :]).norm(dim=-1).amax(dim=1)
        center[rows] = level_center
        radius[rows] = radius[rows].scatter_reduce(0, node, corner_dist, "amax")
        dipole[rows] = dipole[rows].index_add_(0, node, area_vectors)
        moment[rows] = moment[rows].index_add_(0, node, area_vectors[:, :, None] * offsets[:, None, :])
        moment2[rows] = moment2[rows].index_add_(0, node, area_vectors[:, :, None, None] * spread_sq[:, None])

    n_leaves = 1 << depth
    leaf = _node_of_position(n_faces, n_leaves, device)
    slot = torch.arange(n_faces, device=device) - (leaf * n_faces) // n_leaves
    leaf_corners = torch.zeros(n_leaves, -(-n_faces // n_leaves), 3, 3, device=device, dtype=dtype)
    leaf_corners[leaf, slot] = corners
    leaf_corners = leaf_corners.permute(0, 2, 3, 1).contiguous()
    return WindingTree(
        center=center,
        radius=radius,
        far_terms=_far_terms(dipole, moment, moment2),
        leaf_corners=leaf_corners,
        leaf_plane=_in_plane_terms(leaf_corners),
        depth=depth,
    )


def _far_terms(dipole: torch.Tensor, moment: torch.Tensor, moment2: torch.Tensor) -> torch.Tensor:
    """Pack the expansion of :func:`_far_field` into polynomial coefficients (N, 23).

    With N the dipole, C = sum_t A_t n_t (c_t - p~)^T and D_ijk = sum_t A_t n_ti M_tjk
    (M_t = int_t (x - p~)(x - p~)^T dA / A_t), the second-order Taylor expansion of
    sum_t int_t n_t . g(x - q) dA, g(r) = r / |r|^3, about x = p~ at r = p~ - q is
    4 pi w = (r.N + tr C) / |r|^3 - (3 r^T C r + 3/2 L.r) / |r|^5 + 15/2 D[r, r, r] / |r|^7,
    with L_k = 2 sum_i D_iik + sum_j D_kjj.
    """
    trace = moment.diagonal(dim1=1, dim2=2).sum(dim=1, keepdim=True)
    linear = 2.0 * moment2.diagonal(dim1=1, dim2=2).sum(dim=2) + moment2.diagonal(dim1=2, dim2=3).sum(dim=2)
    return torch.cat(
        [
            dipole,
            trace,
            -1.5 * linear,
            -3.0 * _symmetrise(moment, _QUADRATIC),
            7.5 * _symmetrise(moment2, _CUBIC),
        ],
        dim=1,
    )


def _far_field(offset: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
    """Far-field winding number (M,) of nodes with packed ``terms`` (M, 23) seen at ``offset``
    = p~ - q (M, 3); see :func:`_far_terms` for the expansion."""
    quadratic_index, cubic_index = _monomial_index(offset.device)
    quadratic = offset.index_select(1, quadratic_index[0]) * offset.index_select(1, quadratic_index[1])
    cubic = quadratic.index_select(1, cubic_index[0]) * offset.index_select(1, cubic_index[1])
    dist_sq = quadratic[:, 0] + quadratic[:, 3] + quadratic[:, 5]  # xx + yy + zz
    inv_sq = 1.0 / dist_sq
    order0 = (offset * terms[:, 0:3]).sum(dim=1) + terms[:, 3]
    order1 = (offset * terms[:, 4:7]).sum(dim=1) + (quadratic * terms[:, 7:13]).sum(dim=1)
    order2 = (cubic * terms[:, 13:23]).sum(dim=1)
    return (order0 + inv_sq * (order1 + inv_sq * order2)) * inv_sq * dist_sq.rsqrt() / _FOUR_PI


@cache
def _monomial_index(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Column indices building r_i r_j from r and r_i r_j r_k from (r_i r_j, r_k)."""
    quadratic = torch.tensor(_QUADRATIC, device=device).t()
    cubic = torch.tensor([[_QUADRATIC.index((i, j)), k] for i, j, k in _CUBIC], device=device).t()
    return quadratic, cubic


def _leaf_exact(tree: WindingTree, queries: torch.Tensor, leaves: torch.Tensor) -> torch.Tensor:
    """Exact winding number (M,) of query points (M, 3) w.r.t. the triangles of ``leaves`` (M,)."""
    leaf_width = tree.leaf_corners.shape[-1]
    step = max(1, _pair_budget(queries.device) // leaf_width)
    parts = []
    for start in range(0, leaves.shape[0], step):
        chunk = leaves[start : start + step]
        corners = tree.leaf_corners.index_select(0, chunk)  # (m, 3, 3, w)
        q = queries[start : start + step]
        rel = [tuple(corners[:, k, x] - q[:, x, None] for x in range(3)) for k in range(3)]
        terms = tree.leaf_plane.index_select(0, chunk)
        plane_tol = _plane_tolerance(q.abs().amax(dim=1, keepdim=True), terms[:, 0], terms[:, 1])
        parts.append(_solid_angles(*rel, plane_tol).sum(dim=1))
    return torch.cat(parts) / _FOUR_PI


def query_winding_tree(
    tree: WindingTree, points: ArrayLike, beta: float = 2.0, query_chunk: int | None = None
) -> torch.Tensor:
    """Approximate winding number (P,) of points (P, 3) from a :class:`WindingTree`.

    All (query, node) pairs of one level are processed together: pairs whose node is farther
    than ``beta`` times its radius take the far-field expansion, the others descend to both
    children; at the leaves the remaining pairs are summed exactly. One host synchronisation per
    level (compacting the pairs that descend), none per point. ``query_chunk`` points are
    processed together (default 2**16 on CPU, 2**18 on CUDA), which bounds the pair lists.
    """
    if beta <= 1.0:
        raise CardioInputError("beta", f"must exceed 1 (the far field diverges inside a node), got {beta}")
    points = _as_points(points, tree.center).to(tree.center.dtype)
    reach_sq = (beta * tree.radius) ** 2
    children = torch.tensor([1, 2], device=points.device)
    if query_chunk is None:
        query_chunk = 1 << 18 if points.is_cuda else 1 << 16
    out = []
    for start in range(0, points.shape[0], query_chunk):
        queries = points[start : start + query_chunk]
        w = queries.new_zeros(queries.shape[0])
        pair_query = torch.arange(queries.shape[0], device=queries.device)
        pair_node = torch.zeros_like(pair_query)
        for level in range(tree.depth + 1):
            offset = tree.center.index_select(0, pair_node) - queries.index_select(0, pair_query)
            far = (offset * offset).sum(dim=1) > reach_sq.index_select(0, pair_node)
            far_pairs = far.nonzero().squeeze(1)
            far_w = _far_field(
                offset.index_select(0, far_pairs),
                tree.far_terms.index_select(0, pair_node.index_select(0, far_pairs)),
            )
            w.index_add_(0, pair_query.index_select(0, far_pairs), far_w)
            near = (~far).nonzero().squeeze(1)
            pair_query, pair_node = pair_query.index_select(0, near), pair_node.index_select(0, near)
            if level < tree.depth:
                pair_query = pair_query.repeat_interleave(2)
                pair_node = (2 * pair_node[:, None] + children).reshape(-1)
        leaves = pair_node - ((1 << tree.depth) - 1)
        if pair_query.numel():
            w.index_add_(0, pair_query, _leaf_exact(tree, queries.index_select(0, pair_query), leaves))
        out.append(w)
    return torch.cat(out) if out else points.new_zeros(0)


def fast_winding_number(
    points: ArrayLike,
    verts: ArrayLike,
    faces: ArrayLike,
    beta: float = 2.0,
    leaf_size: int = DEFAULT_LEAF_SIZE,
    query_chunk: int | None = None,
) -> torch.Tensor:
    """Fast approximate generalized winding number (Barill et al. 2018), for large inputs.

    Args:
        points: query points (..., P, 3), mm.
        verts: mesh vertices (..., V, 3), mm (one tree is built per distinct mesh of the batch).
        faces: triangles (F, 3) int64.
        beta: accuracy parameter: a node is treated by its far-field expansion when the query
            is farther than ``beta`` times the node radius (larger = more exact and slower).
        leaf_size: triangles per leaf (between ``leaf_size`` and twice that).
        query_chunk: query points processed together (bounds the memory of the pair lists;
            ``None``: 2**16 on CPU, 2**18 on CUDA).

    Returns:
        w (..., P) without gradient; with beta = 2 the error is typically 1e-3 and below 1e-2
        (see ``cardio bench core``). For a loss use :func:`winding_number` or
        :func:`smooth_winding_number`.
    """
    return _fast_winding(*_prepare(points, verts, faces), beta, leaf_size, query_chunk)


def _fast_winding(
    points: torch.Tensor,
    verts: torch.Tensor,
    faces: torch.Tensor,
    beta: float,
    leaf_size: int,
    query_chunk: int | None,
) -> torch.Tensor:
    """:func:`fast_winding_number` for validated tensors: one tree per distinct mesh."""
    batch = torch.broadcast_shapes(points.shape[:-2], verts.shape[:-2])
    n_points, n_verts = points.shape[-2], verts.shape[-2]
    flat_points = points.expand(*batch, n_points, 3).reshape(-1, n_points, 3)
    one_mesh = math.prod(verts.shape[:-2]) == 1
    meshes = (
        verts.reshape(1, n_verts, 3) if one_mesh else verts.expand(*batch, n_verts, 3).reshape(-1, n_verts, 3)
    )
    with torch.no_grad():
        trees = [_build_tree(mesh, faces, leaf_size) for mesh in meshes]
        values = [
            query_winding_tree(trees[0 if one_mesh else i], query, beta, query_chunk)
            for i, query in enumerate(flat_points)
        ]
    return torch.stack(values).reshape(*batch, n_points)


# --------------------------------------------------------------------------------------------
# Occupancy


def occupancy(
    points: ArrayLike,
    verts: ArrayLike,
    faces: ArrayLike,
    soft: bool = False,
    sharpness: float = DEFAULT_SHARPNESS,
    method: Method = "auto",
    smoothing: float | None = None,
    beta: float = 2.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Inside/outside of points w.r.t. a mesh, from a generalized winding number w.

    Args:
        points: query points (..., P, 3), mm.
        verts: mesh vertices (..., V, 3), mm.
        faces: triangles (F, 3) int64.
        soft: return sigmoid(k (w - 1/2)) (float, differentiable) instead of w > 1/2 (bool).
        sharpness: k, see :data:`DEFAULT_SHARPNESS`.
        method: which w: ``"exact"`` (:func:`winding_number`), ``"fast"``
            (:func:`fast_winding_number`), ``"smooth"`` (:func:`smooth_winding_number`) or
            ``"auto"``: smooth for soft occupancy (the only one with useful gradients: the
            exact w of a closed mesh is constant off the surface); for hard labels, which
            carry no gradient, fast when points x faces > AUTO_FAST_PAIRS, exact else.
        smoothing: smoothing length (mm) of the smooth method.
        beta: accuracy parameter of the fast method.
        chunk_size: points per chunk of the exact and smooth methods.

    Returns:
        (..., P) bool (hard) or float in (0, 1) (soft).
    """
    points_t, verts_t, faces_t = _prepare(points, verts, faces)
    if method == "auto":
        large = points_t.shape[-2] * faces_t.shape[0] > AUTO_FAST_PAIRS
        method = "smooth" if soft else ("fast" if large else "exact")
    if method == "exact":
        w = _exact_winding(points_t, verts_t, faces_t, chunk_size)
    elif method == "fast":
        w = _fast_winding(points_t, verts_t, faces_t, beta, DEFAULT_LEAF_SIZE, None)
    elif method == "smooth":
        w = _smooth_winding(points_t, verts_t, faces_t, smoothing, chunk_size)
    else:
        raise CardioInputError(
            "method", f"unknown winding-number method {method!r}", "use auto, exact, fast or smooth"
        )
    if soft:
        return torch.sigmoid(sharpness * (w - 0.5))
    return w > 0.5
