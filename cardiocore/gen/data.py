"""Shape cohorts in vertex correspondence for CardioGen, their subject-wise splits and normalisation.

A :class:`ShapeCohort` holds N meshes that share one triangulation: ``verts`` (N, V, 3) float32
in mm (the data's own frame; nothing is aligned or rescaled), ``faces`` (F, 3) int64, one subject
id and one phase label ("ED" or "ES") per item, optional named vertex regions (e.g. endocardium
and epicardium) and an optional clinical table (one value per item and column).

Cohorts come from arrays (:meth:`ShapeCohort.from_arrays`), from a list of meshes
(:meth:`ShapeCohort.from_meshes`, which checks that they are in correspondence) or from the CAP
LV atlas (:func:`load_cap_atlas`). The CAP surfaces are sampled on finite-element patches, so
vertices on patch seams are duplicated and the apex is one point repeated by every apical patch;
:func:`weld_coincident_vertices` merges vertices that coincide in every shape and drops the
triangles that collapse, keeping a :class:`VertexWeld` to map results back to the source layout.

:class:`ShapeNormalizer` maps shapes to the network's units and back (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from torch.utils.data import Dataset

from cardiocore.errors import CardioInputError, MeshError
from cardiocore.geometry.mesh import ArrayLike, as_mesh, face_areas, region_faces
from cardiocore.geometry.volume import close_boundary, enclosed_volume

PHASES = ("ED", "ES")
"""The cardiac phase labels a cohort item may carry."""

CAP_VERTICES = 1682
"""Vertices of one CAP LV shape: 841 endocardial, then 841 epicardial."""

CAP_SURFACE_VERTICES = 841

WELD_TOLERANCE_MM = 1e-5
"""Vertices closer than this in every shape of a cohort are one vertex, mm."""

DEGENERATE_AREA_FRACTION = 1e-9
"""A face whose area is below this fraction of its mesh's mean face area counts as degenerate."""

MAX_NAMED_ITEMS = 10
"""Error messages list at most this many offending items."""

ATLAS_HINT = (
    "meshes must share vertex count and faces (a template in correspondence); "
    "use CardioAtlas to bring meshes of different topology into correspondence"
)


def _name_items(names: Sequence[str]) -> str:
    """'a, b, c' or 'a, b, ... and 12 more' for error messages."""
    shown = ", ".join(names[:MAX_NAMED_ITEMS])
    extra = len(names) - MAX_NAMED_ITEMS
    return f"{shown} and {extra} more" if extra > 0 else shown


@dataclass(frozen=True)
class VertexWeld:
    """How a source mesh layout maps onto its welded vertices.

    Attributes:
        source_to_welded: (V_source,) int64, the welded vertex of every source vertex.
        source_faces: (F_source, 3) int64 triangles of the source layout.
    """

    source_to_welded: torch.Tensor
    source_faces: torch.Tensor

    def unweld(self, verts: torch.Tensor) -> torch.Tensor:
        """Welded vertices (..., V, 3) -> source-layout vertices (..., V_source, 3)."""
        return verts.index_select(-2, self.source_to_welded.to(verts.device))


