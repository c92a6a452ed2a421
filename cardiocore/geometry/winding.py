"""Generalized winding numbers and occupancy of points with respect to a triangle mesh.

The generalized winding number w(p) of a triangle mesh is the signed solid angle the mesh
subtends at p, divided by 4 pi. For a closed, outward-oriented mesh it is 1 inside, 0 outside
and 1/2 on the surface; reversed orientation flips the sign; open or self-intersecting meshes
give fractional values that still classify inside/outside robustly (w > 1/2 is inside).

Three ways to compute it:

- :func:`winding_number`: exact sum of triangle solid angles (Van Oosterom & Strackee 1983),
  batched, chunked so memory stays bounded, differentiable w.r.t. points and vertices.
- :func:`fast_winding_number`: the tree approximation of Barill et al. (2018, "Fast winding
  numbers for soups and clouds"), in :mod:`cardiocore.geometry.winding_tree` and re-exported
  here with :func:`build_winding_tree`, :func:`query_winding_tree` and :class:`WindingTree`.
- :func:`smooth_winding_number`: a regularised dipole sum (the winding number of the MIE loss of
  CardioReconstruct). The exact w of a closed mesh is piecewise constant, so its gradient vanishes
  everywhere off the surface; this smooth version has useful gradients near the surface.

:func:`occupancy` turns any of them into inside/outside labels (hard) or a sigmoid (soft); hard
labels of a closed, consistently oriented mesh are counted exactly by ray crossings instead
(:mod:`cardiocore.geometry.rays`).
Coordinates are in mm; all functions take numpy arrays or tensors and run on the device of
``verts``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import ArrayLike, is_closed_and_oriented
from cardiocore.geometry.rays import ray_winding_numbers
from cardiocore.geometry.solid_angle import (
    FOUR_PI,
    PAIR_BUDGET,
    in_plane_terms,
    pair_budget,
    plane_tolerance,
    prepare_inputs,
    triangle_solid_angles,
)
from cardiocore.geometry.winding_tree import (
    DEFAULT_LEAF_SIZE,
    WindingTree,
    build_winding_tree,
    fast_winding_number,
    query_winding_tree,
)

__all__ = [
    "AUTO_FAST_PAIRS",
    "DEFAULT_LEAF_SIZE",
    "DEFAULT_SHARPNESS",
    "PAIR_BUDGET",
    "Method",
    "WindingTree",
    "build_winding_tree",
    "fast_winding_number",
    "occupancy",
    "query_winding_tree",
    "smooth_winding_number",
    "winding_number",
]

#: Default sigmoid sharpness k of the soft occupancy sigmoid(k (w - 1/2)). With the smooth
#: winding number, w rises across a flat patch of surface as 1/2 + 1/2 d / sqrt(d^2 + s^2)
#: (d the signed distance, s the smoothing length); with k = 10 the soft occupancy is 0.23 at
#: d = -s/4, 0.5 on the surface, 0.77 at d = +s/4 and 0.97 at d = +s: a transition about one
#: smoothing length (by default the mean edge length) wide.
DEFAULT_SHARPNESS = 10.0

#: ``method="auto"`` uses the tree for hard occupancy once points x faces exceeds this.
AUTO_FAST_PAIRS = 1 << 24

Method = Literal["auto", "exact", "fast", "smooth", "rays"]


# --------------------------------------------------------------------------------------------
# The chunked pairwise sum shared by the exact and smooth winding numbers


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
        chunk_size: points per chunk; ``None`` picks it so a chunk holds ~:func:`pair_budget`
            pairs.

    Returns:
        (..., P) summed over faces. When gradients are needed each chunk is checkpointed, so the
        backward pass also keeps only the inputs, never the (point, face) temporaries.
    """
    n_points, n_faces = points.shape[-2], face_data.shape[-1]
    batch = torch.broadcast_shapes(points.shape[:-2], face_data.shape[:-3])
    batch_size = math.prod(batch)
    budget = pair_budget(points.device)
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


