"""Quadric-error-metric edge-collapse decimation that keeps a subset of the input vertices.

Garland & Heckbert (1997) quadrics, restricted to half-edge collapses: an edge (u, v) is
collapsed by deleting ``u`` and re-attaching its faces to ``v``, so the coarse vertices are an
exact subset of the fine ones (the pooling scheme of CoMA-style mesh autoencoders, where the
down-sampling matrix simply selects the kept vertices).

Each vertex carries a quadric ``Q`` (4, 4): the sum of the area-weighted plane quadrics of its
incident faces plus, on boundary edges, penalty planes that contain the edge and stand
perpendicular to its face, so an open surface (an LV cup open at the base) keeps its rim.
Collapsing ``u`` onto ``v`` costs ``p_v^T (Q_u + Q_v) p_v``; both directions of every edge sit
in one priority queue, so the cheaper endpoint is tried first. Queue entries are invalidated
lazily by per-vertex version stamps. A collapse is rejected when it would

* move a boundary vertex inside the surface (boundary vertices only collapse onto boundary
  vertices, along a boundary edge),
* break the link condition (non-manifold edges, pinched boundaries, duplicate faces),
* leave a vertex with fewer neighbours than a manifold allows (tetrahedron "pillows", ears), or
* turn a face by more than ``acos(MIN_NORMAL_COSINE)`` (flips and near-degenerate slivers).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cardiocore.errors import CardioInputError, MeshError
from cardiocore.geometry.mesh import ArrayLike, as_mesh

MIN_NORMAL_COSINE = 0.2
"""A collapse may turn each surviving face's normal by at most acos(0.2), about 78 degrees."""

BOUNDARY_WEIGHT = 10.0
"""Weight of a boundary penalty plane, times the squared length of its boundary edge."""


@dataclass(frozen=True)
class Decimation:
    """Result of :func:`quadric_decimate`.

    Attributes:
        verts: coarse vertex positions (V', 3), equal to ``fine_verts[kept]`` (same dtype/device).
        faces: coarse triangles (F', 3) int64 indexing ``verts``, orientation kept.
        kept: indices (V',) int64 of the kept fine vertices, increasing.
    """

    verts: torch.Tensor
    faces: torch.Tensor
    kept: torch.Tensor


