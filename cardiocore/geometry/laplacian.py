"""Graph and cotangent Laplacians of triangle meshes as coalesced torch sparse COO matrices.

Both follow the sign convention L = D - W (positive semi-definite), so ``(L @ x)[i]`` equals
``sum_j w_ij (x_i - x_j)`` over the neighbours j of vertex i.
"""

from __future__ import annotations

import torch
from torch_geometric.utils import get_laplacian, to_undirected

from cardiocore.errors import MeshError
from cardiocore.geometry.mesh import ArrayLike, _as_faces, _half_edges, as_mesh, edge_index


def _sparse_laplacian(index: torch.Tensor, weight: torch.Tensor, n_verts: int) -> torch.Tensor:
    """Assemble D - W from symmetric off-diagonal weights given in both directions."""
    lap_index, lap_weight = get_laplacian(index, weight, normalization=None, num_nodes=n_verts)
    shape = (n_verts, n_verts)
    return torch.sparse_coo_tensor(lap_index, lap_weight, shape, check_invariants=True).coalesce()


def uniform_laplacian(faces: ArrayLike, n_verts: int) -> torch.Tensor:
    """Uniform (graph) Laplacian (V, V): degree on the diagonal, -1 per mesh edge.

    Args:
        faces: triangles (F, 3) int64.
        n_verts: number of vertices V (isolated vertices get an empty row).

    Returns:
        Coalesced sparse COO tensor (V, V) of the default float dtype, on the device of ``faces``.
    """
    faces_t = _as_faces(faces)
    if int(faces_t.max()) >= n_verts or int(faces_t.min()) < 0:
        raise MeshError(
            "faces",
            f"indices span [{int(faces_t.min())}, {int(faces_t.max())}] but n_verts is {n_verts}",
        )
    index = edge_index(faces_t)
    weight = torch.ones(index.shape[1], dtype=torch.get_default_dtype(), device=index.device)
    return _sparse_laplacian(index, weight, n_verts)


def cotangent_laplacian(verts: ArrayLike, faces: ArrayLike) -> torch.Tensor:
    """Cotangent Laplacian (V, V) with weights w_ij = (cot alpha_ij + cot beta_ij) / 2.

    alpha_ij and beta_ij are the angles opposite edge (i, j) in its two faces (one on a boundary).
    The matrix is the P1 finite-element stiffness matrix: symmetric, PSD, with zero row sums,
    and differentiable with respect to ``verts``. Units: dimensionless (angles only).

    Args:
        verts: vertex positions (V, 3), mm.
        faces: triangles (F, 3) int64.

    Returns:
        Coalesced sparse COO tensor (V, V) with the dtype and device of ``verts``.
    """
    verts_t, faces_t = as_mesh(verts, faces, name="cotangent_laplacian mesh")
    corners = verts_t[faces_t]  # (F, 3, 3); corner k is opposite half-edge (k+1, k+2)
    to_next = corners.roll(-1, dims=1) - corners
    to_prev = corners.roll(1, dims=1) - corners
    dot = (to_next * to_prev).sum(-1)
    cross = torch.linalg.cross(to_next, to_prev, dim=-1).norm(dim=-1)
    cot = dot / cross.clamp_min(torch.finfo(verts_t.dtype).tiny)  # (F, 3)
    # Half-edge (k, k+1) of each face is opposite corner k+2.
    half_weight = 0.5 * cot.roll(-2, dims=1).reshape(-1)
    index, weight = to_undirected(_half_edges(faces_t).t(), half_weight, num_nodes=verts_t.shape[0])
    return _sparse_laplacian(index, weight, verts_t.shape[0])
