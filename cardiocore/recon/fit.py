"""Fit mode: deform the multi-chamber template to a label map by optimisation (no training).

Everything happens in world (RAS, mm) coordinates: voxel centres are mapped through the label
map's IJK-to-RAS matrix, so oblique and anisotropic grids need no special case.

1. Preparation. The label map is cropped to its labelled voxels and subsampled to about
   ``spacing_mm`` (:func:`cardiocore.recon.template.crop_and_stride`). Structures of the rule
   set with fewer than ``min_voxels`` voxels are reported as missing; the others are fitted and
   only the rules between them are used. Per structure: a band of voxels within two voxels of
   its boundary, and points on its boundary (marching cubes).
2. Affine initialisation from the label centroids and principal axes: the template's union
   volume moments (exact, from its closed meshes) and the labels' are matched by
   ``x -> C_t^(1/2) R C_m^(-1/2) (x - mu_m) + mu_t`` (C the covariances, mu the centroids), the
   rotation R aligning the whitened per-structure centroids (weighted Procrustes; with fewer
   than three structures R is the rotation closest to "no rotation").
3. Optimisation, coarse to fine, with Adam (step size decaying tenfold over the fit):

   - coarse stage (``coarse_fraction`` of the steps): a global affine correction and
     low-frequency vertex offsets ``S z`` (``S``: 20 steps of neighbour averaging on each mesh);
   - fine stage: free per-vertex offsets as well.

   Loss = ``occupancy * BCE(soft occupancy, label)`` at points sampled around every structure
   (its boundary band, near its current surface, uniform in its box) + ``surface * Chamfer``
   (mm) between the vertices and the label boundary points + ``mie * MIE``
   (:mod:`cardiocore.recon.mie`, violation points refreshed every ``mie_refresh`` steps, query
   points labelled by the label map; the weight rises over the fine stage) + ``laplacian *
   |L d|^2`` (mm^2; d the offsets from the affinely placed template, L the random-walk graph
   Laplacian) + ``normal * (1 - n_f . n_g)`` over adjacent faces. The template's topology is kept, so every mesh stays closed.
   Thick slices (a cine short-axis stack: slices >= ``THICK_SLICE_MM`` apart and
   ``THICK_SLICE_RATIO`` times the in-plane spacing): the labels are known on the slice planes
   only, not in the slabs between them (filling the slabs would fit the staircase of a
   slice-summation volume). The occupancy points are moved onto the nearest imaged slice (nothing
   is known off the slices, nor beyond the first and last), the boundary points are the in-plane
   outlines on each slice and the Chamfer term is one-sided (outline to vertices), and the MIE
   term is the relational one (no labels off the slices); the template's shape and the
   smoothness terms carry the surface between the slices. More label maps of the same heart on
   their own grids (``views``: the long-axis slices of a cine study) add occupancy and outline
   terms in the same way, each on its own slices, for the structures each view annotates
   (:class:`FitView`; one whose outline was not drawn is unknown there, not background).
4. Collapse check: a structure whose fitted mesh encloses less than :data:`COLLAPSE_RATIO` of
   its labelled volume (a few painted voxels: the mesh turns inside out) is left out and listed
   as missing (``FitResult.collapsed`` says why), not returned as a structure.
5. Resolution (``resolve``, on by default): the vertices that still break a rule are moved just
   past the other surface, then self-intersections are untangled
   (:func:`cardiocore.recon.resolve.resolve_meshes`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from cardiocore.errors import CardioInputError, VolumeError
from cardiocore.geometry.mesh import edge_index, face_normals
from cardiocore.geometry.grid import checked_label_values, checked_matrix, occupied_box
from cardiocore.geometry.surface import contour_points_on_slices, surface_from_mask
from cardiocore.geometry.value_checks import values_trusted
from cardiocore.geometry.volume import enclosed_volume
from cardiocore.geometry.voxelize import voxelize_mesh
from cardiocore.metrics.distance import padded_chamfer
from cardiocore.metrics.overlap import dice
from cardiocore.recon.mie import (
    FaceDipoles,
    Violations,
    bounding_box,
    candidate_pool,
    detect_violations,
    mie_loss,
    padded_rows,
    sample_query_points,
    soft_occupancy,
    soft_occupancy_batch,
)
from cardiocore.recon.resolve import ResolveReport, resolve_meshes
from cardiocore.recon.rules import RuleSet
from cardiocore.recon.template import HeartTemplate, crop_and_stride

ProgressFn = Callable[[int, int, Mapping[str, float]], None]
_BCE_EPS = 1e-5
THICK_SLICE_MM = 5.0
THICK_SLICE_RATIO = 3.0
_SMOOTHING_ITERATIONS = 20


@dataclass(frozen=True)
class FitWeights:
    """Weights of the fit loss terms (see the module docstring) and the MIE sampling split.

    The MIE weight is ``mie`` during the coarse stage and rises linearly to ``mie_final`` over
    the fine stage, so the last steps separate structures that still touch or overlap slightly
    without holding back the large early deformations. The smoothness weights (``laplacian``,
    ``normal``) keep the free offsets from folding the surfaces: at 0.02 and 0.1 a phantom fit
    had about 5,000 self-intersecting face pairs, at 0.2 and 1.0 about 1,500, for the same Dice.
    """

    occupancy: float = 1.0
    surface: float = 0.2
    mie: float = 1.0
    mie_final: float = 3.0
    laplacian: float = 0.2
    normal: float = 1.0
    violation_fraction: float = 0.2


@dataclass
class FitResult:
    """Fitted meshes and how the fit went.

    Attributes:
        names: fitted structures (those present in the labels), in rule-set order.
        verts: per structure, vertices (V_s, 3) float32 RAS mm (template topology).
        faces: per structure, triangles (F_s, 3) int64 (the template's).
        missing: structures of the rule set not fitted (no voxels in the labels, or not in the
            template).
        losses: per loss term (and ``"total"``), one value per step (NaN for a term not used).
        seconds: wall time of ``"prepare"``, ``"initialise"``, ``"optimise"``, ``"resolve"`` and
            ``"total"``.
        initial_affine: (4, 4) template-to-RAS affine of the initialisation.
        cancelled: ``should_stop`` ended the optimisation early (the meshes are the last state).
        resolved: what the resolution step did (None when it was off or the fit was cancelled).
        slice_axis: the label map's axis fitted as thick slices (None: fitted as a volume).
        collapsed: structures left out of the result (and listed in ``missing``) because their
            fitted mesh enclosed less than :data:`COLLAPSE_RATIO` of their labelled volume (turned
            inside out or shrunk to a sliver: too few voxels to deform the template onto), each
            with (labelled volume ml, mesh volume ml; negative when inside out).
        mirrored: the labels sit as the mirror image of the template (left and right swapped: a
            mirrored heart, or an image read with a flipped axis), so the template's mirror image
            (:meth:`HeartTemplate.mirrored`; faces in the other winding) was fitted.
    """

    names: tuple[str, ...]
    verts: tuple[torch.Tensor, ...]
    faces: tuple[torch.Tensor, ...]
    missing: tuple[str, ...]
    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    initial_affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    cancelled: bool = False
    resolved: ResolveReport | None = None
    slice_axis: int | None = None
    collapsed: dict[str, tuple[float, float]] = field(default_factory=dict)
    mirrored: bool = False

    def meshes(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per structure (verts, faces)."""
        return list(zip(self.verts, self.faces, strict=True))


# ------------------------------------------------------------------------------ target


class _SurfaceTarget:
    """Points on a label boundary (P, 3) mm with their KD-tree, for a Chamfer term (the
    project's convention: unsquared, symmetric mean of nearest distances) against vertices;
    ``one_sided``: only the points' distances to the vertices (outlines on sparse slices, which
    say nothing about the surface between them)."""

    def __init__(self, points: torch.Tensor, one_sided: bool = False) -> None:
        self.points = points
        self.tree = cKDTree(points.cpu().numpy())
        self.one_sided = one_sided

    def chamfer(self, verts: torch.Tensor) -> torch.Tensor:
        """The Chamfer term (mm) of ``verts`` (V, 3) on the CPU, by KD-trees (a GPU loop uses
        :class:`_PaddedSurfaces`)."""
        moving = verts.detach().numpy()
        to_verts = torch.as_tensor(cKDTree(moving).query(self.points.cpu().numpy())[1], device=verts.device)
        if self.one_sided:
            return (self.points - verts[to_verts]).norm(dim=1).mean()
        to_target = torch.as_tensor(self.tree.query(moving)[1], device=verts.device)
        d_vt = (verts - self.points[to_target]).norm(dim=1).mean()
        d_tv = (self.points - verts[to_verts]).norm(dim=1).mean()
        return 0.5 * (d_vt + d_tv)


class _PaddedSurfaces(NamedTuple):
    """A label map's boundary points and the fitted structures' vertex rows, each padded to one
    size, for one batched Chamfer over all its structures (:func:`padded_chamfer`)."""

    points: torch.Tensor  # (S, Q, 3) mm, padded with copies of a real point
    point_valid: torch.Tensor  # (S, Q) bool
    vert_index: torch.Tensor  # (S, P) int64 rows of the merged vertices, padded with the first row
    vert_valid: torch.Tensor  # (S, P) bool
    one_sided: bool

    @classmethod
    def of(cls, view: _Target, vert_rows: torch.Tensor, vert_own: torch.Tensor) -> _PaddedSurfaces | None:
        """For the structures with boundary points in ``view`` (None if none); ``vert_rows``,
        ``vert_own`` (S, W): every fitted structure's rows of the merged vertices
        (:func:`padded_rows`)."""
        have = [s for s, surface in enumerate(view.surface) if surface is not None]
        if not have:
            return None
        points = [view.surface[s].points for s in have]
        width, device = max(p.shape[0] for p in points), vert_rows.device
        return cls(
            points=torch.stack([torch.cat([p, p[:1].expand(width - p.shape[0], 3)]) for p in points]),
            point_valid=torch.stack([torch.arange(width, device=device) < p.shape[0] for p in points]),
            vert_index=torch.stack([vert_rows[s] for s in have]),
            vert_valid=torch.stack([vert_own[s] for s in have]),
            one_sided=view.surface[have[0]].one_sided,
        )


def _occupancy_bce(soft: torch.Tensor, truth: torch.Tensor, written_out: bool) -> torch.Tensor:
    """Mean binary cross-entropy of soft occupancies (..., N) clamped to [eps, 1 - eps] against
    ``truth`` (..., N) in {0, 1}: (...) means over the last dimension (one mean over all when
    not ``written_out``). ``written_out``: the formula in plain operations, because torch's BCE
    asserts that its input lies in [0, 1], which on a GPU is a device-side assert that a NaN (a
    fit gone wrong) trips, ending the process's use of the device instead of reaching the fit's
    finite-loss check; torch's BCE otherwise (the same values up to rounding)."""
    clamped = soft.clamp(_BCE_EPS, 1 - _BCE_EPS)
    if written_out:
        return -(truth * clamped.log() + (1.0 - truth) * (1.0 - clamped).log()).mean(dim=-1)
    return torch.nn.functional.binary_cross_entropy(clamped, truth)


def _adjacent_face_pairs(faces: torch.Tensor) -> torch.Tensor:
    """(E, 2) indices of the two faces sharing each edge (edges not shared by exactly two faces
    are skipped)."""
    half = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2).sort(dim=1).values
    key = half[:, 0] * (int(faces.max()) + 1) + half[:, 1]
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    order = torch.argsort(key, stable=True)
    order = order[(counts[inverse] == 2)[order]]
    return (order // 3).reshape(-1, 2)


class FitView(NamedTuple):
    """Another label map of the same heart on its own grid (a long-axis cine slice).

    ``labels`` (I, J, K) is coded like the main label map, ``ijk_to_ras`` (4, 4) RAS mm.
    ``structures``: the structure names annotated in it (None: all of them). Where an annotated
    structure has no label the view says it is absent; a structure not annotated is unknown on
    the view's planes (an RVOT view whose LV was not outlined says nothing about the LV).
    """

    labels: np.ndarray
    ijk_to_ras: np.ndarray
    structures: Collection[str] | None = None


@dataclass
class _Target:
    """The label map on the working grid, as tensors for sampling in RAS mm."""

    labels: torch.Tensor  # (I, J, K) int64 structure index, -1 background/unknown
    shape: torch.Tensor  # (3,) int64, the labels' shape on their device
    matrix: torch.Tensor  # (4, 4) IJK -> RAS
    inverse: torch.Tensor  # (4, 4) RAS -> IJK
    # Every structure's boundary band, voxel indices (M, 3), structure after structure, and a
    # last row of zeros (so that a structure without voxels still has a row to index):
    band: torch.Tensor | None = None
    band_start: torch.Tensor | None = None  # (S,) int64, each structure's first row in ``band``
    band_count: torch.Tensor | None = None  # (S,) int64, its rows (0 where it has no voxel)
    low: torch.Tensor | None = None  # (S, 3) mm, the corners of each structure's voxels' box
    high: torch.Tensor | None = None  # (S, 3) mm (+inf and -inf where it has no voxel)
    # Per structure, None where it has no voxel (a view that does not show it):
    surface: list[_SurfaceTarget | None] = field(default_factory=list)  # boundary points
    volumes: list[float] = field(default_factory=list)  # mm^3
    centroids: list[torch.Tensor | None] = field(default_factory=list)  # (3,) mm, float64
    second_moments: list[torch.Tensor | None] = field(default_factory=list)  # (3, 3) integral of x x^T, mm^5
    slice_axis: int | None = None  # thick-slice axis: labels known on its planes only
    slice_range: tuple[int, int] = (0, 0)  # the imaged planes along it, working-grid indices
    known: list[bool] = field(default_factory=list)  # per structure: annotated in this label map

    def to_world(self, ijk: torch.Tensor) -> torch.Tensor:
        """Voxel coordinates (N, 3) -> RAS (N, 3) mm."""
        return ijk @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def label_at(self, points: torch.Tensor) -> torch.Tensor:
        """Structure index (N,) int64 (-1 background or outside the grid) at points (N, 3) mm."""
        ijk = torch.round(points.detach() @ self.inverse[:3, :3].T + self.inverse[:3, 3]).long()
        inside = ((ijk >= 0) & (ijk < self.shape)).all(dim=1)
        # Clamped lookups masked afterwards rather than boolean indexing, which waits for a GPU.
        idx = torch.minimum(ijk.clamp(min=0), self.shape - 1)
        return torch.where(inside, self.labels[idx[:, 0], idx[:, 1], idx[:, 2]], -1)

    def onto_slices(self, points: torch.Tensor) -> torch.Tensor:
        """Points (N, 3) mm moved along the slice axis onto the nearest imaged slice (the first
        or last for points beyond the stack, the only one for a single slice), (N, 3).
        Unchanged without a slice axis."""
        if self.slice_axis is None:
            return points
        ijk = points @ self.inverse[:3, :3].T + self.inverse[:3, 3]
        ijk[:, self.slice_axis] = torch.round(ijk[:, self.slice_axis]).clamp(*self.slice_range)
        return self.to_world(ijk)


def thick_slice_axis(ijk_to_ras: np.ndarray, shape: tuple[int, ...] | None = None) -> int | None:
    """The axis of a label map made of thick or widely spaced slices, or None.

    Thick: its spacing is at least :data:`THICK_SLICE_MM` and :data:`THICK_SLICE_RATIO` times
    the largest of the other two (a cine short-axis stack, 8-20 mm slices of 1-2 mm pixels).
    A label map one voxel deep along an axis (a single long-axis slice, given ``shape``) is a
    slice along it whatever its spacing.
    """
    if shape is not None and 1 in tuple(shape)[:3]:
        return tuple(shape).index(1)
    spacing = np.linalg.norm(np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3], axis=0)
    axis = int(np.argmax(spacing))
    if spacing[axis] >= THICK_SLICE_MM and spacing[axis] >= THICK_SLICE_RATIO * np.delete(spacing, axis).max():
        return axis
    return None