def _plane_quadrics(planes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Quadrics (N, 4, 4) ``w * p p^T`` of planes ``p = (n, -n.x0)`` (N, 4)."""
    return weights[:, None, None] * planes[:, :, None] * planes[:, None, :]


def _vertex_quadrics(points: np.ndarray, faces: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Per-vertex quadrics (V, 4, 4): face planes weighted by area plus boundary penalty planes.

    Args:
        points: (V, 3) float64 positions.
        faces: (F, 3) int64 triangles.
        boundary: (B, 3) rows (a, b, face): directed boundary edge a -> b and its one face.
    """
    a, b, c = (points[faces[:, k]] for k in range(3))
    cross = np.cross(b - a, c - a)
    twice_area = np.linalg.norm(cross, axis=1)
    unit = np.divide(cross, twice_area[:, None], out=np.zeros_like(cross), where=twice_area[:, None] > 0)
    face_planes = np.concatenate([unit, -(unit * a).sum(1, keepdims=True)], axis=1)
    face_q = _plane_quadrics(face_planes, 0.5 * twice_area)

    quadrics = np.zeros((points.shape[0], 4, 4))
    for k in range(3):
        np.add.at(quadrics, faces[:, k], face_q)

    if boundary.shape[0]:
        start, end = points[boundary[:, 0]], points[boundary[:, 1]]
        along = end - start
        normal = np.cross(along, unit[boundary[:, 2]])
        length = np.linalg.norm(normal, axis=1)
        normal = np.divide(normal, length[:, None], out=np.zeros_like(normal), where=length[:, None] > 0)
        rim_planes = np.concatenate([normal, -(normal * start).sum(1, keepdims=True)], axis=1)
        rim_q = _plane_quadrics(rim_planes, BOUNDARY_WEIGHT * (along**2).sum(1))
        np.add.at(quadrics, boundary[:, 0], rim_q)
        np.add.at(quadrics, boundary[:, 1], rim_q)
    return quadrics


def _edge_topology(faces: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges (E, 2) and directed boundary edges with their face (B, 3).

    Raises:
        MeshError: an edge is shared by more than two faces.
    """
    half = np.stack([faces, np.roll(faces, -1, axis=1)], axis=-1).reshape(-1, 2)
    owner = np.repeat(np.arange(faces.shape[0]), 3)
    edges, inverse, counts = np.unique(np.sort(half, axis=1), axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if counts.max() > 2:
        bad = edges[counts.argmax()].tolist()
        raise MeshError(
            name,
            f"{int((counts > 2).sum())} edges are shared by more than two faces (first: {bad})",
            "quadric decimation needs an edge-manifold surface; repair the mesh first",
        )
    on_boundary = counts[inverse] == 1
    boundary = np.concatenate([half[on_boundary], owner[on_boundary, None]], axis=1)
    return edges, boundary


class _EdgeCollapser:
    """Mutable mesh state for half-edge collapses (pure-Python adjacency, numpy quadrics)."""

    def __init__(self, points: np.ndarray, faces: np.ndarray, name: str) -> None:
        edges, boundary = _edge_topology(faces, name)
        self.points = [tuple(p) for p in points.tolist()]
        self.homogeneous = np.concatenate([points, np.ones((points.shape[0], 1))], axis=1)
        self.quadrics = _vertex_quadrics(points, faces, boundary)
        self.faces = faces.tolist()
        self.face_alive = [True] * len(self.faces)
        self.vertex_faces: list[set[int]] = [set() for _ in range(points.shape[0])]
        for f, face in enumerate(self.faces):
            for x in face:
                self.vertex_faces[x].add(f)
        self.on_boundary = [False] * points.shape[0]
        for x in boundary[:, :2].reshape(-1).tolist():
            self.on_boundary[x] = True
        self.alive = [True] * points.shape[0]
        self.stamp = [0] * points.shape[0]
        self.n_alive = points.shape[0]
        self.initial_edges = edges

    def neighbours(self, x: int) -> set[int]:
        """Vertices sharing a face with ``x``."""
        ring = {y for f in self.vertex_faces[x] for y in self.faces[f]}
        ring.discard(x)
        return ring

    def min_degree(self, x: int) -> int:
        """Fewest neighbours a manifold vertex may have: 2 on the boundary, 3 inside."""
        return 2 if self.on_boundary[x] else 3

    def candidates(self, pairs: np.ndarray) -> list[tuple[float, int, int, int, int]]:
        """Queue entries (cost, source, target, stamp_source, stamp_target) for directed pairs (N, 2)."""
        source, target = pairs[:, 0], pairs[:, 1]
        q = self.quadrics[source] + self.quadrics[target]
        p = self.homogeneous[target]
        costs = np.maximum(np.einsum("ni,nij,nj->n", p, q, p), 0.0).tolist()
        stamp = self.stamp
        pairs_list = zip(costs, source.tolist(), target.tolist())
        return [(cost, u, v, stamp[u], stamp[v]) for cost, u, v in pairs_list]

    def alive_faces(self) -> np.ndarray:
        """Current triangles (F', 3) int64 in input order, indexing the input vertices."""
        return np.asarray([face for face, ok in zip(self.faces, self.face_alive) if ok], dtype=np.int64)

    def current_edges(self) -> np.ndarray:
        """Directed pairs (2E, 2) for every edge of the current mesh, both directions."""
        edges, _ = _edge_topology(self.alive_faces(), "decimated mesh")
        return np.concatenate([edges, edges[:, ::-1]])

    def _turns_too_far(self, face: list[int], u: int, v: int) -> bool:
        """Whether replacing ``u`` by ``v`` in ``face`` turns its normal by too much.

        A face that already has zero area (e.g. a fan of coincident pole vertices) has no
        orientation to lose and is exempt; a face with area must keep some.
        """
        n_old = _triangle_normal(*(self.points[x] for x in face))
        n_new = _triangle_normal(*(self.points[v] if x == u else self.points[x] for x in face))
        old_size = math.sqrt(sum(p * p for p in n_old))
        if old_size == 0.0:
            return False
        new_size = math.sqrt(sum(q * q for q in n_new))
        dot = sum(p * q for p, q in zip(n_old, n_new))
        return not new_size > 0.0 or dot < MIN_NORMAL_COSINE * old_size * new_size

    def can_collapse(self, u: int, v: int) -> bool:
        """Whether deleting ``u`` and re-attaching its faces to ``v`` keeps a valid manifold."""
        if self.on_boundary[u] and not self.on_boundary[v]:
            return False
        shared = self.vertex_faces[u] & self.vertex_faces[v]
        if not shared:
            return False
        opposite = {x for f in shared for x in self.faces[f]} - {u, v}
        ring_u, ring_v = self.neighbours(u), self.neighbours(v)
        if ring_u & ring_v != opposite:
            return False
        # Two boundary vertices joined by an interior edge would pinch the surface (the link
        # condition with a virtual vertex closing every boundary loop).
        if self.on_boundary[u] and len(shared) != 1:
            return False
        if len(ring_u | ring_v) - 2 < self.min_degree(v):
            return False
        if any(len(self.neighbours(x)) - 1 < self.min_degree(x) for x in opposite):
            return False
        return not any(self._turns_too_far(self.faces[f], u, v) for f in self.vertex_faces[u] - shared)

    def collapse(self, u: int, v: int) -> None:
        """Delete ``u``: drop the faces on edge (u, v), re-attach the others to ``v``."""
        shared = self.vertex_faces[u] & self.vertex_faces[v]
        for f in shared:
            self.face_alive[f] = False
            for x in self.faces[f]:
                self.vertex_faces[x].discard(f)
        for f in self.vertex_faces[u]:
            face = self.faces[f]
            face[face.index(u)] = v
            self.vertex_faces[v].add(f)
        self.vertex_faces[u] = set()
        self.quadrics[v] += self.quadrics[u]
        self.alive[u] = False
        self.stamp[u] += 1
        self.stamp[v] += 1
        self.n_alive -= 1

    def is_current(self, entry: tuple[float, int, int, int, int]) -> bool:
        """Whether a queue entry still describes the mesh (no endpoint deleted or changed since)."""
        _, u, v, stamp_u, stamp_v = entry
        return self.alive[u] and self.alive[v] and self.stamp[u] == stamp_u and self.stamp[v] == stamp_v


def _triangle_normal(
    a: Sequence[float], b: Sequence[float], c: Sequence[float]
) -> tuple[float, float, float]:
    """Unnormalised normal (b - a) x (c - a) of a triangle given as coordinate tuples."""
    e1 = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
    e2 = (c[0] - a[0], c[1] - a[1], c[2] - a[2])
    return (e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0])


def quadric_decimate(
    verts: ArrayLike, faces: ArrayLike, target_vertices: int, name: str = "mesh"
) -> Decimation:
    """Decimate a manifold triangle mesh to about ``target_vertices`` by half-edge collapses.

    Deterministic: the same input gives the same output (ties in cost break on vertex index).
    If no further collapse is allowed (e.g. a closed mesh already at a handful of vertices),
    the result stops above the target; compare ``len(result.kept)`` with the target to tell.

    Args:
        verts: fine vertex positions (V, 3), mm.
        faces: fine triangles (F, 3); every vertex must belong to a face and every edge to at
            most two faces. Open surfaces keep their boundary loops.
        target_vertices: number of vertices to keep, at least 3; ``>= V`` returns the input.
        name: what to call the mesh in error messages.

    Returns:
        :class:`Decimation` with coarse verts (V', 3), faces (F', 3) and kept fine indices (V',).

    Raises:
        MeshError: invalid mesh, unreferenced vertices, or edges shared by more than two faces.
        CardioInputError: ``target_vertices`` below 3.
    """
    verts_t, faces_t = as_mesh(verts, faces, name=name)
    if int(target_vertices) < 3:
        raise CardioInputError("target_vertices", f"must be at least 3, got {target_vertices}")
    points = verts_t.detach().cpu().double().numpy()
    faces_np = faces_t.cpu().numpy()
    referenced = np.zeros(points.shape[0], dtype=bool)
    referenced[faces_np.reshape(-1)] = True
    if not referenced.all():
        raise MeshError(
            name,
            f"{int((~referenced).sum())} of {points.shape[0]} vertices belong to no face",
            "drop unreferenced vertices (e.g. keep only the surface's own vertex range) first",
        )

    state = _EdgeCollapser(points, faces_np, name)
    pairs = np.concatenate([state.initial_edges, state.initial_edges[:, ::-1]])
    while state.n_alive > target_vertices:
        queue = state.candidates(pairs)
        heapq.heapify(queue)
        collapsed_in_pass = 0
        while queue and state.n_alive > target_vertices:
            entry = heapq.heappop(queue)
            if not state.is_current(entry):
                continue
            _, u, v, _, _ = entry
            if not state.can_collapse(u, v):
                continue
            state.collapse(u, v)
            collapsed_in_pass += 1
            ring = np.fromiter(state.neighbours(v), dtype=np.int64)
            around = np.stack([np.full_like(ring, v), ring], axis=1)
            for item in state.candidates(np.concatenate([around, around[:, ::-1]])):
                heapq.heappush(queue, item)
        if collapsed_in_pass == 0:
            break
        # Collapses rejected earlier may have become valid: retry every current edge.
        pairs = state.current_edges()

    kept = np.flatnonzero(np.asarray(state.alive))
    new_index = np.full(points.shape[0], -1, dtype=np.int64)
    new_index[kept] = np.arange(kept.shape[0])
    coarse_faces = state.alive_faces()
    kept_t = torch.as_tensor(kept, dtype=torch.int64, device=verts_t.device)
    return Decimation(
        verts=verts_t[kept_t],
        faces=torch.as_tensor(new_index[coarse_faces], dtype=torch.int64, device=verts_t.device),
        kept=kept_t,
    )
