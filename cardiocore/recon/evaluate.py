"""Quality figures of multi-structure heart meshes against a label map (``cardio recon eval``).

Per structure (mesh vs the voxels of its label):

- Dice and HD95 (mm) of the mesh voxelised onto the label grid (voxel centres inside the mesh by
  winding number) against the label mask (:mod:`cardiocore.metrics.overlap`);
- Chamfer distance (mm, the project convention: unsquared symmetric mean on 2,048 area-uniform
  samples per surface) to the marching-cubes surface of the label mask;
- Laplacian smoothness energy LSE (mm^2, uniform Laplacian, :mod:`cardiocore.metrics.smoothness`);
- watertightness: closed (no boundary edge) and manifold (every edge in exactly two faces with
  opposite directions, i.e. consistently oriented, and one fan of faces around every vertex);
- self-intersections: number of intersecting face pairs
  (:func:`cardiocore.geometry.intersection.count_self_intersections`);
- enclosed volume of the mesh and volume of the label, ml.

Per rule "A inside B" or "A disjoint B" (a violation is a part of A outside B, resp. inside B;
:mod:`cardiocore.metrics.violation`):

- VR: fraction of A's volume that violates (Monte-Carlo, winding-number occupancy);
- SVR: fraction of A's surface area that violates by more than a contact depth (0.1 mm):
  structures that share a wall (every pair of neighbours in a label map) have coincident
  surfaces there, where inside/outside is decided by rounding alone and the plain SVR counts
  about half the shared area; each surface sample is therefore moved 0.1 mm into A (along A's
  normal) before it is tested against B, so only penetrations deeper than that count;
- voxel VR: the same rule on the voxelised meshes (fraction of A's voxels).

When the bounding boxes of A and B are disjoint, VR and SVR are exact without sampling (0 for
"disjoint", 1 for "inside"). Runtime is dominated by winding-number occupancy (voxelisation,
VR, SVR): it grows with the grid's bounding boxes, ``vr_points``, ``svr_points`` and the faces.

Rates are fractions in [0, 1] in :meth:`ReconMetrics.to_dict` and percentages in
:meth:`ReconMetrics.rows`. Sampling is seeded, so the figures are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cardiocore.errors import CardioInputError
from cardiocore.geometry.grid import label_mask, occupied_box, shifted_matrix
from cardiocore.geometry.intersection import count_self_intersections
from cardiocore.geometry.mesh import ArrayLike, as_mesh, face_normals, is_closed
from cardiocore.geometry.sampling import sample_surface
from cardiocore.geometry.surface import surface_from_mask
from cardiocore.geometry.volume import enclosed_volume
from cardiocore.geometry.voxelize import voxelize_mesh
from cardiocore.metrics.distance import mesh_chamfer
from cardiocore.metrics.overlap import dice, hd95
from cardiocore.metrics.smoothness import laplacian_smoothness_energy
from cardiocore.metrics.violation import mask_violation_rate, violation_rate, volume_violation_rate
from cardiocore.train.atomic import finite_or_none

Mesh = tuple[ArrayLike, ArrayLike]
"""A mesh as (verts (V, 3) RAS mm, faces (F, 3) int64)."""

VR_POINTS = 20_000
"""Candidate points in A's bounding box for the volume violation rate."""

SVR_POINTS = 10_000
"""Area-uniform samples of A's surface for the surface violation rate."""

CONTACT_MM = 0.1
"""Depth (mm) a surface point of A must pass beyond B's surface to count in SVR."""


ROW_COLUMNS = (
    "name", "Dice", "HD95 (mm)", "Chamfer (mm)", "LSE (mm^2)", "watertight", "self-intersections",
    "volume (ml)", "label volume (ml)", "VR (%)", "SVR (%)", "voxel VR (%)",
)
"""Columns of :meth:`ReconMetrics.rows` (a structure or rule name, then figures with units)."""


class _RuleLike(Protocol):
    kind: str
    a: str
    b: str


class _RuleSetLike(Protocol):
    rules: Sequence[_RuleLike]


@dataclass(frozen=True)
class StructureMetrics:
    """Figures of one structure's mesh (module docstring); distances mm, volumes ml."""

    name: str
    dice: float
    hd95_mm: float
    chamfer_mm: float
    lse_mm2: float
    closed: bool
    manifold: bool
    self_intersections: int
    volume_ml: float
    label_volume_ml: float

    @property
    def watertight(self) -> bool:
        """Closed and manifold."""
        return self.closed and self.manifold


