"""Analytic test shapes as closed, outward-oriented triangle meshes.

Every function returns ``(verts, faces)``: ``verts`` a float tensor (V, 3) in millimetres and
``faces`` an int64 tensor (F, 3) whose triangles are counter-clockwise seen from outside, so that
face normals point out of the enclosed solid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cardiocore.errors import MeshError

_GOLDEN = (1.0 + math.sqrt(5.0)) / 2.0

_ICOSAHEDRON_VERTS = [
    [-1.0, _GOLDEN, 0.0],
    [1.0, _GOLDEN, 0.0],
    [-1.0, -_GOLDEN, 0.0],
    [1.0, -_GOLDEN, 0.0],
    [0.0, -1.0, _GOLDEN],
    [0.0, 1.0, _GOLDEN],
    [0.0, -1.0, -_GOLDEN],
    [0.0, 1.0, -_GOLDEN],
    [_GOLDEN, 0.0, -1.0],
    [_GOLDEN, 0.0, 1.0],
    [-_GOLDEN, 0.0, -1.0],
    [-_GOLDEN, 0.0, 1.0],
]
_ICOSAHEDRON_FACES = [
    [0, 11, 5],
    [0, 5, 1],
    [0, 1, 7],
    [0, 7, 10],
    [0, 10, 11],
    [1, 5, 9],
    [5, 11, 4],
    [11, 10, 2],
    [10, 7, 6],
    [7, 1, 8],
    [3, 9, 4],
    [3, 4, 2],
    [3, 2, 6],
    [3, 6, 8],
    [3, 8, 9],
    [4, 9, 5],
    [2, 4, 11],
    [6, 2, 10],
    [8, 6, 7],
    [9, 8, 1],
]

# Unit cube corners indexed by bits (x, y, z) = (i & 1, i >> 1 & 1, i >> 2 & 1).
_CUBE_FACES = [
    [0, 2, 1],
    [1, 2, 3],  # z = 0, normal -z
    [4, 5, 6],
    [5, 7, 6],  # z = 1, normal +z
    [0, 1, 4],
    [1, 5, 4],  # y = 0, normal -y
    [2, 6, 3],
    [3, 6, 7],  # y = 1, normal +y
    [0, 4, 2],
    [2, 4, 6],  # x = 0, normal -x
    [1, 3, 5],
    [3, 7, 5],  # x = 1, normal +x
]


def _subdivide(verts: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split every triangle into four through its edge midpoints (shared midpoints are merged)."""
    corners = faces  # (F, 3)
    half_edges = torch.stack([corners, corners.roll(-1, dims=1)], dim=-1).reshape(-1, 2)
    edges, midpoint_of = torch.unique(half_edges.sort(dim=1).values, dim=0, return_inverse=True)
    midpoints = 0.5 * (verts[edges[:, 0]] + verts[edges[:, 1]])
    mid = (midpoint_of + verts.shape[0]).reshape(-1, 3)  # mid[:, k] sits on edge (k, k+1)
    a, b, c = corners.unbind(dim=1)
    ab, bc, ca = mid.unbind(dim=1)
    new_faces = torch.cat(
        [
            torch.stack([a, ab, ca], dim=1),
            torch.stack([ab, b, bc], dim=1),
            torch.stack([ca, bc, c], dim=1),
            torch.stack([ab, bc, ca], dim=1),
        ]
    )
    return torch.cat([verts, midpoints]), new_faces


def icosphere(
    subdivisions: int = 3, radius: float = 1.0, center: Sequence[float] = (0.0, 0.0, 0.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sphere from a recursively subdivided icosahedron.

    Args:
        subdivisions: number of 1-to-4 splits; V = 10 * 4**s + 2, F = 20 * 4**s.
        radius: sphere radius in mm; every vertex lies exactly on the sphere.
        center: sphere centre (3,) in mm.

    Returns:
        verts (V, 3) float32 and faces (F, 3) int64, outward oriented.
    """
    if subdivisions < 0:
        raise MeshError("icosphere subdivisions", f"must be >= 0, got {subdivisions}")
    if radius <= 0:
        raise MeshError("icosphere radius", f"must be positive, got {radius}")
    verts = torch.tensor(_ICOSAHEDRON_VERTS, dtype=torch.float64)
    faces = torch.tensor(_ICOSAHEDRON_FACES, dtype=torch.int64)
    for _ in range(subdivisions):
        verts, faces = _subdivide(verts, faces)
    verts = verts / verts.norm(dim=1, keepdim=True) * radius
    verts = verts + torch.tensor(center, dtype=torch.float64)
    return verts.float(), faces


def box_mesh(
    size: Sequence[float] = (1.0, 1.0, 1.0), center: Sequence[float] = (0.0, 0.0, 0.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-aligned box of 8 vertices and 12 triangles.

    Args:
        size: edge lengths (3,) in mm along x, y, z.
        center: box centre (3,) in mm.

    Returns:
        verts (8, 3) float32 and faces (12, 3) int64, outward oriented.
    """
    size_t = torch.as_tensor(size, dtype=torch.float64)
    if size_t.shape != (3,) or bool((size_t <= 0).any()):
        raise MeshError("box_mesh size", f"must be three positive lengths, got {list(size)}")
    bits = torch.arange(8)
    unit = torch.stack([bits & 1, (bits >> 1) & 1, (bits >> 2) & 1], dim=1).double() - 0.5
    verts = unit * size_t + torch.as_tensor(center, dtype=torch.float64)
    return verts.float(), torch.tensor(_CUBE_FACES, dtype=torch.int64)


def torus(
    R: float = 1.0, r: float = 0.25, n_major: int = 48, n_minor: int = 24
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torus around the z axis, centred at the origin.

    Args:
        R: distance from the z axis to the tube centre, mm.
        r: tube radius, mm (must be smaller than ``R``).
        n_major: vertices around the z axis (>= 3).
        n_minor: vertices around the tube (>= 3).

    Returns:
        verts (n_major * n_minor, 3) float32 and faces (2 * n_major * n_minor, 3) int64,
        outward oriented. The exact solid volume is 2 pi^2 R r^2.
    """
    if not 0 < r < R:
        raise MeshError("torus radii", f"need 0 < r < R, got R={R}, r={r}")
    if n_major < 3 or n_minor < 3:
        raise MeshError(
            "torus resolution", f"need at least 3 x 3 vertices, got {n_major} x {n_minor}"
        )
    u = torch.arange(n_major, dtype=torch.float64) * (2 * math.pi / n_major)
    v = torch.arange(n_minor, dtype=torch.float64) * (2 * math.pi / n_minor)
    uu, vv = torch.meshgrid(u, v, indexing="ij")
    ring = R + r * torch.cos(vv)
    verts = torch.stack([ring * torch.cos(uu), ring * torch.sin(uu), r * torch.sin(vv)], dim=-1)
    i, j = torch.meshgrid(torch.arange(n_major), torch.arange(n_minor), indexing="ij")
    p00 = i * n_minor + j
    p10 = (i + 1) % n_major * n_minor + j
    p11 = (i + 1) % n_major * n_minor + (j + 1) % n_minor
    p01 = i * n_minor + (j + 1) % n_minor
    faces = torch.cat(
        [
            torch.stack([p00, p10, p11], dim=-1).reshape(-1, 3),
            torch.stack([p00, p11, p01], dim=-1).reshape(-1, 3),
        ]
    )
    return verts.reshape(-1, 3).float(), faces
