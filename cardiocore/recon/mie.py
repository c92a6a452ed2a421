"""The MIE relational loss: binary cross-entropy on soft winding-number occupancies at points
where the structures break their rules.

Occupancy. For structure s with closed outward mesh (V_s, F_s), the soft occupancy of a point p
is ``o_s(p) = sigmoid(k (w_s(p) - 1/2))`` with ``w_s`` the smooth winding number
(:func:`cardiocore.geometry.winding.smooth_winding_number`, a regularised dipole sum over the
faces with smoothing length ``smoothing``) and ``k`` the sharpness. It is differentiable w.r.t.
the vertices: lowering ``o_s(p)`` moves the surface of s away from p (p ends up outside s),
raising it moves the surface past p.

Query points (:func:`sample_query_points`): a fraction ``violation_fraction`` (default 20 %) is
drawn from detected violation points and the rest (80 %) uniformly in the bounding box of all
meshes. Violations are detected (:func:`detect_violations`) with the *hard* occupancy (winding
number > 1/2, Barnes-Hut tree approximation) on a candidate pool: uniform points in the box plus points just inside
every surface (area-uniform samples moved inward along the face normal by up to ``depth_mm``),
so thin penetrations are found. A candidate violates ``A disjoint B`` when it is inside A and
inside B, and ``A inside B`` when it is inside A and outside B.

Loss (:func:`mie_loss`), o_s(p) the soft occupancy of structure s at query point p:

- with a target segmentation (y(p): the structure p belongs to, or background), the BCE of every
  structure s named by a rule against its target occupancy t_s(p) = 1 when y(p) = s or y(p) is a
  structure A with a rule "A inside s", else 0:
  ``l = mean_s [ -t_s log o_s - (1 - t_s) log(1 - o_s) ]`` at the uniform points, and only
  the push term ``l = mean_s [ -(1 - t_s) log(1 - o_s) ]`` at the violation points. At a
  violation point of "A disjoint B" labelled A, -log(1 - o_B) moves B's surface off p, and no
  pull of A towards B holds the overlap in place. Uniform points get the balanced BCE (positives
  and negatives alike), so once the overlaps are gone the term no longer shrinks structures;
- without a target, the BCE against 0 of the soft probability of the forbidden event, per rule:
  ``A disjoint B``: l = -log(1 - o_A o_B); ``A inside B``: l = -log(1 - o_A (1 - o_B)). Its
  gradient pushes each surface out of p in proportion to how deeply p sits in the other.

The loss is dimensionless: the mean over query points and structures (with a target) or the sum
over rules of the mean over query points (without). Points farther than ``3 * smoothing`` outside a structure's bounding box get ``o = 0`` exactly (their
soft occupancy is below sigmoid(-k/2) anyway), which keeps the cost near the structures.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import face_normals
from cardiocore.geometry.sampling import sample_surface
from cardiocore.geometry.solid_angle import FOUR_PI
from cardiocore.geometry.winding import DEFAULT_SHARPNESS, inside_mesh, occupancy
from cardiocore.recon.rules import Rule

Mesh = tuple[torch.Tensor, torch.Tensor]
_EPS = 1e-6
BATCH_PAIRS = {"cpu": 1 << 20, "cuda": 1 << 24}
"""(point, face) pairs per chunk of :func:`soft_occupancy_batch` by device (each of its few
temporaries holds one float per pair: 4 MiB on a CPU, 64 MiB on CUDA in float32)."""


@dataclass(frozen=True)
class Violations:
    """Violation points found on a candidate pool.

    Attributes:
        points: (M, 3) mm, no gradient.
        rule_index: (M,) int64, index into the rules given to :func:`detect_violations`.
        pool_rates: (R,) fraction of the candidates inside A that violate each rule (NaN when
            no candidate lies in A): a cheap progress figure, not the VR metric.
    """

    points: torch.Tensor
    rule_index: torch.Tensor
    pool_rates: torch.Tensor


def _rule_indices(rules: Sequence[Rule], names: Sequence[str]) -> list[tuple[str, int, int]]:
    index = {name: i for i, name in enumerate(names)}
    out = []
    for rule in rules:
        if rule.a not in index or rule.b not in index:
            raise CardioInputError(f"rule {rule.kind} ({rule.a!r}, {rule.b!r})",
                                   "names a structure without a mesh", f"meshes: {', '.join(names)}")
        out.append((rule.kind, index[rule.a], index[rule.b]))
    return out


def bounding_box(meshes: Sequence[Mesh]) -> tuple[torch.Tensor, torch.Tensor]:
    """Low and high corners (3,) mm of the box around all meshes (no gradient)."""
    verts = torch.cat([v.detach() for v, _ in meshes])
    return verts.amin(dim=0), verts.amax(dim=0)


def candidate_pool(
    meshes: Sequence[Mesh],
    n_uniform: int = 2048,
    n_per_surface: int = 256,
    depth_mm: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate points for violation detection: ``n_uniform`` uniform in the box around all
    meshes, and ``n_per_surface`` area-uniform samples of every surface moved inward along the
    face normal by a random depth in [0, ``depth_mm``] (so thin overlaps are found too).

    Returns:
        points (P, 3) mm (no gradient) and source (P,) int64: the structure whose surface a point
        was sampled just inside of (it is inside that structure), or -1 for uniform points.
    """
    low, high = bounding_box(meshes)
    device = low.device
    random_device = generator.device if generator is not None else device
    unit = torch.rand(n_uniform, 3, generator=generator, device=random_device).to(device, low.dtype)
    uniform = low + unit * (high - low)
    points, source = [uniform], [torch.full((n_uniform,), -1, dtype=torch.int64, device=device)]
    for s, (verts, faces) in enumerate(meshes):
        with torch.no_grad():
            samples, face_index, _ = sample_surface(verts.detach(), faces, n_per_surface, generator=generator)
            normals = face_normals(verts.detach(), faces)[face_index]
        depth = torch.rand(n_per_surface, 1, generator=generator, device=random_device).to(device, samples.dtype)
        points.append(samples - depth_mm * depth * normals)
        source.append(torch.full((n_per_surface,), s, dtype=torch.int64, device=device))
    return torch.cat(points), torch.cat(source)


