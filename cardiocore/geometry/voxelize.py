"""Rasterise a closed triangle mesh onto a voxel grid given by its IJK-to-RAS matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import ArrayLike, as_mesh
from cardiocore.geometry.grid import checked_matrix
from cardiocore.geometry.winding import Method, occupancy


def _as_affine(ijk_to_ras: ArrayLike, like: torch.Tensor) -> torch.Tensor:
    """The 4x4 IJK-to-RAS matrix as a float64 tensor, checked to be an invertible affine map."""
    return torch.as_tensor(checked_matrix(ijk_to_ras), device=like.device)


def _index_box(verts: torch.Tensor, matrix: torch.Tensor, shape: tuple[int, int, int]) -> list[range]:
    """IJK index ranges (per axis) of the grid covering the mesh's bounding box, one voxel wider."""
    ijk = (verts.detach().double() - matrix[:3, 3]) @ torch.linalg.inv(matrix[:3, :3]).T
    low = torch.floor(ijk.amin(dim=0)).long() - 1
    high = torch.ceil(ijk.amax(dim=0)).long() + 1
    return [range(max(0, int(lo)), min(n, int(hi) + 1)) for lo, hi, n in zip(low, high, shape, strict=True)]


def voxelize_mesh(
    verts: ArrayLike,
    faces: ArrayLike,
    shape: Sequence[int],
    ijk_to_ras: ArrayLike,
    method: Method = "auto",
) -> torch.Tensor:
    """Boolean mask of the voxels whose centre lies inside a mesh.

    Voxel (i, j, k) has its centre at ``ijk_to_ras @ [i, j, k, 1]`` (Slicer's convention), so
    oblique and anisotropic grids are handled exactly. Only voxels inside the mesh's bounding box
    are tested, by the generalized winding number (w > 1/2), which also tolerates small holes.

    Args:
        verts: mesh vertices (V, 3) in RAS mm.
        faces: triangles (F, 3) int64, outward oriented.
        shape: grid size (I, J, K).
        ijk_to_ras: 4x4 affine from voxel indices to RAS mm.
        method: winding-number method of :func:`occupancy` (``"auto"`` uses the fast tree for
            large grids).

    Returns:
        bool tensor (I, J, K) on the device of ``verts``.

    Raises:
        MeshError: bad mesh. VolumeError: bad matrix. CardioInputError: bad shape.
    """
    verts_t, faces_t = as_mesh(verts, faces)
    grid = tuple(int(n) for n in shape)
    if len(grid) != 3 or min(grid) < 1:
        raise CardioInputError("shape", f"must be three positive sizes (I, J, K), got {tuple(shape)}")
    matrix = _as_affine(ijk_to_ras, verts_t)
    mask = torch.zeros(grid, dtype=torch.bool, device=verts_t.device)
    box = _index_box(verts_t, matrix, grid)
    if any(len(r) == 0 for r in box):
        return mask
    # Centres as a sum of per-axis steps: i M[:, 0] + j M[:, 1] + k M[:, 2] + t, (n_i, n_j, n_k, 3).
    steps = [
        (
            torch.arange(r.start, r.stop, device=verts_t.device, dtype=torch.float64)[:, None]
            * matrix[:3, axis]
        )
        .to(verts_t.dtype)
        .reshape([-1 if a == axis else 1 for a in range(3)] + [3])
        for axis, r in enumerate(box)
    ]
    centres = (steps[0] + steps[1] + steps[2] + matrix[:3, 3].to(verts_t.dtype)).reshape(-1, 3)
    with torch.no_grad():
        inside = occupancy(centres, verts_t, faces_t, method=method)
    mask[box[0].start : box[0].stop, box[1].start : box[1].stop, box[2].start : box[2].stop] = inside.reshape(
        len(box[0]), len(box[1]), len(box[2])
    )
    return mask