def _exact_kernel(points: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Winding number (..., Pc) of points (..., 3, Pc) w.r.t. triangles (..., 3, 3, Fc)."""
    rel = [tuple(corners[..., k, x, None, :] - points[..., x, :, None] for x in range(3)) for k in range(3)]
    point_scale = points.detach().abs().amax(dim=-2)[..., :, None]
    terms = in_plane_terms(corners.detach())
    plane_tol = plane_tolerance(point_scale, terms[..., 0, None, :], terms[..., 1, None, :])
    return triangle_solid_angles(*rel, plane_tol).sum(dim=-1) / FOUR_PI


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
    return _exact_winding(*prepare_inputs(points, verts, faces), chunk_size)


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
    return (flux * dist_sq.rsqrt() / dist_sq).sum(dim=-1) / FOUR_PI


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
    return _smooth_winding(*prepare_inputs(points, verts, faces), smoothing, chunk_size)


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
            (:func:`fast_winding_number`), ``"smooth"`` (:func:`smooth_winding_number`),
            ``"rays"`` (hard labels of one closed, consistently oriented mesh: the exact w as a
            signed count of ray crossings, :func:`cardiocore.geometry.rays.ray_winding_numbers`) or
            ``"auto"``: smooth for soft occupancy (the only one with useful gradients: the
            exact w of a closed mesh is constant off the surface); for hard labels, which
            carry no gradient, rays for one closed oriented mesh, otherwise fast when points x
            faces > AUTO_FAST_PAIRS, exact else.
        smoothing: smoothing length (mm) of the smooth method.
        beta: accuracy parameter of the fast method.
        chunk_size: points per chunk of the exact and smooth methods.

    Returns:
        (..., P) bool (hard) or float in (0, 1) (soft).
    """
    points_t, verts_t, faces_t = prepare_inputs(points, verts, faces)
    one_mesh = points_t.dim() == 2 and verts_t.dim() == 2
    if method == "rays" and (soft or not one_mesh or not is_closed_and_oriented(faces_t)):
        raise CardioInputError("method", "'rays' gives hard labels of one closed, consistently oriented mesh",
                               "use auto, exact or fast")
    if method == "auto" and not soft and one_mesh and is_closed_and_oriented(faces_t):
        method = "rays"
    elif method == "auto":
        large = points_t.shape[-2] * faces_t.shape[0] > AUTO_FAST_PAIRS
        method = "smooth" if soft else ("fast" if large else "exact")
    if method == "rays":
        with torch.no_grad():
            return ray_winding_numbers(points_t, verts_t, faces_t) > 0
    if method == "exact":
        w = _exact_winding(points_t, verts_t, faces_t, chunk_size)
    elif method == "fast":
        w = fast_winding_number(points_t, verts_t, faces_t, beta=beta)
    elif method == "smooth":
        w = _smooth_winding(points_t, verts_t, faces_t, smoothing, chunk_size)
    else:
        raise CardioInputError(
            "method", f"unknown winding-number method {method!r}", "use auto, exact, fast, smooth or rays"
        )
    if soft:
        return torch.sigmoid(sharpness * (w - 0.5))
    return w > 0.5


def inside_mesh(points: ArrayLike, verts: ArrayLike, faces: ArrayLike, method: Method = "auto") -> torch.Tensor:
    """Hard occupancy (P,) bool of points (P, 3) w.r.t. one closed mesh (V, 3), (F, 3), with the
    winding number (``method`` as in :func:`occupancy`) summed only for the points inside the
    mesh's axis-aligned bounding box: the others are outside, so the result is the same as
    :func:`occupancy`'s, at a cost that falls with the share of points near the mesh."""
    points_t, verts_t, faces_t = prepare_inputs(points, verts, faces)
    in_box = ((points_t >= verts_t.amin(dim=0)) & (points_t <= verts_t.amax(dim=0))).all(dim=-1)
    inside = torch.zeros_like(in_box)
    if bool(in_box.any()):
        inside[in_box] = occupancy(points_t[in_box], verts_t, faces_t, method=method)
    return inside
