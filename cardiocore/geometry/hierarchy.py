"""Mesh hierarchy for graph pooling: quadric-decimated levels with sparse down/up-sampling.

Level 0 is the input mesh; level ``l + 1`` is :func:`quadric_decimate` of level ``l`` by
``factors[l]``. Because decimation keeps a subset of the vertices,

* ``down[l]`` (n_{l+1}, n_l) has one 1 per row, selecting the kept vertices, and
* ``up[l]`` (n_l, n_{l+1}) gives every level-``l`` vertex the barycentric weights of its closest
  point on the level-``l + 1`` surface (kept vertices get a one-hot row),

as in the CoMA / MeshLDM pooling, built here without ``psbody.mesh``. A model ships its
hierarchy with :meth:`MeshHierarchy.save` and reloads it with :meth:`MeshHierarchy.load`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cardiocore.errors import CardioInputError, WeightsError
from cardiocore.geometry.decimate import quadric_decimate
from cardiocore.geometry.distance import closest_points_on_mesh
from cardiocore.geometry.mesh import ArrayLike, as_mesh, edge_index
from cardiocore.train.atomic import atomic_write
from cardiocore.train.torch_file import load_tensors

FILE_FORMAT = "cardiocore.mesh_hierarchy"
FILE_VERSION = 1
_STORED_FIELDS = ("verts", "faces", "kept", "up_vertices", "up_weights")


def _selection_matrix(kept: torch.Tensor, n_fine: int) -> torch.Tensor:
    """Sparse (n_coarse, n_fine) float32 matrix with a single 1 at (i, kept[i])."""
    rows = torch.arange(kept.shape[0], device=kept.device)
    values = torch.ones(kept.shape[0], device=kept.device)
    shape = (kept.shape[0], n_fine)
    indices = torch.stack([rows, kept])
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()


def _interpolation_matrix(vertex_index: torch.Tensor, weights: torch.Tensor, n_coarse: int) -> torch.Tensor:
    """Sparse (n_fine, n_coarse) float32 matrix with rows holding barycentric weights."""
    n_fine = vertex_index.shape[0]
    rows = torch.arange(n_fine, device=vertex_index.device).repeat_interleave(3)
    indices = torch.stack([rows, vertex_index.reshape(-1)])
    values = weights.reshape(-1).float()
    return torch.sparse_coo_tensor(indices, values, (n_fine, n_coarse), check_invariants=False).coalesce()


@dataclass
class MeshHierarchy:
    """Levels of a mesh for graph pooling (level 0 finest).

    Attributes:
        verts: per level, vertex positions (n_l, 3) float32, mm.
        faces: per level, triangles (F_l, 3) int64.
        kept: per level transition ``l``, indices (n_{l+1},) of the level-``l`` vertices kept.
        up_vertices: per transition ``l``, coarse triangle corners (n_l, 3) int64 for each
            level-``l`` vertex.
        up_weights: per transition ``l``, barycentric weights (n_l, 3) matching ``up_vertices``.
        edge_index: per level, PyG connectivity (2, 2E_l) int64, both directions (derived).
        down: per transition ``l``, sparse COO float32 (n_{l+1}, n_l) selection (derived).
        up: per transition ``l``, sparse COO float32 (n_l, n_{l+1}) interpolation (derived).
    """

    verts: list[torch.Tensor]
    faces: list[torch.Tensor]
    kept: list[torch.Tensor]
    up_vertices: list[torch.Tensor]
    up_weights: list[torch.Tensor]
    edge_index: list[torch.Tensor] = field(init=False)
    down: list[torch.Tensor] = field(init=False)
    up: list[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self._check_levels()
        self.edge_index = [edge_index(f) for f in self.faces]
        sizes = self.n_vertices
        self.down = [_selection_matrix(k, sizes[level]) for level, k in enumerate(self.kept)]
        self.up = [
            _interpolation_matrix(i, w, sizes[level + 1])
            for level, (i, w) in enumerate(zip(self.up_vertices, self.up_weights))
        ]

    @property
    def n_vertices(self) -> list[int]:
        """Vertex count of every level, finest first."""
        return [int(v.shape[0]) for v in self.verts]

    @property
    def n_levels(self) -> int:
        """Number of levels, including the input mesh."""
        return len(self.verts)

    @classmethod
    def build(
        cls, verts: ArrayLike, faces: ArrayLike, factors: Sequence[float] = (4, 4, 4, 4)
    ) -> MeshHierarchy:
        """Decimate ``verts``/``faces`` repeatedly, each level to ``ceil(n_l / factor)`` vertices.

        Args:
            verts: finest vertices (V, 3), mm.
            faces: finest triangles (F, 3), manifold, every vertex used.
            factors: reduction factor (> 1) of each transition; len(factors) + 1 levels.

        Returns:
            The hierarchy (on CPU; use :meth:`to` to move it). Deterministic.

        Raises:
            MeshError: unusable mesh (see :func:`quadric_decimate`).
            CardioInputError: a factor <= 1, or a level that would fall below 3 vertices.
        """
        verts_t, faces_t = as_mesh(verts, faces, name="hierarchy mesh")
        level_verts = [verts_t.detach().cpu().float()]
        level_faces = [faces_t.cpu()]
        kept, up_vertices, up_weights = [], [], []
        for level, factor in enumerate(factors):
            if not factor > 1:
                raise CardioInputError("factors", f"factor {level} must be greater than 1, got {factor}")
            target = math.ceil(level_verts[-1].shape[0] / factor)
            if target < 3:
                raise CardioInputError(
                    "factors",
                    f"level {level + 1} would have {target} vertices, fewer than a triangle",
                    "use fewer or smaller factors",
                )
            name = f"hierarchy level {level}"
            coarse = quadric_decimate(level_verts[-1], level_faces[-1], target, name=name)
            nearest = closest_points_on_mesh(level_verts[-1].double(), coarse.verts.double(), coarse.faces)
            kept.append(coarse.kept)
            up_vertices.append(coarse.faces[nearest.face_index])
            up_weights.append(nearest.barycentric.float())
            level_verts.append(coarse.verts)
            level_faces.append(coarse.faces)
        return cls(level_verts, level_faces, kept, up_vertices, up_weights)

    def to(self, device: torch.device | str) -> MeshHierarchy:
        """A copy with every tensor on ``device``."""
        return MeshHierarchy(*([t.to(device) for t in getattr(self, name)] for name in _STORED_FIELDS))

    def downsample(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Pool features from level ``level`` to ``level + 1``.

        (B, n_l, C) or (n_l, C) -> (B, n_{l+1}, C) or (n_{l+1}, C).
        """
        return _apply_sparse(self._matrix(self.down, level, "downsample"), x, "downsample input")

    def upsample(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Unpool features from level ``level + 1`` to ``level``.

        (B, n_{l+1}, C) or (n_{l+1}, C) -> (B, n_l, C) or (n_l, C).
        """
        return _apply_sparse(self._matrix(self.up, level, "upsample"), x, "upsample input")

    def _matrix(self, matrices: list[torch.Tensor], level: int, what: str) -> torch.Tensor:
        if not 0 <= level < len(matrices):
            raise CardioInputError(f"{what} level", f"must be in [0, {len(matrices) - 1}], got {level}")
        return matrices[level]

    def to_dict(self) -> dict[str, Any]:
        """The hierarchy as plain CPU tensors in a dict tagged with its format and version."""
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            **{name: [t.cpu() for t in getattr(self, name)] for name in _STORED_FIELDS},
        }

    @classmethod
    def from_dict(cls, payload: Any, source: str = "mesh hierarchy") -> MeshHierarchy:
        """Rebuild a hierarchy from :meth:`to_dict` output; ``source`` names it in errors.

        Raises:
            WeightsError: another format or version, or levels that do not fit together.
        """
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise WeightsError(source, "is not a cardiocore mesh-hierarchy file")
        if payload.get("version") != FILE_VERSION:
            raise WeightsError(
                source,
                f"has mesh-hierarchy version {payload.get('version')}, this cardiocore reads {FILE_VERSION}",
                "rebuild the hierarchy or update cardiocore",
            )
        try:
            return cls(*(payload[name] for name in _STORED_FIELDS))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as error:
            raise WeightsError(source, f"holds inconsistent levels ({error})") from error

    def save(self, path: str | os.PathLike) -> None:
        """Write the hierarchy as plain tensors with ``torch.save``, atomically (temp file + os.replace)."""
        with atomic_write(path) as stream:
            torch.save(self.to_dict(), stream)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MeshHierarchy:
        """Read a hierarchy written by :meth:`save` (onto CPU).

        Raises:
            WeightsError: the file is missing, unreadable, of another format or version, or
                its levels do not fit together.
        """
        source = Path(path)
        if not source.is_file():
            raise WeightsError(str(source), "no such mesh-hierarchy file")
        payload = load_tensors(source, "mesh hierarchy")
        return cls.from_dict(payload, str(source))

    def _check_levels(self) -> None:
        """Raise ValueError when the levels do not chain (list lengths, shapes, index ranges)."""
        sizes = self.n_vertices
        transitions = len(sizes) - 1
        lengths = {len(self.kept), len(self.up_vertices), len(self.up_weights)}
        if len(self.faces) != len(sizes) or lengths != {transitions}:
            raise ValueError(f"{len(sizes)} levels need {transitions} transitions, got lengths {lengths}")
        for level in range(transitions):
            kept, corners = self.kept[level], self.up_vertices[level]
            if kept.shape != (sizes[level + 1],) or corners.shape != (sizes[level], 3):
                raise ValueError(f"transition {level} has mismatched shapes")
            if self.up_weights[level].shape != corners.shape:
                raise ValueError(f"transition {level} weights do not match their vertex indices")
            if int(kept.min()) < 0 or int(kept.max()) >= sizes[level] or int(corners.min()) < 0:
                raise ValueError(f"transition {level} indexes outside its levels")
            if int(corners.max()) >= sizes[level + 1]:
                raise ValueError(f"transition {level} interpolates from vertices outside level {level + 1}")
            if not torch.equal(self.verts[level][kept], self.verts[level + 1]):
                raise ValueError(f"level {level + 1} is not the kept subset of level {level}")


def _apply_sparse(matrix: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
    """``matrix @ x`` for x (n, C) or (B, n, C), on x's device and dtype."""
    if x.dim() not in (2, 3) or x.shape[-2] != matrix.shape[1]:
        raise CardioInputError(
            what, f"must have shape (B, {matrix.shape[1]}, C) or ({matrix.shape[1]}, C), got {tuple(x.shape)}"
        )
    m = matrix.to(device=x.device, dtype=x.dtype)
    if x.dim() == 2:
        return torch.sparse.mm(m, x)
    batch, n, channels = x.shape
    stacked = x.transpose(0, 1).reshape(n, batch * channels)
    return torch.sparse.mm(m, stacked).reshape(-1, batch, channels).transpose(0, 1)
