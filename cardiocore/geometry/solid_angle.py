"""Triangle solid angles: the exact core shared by the winding-number sums.

The signed solid angle of each triangle seen from each query point (Van Oosterom & Strackee,
1983), with an in-plane tolerance so that a point on a triangle's plane gets 0 from it (and a
point on a closed surface gets winding number 1/2), plus the input checks and the chunk budget
that :mod:`cardiocore.geometry.winding` (exact sum) and :mod:`cardiocore.geometry.winding_tree`
(tree leaves) both use. Coordinates in mm.
"""

from __future__ import annotations

import math

import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import ArrayLike, as_mesh

#: (point, triangle) pairs evaluated at once on CPU: a chunk needs about 30 temporaries of
#: this many elements, i.e. ~120 MB in float32. CUDA uses 8 times more (~1 GB) to keep the
#: number of kernel launches down.
PAIR_BUDGET = 1 << 20

FOUR_PI = 4.0 * math.pi




def as_query_points(points: ArrayLike, like: torch.Tensor, name: str = "points") -> torch.Tensor:
    """Query points (..., P, 3) as a float tensor on the device of ``like``."""
    points_t = torch.as_tensor(points, device=like.device)
    if not torch.is_floating_point(points_t):
        points_t = points_t.to(like.dtype)
    if points_t.dim() < 2 or points_t.shape[-1] != 3:
        raise CardioInputError(name, f"must have shape (..., P, 3), got {tuple(points_t.shape)}")
    return points_t


def prepare_inputs(
    points: ArrayLike, verts: ArrayLike, faces: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated (points, verts, faces) with points and verts in one floating dtype."""
    verts_t, faces_t = as_mesh(verts, faces, allow_batch=True)
    points_t = as_query_points(points, verts_t)
    dtype = torch.promote_types(points_t.dtype, verts_t.dtype)
    return points_t.to(dtype), verts_t.to(dtype), faces_t


def pair_budget(device: torch.device) -> int:
    """(point, triangle) pairs per chunk on ``device``: see :data:`PAIR_BUDGET`."""
    return PAIR_BUDGET * (8 if device.type == "cuda" else 1)


def triangle_solid_angles(
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


def in_plane_terms(corners: torch.Tensor) -> torch.Tensor:
    """Per-triangle terms of :func:`plane_tolerance` (..., 2, F): 2 x area, and that times the
    triangle's largest coordinate magnitude, for ``corners`` (..., 3 corners, 3 xyz, F)."""
    e1 = [corners[..., 1, x, :] - corners[..., 0, x, :] for x in range(3)]
    e2 = [corners[..., 2, x, :] - corners[..., 0, x, :] for x in range(3)]
    double_area = torch.stack(
        [e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]]
    ).norm(dim=0)
    return torch.stack([double_area, double_area * corners.abs().amax(dim=(-3, -2))], dim=-2)


def plane_tolerance(
    point_scale: torch.Tensor, double_area: torch.Tensor, scaled_area: torch.Tensor
) -> torch.Tensor:
    """|det| below which a point lies in a triangle's plane to rounding precision.

    Corners relative to the point carry rounding errors of eps x max(|p|, |v|), which move det
    = 2 area x height by about 2 area x that. ``point_scale`` is the largest coordinate
    magnitude of each point, ``double_area`` and ``scaled_area`` the two rows of
    :func:`in_plane_terms`; all three broadcast.
    """
    eps = 16 * torch.finfo(double_area.dtype).eps
    return eps * torch.maximum(point_scale * double_area, scaled_area)