def _checked_label_map(labels: np.ndarray, ijk_to_ras: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A label map as a 3-D array and its checked (4, 4) IJK-to-RAS matrix; ``what`` names it in errors."""
    array = np.asarray(labels)
    if array.ndim != 3:
        raise VolumeError(what, f"must be a 3-D (I, J, K) label map, got shape {array.shape}")
    return checked_label_values(array, what), checked_matrix(ijk_to_ras)


def _prepare_target(
    labels: np.ndarray, ijk_to_ras: np.ndarray, values: list[int | None], spacing_mm: float,
    n_surface: int, device: torch.device, generator: torch.Generator, slice_axis: int | None,
) -> _Target:
    """The label map as a :class:`_Target`; ``values``: each structure's label, None for a
    structure the map does not annotate (its voxels, if any, count as no structure's)."""
    work, matrix = crop_and_stride(labels, ijk_to_ras, spacing_mm)
    index = np.full(work.shape, -1, dtype=np.int64)
    for s, value in enumerate(values):
        if value is not None:
            index[work == value] = s
    voxel_mm3 = abs(float(np.linalg.det(matrix[:3, :3])))
    target = _Target(
        labels=torch.as_tensor(index, device=device),
        shape=torch.tensor(index.shape, dtype=torch.int64, device=device),
        matrix=torch.as_tensor(matrix, dtype=torch.float32, device=device),
        inverse=torch.as_tensor(np.linalg.inv(matrix), dtype=torch.float32, device=device),
        slice_axis=slice_axis,
        known=[value is not None for value in values],
    )
    structure = ndimage.generate_binary_structure(3, 1)
    if slice_axis is not None:
        # The imaged planes in working-grid indices, and a band grown within each slice only.
        to_original = (np.linalg.inv(np.asarray(ijk_to_ras, dtype=np.float64)) @ matrix)[slice_axis]
        first, step = to_original[3], to_original[slice_axis]
        ends = sorted(((0 - first) / step, (labels.shape[slice_axis] - 1 - first) / step))
        target.slice_range = (math.ceil(ends[0] - 1e-6), math.floor(ends[1] + 1e-6))
        structure = structure & (np.arange(3) == 1).reshape([3 if a == slice_axis else 1 for a in range(3)])
    bands, lows, highs = [], [], []
    for s in range(len(values)):
        mask = index == s
        if not mask.any():
            bands.append(torch.zeros(0, 3, dtype=torch.float32, device=device))
            target.surface.append(None)
            lows.append(torch.full((3,), math.inf, device=device))
            highs.append(torch.full((3,), -math.inf, device=device))
            target.volumes.append(0.0)
            target.centroids.append(None)
            target.second_moments.append(None)
            continue
        band = (ndimage.binary_dilation(mask, structure, iterations=2)
                & ~ndimage.binary_erosion(mask, structure, iterations=2))
        bands.append(torch.as_tensor(np.argwhere(band), dtype=torch.float32, device=device))
        if slice_axis is None:
            verts, _ = surface_from_mask(mask, matrix)
        else:
            verts = contour_points_on_slices(mask, matrix, slice_axis)
        pick = torch.randperm(verts.shape[0], generator=generator)[:n_surface]
        target.surface.append(_SurfaceTarget(verts[pick].to(device=device, dtype=torch.float32),
                                             one_sided=slice_axis is not None))
        inside = target.to_world(torch.as_tensor(np.argwhere(mask), dtype=torch.float32, device=device)).double()
        lows.append(inside.amin(dim=0).float())
        highs.append(inside.amax(dim=0).float())
        target.volumes.append(inside.shape[0] * voxel_mm3)
        target.centroids.append(inside.mean(dim=0).cpu())
        target.second_moments.append((inside.T @ inside).cpu() * voxel_mm3)
    counts = [int(b.shape[0]) for b in bands]
    target.band = torch.cat([*bands, torch.zeros(1, 3, device=device)])
    target.band_count = torch.tensor(counts, device=device)
    target.band_start = torch.tensor([0, *itertools.accumulate(counts)][:-1], device=device)
    target.low, target.high = torch.stack(lows), torch.stack(highs)
    return target


def _prepare_view(
    view: FitView, role: str, rules: RuleSet, known_names: Sequence[str], spacing_mm: float,
    device: torch.device, generator: torch.Generator,
) -> _Target:
    """A view's :class:`_Target` for the fitted structures (``rules``) that it annotates;
    ``known_names``: every structure of the rule set the fit was given.

    Raises:
        CardioInputError: a structure name outside ``known_names``, or a view that shows none of
            the fitted structures it annotates.
    """
    array, matrix = _checked_label_map(view.labels, view.ijk_to_ras, role)
    names = rules.names
    annotated = set(names) if view.structures is None else set(view.structures)
    unknown = sorted(annotated - set(known_names))
    if unknown:
        raise CardioInputError(f"{role} structures", f"names structures that are not in the rule set: {unknown}",
                               "choose from: " + ", ".join(known_names))
    values = [rules.structure(n).label if n in annotated else None for n in names]
    if not np.isin(array, [v for v in values if v is not None]).any():
        shown = [n for n in names if n in annotated]
        raise CardioInputError(role, f"shows none of the fitted structures it annotates ({', '.join(shown) or 'none'})",
                               "code it like the main label map, or leave it out")
    return _prepare_target(array, matrix, values, spacing_mm, 3000, device, generator,
                           thick_slice_axis(matrix, array.shape))


# ------------------------------------------------------------------------------ initialisation


def mesh_moments(verts: torch.Tensor, faces: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Volume (mm^3), centroid (3,) mm and second moment (3, 3) (integral of x x^T, mm^5) of the
    solid bounded by a closed outward mesh, from signed tetrahedra to the origin (float64)."""
    corners = verts.detach().double().cpu()[faces.cpu()]  # (F, 3, 3)
    a, b, c = corners.unbind(dim=1)
    signed = (a * torch.linalg.cross(b, c, dim=-1)).sum(dim=-1) / 6.0  # (F,)
    volume = float(signed.sum())
    total = a + b + c
    centroid = (signed[:, None] * total).sum(dim=0) / 4.0 / volume
    outer = corners.transpose(1, 2) @ corners + total[:, :, None] * total[:, None, :]
    second = (signed[:, None, None] * outer).sum(dim=0) / 20.0
    return volume, centroid, second


def _sqrt_and_inverse_sqrt(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(matrix)
    values = values.clamp(min=1e-9)
    return (vectors * values.sqrt()) @ vectors.T, (vectors * values.rsqrt()) @ vectors.T


def _nearest_rotation(matrix: torch.Tensor) -> torch.Tensor:
    u, _, vt = torch.linalg.svd(matrix)
    fix = torch.ones(3, dtype=matrix.dtype)
    fix[2] = torch.sign(torch.linalg.det(u @ vt))
    return (u * fix) @ vt


def moment_affine(
    moving: list[tuple[float, torch.Tensor, torch.Tensor]],
    target: list[tuple[float, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """(4, 4) float64 affine taking the moving structures (template) onto the target ones.

    Args:
        moving, target: per structure (volume mm^3, centroid (3,) mm, second moment (3, 3)),
            aligned.

    The union centroid and covariance are matched; the rotation between the whitened frames
    aligns the whitened per-structure centroids (volume-weighted Procrustes) when there are at
    least three structures, else it is the rotation closest to the identity map.
    """

    def union(moments: list[tuple[float, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        total = sum(m[0] for m in moments)
        mean = sum(m[0] * m[1] for m in moments) / total
        return mean, sum(m[2] for m in moments) / total - torch.outer(mean, mean)

    mu_m, cov_m = union(moving)
    mu_t, cov_t = union(target)
    sqrt_m, isqrt_m = _sqrt_and_inverse_sqrt(cov_m)
    sqrt_t, isqrt_t = _sqrt_and_inverse_sqrt(cov_t)
    if len(moving) >= 3:
        weights = torch.tensor([m[0] for m in target], dtype=torch.float64)
        a = torch.stack([isqrt_m @ (m[1] - mu_m) for m in moving])
        b = torch.stack([isqrt_t @ (m[1] - mu_t) for m in target])
        rotation = _nearest_rotation((b * weights[:, None]).T @ a)
    else:
        rotation = _nearest_rotation(isqrt_t @ sqrt_m)
    linear = sqrt_t @ rotation @ isqrt_m
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = linear
    affine[:3, 3] = mu_t - linear @ mu_m
    return affine


MIRROR_MARGIN = 0.06
"""The fit deforms the template's mirror image when, placed by :func:`moment_affine`, it overlaps
the labels (working grid) by at least this much more mean Dice than the template does: a mirrored
heart, or an image read with a flipped axis. Measured (mirror minus template, on the default 2 mm
working grid; the same to 0.01 on 3 mm): the three MM-WHS maps +0.20 to +0.32 flipped and -0.20 to
-0.32 as they are; phantoms (seeds 0-3, 2 mm) +0.08 to +0.11 and -0.08 to -0.11; subsets of 3-4
structures of all of these, as they are: at most +0.036 (so a subset is not always recognised as
mirrored, but the template keeps its side). Cost on the MM-WHS maps: 117-137 ms per fit (2 cores)."""


def placed_overlap(meshes: Sequence[tuple[torch.Tensor, torch.Tensor]], affine: torch.Tensor,
                   labels: torch.Tensor, ijk_to_ras: torch.Tensor) -> float:
    """Mean Dice over structures of meshes (V_s, 3), (F_s, 3) mm moved by ``affine`` (4, 4) against
    an index map (I, J, K) (structure s = value s, -1 none) on the grid ``ijk_to_ras`` (4, 4)."""
    linear, shift = affine[:3, :3].float(), affine[:3, 3].float()
    grid, index = ijk_to_ras.cpu().double().numpy(), labels.cpu()
    return float(np.mean([
        dice(voxelize_mesh((verts.float() @ linear.T + shift).cpu(), faces.cpu(), tuple(index.shape), grid), index == s)
        for s, (verts, faces) in enumerate(meshes)
    ]))


# ------------------------------------------------------------------------------ mesh operators


def _averaging_operator(faces: torch.Tensor, n_verts: int) -> torch.Tensor:
    """Sparse (V, V) neighbour-averaging matrix P = D^-1 W of the mesh graph."""
    edges = edge_index(faces)
    degree = torch.bincount(edges[0], minlength=n_verts).clamp(min=1).to(torch.float32)
    values = 1.0 / degree[edges[0]]
    return torch.sparse_coo_tensor(edges, values, (n_verts, n_verts), check_invariants=False).coalesce()


def _low_pass(faces: torch.Tensor, n_verts: int) -> torch.Tensor:
    """Dense (V, V) low-pass filter ((I + P) / 2)^n of one mesh (n = _SMOOTHING_ITERATIONS
    steps of neighbour averaging): maps free offsets to smooth ones in one product."""
    averaging = _averaging_operator(faces, n_verts)
    result = torch.eye(n_verts, device=faces.device)
    for _ in range(_SMOOTHING_ITERATIONS):
        result = 0.5 * (result + torch.sparse.mm(averaging, result))
    return result


# ------------------------------------------------------------------------------ the fit


def _sample_occupancy_points(
    target: _Target, known: torch.Tensor, verts: torch.Tensor, vert_rows: torch.Tensor, vert_counts: torch.Tensor,
    n: int, noise_mm: float, generator: torch.Generator,
) -> torch.Tensor:
    """Points (K, n, 3) mm around each of the K structures ``known`` (indices (K,) int64), all
    drawn at once: half in its boundary band (jittered voxels), a quarter near its current
    surface, a quarter uniform in the box around both, that quarter and the band's half where
    the label map has no voxel of it (a view that does not show it). ``verts`` (V, 3) mm are
    all structures' vertices, ``vert_rows`` (S, W) each structure's rows of them, padded with
    its first (:func:`padded_rows`), and ``vert_counts`` (S,) how many are its own."""
    device, k = verts.device, known.shape[0]
    n_band, n_near = n // 2, n // 4

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=generator.device).to(device)

    in_band = target.band_count[known][:, None]  # (K, 1)
    offset = torch.minimum((uniform(k, n_band) * in_band).long(), (in_band - 1).clamp(min=0))
    voxels = target.band[target.band_start[known][:, None] + offset] + uniform(k, n_band, 3) - 0.5
    band_points = target.to_world(voxels.reshape(-1, 3)).reshape(k, n_band, 3)
    rows, own = vert_rows[known], vert_counts[known][:, None]  # (K, W), (K, 1)
    near_rows = rows.gather(1, torch.minimum((uniform(k, n_near) * own).long(), own - 1))
    noise = torch.randn(k, n_near, 3, generator=generator, device=generator.device).to(device)
    near = verts.detach()[near_rows] + noise_mm * noise
    current = verts.detach()[rows]  # (K, W, 3)
    low = torch.minimum(target.low[known], current.amin(dim=1))[:, None] - 5.0
    high = torch.maximum(target.high[known], current.amax(dim=1))[:, None] + 5.0
    box = low + uniform(k, n - n_near, 3) * (high - low)
    band_or_box = torch.where(in_band[:, :, None] > 0, band_points, box[:, :n_band])
    return torch.cat([band_or_box, near, box[:, n_band:]], dim=1)


COLLAPSE_RATIO = 0.25
"""A fitted mesh enclosing less than this share of its structure's labelled volume has collapsed.
On a 2 mm phantom whose RV was cut to its first N voxels (``fit_template``, 60 steps), the RV mesh
enclosed -1.9 ml for 30 voxels (0.24 ml), -1.5 ml for 100 (0.8 ml), 0.3 ml for 300 (2.4 ml), and
7.8 ml for 1,000 (8 ml); whole fits enclose about their labelled volume."""


def _collapsed_meshes(names: Sequence[str], verts: Sequence[torch.Tensor], faces: Sequence[torch.Tensor],
                      label_volumes_mm3: Sequence[float]) -> dict[str, tuple[float, float]]:
    """Structures whose mesh (V, 3) mm, (F, 3) encloses less than :data:`COLLAPSE_RATIO` of their
    labelled volume (mm^3), with (labelled ml, signed mesh ml)."""
    collapsed = {}
    for name, v, f, labelled in zip(names, verts, faces, label_volumes_mm3, strict=True):
        enclosed = float(enclosed_volume(v.double(), f))
        if enclosed < COLLAPSE_RATIO * labelled:
            collapsed[name] = (labelled / 1000.0, enclosed / 1000.0)
    return collapsed


def fit_template(
    labels: np.ndarray,
    ijk_to_ras: np.ndarray,
    rules: RuleSet,
    template: HeartTemplate,
    *,
    weights: FitWeights | None = None,
    steps: int = 150,
    use_mie: bool = True,
    use_occupancy: bool = True,
    use_surface: bool = True,
    resolve: bool = True,
    mirror_check: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    spacing_mm: float = 2.0,
    min_voxels: int = 20,
    points_per_structure: int = 384,
    mie_points: int = 768,
    mie_refresh: int = 10,
    mie_candidates_per_surface: int = 1024,
    coarse_fraction: float = 0.4,
    learning_rate_mm: float = 1.0,
    mie_sharpening: float = 0.5,
    thick_slices: bool | None = None,
    views: Sequence[FitView | tuple[np.ndarray, np.ndarray]] = (),
    dense: bool | None = None,
) -> FitResult:
    """Deform ``template`` to the label map ``labels`` (see the module docstring).

    Args:
        labels: (I, J, K) integer label map coded as ``rules`` says (0 background).
        ijk_to_ras: (4, 4) voxel-to-RAS matrix, mm (oblique and anisotropic allowed).
        rules: structures (label values) and rules; those absent from ``labels`` or from the
            template are skipped and listed in ``FitResult.missing``.
        template: the template meshes (:func:`cardiocore.recon.template.load_template`).
        weights: loss weights (default :class:`FitWeights`).
        steps: optimisation steps in all (coarse and fine).
        use_mie, use_occupancy, use_surface: switch the MIE, occupancy BCE and Chamfer terms
            (the ablations of ``cardio bench recon``).
        resolve: finish with :func:`cardiocore.recon.resolve.resolve_meshes` (rule violations
            pushed out, self-intersections untangled).
        mirror_check: fit the template's mirror image when the labels are arranged as one
            (:data:`MIRROR_MARGIN`; ``FitResult.mirrored``); off for a start that is no template
            (Predict's refinement starts from its own meshes).
        device: torch device.
        seed: seed of every random draw (the fit is deterministic on CPU).
        progress: ``progress(step, steps, {term: value})`` after each step.
        should_stop: polled before each step; True ends the fit early (``cancelled`` result).
        spacing_mm: working grid spacing (the label map is subsampled to it).
        min_voxels: structures with fewer voxels are treated as missing.
        points_per_structure: occupancy points per structure and step.
        mie_points: MIE query points per step; mie_refresh: steps between violation searches.
        mie_candidates_per_surface: violation-search candidates sampled just inside each
            surface (:func:`cardiocore.recon.mie.candidate_pool`; more find thinner overlaps).
            1,024 rather than the pool's 256 that training draws at every batch: a fit searches
            only every ``mie_refresh`` steps, and with 256 a septal overlap of ~1 % of the
            myocardium could go unsampled for the whole fit (docs/benchmarks/recon/vr-cut-seeds.txt).
        coarse_fraction: share of the steps in the coarse (low-frequency) stage.
        learning_rate_mm: Adam step size of the offsets, mm (decays to a tenth).
        mie_sharpening: smoothing length of the MIE occupancy relative to that of the occupancy
            term (half the mean edge length): < 1 makes the MIE push act closer to the surface.
        thick_slices: fit the labels on the slice planes only (module docstring); None: when
            :func:`thick_slice_axis` finds thick slices, True: along the coarsest axis whatever
            its spacing, False: never.
        views: more label maps of the same heart on their own grids, coded like ``labels``:
            :class:`FitView` or (labels (I, J, K), IJK-to-RAS (4, 4)) pairs, the long-axis
            slices of a cine MR study next to its short-axis stack (a single slice, or thick
            slices, is fitted on its planes). They add occupancy points (half as many per
            structure as ``labels``) and outline points for the structures fitted from
            ``labels`` that they annotate (the initialisation, the MIE labels and the missing
            list come from ``labels`` alone); an annotated structure a view does not show is
            background on its planes, one it does not annotate is unknown there.
        dense: evaluate every point and candidate by brute force (Chamfer pairs, occupancy of
            far points, exact winding numbers of the violation candidates) instead of picking
            the near ones with KD-trees, boxes and masks, and skip the value checks of the
            meshes inside the loop (:func:`cardiocore.geometry.value_checks.values_trusted`;
            a loss that is not finite stops the fit instead): the loop then never waits for
            the device but to record the losses and once per violation search. None: on a
            non-CPU device. The same fit up to the order of floating-point sums.

    Returns:
        :class:`FitResult` with one closed mesh per present structure in RAS mm.

    Raises:
        VolumeError: a label map that is not 3-D, holds values that cannot be labels, or a bad
            matrix. CardioInputError: no structure of the rule set present in both labels and
            template; bad arguments; a loss that is not finite (labels and template that cannot be
            fitted); every fitted mesh collapsed (``FitResult.collapsed``: too few voxels).
    """
    t_start = time.perf_counter()
    weights = weights or FitWeights()
    if steps < 1:
        raise CardioInputError("steps", f"must be at least 1, got {steps}")
    if not (use_mie or use_occupancy or use_surface):
        raise CardioInputError("loss terms", "MIE, occupancy and surface are all switched off",
                               "keep at least one data term")
    array, matrix = _checked_label_map(labels, ijk_to_ras, "labels")
    device = torch.device(device)
    dense = device.type != "cpu" if dense is None else dense
    generator = torch.Generator().manual_seed(seed)

    box = occupied_box(array)  # the labels counted in their box: a few times faster on a whole CT volume
    labelled = array[box] if box is not None else array[:0]
    present = [s.name for s in rules.structures
               if s.name in template.names and np.count_nonzero(labelled == s.label) >= min_voxels]
    missing = tuple(n for n in rules.names if n not in present)
    if not present:
        found = sorted(int(v) for v in np.unique(array) if v != 0)[:12]
        raise CardioInputError(
            "labels", f"no structure of the rule set was found (label values present: {found})",
            "choose the label coding that matches (e.g. --structures mmwhs) or map the segments to structures",
        )
    known_names = rules.names
    rules = rules.subset(present)
    template = template.subset(present)
    names = rules.names
    if thick_slices is None:
        slice_axis = thick_slice_axis(matrix, array.shape)
    else:
        slice_axis = int(np.argmax(np.linalg.norm(matrix[:3, :3], axis=0))) if thick_slices else None
    values = [rules.structure(n).label for n in names]
    target = _prepare_target(array, matrix, values, spacing_mm, 3000, device, generator, slice_axis)
    view_targets = [_prepare_view(FitView(*view), f"view {v}", rules, known_names, spacing_mm, device, generator)
                    for v, view in enumerate(views, start=1)]
    t_prepared = time.perf_counter()

    # Affine initialisation and the fixed operators.
    base = [template.mesh(n) for n in names]
    target_moments = list(zip(target.volumes, target.centroids, target.second_moments, strict=True))
    affine = moment_affine([mesh_moments(v, f) for v, f in base], target_moments)
    mirrored = False
    if mirror_check:
        mirror_template = template.mirrored()
        mirror = [mirror_template.mesh(n) for n in names]
        mirror_affine = moment_affine([mesh_moments(v, f) for v, f in mirror], target_moments)
        mirrored = (placed_overlap(mirror, mirror_affine, target.labels, target.matrix)
                    >= placed_overlap(base, affine, target.labels, target.matrix) + MIRROR_MARGIN)
        if mirrored:
            base, affine = mirror, mirror_affine
    affine_f = affine.to(device=device, dtype=torch.float32)
    sizes = [int(v.shape[0]) for v, _ in base]
    offsets = np.cumsum([0] + sizes)
    faces = [f.to(device) for _, f in base]
    merged_faces = torch.cat([f + int(o) for f, o in zip(faces, offsets[:-1], strict=True)])
    placed = torch.cat([v.to(device) for v, _ in base]) @ affine_f[:3, :3].T + affine_f[:3, 3]
    n_verts = placed.shape[0]
    centre = placed.mean(dim=0)
    averaging = _averaging_operator(merged_faces, n_verts)
    low_pass = [_low_pass(f, n) for f, n in zip(faces, sizes, strict=True)]
    face_pairs = _adjacent_face_pairs(merged_faces)
    # Soft-occupancy smoothing length per structure: half its mean edge length (mm).
    smoothing = [0.5 * float((placed[f] - placed[f].roll(1, dims=1)).norm(dim=-1).mean())
                 for f in merged_faces.split([int(f.shape[0]) for f in faces])]
    mie_smoothing = [mie_sharpening * x for x in smoothing]
    voxel_mm = float(target.matrix[:3, :3].norm(dim=0).mean())
    t_initialised = time.perf_counter()

    linear = torch.zeros(3, 3, device=device, requires_grad=True)
    shift = torch.zeros(3, device=device, requires_grad=True)
    coarse = torch.zeros(n_verts, 3, device=device, requires_grad=True)
    fine = torch.zeros(n_verts, 3, device=device, requires_grad=True)
    # The fine offsets get no gradient (and stay zero) during the coarse stage.
    optimiser = torch.optim.Adam([
        {"params": [linear], "lr": 0.01},
        {"params": [shift, coarse], "lr": learning_rate_mm},
        {"params": [fine], "lr": 0.25 * learning_rate_mm},
    ])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda k: 0.1 ** (k / max(steps - 1, 1)))
    n_coarse = max(1, round(coarse_fraction * steps))

    def coarse_verts() -> torch.Tensor:
        moved = (placed - centre) @ (torch.eye(3, device=device) + linear).T + centre + shift
        return moved + torch.cat([lp @ z for lp, z in zip(low_pass, coarse.split(sizes), strict=True)])

    # The loop draws its random numbers on the device (a generator there, seeded alike): drawn on
    # the CPU, each copy to a GPU would wait for it. On a CPU this is the same generator.
    step_generator = generator if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    # Per label map: occupancy points per structure, the structures it annotates and their indices (S_known,).
    occupancy_views = [(view, n_points, known, torch.tensor(known, device=device))
                       for view, n_points in ((target, points_per_structure),
                                              *((t, points_per_structure // 2) for t in view_targets))
                       if (known := [s for s in range(len(names)) if view.known[s]])]
    # Each structure's faces among the merged ones, padded (the dense loop's FaceDipoles.of_merged).
    face_rows, own_face = padded_rows([int(f.shape[0]) for f in faces], device)
    face_real = own_face[:, :, None].to(placed.dtype)
    vert_rows, vert_own = padded_rows(sizes, device)
    vert_counts = torch.tensor(sizes, device=device)
    smoothing_mm = torch.tensor(smoothing, dtype=placed.dtype, device=device)
    padded_surfaces = [p for p in (_PaddedSurfaces.of(view, vert_rows, vert_own) for view in (target, *view_targets))
                       if p is not None] if dense else []
    losses: dict[str, list[float]] = {k: [] for k in ("occupancy", "surface", "mie", "laplacian", "normal", "total")}
    violations: Violations | None = None
    cancelled = False
    for step in range(steps):
        if should_stop is not None and should_stop():
            cancelled = True
            break
        with values_trusted() if dense else contextlib.nullcontext():
            verts = coarse_verts() + fine if step >= n_coarse else coarse_verts()
            meshes = list(zip(verts.split(sizes), faces, strict=True))
            # Dense: every structure's face dipoles at once, for the occupancy and the MIE terms.
            dipoles = FaceDipoles.of_merged(verts, merged_faces, face_rows, face_real) if dense else None
            terms: dict[str, torch.Tensor] = {}
            if use_occupancy:
                bce = []  # per view, (S_known,): each structure's mean BCE
                for view, n_points, known, index in occupancy_views:
                    drawn = _sample_occupancy_points(view, index, verts, vert_rows, vert_counts, n_points,
                                                     1.5 * voxel_mm, step_generator)
                    points = view.onto_slices(drawn.reshape(-1, 3)).reshape(len(known), n_points, 3)
                    truth = view.label_at(points.reshape(-1, 3)).reshape(len(known), n_points)
                    if dense:  # all the structures in one batched evaluation
                        soft = soft_occupancy_batch(points, dipoles.select(known), smoothing_mm[index])
                        bce.append(_occupancy_bce(soft, (truth == index[:, None]).to(soft.dtype), written_out=True))
                    else:
                        bce.append(torch.stack([
                            _occupancy_bce(soft_occupancy(points[i], *meshes[s], smoothing[s]),
                                           (truth[i] == s).to(meshes[s][0].dtype), written_out=False)
                            for i, s in enumerate(known)]))
                terms["occupancy"] = weights.occupancy * torch.cat(bce).mean()
            if use_surface:
                if dense:  # all structures of a label map in one batched Chamfer
                    chamfer = [padded_chamfer(verts[p.vert_index], p.vert_valid, p.points, p.point_valid, p.one_sided)
                               for p in padded_surfaces]
                else:
                    chamfer = [view.surface[s].chamfer(v).reshape(1) for view in (target, *view_targets)
                               for s, (v, _) in enumerate(meshes) if view.surface[s] is not None]
                terms["surface"] = weights.surface * torch.cat(chamfer).mean()
            if use_mie and rules.rules:
                if violations is None or step % mie_refresh == 0:
                    pool, source = candidate_pool(meshes, n_per_surface=mie_candidates_per_surface,
                                                  generator=step_generator)
                    violations = detect_violations(meshes, names, rules.rules, pool, source, dense=dense)
                low, high = bounding_box(meshes)
                query, is_violation = sample_query_points(violations, low, high, mie_points,
                                                          weights.violation_fraction, step_generator)
                ramp = max(0.0, (step - n_coarse) / max(steps - 1 - n_coarse, 1))
                mie_weight = weights.mie + ramp * (weights.mie_final - weights.mie)
                # Off the slices of a thick-slice stack nothing is labelled: the relational term alone.
                query_labels = target.label_at(query) if slice_axis is None else None
                terms["mie"] = mie_weight * mie_loss(meshes, names, rules.rules, query, query_labels, mie_smoothing,
                                                     is_violation=is_violation, every_point=dense, dipoles=dipoles)
            displacement = verts - placed
            curvature = displacement - torch.sparse.mm(averaging, displacement)
            terms["laplacian"] = weights.laplacian * curvature.pow(2).sum(dim=1).mean()
            normals = face_normals(verts, merged_faces)
            cosines = (normals[face_pairs[:, 0]] * normals[face_pairs[:, 1]]).sum(dim=1)
            terms["normal"] = weights.normal * (1.0 - cosines).mean()
        total = torch.stack(list(terms.values())).sum()
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        schedule.step()
        values = torch.stack([*terms.values(), total]).detach().tolist()  # one host round trip
        record = dict(zip([*terms, "total"], values, strict=True))
        if not math.isfinite(record["total"]):
            raise CardioInputError("labels", f"the fit's loss is not finite at step {step + 1}: {record}",
                                   "check that the label map and the template describe a heart of a sensible size")
        for key in losses:
            losses[key].append(record.get(key, math.nan))
        if progress is not None:
            progress(step + 1, steps, record)

    with torch.no_grad():
        final = (coarse_verts() + fine).float().cpu()
    t_optimised = time.perf_counter()
    verts_out, faces_out = list(final.split(sizes)), [f.cpu() for f in faces]
    collapsed = {} if cancelled else _collapsed_meshes(names, verts_out, faces_out, target.volumes)
    if len(collapsed) == len(names):
        raise CardioInputError("labels", "too few voxels to fit any structure: every fitted mesh collapsed ("
                               + ", ".join(f"{n} {label:.2g} ml of labels" for n, (label, _) in collapsed.items())
                               + ")", "segment the whole structures")
    if collapsed:
        kept = [s for s, name in enumerate(names) if name not in collapsed]
        names = tuple(names[s] for s in kept)
        verts_out, faces_out = [verts_out[s] for s in kept], [faces_out[s] for s in kept]
        rules = rules.subset(names)
        missing = tuple(n for n in known_names if n not in names)
    report = None
    if resolve and not cancelled:
        resolved, report = resolve_meshes(list(zip(verts_out, faces_out, strict=True)), names, rules.rules)
        verts_out = [v for v, _ in resolved]
    t_end = time.perf_counter()
    return FitResult(
        names=names,
        verts=tuple(verts_out),
        faces=tuple(faces_out),
        missing=missing,
        losses=losses,
        seconds={"prepare": t_prepared - t_start, "initialise": t_initialised - t_prepared,
                 "optimise": t_optimised - t_initialised, "resolve": t_end - t_optimised, "total": t_end - t_start},
        initial_affine=affine.numpy(),
        cancelled=cancelled,
        resolved=report,
        slice_axis=slice_axis,
        collapsed=collapsed,
        mirrored=mirrored,
    )