def _hard_occupancy_matrix(
    points: torch.Tensor, source: torch.Tensor, meshes: Sequence[Mesh], needed: set[int], dense: bool
) -> torch.Tensor:
    """(P, S) bool: point p inside structure s (winding number > 1/2), for s in ``needed``.

    ``dense``: the exact winding number of every point, with no boolean indexing (for a GPU,
    where the tree's data-dependent traversal costs many small kernels and host round trips
    while the exact sum over a few thousand points and faces is a few batched products); else
    the fast tree approximation for the points in the structure's box (the others are outside).
    """
    inside = torch.zeros(points.shape[0], len(meshes), dtype=torch.bool, device=points.device)
    for s in needed:
        verts, faces = meshes[s]
        others = source != s
        if dense:
            inside[:, s] = occupancy(points, verts.detach(), faces, method="exact") | ~others
        else:
            inside[others, s] = inside_mesh(points[others], verts.detach(), faces, method="fast")
            inside[~others, s] = True
    return inside


@torch.no_grad()
def detect_violations(
    meshes: Sequence[Mesh], names: Sequence[str], rules: Sequence[Rule], points: torch.Tensor, source: torch.Tensor,
    dense: bool | None = None,
) -> Violations:
    """Candidates (from :func:`candidate_pool`) that break a rule, by hard occupancy.

    Args:
        meshes: per structure (verts (V_s, 3) mm, faces (F_s, 3)), closed and outward.
        names: structure names aligned with ``meshes``.
        rules: rules over ``names``.
        points, source: the candidate pool.
        dense: exact winding numbers for every candidate (default on a GPU) instead of the
            tree approximation for those near each structure (default on a CPU).
    """
    indexed = _rule_indices(rules, names)
    needed = {a for _, a, _ in indexed} | {b for _, _, b in indexed}
    dense = points.device.type != "cpu" if dense is None else dense
    inside = _hard_occupancy_matrix(points, source, meshes, needed, dense)
    in_a = torch.stack([inside[:, a] for _, a, _ in indexed])  # (R, P)
    # Where a point of A breaks the rule: inside B (disjoint) or outside B (inside); no flags
    # built on the host, whose copy to a GPU would wait for it.
    wrong_b = torch.stack([inside[:, b] if kind == "disjoint" else ~inside[:, b] for kind, _, b in indexed])
    bad = in_a & wrong_b
    # One host round trip for all rules: the violations in rule order, each rule's in point order.
    rule_index, point_index = bad.nonzero(as_tuple=True)
    rates = (bad.sum(dim=1).double() / in_a.sum(dim=1).double()).float().cpu()  # 0 / 0: NaN
    return Violations(points[point_index], rule_index, rates)


