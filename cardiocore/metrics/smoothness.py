"""Laplacian smoothness energy (LSE) of a triangle mesh.

Definition: with L = D - W a mesh Laplacian (uniform: w_ij = 1 per edge; cotangent:
w_ij = (cot alpha_ij + cot beta_ij) / 2), the normalised Laplacian coordinate of vertex i is

    delta_i = (L x)_i / L_ii = x_i - sum_j w_ij x_j / sum_j w_ij,

the offset of the vertex from the (weighted) mean of its neighbours, in mm. The energy is the
mean of |delta_i|^2 over the interior vertices, in mm^2. Vertices on a boundary edge are left
out: their one-ring is cut, so their offset measures the boundary, not roughness (a flat open
grid scores 0). Lower is smoother; the value scales with the square of the mesh size.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from cardiocore.errors import CardioInputError, MeshError
from cardiocore.geometry.laplacian import cotangent_laplacian, uniform_laplacian
from cardiocore.geometry.mesh import as_mesh, boundary_edges

ArrayLike = torch.Tensor | np.ndarray


def laplacian_coordinates(
    verts: ArrayLike, faces: ArrayLike, kind: Literal["uniform", "cotangent"] = "uniform"
) -> torch.Tensor:
    """Normalised Laplacian coordinates delta (V, 3), mm (module docstring); differentiable.

    Vertices without neighbours (or with a zero cotangent weight sum) get delta = 0.
    """
    verts_t, faces_t = as_mesh(verts, faces, name="smoothness mesh")
    if kind == "uniform":
        lap = uniform_laplacian(faces_t, verts_t.shape[0]).to(verts_t.dtype)
    elif kind == "cotangent":
        lap = cotangent_laplacian(verts_t, faces_t)
    else:
        raise CardioInputError("kind", f"unknown Laplacian {kind!r}", "use 'uniform' or 'cotangent'")
    lap = lap.to(verts_t.device)
    index = lap.indices()
    on_diagonal = index[0] == index[1]
    diagonal = torch.zeros(verts_t.shape[0], dtype=verts_t.dtype, device=verts_t.device)
    diagonal = diagonal.index_add(0, index[0, on_diagonal], lap.values()[on_diagonal])
    safe = torch.where(diagonal.abs() > 0, diagonal, torch.ones_like(diagonal))
    delta = torch.sparse.mm(lap, verts_t) / safe.unsqueeze(-1)
    return torch.where((diagonal.abs() > 0).unsqueeze(-1), delta, torch.zeros_like(delta))


def laplacian_smoothness_energy(
    verts: ArrayLike, faces: ArrayLike, kind: Literal["uniform", "cotangent"] = "uniform"
) -> torch.Tensor:
    """Mean squared norm of the normalised Laplacian coordinates over interior vertices, mm^2.

    Args:
        verts: vertex positions (V, 3), mm.
        faces: triangles (F, 3) int64.
        kind: ``"uniform"`` (graph) or ``"cotangent"`` Laplacian.

    Returns:
        Scalar tensor, mm^2; differentiable with respect to ``verts``.
    """
    verts_t, faces_t = as_mesh(verts, faces, name="smoothness mesh")
    delta = laplacian_coordinates(verts_t, faces_t, kind)
    used = torch.zeros(verts_t.shape[0], dtype=torch.bool, device=verts_t.device)
    used[faces_t.reshape(-1)] = True
    used[boundary_edges(faces_t).reshape(-1)] = False
    if not bool(used.any()):
        raise MeshError("smoothness mesh", "has no interior vertex (every vertex is on the boundary)")
    return (delta[used] ** 2).sum(-1).mean()
