"""Uniform random sampling of points on a triangle-mesh surface."""

from __future__ import annotations

import torch

from cardiocore.errors import CardioInputError, MeshError
from cardiocore.geometry.mesh import ArrayLike, as_mesh, face_areas
from cardiocore.geometry.value_checks import values_checked


def sample_surface(
    verts: ArrayLike, faces: ArrayLike, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``n`` points uniformly by area on the surface.

    A face is chosen with probability proportional to its area, then a point uniformly inside it
    through barycentric coordinates (1 - sqrt(r1), sqrt(r1)(1 - r2), sqrt(r1) r2). The points are
    differentiable with respect to ``verts`` (the random choices are not).

    Args:
        verts: vertex positions (V, 3), mm.
        faces: triangles (F, 3) int64.
        n: number of points (>= 0).
        generator: seeded ``torch.Generator`` for reproducible draws; its device is used for the
            random numbers, which are then moved to the device of ``verts``.

    Returns:
        points (n, 3) mm, face_index (n,) int64, barycentric (n, 3) weights of the face corners.
    """
    verts_t, faces_t = as_mesh(verts, faces, name="sample_surface mesh")
    if n < 0:
        raise CardioInputError("sample_surface n", f"must be >= 0, got {n}")
    areas = face_areas(verts_t.detach(), faces_t)
    if values_checked() and not float(areas.sum()) > 0:
        raise MeshError("sample_surface mesh", "has zero total area, so no point can be drawn")
    random_device = generator.device if generator is not None else verts_t.device
    face_index = torch.multinomial(
        areas.to(device=random_device, dtype=torch.float64),
        n,
        replacement=True,
        generator=generator,
    ).to(verts_t.device)
    r1, r2 = torch.rand(2, n, generator=generator, device=random_device, dtype=verts_t.dtype).to(
        verts_t.device
    )
    sqrt_r1 = r1.sqrt()
    barycentric = torch.stack([1.0 - sqrt_r1, sqrt_r1 * (1.0 - r2), sqrt_r1 * r2], dim=1)
    corners = verts_t[faces_t[face_index]]  # (n, 3 corners, 3)
    points = (barycentric.unsqueeze(-1) * corners).sum(dim=1)
    return points, face_index, barycentric