@dataclass(frozen=True)
class RuleMetrics:
    """Violation rates (fractions in [0, 1]) of one rule "A <kind> B"."""

    kind: str
    a: str
    b: str
    vr: float
    svr: float
    voxel_vr: float

    @property
    def label(self) -> str:
        return f"{self.a} {self.kind} {self.b}"


@dataclass(frozen=True)
class ReconMetrics:
    """All figures of one reconstruction.

    Attributes:
        structures: name -> :class:`StructureMetrics`, in the order of the meshes given.
        rules: one :class:`RuleMetrics` per rule whose two structures have meshes.
        skipped_rules: rules left out because a structure has no mesh ("A kind B").
        missing: structures of ``label_of`` that have no mesh.
        settings: the sampling settings used (vr_points, svr_points, contact_mm, seed).
    """

    structures: dict[str, StructureMetrics]
    rules: list[RuleMetrics]
    skipped_rules: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    settings: dict[str, float | int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict; infinite or NaN figures become None."""
        structures = {
            name: {key: value for key, value in asdict(m).items() if key != "name"} | {"watertight": m.watertight}
            for name, m in self.structures.items()
        }
        return finite_or_none({
            "structures": structures,
            "rules": [asdict(r) for r in self.rules],
            "skipped_rules": list(self.skipped_rules),
            "missing": list(self.missing),
            "settings": dict(self.settings),
            "summary": self.summary(),
        })

    def rows(self) -> list[dict[str, Any]]:
        """Table rows: one per structure, then one per rule, all with the columns of
        :data:`ROW_COLUMNS`; a column that does not apply to the row is None."""
        rows = [
            dict.fromkeys(ROW_COLUMNS) | {
                "name": m.name,
                "Dice": m.dice,
                "HD95 (mm)": m.hd95_mm,
                "Chamfer (mm)": m.chamfer_mm,
                "LSE (mm^2)": m.lse_mm2,
                "watertight": m.watertight,
                "self-intersections": m.self_intersections,
                "volume (ml)": m.volume_ml,
                "label volume (ml)": m.label_volume_ml,
            }
            for m in self.structures.values()
        ]
        rows += [
            dict.fromkeys(ROW_COLUMNS)
            | {"name": r.label, "VR (%)": 100 * r.vr, "SVR (%)": 100 * r.svr, "voxel VR (%)": 100 * r.voxel_vr}
            for r in self.rules
        ]
        return rows

    def summary(self) -> dict[str, Any]:
        """One line for an ablation table: worst/mean Dice, worst VR and SVR (%), mean LSE (mm^2),
        all watertight, total self-intersections. NaN figures (Dice without reference labels) are
        left out; a column with none left is NaN (0 for VR and SVR without rules)."""
        metrics = list(self.structures.values())
        dices = _finite(m.dice for m in metrics)
        lse = _finite(m.lse_mm2 for m in metrics)
        return {
            "min Dice": min(dices, default=float("nan")),
            "mean Dice": float(np.mean(dices)) if dices else float("nan"),
            "max VR (%)": max(_finite(100 * r.vr for r in self.rules), default=0.0 if not self.rules else float("nan")),
            "max SVR (%)": max(_finite(100 * r.svr for r in self.rules), default=0.0 if not self.rules else float("nan")),
            "mean LSE (mm^2)": float(np.mean(lse)) if lse else float("nan"),
            "all watertight": all(m.watertight for m in metrics),
            "self-intersections": sum(m.self_intersections for m in metrics),
        }


def _finite(values: Iterable[float]) -> list[float]:
    """The finite values, in order."""
    return [float(v) for v in values if math.isfinite(v)]


def is_manifold(faces: ArrayLike) -> bool:
    """Whether a triangle mesh is an oriented manifold (possibly with boundary).

    True when no edge has more than two faces, no directed edge appears twice (the two faces of
    an edge traverse it in opposite directions: consistent orientation), and the faces around
    every vertex form a single fan (no two cones touching at a vertex).

    Args:
        faces: triangles (F, 3) int64.
    """
    f = np.asarray(torch.as_tensor(faces).cpu(), dtype=np.int64)
    n_faces = f.shape[0]
    half = np.stack([f, np.roll(f, -1, axis=1)], axis=-1).reshape(-1, 2)  # half-edge 3 t + k: corner k -> k+1
    if np.unique(half, axis=0).shape[0] != half.shape[0]:
        return False
    _, edge_of, counts = np.unique(np.sort(half, axis=1), axis=0, return_inverse=True, return_counts=True)
    if (counts > 2).any():
        return False
    edge_of = edge_of.reshape(-1)
    # Corners of one vertex in the two faces of an interior edge belong to the same fan.
    order = np.argsort(edge_of, kind="stable")
    paired = counts[edge_of[order]] == 2
    first, second = order[paired][0::2], order[paired][1::2]  # half-edges u -> v and v -> u
    end_first = 3 * (first // 3) + (first % 3 + 1) % 3  # corner at the end of each half-edge
    end_second = 3 * (second // 3) + (second % 3 + 1) % 3
    links = np.concatenate([np.stack([first, end_second], 1), np.stack([end_first, second], 1)])
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(3 * n_faces, 3 * n_faces))
    _, fan = connected_components(graph, directed=False)
    vertex_of_corner = f.reshape(-1)
    n_fans = np.unique(np.stack([vertex_of_corner, fan], 1), axis=0).shape[0]
    return bool(n_fans == np.unique(vertex_of_corner).shape[0])


def _crop(*masks: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Index box of the voxels set in any mask, ``margin`` voxels wider (one keeps surface
    distances unchanged).

    The union of the masks' own boxes: no element-wise union of whole volumes (the label masks
    keep a NIfTI volume's Fortran layout, the voxelised meshes are C-ordered)."""
    boxes = [box for box in (occupied_box(mask, margin) for mask in masks) if box is not None]
    if not boxes:
        return tuple(slice(0, 1) for _ in range(3))
    return tuple(slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in range(3))


def _surface_violation(
    mesh_a: tuple[torch.Tensor, torch.Tensor],
    mesh_b: tuple[torch.Tensor, torch.Tensor],
    kind: str,
    n_points: int,
    contact_mm: float,
    generator: torch.Generator,
) -> float:
    """SVR with a contact tolerance: area-uniform samples of A's surface, moved ``contact_mm``
    inwards along A's face normals, tested against B (so touching surfaces do not violate)."""
    points, face_index, _ = sample_surface(*mesh_a, n_points, generator=generator)
    inwards = face_normals(*mesh_a)[face_index]
    return float(violation_rate(points - contact_mm * inwards, *mesh_b, kind))


def _boxes_apart(verts_a: torch.Tensor, verts_b: torch.Tensor) -> bool:
    """Whether the bounding boxes of two vertex sets (V, 3) are disjoint, so that no point of one
    closed mesh lies inside the other (winding number 0 outside a closed mesh's box)."""
    low_a, high_a = verts_a.amin(dim=0), verts_a.amax(dim=0)
    low_b, high_b = verts_b.amin(dim=0), verts_b.amax(dim=0)
    return bool(((high_a < low_b) | (high_b < low_a)).any())


def _structure_metrics(
    name: str,
    verts: torch.Tensor,
    faces: torch.Tensor,
    predicted: np.ndarray,
    target: np.ndarray,
    ijk_to_ras: np.ndarray,
    generator: torch.Generator,
) -> StructureMetrics:
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    box = _crop(predicted, target)
    if target.any():
        label_surface = surface_from_mask(target, ijk_to_ras)
        chamfer = float(mesh_chamfer(verts, faces, *label_surface, generator=generator))
    else:
        chamfer = float("inf")
    voxel_ml = abs(float(np.linalg.det(ijk_to_ras[:3, :3]))) / 1000.0
    return StructureMetrics(
        name=name,
        dice=dice(predicted[box], target[box]),
        hd95_mm=hd95(predicted[box], target[box], spacing=tuple(spacing)),
        chamfer_mm=chamfer,
        lse_mm2=float(laplacian_smoothness_energy(verts, faces)),
        closed=is_closed(faces),
        manifold=is_manifold(faces),
        self_intersections=count_self_intersections(verts, faces),
        volume_ml=float(enclosed_volume(verts.double(), faces)) / 1000.0,
        label_volume_ml=float(np.count_nonzero(target)) * voxel_ml,
    )


def evaluate_meshes(
    meshes: Mapping[str, Mesh],
    labels: ArrayLike,
    ijk_to_ras: ArrayLike,
    label_of: Mapping[str, int | Sequence[int]],
    rules: _RuleSetLike | Iterable[_RuleLike],
    vr_points: int = VR_POINTS,
    svr_points: int = SVR_POINTS,
    contact_mm: float = CONTACT_MM,
    seed: int = 0,
) -> ReconMetrics:
    """Evaluate meshes of heart structures against a label map (module docstring).

    Args:
        meshes: structure name -> (verts (V, 3) RAS mm, faces (F, 3) int64), closed and
            outward oriented.
        labels: label map (I, J, K) int.
        ijk_to_ras: (4, 4) matrix from voxel indices to RAS mm of ``labels``.
        label_of: structure name -> its label value, or several values whose union it is
            (e.g. an epicardium as cavity + myocardium).
        rules: a rule set (with a ``rules`` attribute) or an iterable of rules, each with
            ``kind`` ("inside" or "disjoint"), ``a`` and ``b`` (structure names).
        vr_points: candidate points per rule for VR; svr_points: surface samples per rule for SVR.
        contact_mm: SVR counts a surface point of A only when it lies deeper than this beyond
            B's surface (module docstring); 0 gives the plain
            :func:`cardiocore.metrics.violation.surface_violation_rate`.
        seed: seed of every random sample (Chamfer, VR, SVR).

    Returns:
        :class:`ReconMetrics`.

    Raises:
        CardioInputError: a mesh whose structure has no label in ``label_of``, labels that are
            not 3-D, or a rule of unknown kind. MeshError / VolumeError: bad meshes or matrix.
    """
    labels_np = np.asarray(torch.as_tensor(labels).cpu())
    if labels_np.ndim != 3:
        raise CardioInputError("labels", f"must be a 3-D (I, J, K) label map, got shape {labels_np.shape}")
    matrix = np.asarray(torch.as_tensor(ijk_to_ras, dtype=torch.float64).cpu())
    unknown = [name for name in meshes if name not in label_of]
    if unknown:
        raise CardioInputError("meshes", f"structures {unknown} have no label in label_of",
                               f"known structures: {sorted(label_of)}")
    if contact_mm < 0:
        raise CardioInputError("contact_mm", f"must be >= 0, got {contact_mm}")
    generator = torch.Generator().manual_seed(seed)

    tensors = {name: as_mesh(v, f, name=f"mesh of {name}") for name, (v, f) in meshes.items()}
    voxelised = {
        name: voxelize_mesh(v, f, labels_np.shape, matrix).cpu().numpy() for name, (v, f) in tensors.items()
    }
    # Every set voxel of the labels and the meshes lies in this box, with the two voxels of margin
    # the label surfaces' marching cubes looks at: the masks, their surfaces and their scores come
    # out as on the whole grid, at a fraction of the cost on a whole CT volume.
    region = _crop(labels_np, *voxelised.values(), margin=2)
    labels_np = labels_np[region]
    voxelised = {name: mask[region] for name, mask in voxelised.items()}
    region_matrix = shifted_matrix(matrix, [axis.start for axis in region])
    structures = {
        name: _structure_metrics(name, v, f, voxelised[name], label_mask(labels_np, label_of[name]),
                                 region_matrix, generator)
        for name, (v, f) in tensors.items()
    }

    boxes = {name: occupied_box(mask) for name, mask in voxelised.items()}
    rule_list = list(getattr(rules, "rules", rules))
    rule_metrics, skipped = [], []
    for rule in rule_list:
        if rule.kind not in ("inside", "disjoint"):
            raise CardioInputError("rules", f"rule {rule.a!r} {rule.kind!r} {rule.b!r} has an unknown kind",
                                   "use 'inside' or 'disjoint'")
        if rule.a not in tensors or rule.b not in tensors:
            skipped.append(f"{rule.a} {rule.kind} {rule.b}")
            continue
        mesh_a, mesh_b = tensors[rule.a], tensors[rule.b]
        if _boxes_apart(mesh_a[0], mesh_b[0]):  # no point of A is inside B: nothing to sample
            vr = svr = 0.0 if rule.kind == "disjoint" else 1.0
        else:
            vr = float(volume_violation_rate(*mesh_a, *mesh_b, rule.kind, vr_points, generator))
            svr = _surface_violation(mesh_a, mesh_b, rule.kind, svr_points, contact_mm, generator)
        # Only A's voxels can violate: both masks cropped to A's box give the same rate.
        box_a = boxes[rule.a] or (slice(0, 0),) * 3
        voxel_vr = mask_violation_rate(voxelised[rule.a][box_a], voxelised[rule.b][box_a], rule.kind)
        rule_metrics.append(RuleMetrics(rule.kind, rule.a, rule.b, vr, svr, voxel_vr))
    missing = [name for name in label_of if name not in tensors]
    settings = {"vr_points": vr_points, "svr_points": svr_points, "contact_mm": contact_mm, "seed": seed}
    return ReconMetrics(structures, rule_metrics, skipped, missing, settings)