def weld_coincident_vertices(
    verts: ArrayLike, faces: ArrayLike, tolerance_mm: float = WELD_TOLERANCE_MM
) -> tuple[torch.Tensor, torch.Tensor, VertexWeld]:
    """Merge vertices that coincide in every shape of a cohort and drop the faces that collapse.

    Vertices i < j are merged when they lie within ``tolerance_mm`` of each other in *every*
    shape (so the merged layout is still in correspondence); each group keeps its lowest
    index, and the welded vertices keep the source order. Triangles left with a repeated vertex
    (e.g. the fan of zero-area triangles at the CAP apex) are removed.

    Args:
        verts: shapes (N, V, 3) or one shape (V, 3), mm.
        faces: shared triangles (F, 3).
        tolerance_mm: merge distance, mm.

    Returns:
        welded verts (N, V', 3) (or (V', 3)) float32, welded faces (F', 3) int64, and the
        :class:`VertexWeld` back to the source layout.
    """
    verts_t = torch.as_tensor(verts)
    batched = verts_t.dim() == 3
    verts_t, faces_t = as_mesh(verts_t, faces, name="weld input", allow_batch=True)
    shapes = verts_t.detach().reshape(-1, *verts_t.shape[-2:]).cpu().double().numpy()
    n_verts = shapes.shape[1]
    candidates = np.array(sorted(cKDTree(shapes[0]).query_pairs(tolerance_mm)), dtype=np.int64).reshape(-1, 2)
    if len(candidates):
        gaps = np.linalg.norm(shapes[:, candidates[:, 0]] - shapes[:, candidates[:, 1]], axis=-1)
        candidates = candidates[(gaps <= tolerance_mm).all(axis=0)]
    adjacency = coo_matrix(
        (np.ones(len(candidates)), (candidates[:, 0], candidates[:, 1])), shape=(n_verts, n_verts)
    )
    _, group = connected_components(adjacency, directed=False)
    representative = np.full(group.max() + 1, n_verts)
    np.minimum.at(representative, group, np.arange(n_verts))
    kept = np.unique(representative)
    new_index = np.empty(n_verts, dtype=np.int64)
    new_index[kept] = np.arange(len(kept))
    source_to_welded = torch.as_tensor(new_index[representative[group]])
    welded_faces = source_to_welded.to(faces_t.device)[faces_t]
    collapsed = (
        (welded_faces[:, 0] == welded_faces[:, 1])
        | (welded_faces[:, 1] == welded_faces[:, 2])
        | (welded_faces[:, 2] == welded_faces[:, 0])
    )
    welded_verts = verts_t.index_select(-2, torch.as_tensor(kept, device=verts_t.device)).float()
    weld = VertexWeld(source_to_welded=source_to_welded, source_faces=faces_t.cpu())
    return (welded_verts if batched else welded_verts[0]), welded_faces[~collapsed].cpu(), weld


