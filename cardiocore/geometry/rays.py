"""Exact inside/outside of points for closed, consistently oriented meshes, by ray crossings.

For such a mesh the winding number at a point is the signed number of faces that a ray from the
point crosses (+1 where the ray leaves through an outward face, -1 where it enters). Rays here run
along +z (+K in the voxelizer's index space). Projected onto the plane across the ray, a face is
crossed when the ray's foot lies inside its projected triangle and the face lies beyond the
point along the ray.

A ray exactly on an edge shared by two faces is decided by the sign of one edge function computed
from the edge's lower-numbered vertex in both faces, so it crosses exactly one of them (or both
with opposite signs where the surface folds over); faces seen edge-on are never crossed. Ray
origins are moved a tiny fixed amount off the point across the ray, so that a ray through a mesh
vertex (where no edge rule can help) is practically impossible.

:func:`ray_winding_numbers` serves scattered points (:func:`cardiocore.geometry.winding.occupancy`
with ``method="rays"``); :mod:`cardiocore.geometry.voxelize` casts one ray per lattice column with
the same face tests (:class:`ProjectedFaces`, :func:`crossing_depths`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RAY_OFFSET = (3.1e-7, 1.7e-7)
"""Offset of the ray origins across the ray, relative to the length unit of the caller (voxels for
the voxelizer, the mesh's bounding-box diagonal here)."""

PAIR_CHUNK = 1 << 22
"""Largest number of (face, ray) candidates handled at once."""


@dataclass(frozen=True)
class ProjectedFaces:
    """Faces projected onto the plane across the rays, with what the edge tests need.

    plane: (V, 2) projected vertices (ray origins offset already subtracted); faces: (F, 3) int64;
    low_end, high_end: (F, 3) the lower- and higher-numbered vertex of each edge a->b, b->c, c->a;
    forward: (F, 3) int8, +1 where the face runs along its edge from the low to the high end;
    orientation: (F,) int8, sign of the projected triangle's area (0: seen edge-on).
    """

    plane: torch.Tensor
    faces: torch.Tensor
    low_end: torch.Tensor
    high_end: torch.Tensor
    forward: torch.Tensor
    orientation: torch.Tensor

    @classmethod
    def project(cls, plane: torch.Tensor, faces: torch.Tensor) -> ProjectedFaces:
        """From projected vertices (V, 2) and triangles (F, 3) int64."""
        corners = plane[faces]  # (F, 3, 2)
        edge_u, edge_v = faces, faces.roll(-1, dims=1)
        low_end, high_end = torch.minimum(edge_u, edge_v), torch.maximum(edge_u, edge_v)
        forward = torch.where(edge_u == low_end, 1, -1).to(torch.int8)
        ab, ac = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
        orientation = torch.sign(ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0]).to(torch.int8)
        return cls(plane, faces, low_end, high_end, forward, orientation)

    def hits(self, face: torch.Tensor, foot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which candidate rays cross their face, seen across the rays.

        Args:
            face: (C,) face index per candidate; foot: (C, 2) the ray's position across the rays.

        Returns:
            hit (C,) bool, and the edge functions (C, 3) of edges a->b, b->c, c->a (in the face's
            own direction) at the foot, for :func:`crossing_depths`.
        """
        lo, hi = self.plane[self.low_end[face]], self.plane[self.high_end[face]]  # (C, 3, 2)
        along, to_foot = hi - lo, foot[:, None, :] - lo
        canonical = along[..., 0] * to_foot[..., 1] - along[..., 1] * to_foot[..., 0]  # (C, 3)
        forward = self.forward[face]
        side = torch.where(canonical >= 0, 1, -1).to(torch.int8) * forward
        hit = (side == self.orientation[face, None]).all(dim=1)
        return hit, canonical * forward.to(canonical.dtype)


def crossing_depths(depth: torch.Tensor, faces: torch.Tensor, face: torch.Tensor,
                    edge_values: torch.Tensor) -> torch.Tensor:
    """Position along the ray (C,) where each ray crosses its face, from the corners' positions
    along the ray ``depth`` (V,) and the edge functions (C, 3) of :meth:`ProjectedFaces.hits`
    (barycentric weights; exact on faces level across the ray)."""
    weights = edge_values.roll(-1, dims=1)  # corner a <- edge b->c, b <- c->a, c <- a->b
    corner_depth = depth[faces[face]]  # (C, 3)
    return corner_depth[:, 0] + (weights[:, 1:] * (corner_depth[:, 1:] - corner_depth[:, :1])).sum(dim=1) / (
        weights.sum(dim=1))


def ray_winding_numbers(points: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Winding numbers (P,) int32 of points (P, 3) w.r.t. a closed, consistently oriented mesh
    (V, 3), (F, 3) int64, counted along +z rays (module docstring); +1 inside an outward mesh.

    Faces are binned on a 2-D grid across the rays (cells about a typical face wide), so each ray
    is tested only against the faces whose projected box shares its cell. float64 inside.
    The caller guarantees the mesh is closed and oriented
    (:func:`cardiocore.geometry.mesh.is_closed_and_oriented`): on an open mesh the count depends
    on the ray's direction.
    """
    device = verts.device
    vertices = verts.detach().to(torch.float64)
    queries = points.detach().to(device=device, dtype=torch.float64)
    winding = torch.zeros(queries.shape[0], dtype=torch.int32, device=device)
    if queries.shape[0] == 0 or faces.shape[0] == 0:
        return winding
    diagonal = float((vertices.amax(dim=0) - vertices.amin(dim=0)).norm()) or 1.0
    # Shifting the mesh by -offset across the rays is casting the rays from point + offset.
    offset = torch.tensor(RAY_OFFSET, dtype=torch.float64, device=device) * diagonal
    projected = ProjectedFaces.project(vertices[:, :2] - offset, faces)
    corners = projected.plane[faces]  # (F, 3, 2)
    face_low, face_high = corners.amin(dim=1), corners.amax(dim=1)
    cell = float((face_high - face_low).amax(dim=1).median()) or diagonal / 64.0
    origin = face_low.amin(dim=0)
    foot = queries[:, :2]
    # Cells of the points (those off the mesh's cells can cross nothing) and of the faces' boxes.
    point_cell = torch.floor((foot - origin) / cell).long()
    n_cells = torch.floor((face_high.amax(dim=0) - origin) / cell).long() + 1
    on_grid = ((point_cell >= 0) & (point_cell < n_cells)).all(dim=1)
    point_id = point_cell[:, 0] * n_cells[1] + point_cell[:, 1]
    order = torch.nonzero(on_grid).flatten()
    order = order[torch.argsort(point_id[order])]
    sorted_id = point_id[order]
    cell_low = torch.floor((face_low - origin) / cell).long()
    extent = torch.floor((face_high - origin) / cell).long() - cell_low + 1
    per_face = torch.where(projected.orientation != 0, extent[:, 0] * extent[:, 1], 0)
    face_cells = torch.repeat_interleave(torch.arange(faces.shape[0], device=device), per_face)
    rank = torch.arange(face_cells.numel(), device=device) - (per_face.cumsum(0) - per_face)[face_cells]
    width = extent[face_cells, 1]
    cell_id = (cell_low[face_cells, 0] + rank // width) * n_cells[1] + cell_low[face_cells, 1] + rank % width
    first = torch.searchsorted(sorted_id, cell_id)
    count = torch.searchsorted(sorted_id, cell_id, right=True) - first
    totals = count.cumsum(0)
    start = 0
    while start < face_cells.numel():
        # (face, cell) entries [start, stop) give at most PAIR_CHUNK (face, point) candidates.
        base = int(totals[start - 1]) if start else 0
        stop = max(start + 1, int(torch.searchsorted(totals, base + PAIR_CHUNK, right=True)))
        entry = torch.repeat_interleave(torch.arange(start, stop, device=device), count[start:stop])
        start = stop
        if entry.numel() == 0:
            continue
        within = base + torch.arange(entry.numel(), device=device) - (totals[entry] - count[entry])
        point = order[first[entry] + within]
        face = face_cells[entry]
        hit, edge_values = projected.hits(face, foot[point])
        face, point, edge_values = face[hit], point[hit], edge_values[hit]
        beyond = crossing_depths(vertices[:, 2], faces, face, edge_values) > queries[point, 2]
        winding.index_add_(0, point[beyond], projected.orientation[face[beyond]].to(torch.int32))
    return winding
