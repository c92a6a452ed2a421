"""Enclosed volume of triangle meshes and closing of open surfaces (e.g. an LV open at the base)."""

from __future__ import annotations

import torch

from cardiocore.geometry.mesh import ArrayLike, as_mesh, boundary_loops, is_closed

MM3_PER_ML = 1000.0


def enclosed_volume(verts: ArrayLike, faces: ArrayLike) -> torch.Tensor:
    """Signed enclosed volume by the divergence theorem: sum of tetrahedra (origin, a, b, c).

    Exact for closed meshes; outward-oriented faces give a positive volume, reversed faces a
    negative one. Differentiable with respect to ``verts``.

    Args:
        verts: vertex positions (V, 3) or batched (..., V, 3), mm.
        faces: triangles (F, 3) int64, shared by the batch.

    Returns:
        Volume in mm^3, shape ``verts.shape[:-2]`` (a scalar for one mesh).
    """
    verts_t, faces_t = as_mesh(verts, faces, name="enclosed_volume mesh", allow_batch=True)
    # Centre on the first vertex to limit cancellation far from the origin.
    centred = verts_t - verts_t[..., :1, :]
    a, b, c = (centred.index_select(-2, faces_t[:, k]) for k in range(3))
    return (a * torch.linalg.cross(b, c, dim=-1)).sum(dim=(-1, -2)) / 6.0


def close_boundary(verts: ArrayLike, faces: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Close every boundary loop with a fan of triangles to a new vertex at the loop's centroid.

    The fan triangles traverse each boundary edge opposite to its existing face, so the closed
    mesh keeps the orientation of the input (an outward-oriented cup stays outward-oriented).
    A closed input is returned unchanged.

    Args:
        verts: vertex positions (V, 3) or batched (..., V, 3), mm.
        faces: triangles (F, 3) int64.

    Returns:
        verts (..., V + L, 3) with one centroid per loop appended, and faces (F + B, 3), where L is
        the number of loops and B the number of boundary edges.
    """
    verts_t, faces_t = as_mesh(verts, faces, name="close_boundary mesh", allow_batch=True)
    loops = [loop.to(faces_t.device) for loop in boundary_loops(faces_t)]
    if not loops:
        return verts_t, faces_t
    centroids = torch.stack([verts_t.index_select(-2, loop).mean(dim=-2) for loop in loops], dim=-2)
    fans = []
    for loop_number, loop in enumerate(loops):
        centre = torch.full_like(loop, verts_t.shape[-2] + loop_number)
        fans.append(torch.stack([loop.roll(-1), loop, centre], dim=1))
    return torch.cat([verts_t, centroids], dim=-2), torch.cat([faces_t, *fans])


def cavity_volume_ml(verts: ArrayLike, faces: ArrayLike) -> float:
    """Volume in ml enclosed by a surface, closing open boundaries (e.g. the LV base) first.

    The result is unsigned, so a cavity surface works whichever way its faces are oriented.

    Args:
        verts: vertex positions (V, 3), mm.
        faces: triangles (F, 3) int64, consistently oriented.

    Returns:
        Volume in ml (1 ml = 1000 mm^3).
    """
    verts_t, faces_t = as_mesh(verts, faces, name="cavity mesh")
    if not is_closed(faces_t):
        verts_t, faces_t = close_boundary(verts_t, faces_t)
    return abs(float(enclosed_volume(verts_t, faces_t))) / MM3_PER_ML