@dataclass
class ShapeCohort:
    """N meshes in vertex correspondence (one triangulation), with subject ids and phase labels.

    Build with :meth:`from_arrays`, :meth:`from_meshes` or :func:`load_cap_atlas`; the constructor
    validates everything (NaN/inf points, degenerate faces, unused vertices, labels).

    Attributes:
        verts: (N, V, 3) float32, mm, in the data's frame.
        faces: (F, 3) int64 shared triangles.
        subject_ids: N subject identifiers; ED and ES of one subject share the id.
        phases: N labels, each "ED" or "ES".
        item_names: N names used in error messages (file names, "subject 12 ED", ...).
        regions: named vertex subsets, e.g. {"endocardium": (Ve,) int64, "epicardium": ...}.
        clinical: columns of per-item values, each (N,) float64 (e.g. "EF" in %).
        weld: how the source layout maps onto these vertices, when vertices were welded.
    """

    verts: torch.Tensor
    faces: torch.Tensor
    subject_ids: list[str]
    phases: list[str]
    item_names: list[str] = field(default_factory=list)
    regions: dict[str, torch.Tensor] = field(default_factory=dict)
    clinical: dict[str, torch.Tensor] = field(default_factory=dict)
    weld: VertexWeld | None = None

    def __post_init__(self) -> None:
        self.verts = torch.as_tensor(self.verts).detach().float().cpu()
        self.faces = torch.as_tensor(self.faces).long().cpu()
        self.subject_ids = [str(s) for s in self.subject_ids]
        self.phases = [str(p) for p in self.phases]
        n = self.verts.shape[0] if self.verts.dim() == 3 else -1
        if not self.item_names:
            self.item_names = [f"subject {s} {p}" for s, p in zip(self.subject_ids, self.phases)]
        self.regions = {name: torch.as_tensor(index).long().cpu() for name, index in self.regions.items()}
        self.clinical = {name: torch.as_tensor(values).double().cpu() for name, values in self.clinical.items()}
        self._check(n)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        verts: ArrayLike,
        faces: ArrayLike,
        phases: Sequence[str],
        subject_ids: Sequence[str] | None = None,
        *,
        item_names: Sequence[str] | None = None,
        regions: Mapping[str, ArrayLike] | None = None,
        clinical: Mapping[str, ArrayLike] | None = None,
    ) -> ShapeCohort:
        """A cohort from stacked shapes (N, V, 3) mm and shared faces (F, 3).

        ``subject_ids`` defaults to one subject per item ("0", "1", ...).
        """
        verts_t = torch.as_tensor(verts)
        n = int(verts_t.shape[0]) if verts_t.dim() == 3 else 0
        return cls(
            verts=verts_t,
            faces=torch.as_tensor(faces),
            subject_ids=list(subject_ids) if subject_ids is not None else [str(i) for i in range(n)],
            phases=list(phases),
            item_names=list(item_names or []),
            regions=dict(regions or {}),
            clinical=dict(clinical or {}),
        )

    @classmethod
    def from_meshes(
        cls,
        meshes: Sequence[tuple[ArrayLike, ArrayLike]],
        phases: Sequence[str],
        subject_ids: Sequence[str] | None = None,
        *,
        item_names: Sequence[str] | None = None,
        regions: Mapping[str, ArrayLike] | None = None,
        clinical: Mapping[str, ArrayLike] | None = None,
    ) -> ShapeCohort:
        """A cohort from ``(verts (V, 3), faces (F, 3))`` meshes that must share one triangulation.

        Raises:
            MeshError: fewer than one mesh, a mesh that is not a valid triangle mesh, or meshes
                whose vertex count or faces differ from the first one's (all such items are named).
        """
        if len(meshes) == 0:
            raise MeshError("meshes", "the cohort is empty")
        names = list(item_names) if item_names else [f"mesh {i}" for i in range(len(meshes))]
        if len(names) != len(meshes):
            raise CardioInputError("item_names", f"has {len(names)} names for {len(meshes)} meshes")
        checked = [as_mesh(v, f, name=name) for (v, f), name in zip(meshes, names)]
        template_verts, template_faces = checked[0]
        differing = [
            f"{name} ({v.shape[0]} vertices, {f.shape[0]} faces)"
            for (v, f), name in zip(checked, names)
            if v.shape[0] != template_verts.shape[0] or not torch.equal(f.cpu(), template_faces.cpu())
        ]
        if differing:
            raise MeshError(
                "meshes",
                f"{len(differing)} of {len(meshes)} differ in topology from {names[0]} "
                f"({template_verts.shape[0]} vertices, {template_faces.shape[0]} faces): {_name_items(differing)}",
                ATLAS_HINT,
            )
        return cls.from_arrays(
            torch.stack([v.detach().cpu().float() for v, _ in checked]),
            template_faces,
            phases,
            subject_ids,
            item_names=names,
            regions=regions,
            clinical=clinical,
        )

    # ------------------------------------------------------------------ validation
    def _check(self, n: int) -> None:
        if n < 1:
            raise MeshError("cohort vertices", f"must have shape (N >= 1, V, 3), got {tuple(self.verts.shape)}")
        self._check_labels(n)
        bad = ~torch.isfinite(self.verts).all(dim=(1, 2))
        if bool(bad.any()):
            raise MeshError(
                "cohort", f"{int(bad.sum())} shapes have NaN or infinite points: {_name_items(self._names(bad))}"
            )
        as_mesh(self.verts[0], self.faces, name="cohort template")
        self._check_geometry()

    def _check_labels(self, n: int) -> None:
        """Per-item lists, phase labels, unique (subject, phase) pairs, clinical columns, regions."""
        for what in ("subject_ids", "phases", "item_names"):
            if len(getattr(self, what)) != n:
                raise CardioInputError(what, f"has {len(getattr(self, what))} entries for {n} shapes")
        unknown = sorted({p for p in self.phases if p not in PHASES})
        if unknown:
            raise CardioInputError("phases", f"labels must be one of {PHASES}, got {unknown}")
        pairs = list(zip(self.subject_ids, self.phases))
        if len(set(pairs)) != n:
            repeated = sorted({f"{s} {p}" for s, p in pairs if pairs.count((s, p)) > 1})
            raise CardioInputError(
                "subject_ids", f"each subject may appear once per phase; repeated: {_name_items(repeated)}"
            )
        for name, values in self.clinical.items():
            if values.shape != (n,):
                raise CardioInputError(
                    f"clinical column {name!r}", f"must hold {n} values, got shape {tuple(values.shape)}"
                )
        for name, index in self.regions.items():
            if index.dim() != 1 or (index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.n_vertices)):
                raise CardioInputError(f"region {name!r}", f"must be vertex indices in [0, {self.n_vertices})")

    def _check_geometry(self) -> None:
        """Every vertex in a face, no zero-area face in any shape."""
        used = torch.zeros(self.n_vertices, dtype=torch.bool)
        used[self.faces.reshape(-1)] = True
        if not bool(used.all()):
            raise MeshError("cohort faces", f"{int((~used).sum())} vertices belong to no face", "remove unused vertices")
        areas = face_areas(self.verts.double(), self.faces)
        degenerate = areas <= DEGENERATE_AREA_FRACTION * areas.mean(dim=1, keepdim=True)
        bad = degenerate.any(dim=1)
        if bool(bad.any()):
            first_count = int(degenerate[bad][0].sum())
            raise MeshError(
                "cohort",
                f"{int(bad.sum())} shapes have zero-area faces ({first_count} in the first): "
                f"{_name_items(self._names(bad))}",
                "coincident vertices collapse triangles: merge them with weld_coincident_vertices",
            )

    def _names(self, mask: torch.Tensor) -> list[str]:
        return [self.item_names[i] for i in mask.nonzero().flatten().tolist()]

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return int(self.verts.shape[0])

    @property
    def n_vertices(self) -> int:
        """Vertices per shape."""
        return int(self.verts.shape[1])

    def mean_shape(self) -> torch.Tensor:
        """Vertex-wise mean of all shapes (V, 3), mm: a template for building the mesh hierarchy."""
        return self.verts.double().mean(dim=0).float()

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ShapeCohort:
        """The items at ``indices`` (in that order), sharing faces, regions and weld."""
        index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        chosen = index.tolist()
        return ShapeCohort(
            verts=self.verts[index],
            faces=self.faces,
            subject_ids=[self.subject_ids[i] for i in chosen],
            phases=[self.phases[i] for i in chosen],
            item_names=[self.item_names[i] for i in chosen],
            regions=self.regions,
            clinical={name: values[index] for name, values in self.clinical.items()},
            weld=self.weld,
        )

    def phase(self, phase: str) -> ShapeCohort:
        """The items at one phase ("ED" or "ES")."""
        if phase not in PHASES:
            raise CardioInputError("phase", f"must be one of {PHASES}, got {phase!r}")
        chosen = [i for i, p in enumerate(self.phases) if p == phase]
        if not chosen:
            raise CardioInputError("phase", f"the cohort has no {phase} shapes")
        return self.subset(chosen)

    def region_mesh(self, name: str, verts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One region as its own mesh: the faces whose corners all lie in region ``name``.

        Args:
            name: a key of :attr:`regions`.
            verts: shapes (..., V, 3) in this cohort's layout, mm.

        Returns:
            region verts (..., V_r, 3) and faces (F_r, 3) int64 re-indexed into them.
        """
        if name not in self.regions:
            raise CardioInputError("region", f"{name!r} is not one of {sorted(self.regions)}")
        index = self.regions[name]
        faces = region_faces(self.faces, index, self.n_vertices)
        return verts.index_select(-2, index.to(verts.device)), faces.to(verts.device)


def split_by_subject(
    cohort: ShapeCohort,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    strata: torch.Tensor | None = None,
) -> tuple[ShapeCohort, ...]:
    """Split a cohort into parts by subject, so ED and ES of one subject land in the same part.

    Without ``strata`` subjects are shuffled with ``seed`` and cut into consecutive groups of
    sizes ``round(cumulative fraction * n_subjects)``. With ``strata`` the split is stratified:
    subjects are ordered by their values (quantile bins of the leading columns, then the last
    column), cut into blocks of ``ceil(1 / smallest fraction)`` neighbours, and each block is
    shuffled with ``seed`` and shared out by the fractions, so every part spans the same range
    of those values (e.g. EDV and EF: a 150-subject test part then lies within about 1 % of the
    training part's mean volumes instead of 2-4 % by chance). Items keep their cohort order
    inside each part.

    Args:
        cohort: the cohort.
        fractions: positive shares of the subjects, summing to 1 (e.g. train, validation, test).
        seed: shuffle seed; the same seed gives the same split.
        strata: (N, K) values per item (the first item of each subject counts; NaN sorts
            last), or None for a plain random split.

    Returns:
        one :class:`ShapeCohort` per fraction.

    Raises:
        CardioInputError: fractions that are not positive or do not sum to 1, a part that
            would get no subject, or strata of the wrong shape.
    """
    shares = [float(f) for f in fractions]
    if not shares or min(shares) <= 0 or not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
        raise CardioInputError("fractions", f"must be positive and sum to 1, got {list(fractions)}")
    subjects = list(dict.fromkeys(cohort.subject_ids))
    generator = torch.Generator().manual_seed(seed)
    if strata is None:
        order = torch.randperm(len(subjects), generator=generator).tolist()
        bounds = [round(c * len(subjects)) for c in np.cumsum([0.0, *shares])]
        groups = [[subjects[order[k]] for k in range(low, high)] for low, high in zip(bounds, bounds[1:])]
    else:
        groups = _stratified_groups(cohort, subjects, shares, strata, generator)
    if any(not group for group in groups):
        raise CardioInputError(
            "fractions",
            f"{list(fractions)} of {len(subjects)} subjects leaves a part empty",
            "use fewer parts or a larger cohort",
        )
    parts = []
    for group in groups:
        members = set(group)
        parts.append(cohort.subset([i for i, s in enumerate(cohort.subject_ids) if s in members]))
    return tuple(parts)


def _stratified_groups(
    cohort: ShapeCohort, subjects: list[str], shares: list[float], strata: torch.Tensor, generator: torch.Generator
) -> list[list[str]]:
    """Subjects shared out by ``shares`` within blocks of neighbours in ``strata`` (see split_by_subject)."""
    values = torch.as_tensor(strata, dtype=torch.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != len(cohort):
        raise CardioInputError("strata", f"must be (items, columns) = ({len(cohort)}, K), got {tuple(values.shape)}")
    first_item = {s: i for i, s in reversed(list(enumerate(cohort.subject_ids)))}
    per_subject = values[[first_item[s] for s in subjects]].numpy()
    block = math.ceil(1.0 / min(shares) - 1e-9)
    n_bins = max(1, round((len(subjects) / block) ** (1.0 / per_subject.shape[1])))
    keys = [np.nan_to_num(per_subject[:, -1], nan=np.inf)]
    for column in per_subject[:, :-1].T[::-1]:  # leading columns: quantile bins, NaN in a bin of its own
        ranks = np.argsort(np.argsort(np.nan_to_num(column, nan=np.inf), kind="stable"), kind="stable")
        keys.append(np.where(np.isnan(column), n_bins, ranks * n_bins // len(subjects)))
    order = np.lexsort(keys)
    cumulative = np.cumsum(shares)
    groups: list[list[str]] = [[] for _ in shares]
    for start in range(0, len(order), block):
        members = order[start : start + block]
        shuffled = members[torch.randperm(len(members), generator=generator).numpy()]
        for position, k in enumerate(shuffled):
            part = int(np.searchsorted(cumulative, (position + 0.5) / len(shuffled)))
            groups[min(part, len(shares) - 1)].append(subjects[k])
    return groups


def _orient_away_from_cavity(mean_verts: torch.Tensor, faces: torch.Tensor, is_endo: torch.Tensor) -> torch.Tensor:
    """Faces with each surface (endocardium: faces on ``is_endo`` vertices; epicardium: the rest)
    wound so that its base-closed volume is positive, i.e. normals point away from the cavity."""
    faces = faces.clone()
    for on_surface in (is_endo[faces].all(dim=1), (~is_endo[faces]).all(dim=1)):
        closed_verts, closed_faces = close_boundary(mean_verts, faces[on_surface])
        if float(enclosed_volume(closed_verts, closed_faces)) < 0:
            faces[on_surface] = faces[on_surface].flip(1)
    return faces


def load_cap_atlas(path: str | Path, phases: Sequence[str] = PHASES) -> ShapeCohort:
    """The CAP LV shape atlas (``cap_lv_atlas_dev.npz``) as a welded cohort.

    Subject i at phase p is ``(mean_p + scores_p[i] @ coeff_p.T).reshape(1682, 3)`` mm:
    vertices 0..840 endocardium, 841..1681 epicardium; the faces are ``faces_endo`` and
    ``faces_epi`` (already offset by 841 in the file) together, rewound where needed so that
    both surfaces' normals point away from the cavity (as in :mod:`cardiocore.phantoms.lv`);
    both surfaces are open at the base. The file's layout repeats vertices: 28 seam pairs and a
    29-fold apex on each surface (2 x 56 extra vertices, 84 zero-area apex triangles per
    surface); :func:`weld_coincident_vertices` merges them, giving 1570 vertices and 3080 faces
    (the cohort's ``weld`` maps back to the 1682-vertex layout; its ``source_faces`` keep the
    file's winding). Items are ordered
    subject by subject (ED then ES); subject ids are the atlas's ``subject_row``; the clinical
    table holds the atlas's per-subject columns (e.g. EDVI, EF) repeated for both phases.

    Raises:
        CardioInputError: a missing or unreadable file, missing keys or an unknown phase.
    """
    source = Path(path)
    if not source.is_file():
        raise CardioInputError(str(source), "no such CAP atlas file")
    wanted = [str(p) for p in phases]
    if not wanted or any(p not in PHASES for p in wanted) or len(set(wanted)) != len(wanted):
        raise CardioInputError("phases", f"must be distinct labels from {PHASES}, got {list(phases)}")
    try:
        with np.load(source, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise CardioInputError(str(source), f"cannot be read as an npz archive ({error})") from error
    needed = {"faces_endo", "faces_epi", "subject_row"} | {
        f"{kind}_{p.lower()}" for p in wanted for kind in ("mean", "coeff", "scores")
    }
    missing = sorted(needed - set(data))
    if missing:
        raise CardioInputError(str(source), f"is not a CAP LV atlas: missing keys {missing}")
    per_phase = []
    for p in wanted:
        key = p.lower()
        shapes = data[f"mean_{key}"][None, :] + data[f"scores_{key}"] @ data[f"coeff_{key}"].T
        per_phase.append(shapes.reshape(-1, CAP_VERTICES, 3))
    n_subjects = per_phase[0].shape[0]
    verts = np.stack(per_phase, axis=1).reshape(-1, CAP_VERTICES, 3)  # subject-major
    faces = np.concatenate([data["faces_endo"], data["faces_epi"]]).astype(np.int64)
    welded_verts, welded_faces, weld = weld_coincident_vertices(torch.as_tensor(verts), torch.as_tensor(faces))
    is_endo = torch.arange(CAP_VERTICES) < CAP_SURFACE_VERTICES
    welded_is_endo = torch.zeros(welded_verts.shape[1], dtype=torch.bool)
    welded_is_endo[weld.source_to_welded[is_endo]] = True
    regions = {"endocardium": welded_is_endo.nonzero().flatten(), "epicardium": (~welded_is_endo).nonzero().flatten()}
    welded_faces = _orient_away_from_cavity(welded_verts.double().mean(dim=0), welded_faces, welded_is_endo)
    subjects = [str(int(row)) for row in data["subject_row"]]
    clinical = {}
    if "clinical" in data and "clinical_columns" in data:
        for column, name in enumerate(data["clinical_columns"]):
            clinical[str(name)] = np.repeat(data["clinical"][:, column], len(wanted))
    return ShapeCohort(
        verts=welded_verts,
        faces=welded_faces,
        subject_ids=[s for s in subjects for _ in wanted],
        phases=wanted * n_subjects,
        item_names=[f"CAP subject {s} {p}" for s in subjects for p in wanted],
        regions=regions,
        clinical=clinical,
        weld=weld,
    )


class ShapeNormalizer(torch.nn.Module):
    """Invertible map between shapes in mm and the network's dimensionless units.

    ``normalize(x) = (x - mean_shape) / scale`` and ``denormalize(y) = y * scale + mean_shape``,
    where ``mean_shape`` (V, 3) is the training cohort's vertex-wise mean, in mm, and ``scale``
    one global length in mm: the root-mean-square deviation of all training coordinates from the
    mean shape. Normalised training shapes thus have zero mean and unit mean square. No
    per-shape alignment or scaling is applied, so decoded shapes come back in the training
    data's frame, in mm. Both are float32 buffers (saved in the model's state dict, usable on
    every device); computation is in the input's dtype, so float64 input round-trips to ~1e-12 mm.
    """

    def __init__(self, mean_shape: torch.Tensor, scale: float | torch.Tensor) -> None:
        super().__init__()
        mean = torch.as_tensor(mean_shape).float()
        scale_t = torch.as_tensor(scale).float().reshape(())
        if mean.dim() != 2 or mean.shape[1] != 3 or not bool(torch.isfinite(mean).all()):
            raise CardioInputError("mean_shape", f"must be finite (V, 3) mm, got shape {tuple(mean.shape)}")
        if not (bool(torch.isfinite(scale_t)) and float(scale_t) > 0):
            raise CardioInputError("scale", f"must be a positive length in mm, got {float(scale_t)}")
        self.register_buffer("mean_shape", mean)
        self.register_buffer("scale", scale_t)

    @classmethod
    def fit(cls, verts: ArrayLike) -> ShapeNormalizer:
        """Mean shape and RMS scale of training shapes (N, V, 3) mm (use the training split only)."""
        shapes = torch.as_tensor(verts).detach().cpu().double()
        if shapes.dim() != 3 or shapes.shape[-1] != 3 or shapes.shape[0] < 1:
            raise CardioInputError("verts", f"must be training shapes (N, V, 3), got {tuple(shapes.shape)}")
        mean = shapes.mean(dim=0)
        scale = (shapes - mean).square().mean().sqrt()
        if not float(scale) > 0:
            raise CardioInputError("verts", "all training shapes are identical: the scale would be zero")
        return cls(mean, scale)

    @classmethod
    def identity(cls, n_vertices: int) -> ShapeNormalizer:
        """Zero mean shape and unit scale (shapes pass unchanged)."""
        return cls(torch.zeros(n_vertices, 3), 1.0)

    def _check(self, x: torch.Tensor, what: str) -> None:
        if x.dim() < 2 or tuple(x.shape[-2:]) != tuple(self.mean_shape.shape):
            expected = f"(..., {self.mean_shape.shape[0]}, 3)"
            raise CardioInputError(what, f"must have shape {expected}, got {tuple(x.shape)}")

    def normalize(self, verts: torch.Tensor) -> torch.Tensor:
        """Shapes (..., V, 3) mm -> normalised (..., V, 3), same dtype and device."""
        self._check(verts, "shapes to normalise")
        return (verts - self.mean_shape.to(verts.dtype)) / self.scale.to(verts.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised shapes (..., V, 3) -> mm (..., V, 3) in the training frame."""
        self._check(x, "shapes to denormalise")
        return x * self.scale.to(x.dtype) + self.mean_shape.to(x.dtype)


class ShapeDataset(Dataset):
    """A cohort's shapes, normalised, as a map-style dataset of (V, 3) float32 tensors."""

    def __init__(self, cohort: ShapeCohort, normalizer: ShapeNormalizer) -> None:
        with torch.no_grad():
            self.shapes = normalizer.normalize(cohort.verts.to(normalizer.scale.device)).cpu()

    def __len__(self) -> int:
        return int(self.shapes.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.shapes[index]


def infer_lv_regions(verts: ArrayLike, faces: ArrayLike) -> dict[str, torch.Tensor]:
    """Endocardium and epicardium of an LV mesh made of two separate surfaces (V, 3) mm.

    The surfaces are the two connected components of the face graph; the one enclosing the
    smaller base-closed volume is the endocardium.

    Raises:
        MeshError: the mesh does not consist of exactly two connected surfaces.
    """
    verts_t, faces_t = as_mesh(verts, faces, name="LV mesh")
    n = verts_t.shape[0]
    rows = faces_t[:, [0, 1, 2]].reshape(-1).numpy()
    cols = faces_t[:, [1, 2, 0]].reshape(-1).numpy()
    graph = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    count, component = connected_components(graph, directed=False)
    used = np.unique(faces_t.numpy())
    parts = [np.intersect1d(np.flatnonzero(component == c), used) for c in range(count)]
    parts = [p for p in parts if p.size]
    if len(parts) != 2:
        raise MeshError(
            "LV mesh",
            f"has {len(parts)} connected surfaces; endocardium and epicardium need exactly 2",
            "give the regions explicitly (a 'region' point array: 0 endocardium, 1 epicardium)",
        )
    volumes = []
    for part in parts:
        index = torch.as_tensor(part, dtype=torch.int64)
        closed = close_boundary(verts_t[index].double(), region_faces(faces_t, index, n))
        volumes.append(abs(float(enclosed_volume(*closed))))
    endo, epi = (parts[0], parts[1]) if volumes[0] < volumes[1] else (parts[1], parts[0])
    return {"endocardium": torch.as_tensor(endo, dtype=torch.int64), "epicardium": torch.as_tensor(epi, dtype=torch.int64)}