def sample_query_points(
    violations: Violations,
    low: torch.Tensor,
    high: torch.Tensor,
    n_points: int = 1024,
    violation_fraction: float = 0.2,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MIE query points: ``violation_fraction`` of them drawn (with replacement) from the
    violation points, the rest uniform in the box [low, high]; all uniform when there is no
    violation point.

    Returns:
        points (N, 3) mm and is_violation (N,) bool (True for those drawn from violations).
    """
    if not 0.0 <= violation_fraction <= 1.0:
        raise CardioInputError("violation_fraction", f"must be in [0, 1], got {violation_fraction}")
    if n_points < 1:
        raise CardioInputError("n_points", f"must be positive, got {n_points}")
    random_device = generator.device if generator is not None else low.device
    n_found = violations.points.shape[0]
    n_violation = round(violation_fraction * n_points) if n_found else 0
    pick = torch.randint(0, max(n_found, 1), (n_violation,), generator=generator, device=random_device)
    unit = torch.rand(n_points - n_violation, 3, generator=generator, device=random_device)
    uniform = low + unit.to(low.device, low.dtype) * (high - low)
    is_violation = torch.arange(n_points, device=low.device) < n_violation
    return torch.cat([violations.points[pick.to(low.device)].to(low.dtype), uniform]), is_violation


class _DipoleSum(torch.autograd.Function):
    """w(p) = 1/(4 pi) sum_f a_f . (c_f - p) / (|c_f - p|^2 + s^2)^(3/2) with a hand-written
    backward w.r.t. the face centroids c (..., F, 3) and area vectors a (..., F, 3); the points
    (..., P, 3) are constants and ``s2`` is a float or a tensor broadcasting to (..., 1, 1).
    Leading dimensions batch independent meshes (a face of zero area adds nothing, so meshes
    of different sizes can be padded). Every (point, face) term is formed from matrix products,
    chunk by chunk over the points."""

    @staticmethod
    def _terms(points: torch.Tensor, centroids: torch.Tensor, areas: torch.Tensor, s2: float | torch.Tensor):
        flux = (areas * centroids).sum(dim=-1)[..., None, :] - points @ areas.mT  # (..., Pc, F)
        dist = (centroids * centroids).sum(dim=-1)[..., None, :] - 2.0 * points @ centroids.mT
        dist = (dist + (points * points).sum(dim=-1)[..., :, None]).clamp(min=0.0) + s2
        inv32 = dist.rsqrt() / dist
        return flux, dist, inv32

    @staticmethod
    def forward(ctx, points, centroids, areas, s2, chunk):  # type: ignore[override]
        origin = centroids.mean(dim=-2, keepdim=True)
        points, centroids = points - origin, centroids - origin
        ctx.save_for_backward(points, centroids, areas)
        ctx.s2, ctx.chunk = s2, chunk
        out = [
            (flux * inv32).sum(dim=-1)
            for flux, _, inv32 in (_DipoleSum._terms(points[..., p0 : p0 + chunk, :], centroids, areas, s2)
                                   for p0 in range(0, points.shape[-2], chunk))
        ]
        return torch.cat(out, dim=-1) / FOUR_PI

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        points, centroids, areas = ctx.saved_tensors
        grad_c, grad_a = torch.zeros_like(centroids), torch.zeros_like(areas)
        for p0 in range(0, points.shape[-2], ctx.chunk):
            chunk = points[..., p0 : p0 + ctx.chunk, :]
            flux, dist, inv32 = _DipoleSum._terms(chunk, centroids, areas, ctx.s2)
            g = grad[..., p0 : p0 + ctx.chunk, None] / FOUR_PI
            w_a = g * inv32  # d w / d a_f = (c_f - p) / D^(3/2)
            h = w_a * flux / dist  # part of d w / d c_f: -3 (a . r) r / D^(5/2)
            col_a, col_h = w_a.sum(dim=-2)[..., :, None], h.sum(dim=-2)[..., :, None]
            grad_a += centroids * col_a - w_a.mT @ chunk
            grad_c += areas * col_a - 3.0 * (centroids * col_h - h.mT @ chunk)
        return None, grad_c, grad_a, None, None


def _centroids_and_area_vectors(verts: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Face centroids (F, 3) mm and area vectors (F, 3) mm^2 (half the corner cross product)."""
    corners = verts[faces]
    a, b, c = corners.unbind(dim=1)
    return corners.mean(dim=1), 0.5 * torch.linalg.cross(b - a, c - a, dim=-1)


def soft_occupancy(
    points: torch.Tensor,
    verts: torch.Tensor,
    faces: torch.Tensor,
    smoothing: float,
    sharpness: float = DEFAULT_SHARPNESS,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Soft occupancy sigmoid(k (w - 1/2)) (P,) of points (P, 3) mm w.r.t. a closed mesh, with w
    the smooth winding number of :func:`cardiocore.geometry.winding.smooth_winding_number`
    (same formula and values), differentiable w.r.t. ``verts`` only, and several times faster
    on CPU: the (point, face) terms come from matrix products and the backward pass is
    hand-written instead of checkpointed.

    Args:
        points: (P, 3) mm (treated as constants); verts: (V, 3) mm; faces: (F, 3) int64.
        smoothing: smoothing length s, mm (> 0); sharpness: k.
        chunk_size: points per chunk (default: about 2^20 (point, face) pairs per chunk).
    """
    if smoothing <= 0:
        raise CardioInputError("smoothing", f"must be a positive length in mm, got {smoothing}")
    centroids, areas = _centroids_and_area_vectors(verts, faces)
    chunk = chunk_size or max(1, (1 << 20) // faces.shape[0])
    w = _DipoleSum.apply(points.detach().to(verts.dtype), centroids, areas, float(smoothing) ** 2, chunk)
    return torch.sigmoid(sharpness * (w - 0.5))


def padded_rows(counts: Sequence[int], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """For B blocks of ``counts`` consecutive rows of a merged array (meshes' vertices or faces):
    each block's rows padded to the largest count with its first row (B, W) int64, and (B, W)
    bool, True for its own rows."""
    width, start = max(counts), 0
    columns = torch.arange(width, device=device)
    rows = []
    for n in counts:
        rows.append(start + torch.where(columns < n, columns, 0))
        start += int(n)
    return torch.stack(rows), torch.stack([columns < n for n in counts])


class FaceDipoles(NamedTuple):
    """Face centroids and area vectors of B meshes padded to one face count, for batched dipole
    sums (:func:`soft_occupancy_batch`), with each mesh's box. Padding faces have zero area, so
    they add nothing."""

    centroids: torch.Tensor  # (B, F, 3) mm
    areas: torch.Tensor  # (B, F, 3) mm^2
    low: torch.Tensor  # (B, 3) mm, the low corner of the box around each mesh's faces (no gradient)
    high: torch.Tensor  # (B, 3) mm, its high corner

    @classmethod
    def of_meshes(cls, meshes: Sequence[Mesh]) -> FaceDipoles:
        """From B meshes (verts (V_b, 3) mm, faces (F_b, 3)); differentiable w.r.t. the vertices."""
        verts = torch.cat([v for v, _ in meshes])
        offsets = itertools.accumulate((v.shape[0] for v, _ in meshes[:-1]), initial=0)
        faces = torch.cat([f.to(verts.device) + o for (_, f), o in zip(meshes, offsets, strict=True)])
        rows, own = padded_rows([f.shape[0] for _, f in meshes], verts.device)
        return cls.of_merged(verts, faces, rows, own[:, :, None].to(verts.dtype))

    @classmethod
    def of_merged(cls, verts: torch.Tensor, faces: torch.Tensor, rows: torch.Tensor, real: torch.Tensor) -> FaceDipoles:
        """From one vertex array (V, 3) mm and all meshes' faces (F, 3) over it: ``rows`` (B, W)
        int64, each mesh's faces padded with one of them, and ``real`` (B, W, 1), 1 for its own
        faces and 0 for padding (:func:`padded_rows`; a handful of kernels for all the meshes)."""
        centroids, areas = _centroids_and_area_vectors(verts, faces)
        corners = verts.detach()[faces]  # (F, 3 corners, 3)
        return cls(centroids[rows], areas[rows] * real,
                   corners.amin(dim=1)[rows].amin(dim=1), corners.amax(dim=1)[rows].amax(dim=1))

    def select(self, meshes: Sequence[int]) -> FaceDipoles:
        """Those of the meshes ``meshes`` (indices), in that order; stacked from views, so no index
        tensor is made on the host."""
        if list(meshes) == list(range(self.centroids.shape[0])):
            return self
        return FaceDipoles(*(torch.stack([field[i] for i in meshes]) for field in self))


def _per_mesh_lengths(lengths: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Lengths (B,) mm as a tensor of ``like``'s dtype and device, filled there (a tensor built
    on the host would be a copy the host waits for on a GPU)."""
    return torch.cat([like.new_full((1,), float(x)) for x in lengths])


def soft_occupancy_batch(
    points: torch.Tensor,
    dipoles: FaceDipoles,
    smoothing: Sequence[float] | torch.Tensor,
    sharpness: float = DEFAULT_SHARPNESS,
) -> torch.Tensor:
    """:func:`soft_occupancy` of several meshes in one batched evaluation (a few dozen kernels
    instead of a few dozen per mesh: what a GPU wants; the same values up to rounding).

    Args:
        points: (B, P, 3) mm, row b for mesh b (treated as constants; an expanded view of one
            (P, 3) set costs no copy).
        dipoles: the B meshes' faces (:meth:`FaceDipoles.of_meshes`, :meth:`FaceDipoles.of_merged`).
        smoothing: B smoothing lengths, mm (> 0): numbers, or a (B,) tensor on the dipoles'
            device (made once for many calls; its values are the caller's to check, since
            reading them back would wait for a GPU).

    Returns:
        (B, P) soft occupancies, differentiable w.r.t. the dipoles (so the meshes' vertices).
    """
    centroids, areas = dipoles.centroids, dipoles.areas
    count = centroids.shape[0]
    numbers = not isinstance(smoothing, torch.Tensor)
    given = (len(smoothing),) if numbers else tuple(smoothing.shape)
    if count != points.shape[0] or given != (count,) or (numbers and min(smoothing, default=0.0) <= 0):
        raise CardioInputError("soft_occupancy_batch", f"needs one (P, 3) point set and one positive smoothing "
                               f"length per mesh, got {tuple(points.shape)} points, {count} meshes and "
                               f"smoothing {list(smoothing) if numbers else given}")
    lengths = _per_mesh_lengths(smoothing, centroids) if numbers else smoothing
    s2 = lengths.to(centroids.dtype).reshape(count, 1, 1) ** 2
    chunk = max(1, BATCH_PAIRS.get(points.device.type, BATCH_PAIRS["cpu"]) // (count * centroids.shape[1]))
    w = _DipoleSum.apply(points.detach().to(centroids.dtype), centroids, areas, s2, chunk)
    return torch.sigmoid(sharpness * (w - 0.5))


def soft_occupancies(
    points: torch.Tensor,
    meshes: Sequence[Mesh],
    needed: set[int],
    smoothing: float | Sequence[float] | None = None,
    sharpness: float = DEFAULT_SHARPNESS,
    every_point: bool | None = None,
    dipoles: FaceDipoles | None = None,
) -> dict[int, torch.Tensor]:
    """Soft occupancy (N,) of every structure in ``needed`` at ``points``, by structure index.

    Points outside the box around a structure's faces grown by 3 smoothing lengths get exactly
    0. ``smoothing`` (mm) is one value for all structures, one per structure, or None (each
    mesh's mean edge length). ``every_point``: evaluate every point for all the structures at
    once (:func:`soft_occupancy_batch`) and zero the far ones (default on a GPU, where a far
    point costs about what a near one does, picking the near ones would wait for the device and
    each structure's own evaluation costs a few dozen kernels) instead of evaluating the near
    ones only, structure by structure (default on a CPU); the same values up to rounding.
    ``dipoles``: the faces of all of ``meshes`` already in batch form (computed once for several
    calls), for ``every_point``.
    """
    every_point = points.device.type != "cpu" if every_point is None else every_point
    order = sorted(needed)
    lengths = []
    for s in order:
        verts, faces = meshes[s]
        s_len = smoothing[s] if isinstance(smoothing, Sequence) else smoothing
        if s_len is None:
            corners = verts.detach()[faces]
            s_len = float((corners - corners.roll(1, dims=1)).norm(dim=-1).mean())
        lengths.append(s_len)
    if every_point:  # one batched evaluation of every point for all the structures
        faces = dipoles.select(order) if dipoles is not None else FaceDipoles.of_meshes([meshes[s] for s in order])
        length = _per_mesh_lengths(lengths, faces.centroids)
        soft = soft_occupancy_batch(points.expand(len(order), -1, -1), faces, length, sharpness)
        margin = 3.0 * length[:, None, None]
        near = ((points >= faces.low[:, None] - margin) & (points <= faces.high[:, None] + margin)).all(dim=-1)
        return dict(zip(order, torch.where(near, soft, 0.0).unbind(), strict=True))
    result = {}
    for s, s_len in zip(order, lengths, strict=True):
        verts, faces = meshes[s]
        corners = verts.detach()[faces]
        low, high = corners.amin(dim=(0, 1)) - 3.0 * s_len, corners.amax(dim=(0, 1)) + 3.0 * s_len
        near = ((points >= low) & (points <= high)).all(dim=1)
        values = points.new_zeros(points.shape[0]).to(verts.dtype)
        if bool(near.any()):
            soft = soft_occupancy(points[near], verts, faces, s_len, sharpness)
            values = values.index_put((near.nonzero()[:, 0],), soft)
        result[s] = values
    return result


def _neg_log(x: torch.Tensor) -> torch.Tensor:
    """-log(x), clamped away from log(0)."""
    return -torch.log(x.clamp(min=_EPS))


class _RuleTables(NamedTuple):
    """The rules over the structures they name (``order``, sorted indices), as device tensors."""

    target: torch.Tensor  # (S, n_names + 1) bool: row s, column y + 1: a point labelled y (-1 none) is in s
    first: torch.Tensor  # (R,) int64: each rule's A, as a row of ``order``
    second: torch.Tensor  # (R,) int64: its B
    disjoint: torch.Tensor  # (R, 1) bool: "A disjoint B" (else "A inside B")


@functools.lru_cache(maxsize=32)
def _rule_tables(indexed: tuple[tuple[str, int, int], ...], n_names: int, device: torch.device) -> _RuleTables:
    """Made once per rule set and device (not every step, where a copy from the host would make
    the host wait for a GPU)."""
    order = sorted({a for _, a, _ in indexed} | {b for _, _, b in indexed})
    row = {s: i for i, s in enumerate(order)}
    target = torch.zeros(len(order), n_names + 1, dtype=torch.bool)
    for s in order:
        target[row[s], s + 1] = True
    for kind, a, b in indexed:
        if kind == "inside":
            target[row[b], a + 1] = True
    return _RuleTables(
        target=target.to(device),
        first=torch.tensor([row[a] for _, a, _ in indexed], device=device),
        second=torch.tensor([row[b] for _, _, b in indexed], device=device),
        disjoint=torch.tensor([[kind == "disjoint"] for kind, _, _ in indexed], device=device),
    )


def mie_loss(
    meshes: Sequence[Mesh],
    names: Sequence[str],
    rules: Sequence[Rule],
    points: torch.Tensor,
    point_labels: torch.Tensor | None = None,
    smoothing: float | Sequence[float] | None = None,
    sharpness: float = DEFAULT_SHARPNESS,
    is_violation: torch.Tensor | None = None,
    every_point: bool | None = None,
    dipoles: FaceDipoles | None = None,
) -> torch.Tensor:
    """The MIE loss at query points (formula in the module docstring).

    Args:
        meshes: per structure (verts (V_s, 3) mm, requiring grad, faces (F_s, 3)).
        names: structure names aligned with ``meshes``.
        rules: rules over ``names`` (those between absent structures must be dropped first,
            e.g. with :meth:`RuleSet.subset`).
        points: query points (N, 3) mm, e.g. from :func:`sample_query_points`.
        point_labels: (N,) int64 index into ``names`` of the structure each point belongs to
            in the target segmentation, -1 for background; None when there is no target.
        smoothing, sharpness: of the soft occupancy (see :func:`soft_occupancies`).
        is_violation: (N,) bool, the points drawn from violations (see
            :func:`sample_query_points`); with labels they only push (no pull term).
        every_point, dipoles: as in :func:`soft_occupancies`.

    Returns:
        Scalar tensor (0 when there is no rule), differentiable w.r.t. the vertices.
    """
    indexed = tuple(_rule_indices(rules, names))
    if not indexed:
        return points.new_zeros(())
    if point_labels is not None and point_labels.shape != points.shape[:1]:
        raise CardioInputError("point_labels", f"must have shape ({points.shape[0]},), got {tuple(point_labels.shape)}")
    needed = {a for _, a, _ in indexed} | {b for _, _, b in indexed}
    occ = soft_occupancies(points, meshes, needed, smoothing, sharpness, every_point, dipoles)
    occupancy = torch.stack([occ[s] for s in sorted(needed)])  # (S, N)
    tables = _rule_tables(indexed, len(names), points.device)
    if point_labels is not None:
        truth = tables.target[:, point_labels + 1]  # (S, N)
        pull = _neg_log(occupancy)
        if is_violation is not None:
            pull = torch.where(is_violation, 0.0, pull)
        return torch.where(truth, pull, _neg_log(1.0 - occupancy)).mean()
    first, second = occupancy[tables.first], occupancy[tables.second]  # (R, N)
    forbidden = first * torch.where(tables.disjoint, second, 1.0 - second)
    return _neg_log(1.0 - forbidden).mean(dim=1).sum()


def mie_term(
    meshes: Sequence[Mesh],
    names: Sequence[str],
    rules: Sequence[Rule],
    n_points: int = 1024,
    violation_fraction: float = 0.2,
    point_labels_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    smoothing: float | Sequence[float] | None = None,
    sharpness: float = DEFAULT_SHARPNESS,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, Violations]:
    """Detect violations, sample query points and evaluate :func:`mie_loss` in one call.

    Args:
        point_labels_fn: maps points (N, 3) mm to (N,) structure indices (-1 background), or
            None for the unlabelled form.
        Other arguments as in :func:`candidate_pool`, :func:`sample_query_points`,
        :func:`mie_loss`.

    Returns:
        The loss (scalar) and the detected violations.
    """
    pool, source = candidate_pool(meshes, generator=generator)
    violations = detect_violations(meshes, names, rules, pool, source)
    low, high = bounding_box(meshes)
    points, is_violation = sample_query_points(violations, low, high, n_points, violation_fraction, generator)
    labels = point_labels_fn(points) if point_labels_fn is not None else None
    return mie_loss(meshes, names, rules, points, labels, smoothing, sharpness, is_violation), violations
