"""Evaluation of CardioGen (``cardio gen eval``): generative metrics, reconstruction error and
clinical distributions of generated against real left ventricles, each figure beside its target.

Conventions:

- Generative metrics (1-NNA, COV, MMD) follow :mod:`cardiocore.metrics.generative`: unsquared
  symmetric Chamfer distance in mm on ``CHAMFER_POINTS`` = 2,048 area-uniform surface points per
  mesh, a generated set against a reference set of the **same size** (the larger set is cut to
  the smaller one's size by a seeded random choice).
- Reconstruction error: mean over shapes and vertices of the Euclidean distance between a shape
  and its VAE reconstruction from the posterior mean, mm.
- Clinical indices come from :func:`cardiocore.gen.clinical.lv_shape_indices`. A generated mesh
  whose indices cannot be computed (e.g. an epicardium that encloses no more than the
  endocardium) gets NaN indices and is counted in ``n_invalid_generated``; NaN values are left out of the
  clinical comparison. Standard deviations are sample SDs (``ddof = 1``).
- Results are JSON-ready dicts (floats, ints, bools, strings, None; 1-NNA and COV in %).

Targets are the issue's quality targets (:data:`TARGETS`); they are printed beside the figures.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.stats import ks_2samp, norm

from cardiocore.errors import CardioInputError, MeshError
from cardiocore.gen.clinical import CLINICAL_COLUMNS, lv_shape_indices, pair_ejection_fraction
from cardiocore.gen.data import ATLAS_HINT, PHASES, _name_items
from cardiocore.gen.pose import frame_problems
from cardiocore.gen.samplers import DEFAULT_FAST_STEPS, DEFAULT_SAMPLER
from cardiocore.geometry.sampling import sample_surface
from cardiocore.metrics.distance import CHAMFER_POINTS
from cardiocore.metrics.generative import GenerativeMetrics, generative_metrics_per_set
from cardiocore.train.atomic import finite_or_none

if TYPE_CHECKING:
    from cardiocore.gen.data import ShapeCohort
    from cardiocore.gen.model import CardioGenModel

ArrayLike = torch.Tensor | np.ndarray
MeshSet = ArrayLike | Sequence[ArrayLike]

TARGETS = {
    "one_nna_max_percent": 60.0,
    "coverage_min_percent": 40.0,
    "mean_difference_max_percent": 2.4,
    "sd_ratio_min": 0.85,
    "within_edv_min_percent": 90.0,
}
"""The issue's quality targets: 1-NNA <= 60 %, COV >= 40 %, |difference of means| <= 2.4 %,
SD ratio (generated / real) >= 0.85, >= 90 % of conditional samples within +-10 % of the
requested EDV."""

EDV_TOLERANCE = 0.10
"""A conditional sample meets a requested EDV when its EDV is within this fraction of it."""

EDV_REQUEST_PERCENTILES = (10.0, 50.0, 90.0)
"""Requested EDVs for the conditional model: these percentiles of the real EDVs."""

EVALUATED_INDICES = ("EDV_ml", "ESV_ml", "EF_percent", "myocardial_mass_g")
"""The clinical indices compared by :func:`evaluate_model` (mass at ED)."""

PLOT_NAMES = ("clinical_histograms", "interpolation", "samples")
INTERPOLATION_FRAMES = 7
GRID_PER_PHASE = 4
"""Plots of :func:`evaluate_model`: file names (``.png``), frames of the interpolation strip,
generated shapes per phase in the grid."""


# ---------------------------------------------------------------------- generative metrics
def _stack_meshes(meshes: MeshSet, what: str, names: Sequence[str] | None = None) -> torch.Tensor:
    """A set of meshes in correspondence -> (N, V, 3) float32 CPU; names the items that differ."""
    if isinstance(meshes, (torch.Tensor, np.ndarray)):
        stacked = torch.as_tensor(meshes)
        if stacked.dim() != 3 or stacked.shape[-1] != 3 or stacked.shape[0] == 0:
            raise MeshError(what, f"must be meshes (N >= 1, V, 3) mm, got shape {tuple(stacked.shape)}")
        return stacked.detach().float().cpu()
    items = [torch.as_tensor(m).detach().float().cpu() for m in meshes]
    if not items:
        raise MeshError(what, "holds no mesh")
    labels = list(names) if names is not None else [f"{what} {i}" for i in range(len(items))]
    bad_shape = [label for item, label in zip(items, labels) if item.dim() != 2 or item.shape[-1] != 3]
    if bad_shape:
        raise MeshError(what, f"items must be vertex arrays (V, 3): {_name_items(bad_shape)}")
    differing = [f"{label} ({item.shape[0]} vertices)" for item, label in zip(items, labels)
                 if item.shape[0] != items[0].shape[0]]
    if differing:
        raise MeshError(
            what,
            f"{len(differing)} of {len(items)} meshes differ in vertex count from {labels[0]} "
            f"({items[0].shape[0]} vertices): {_name_items(differing)}",
            ATLAS_HINT,
        )
    return torch.stack(items)


def _check_topology(
    generated: torch.Tensor, reference: torch.Tensor, faces: torch.Tensor, reference_faces: ArrayLike | None
) -> None:
    """Both sets share vertex count and faces, and the faces index their vertices."""
    if generated.shape[1] != reference.shape[1]:
        raise MeshError(
            "generated meshes",
            f"have {generated.shape[1]} vertices, the reference meshes {reference.shape[1]}: "
            "the sets must share one template",
            ATLAS_HINT,
        )
    if reference_faces is not None and not torch.equal(torch.as_tensor(reference_faces).long().cpu(), faces):
        raise MeshError("reference meshes", "have other faces than the generated meshes", ATLAS_HINT)
    if faces.dim() != 2 or faces.shape[1] != 3 or int(faces.min()) < 0 or int(faces.max()) >= generated.shape[1]:
        raise MeshError("faces", f"must be triangles (F, 3) indexing {generated.shape[1]} vertices")


def surface_points(verts: torch.Tensor, faces: torch.Tensor, n_points: int, generator: torch.Generator) -> torch.Tensor:
    """``n_points`` area-uniform surface points of each mesh: (N, V, 3) -> (N, n_points, 3) mm."""
    return torch.stack([sample_surface(v, faces, n_points, generator=generator)[0] for v in verts])


def generative_scores(
    generated: MeshSet,
    reference: MeshSet,
    faces: ArrayLike,
    n_points: int = CHAMFER_POINTS,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> GenerativeMetrics:
    """1-NNA, COV and MMD (mm) of generated meshes against reference meshes of one template.

    Args:
        generated: (S, V, 3) mm, or a list of (V, 3).
        reference: (R, V, 3) mm, or a list of (V, 3); PointFlow uses R == S.
        faces: (F, 3) shared triangles.
        n_points: surface points per mesh (2,048 by the project's convention).
        seed: seeds the surface sampling (generated set first, then the reference set; on the CPU).
        device: where the Chamfer matrices are computed: "cpu" (SciPy KD-trees) or a CUDA device
            (batched brute force, much faster for hundreds of shapes).

    Returns:
        :class:`GenerativeMetrics` (fractions and mm).
    """
    return generative_scores_per_set([generated], reference, faces, n_points, seed, device)[0]


def generative_scores_per_set(
    generated_sets: Sequence[MeshSet],
    reference: MeshSet,
    faces: ArrayLike,
    n_points: int = CHAMFER_POINTS,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[GenerativeMetrics]:
    """:func:`generative_scores` of several generated sets (e.g. disjoint sets of one sampler's
    meshes, to average out the sampling noise of 1-NNA) against one reference set, whose
    surface points and self-distances are computed once. Surface sampling takes the generated
    sets in order, then the reference set, from one generator seeded with ``seed``."""
    points_gen, points_ref = _set_points(generated_sets, reference, faces, n_points, seed, device)
    return generative_metrics_per_set(points_gen, points_ref)


def _set_points(
    generated_sets: Sequence[MeshSet],
    reference: MeshSet,
    faces: ArrayLike,
    n_points: int,
    seed: int,
    device: str | torch.device,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Surface points (S_k, n_points, 3) of each generated set and (R, n_points, 3) of the
    reference set, drawn in that order from one generator seeded with ``seed``; topology checked."""
    faces_t = torch.as_tensor(faces).long().cpu()
    ref = _stack_meshes(reference, "reference meshes")
    generator = torch.Generator().manual_seed(int(seed))
    points_gen = []
    for k, generated in enumerate(generated_sets):
        gen = _stack_meshes(generated, f"generated meshes (set {k + 1})")
        _check_topology(gen, ref, faces_t, None)
        points_gen.append(surface_points(gen, faces_t, n_points, generator).to(device))
    return points_gen, surface_points(ref, faces_t, n_points, generator).to(device)


def scores_with_real_baseline(
    generated: torch.Tensor,
    reference: torch.Tensor,
    training: torch.Tensor,
    faces: torch.Tensor,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[GenerativeMetrics, GenerativeMetrics]:
    """:func:`generative_scores` of ``generated`` against ``reference``, and the same scores of
    an equal-size set of real training shapes against ``reference``: what a generator that drew
    exactly from the data distribution would score at this set size (1-NNA about 50 % give or
    take its sampling noise, COV and MMD their best attainable values).

    Args:
        generated, reference: (N, V, 3) mm, already cut to one size N (:func:`equal_size`).
        training: (T, V, 3) mm, T >= N real shapes the model was trained on; N of them are
            chosen (seeded).
        faces: (F, 3) shared triangles.
        seed: the generated and reference surface points are drawn exactly as
            :func:`generative_scores` draws them with this seed, so the first result does not
            depend on the baseline; the training subset and its points use ``seed + 1``.

    Returns:
        (scores of ``generated``, scores of the training subset), fractions and mm.
    """
    n = generated.shape[0]
    if reference.shape[0] != n or training.shape[0] < n:
        raise CardioInputError("real baseline", f"needs {n} reference and at least {n} training shapes, "
                               f"got {reference.shape[0]} and {training.shape[0]}")
    (points_gen,), points_ref = _set_points([generated], reference, faces, CHAMFER_POINTS, seed, device)
    training_subset = equal_size(training, generated, seed + 1)[0]
    baseline_generator = torch.Generator().manual_seed(int(seed) + 1)
    points_train = surface_points(training_subset, torch.as_tensor(faces).long().cpu(), CHAMFER_POINTS,
                                  baseline_generator).to(device)
    scores, baseline = generative_metrics_per_set([points_gen, points_train], points_ref)
    return scores, baseline


def reconstruction_error_mm(model: CardioGenModel, verts: ArrayLike) -> float:
    """Mean per-vertex Euclidean distance between shapes (N, V, 3) mm and ``model.reconstruct``, mm."""
    shapes = _stack_meshes(verts, "shapes to reconstruct")
    recon = torch.as_tensor(model.reconstruct(shapes)).detach().float().cpu()
    return float(torch.linalg.vector_norm(recon - shapes, dim=-1).mean())


# ---------------------------------------------------------------------- clinical distributions
@dataclass(frozen=True)
class ClinicalRow:
    """One clinical index, generated against real (NaN values left out; SDs with ddof = 1).

    ``mean_difference_percent`` = 100 (generated mean - real mean) / |real mean|, and
    ``difference_ci_low_percent`` .. ``difference_ci_high_percent`` its 95 % interval from the
    sampling error of both means (Welch: 1.96 sqrt(SD_g^2 / N_g + SD_r^2 / N_r), same scaling); an
    interval that holds 0 means the two means cannot be told apart at these sample sizes (with 150
    real shapes the standard error of the real mean EDV alone is about 2 %).
    ``sd_ratio`` = generated SD / real SD; ``ks_statistic`` and ``ks_p_value`` from
    ``scipy.stats.ks_2samp`` (two-sided). ``passes`` applies :data:`TARGETS` to the mean
    difference and the SD ratio.
    """

    index: str
    n_generated: int
    n_real: int
    generated_mean: float
    generated_sd: float
    real_mean: float
    real_sd: float
    mean_difference_percent: float
    difference_ci_low_percent: float
    difference_ci_high_percent: float
    sd_ratio: float
    ks_statistic: float
    ks_p_value: float

    @property
    def passes(self) -> bool:
        return (abs(self.mean_difference_percent) <= TARGETS["mean_difference_max_percent"]
                and self.sd_ratio >= TARGETS["sd_ratio_min"])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers become None; adds ``passes``."""
        return {**finite_or_none(asdict(self)), "passes": self.passes}


_Z95 = float(norm.ppf(0.975))


def _finite(values: ArrayLike) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    return array[np.isfinite(array)]


def _sd(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if values.size > 1 else float("nan")


def clinical_comparison(
    generated: Mapping[str, ArrayLike], real: Mapping[str, ArrayLike], columns: Sequence[str]
) -> list[ClinicalRow]:
    """Per clinical index: mean and SD of each set, % difference of means, SD ratio, KS test.

    Args:
        generated: ``{index: values (N_g,)}`` of the generated shapes (NaN = not computable).
        real: ``{index: values (N_r,)}`` of the real shapes.
        columns: the indices to compare, in order; each must be in both mappings.

    Returns:
        One :class:`ClinicalRow` per column.
    """
    rows = []
    for column in columns:
        for name, table in (("generated", generated), ("real", real)):
            if column not in table:
                raise CardioInputError(f"{name} clinical values", f"have no column {column!r}",
                                       f"available: {sorted(table)}")
        gen, ref = _finite(generated[column]), _finite(real[column])
        if gen.size == 0 or ref.size == 0:
            raise CardioInputError(column, "needs at least one finite generated and one finite real value")
        gen_mean, ref_mean, gen_sd, ref_sd = float(gen.mean()), float(ref.mean()), _sd(gen), _sd(ref)
        test = ks_2samp(gen, ref)
        scale = 100.0 / abs(ref_mean) if ref_mean else float("nan")
        half_width = _Z95 * math.sqrt(gen_sd ** 2 / gen.size + ref_sd ** 2 / ref.size)
        rows.append(ClinicalRow(
            index=column, n_generated=int(gen.size), n_real=int(ref.size),
            generated_mean=gen_mean, generated_sd=gen_sd, real_mean=ref_mean, real_sd=ref_sd,
            mean_difference_percent=scale * (gen_mean - ref_mean),
            difference_ci_low_percent=scale * (gen_mean - ref_mean - half_width),
            difference_ci_high_percent=scale * (gen_mean - ref_mean + half_width),
            sd_ratio=gen_sd / ref_sd if ref_sd > 0 else float("nan"),
            ks_statistic=float(test.statistic), ks_p_value=float(test.pvalue),
        ))
    return rows


def shape_indices_or_nan(
    verts: ArrayLike, faces: ArrayLike, regions: Mapping[str, torch.Tensor]
) -> tuple[dict[str, np.ndarray], int]:
    """:func:`lv_shape_indices` of each mesh (N, V, 3), NaN for meshes where they cannot be computed.

    Returns:
        ``({column: (N,) float64}, number of meshes with NaN indices)``.
    """
    shapes = torch.as_tensor(verts).detach().double().cpu()
    columns = {column: np.full(shapes.shape[0], np.nan) for column in CLINICAL_COLUMNS}
    invalid = 0
    for i, shape in enumerate(shapes):
        try:
            values = lv_shape_indices(shape, faces, regions)
        except CardioInputError:
            invalid += 1
            continue
        for column in CLINICAL_COLUMNS:
            columns[column][i] = values[column][0]
    return columns, invalid


# ---------------------------------------------------------------------- checks and reports
def _check(figure: str, value: float | None, unit: str, target: str, passes: bool | None) -> dict[str, Any]:
    """One line of the report: a measured figure beside its target."""
    finite = value is not None and math.isfinite(value)
    return {"figure": figure, "value": float(value) if finite else None, "unit": unit, "target": target,
            "passes": bool(passes) if finite and passes is not None else None}


def _generative_entry(scores: GenerativeMetrics, n: int) -> dict[str, Any]:
    return {"n": n, "one_nna_percent": 100.0 * scores.one_nna, "coverage_percent": 100.0 * scores.coverage,
            "mmd_mm": scores.mmd_mm}


def _generative_checks(label: str, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """1-NNA, COV and MMD lines; ``label`` (e.g. the phase) follows the metric's name."""
    one_nna, cov = entry["one_nna_percent"], entry["coverage_percent"]
    suffix = f" {label}" if label else ""
    return [
        _check(f"1-NNA{suffix}", one_nna, "%", f"<= {TARGETS['one_nna_max_percent']:g} % (50 % ideal)",
               one_nna <= TARGETS["one_nna_max_percent"]),
        _check(f"COV{suffix}", cov, "%", f">= {TARGETS['coverage_min_percent']:g} %",
               cov >= TARGETS["coverage_min_percent"]),
        _check(f"MMD{suffix}", entry["mmd_mm"], "mm", "lower is better", None),
    ]


def _clinical_checks(rows: Sequence[ClinicalRow]) -> list[dict[str, Any]]:
    checks = []
    for row in rows:
        checks.append(_check(f"{row.index} difference of means", row.mean_difference_percent, "%",
                             f"|.| <= {TARGETS['mean_difference_max_percent']:g} %",
                             abs(row.mean_difference_percent) <= TARGETS["mean_difference_max_percent"]))
        checks.append(_check(f"{row.index} SD ratio", row.sd_ratio, "",
                             f">= {TARGETS['sd_ratio_min']:g}", row.sd_ratio >= TARGETS["sd_ratio_min"]))
    return checks


def equal_size(
    generated: torch.Tensor, reference: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sets (S, ...) and (R, ...) cut to min(S, R) items each: the larger set keeps a seeded
    random choice of its items, in their order."""
    n = min(generated.shape[0], reference.shape[0])
    generator = torch.Generator().manual_seed(int(seed))

    def cut(shapes: torch.Tensor) -> torch.Tensor:
        if shapes.shape[0] == n:
            return shapes
        return shapes[torch.randperm(shapes.shape[0], generator=generator)[:n].sort().values]

    return cut(generated), cut(reference)


def evaluate_generated(
    generated: MeshSet,
    reference: MeshSet,
    faces: ArrayLike,
    regions: Mapping[str, ArrayLike] | None = None,
    *,
    reference_faces: ArrayLike | None = None,
    generated_names: Sequence[str] | None = None,
    reference_names: Sequence[str] | None = None,
    n_points: int = CHAMFER_POINTS,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Folder-against-folder evaluation: generative metrics and, given regions, clinical indices.

    Args:
        generated: generated meshes (S, V, 3) mm or a list of (V, 3).
        reference: reference meshes (R, V, 3) mm or a list of (V, 3), same template.
        faces: (F, 3) triangles of the generated meshes.
        regions: "endocardium" and "epicardium" vertex indices; None skips the clinical part.
        reference_faces: the reference meshes' triangles when read separately; must equal ``faces``.
        generated_names, reference_names: item names (file names) for error messages.
        n_points: surface points per mesh for the Chamfer distances.
        seed: seeds the equal-size cut and the surface sampling.
        device: where the Chamfer matrices are computed (see :func:`generative_scores`).

    Returns:
        ``{"n_generated", "n_reference", "n_used", "generative": {...}, "clinical": [row dicts],
        "n_invalid_generated", "checks": [...]}``; :func:`format_report` prints it.

    Raises:
        MeshError: meshes of different vertex counts (named) or different faces.
    """
    gen = _stack_meshes(generated, "generated meshes", generated_names)
    ref = _stack_meshes(reference, "reference meshes", reference_names)
    faces_t = torch.as_tensor(faces).long().cpu()
    _check_topology(gen, ref, faces_t, reference_faces)
    gen_used, ref_used = equal_size(gen, ref, seed)
    frames = frame_problems(gen, ref)
    for problem in frames:
        warnings.warn(f"{problem}: 1-NNA, COV and MMD (Chamfer distances where the meshes lie) measure that as much "
                      "as their shapes; compare meshes in one frame (cardio gen train --align for a cohort)",
                      stacklevel=2)
    scores = generative_scores(gen_used, ref_used, faces_t, n_points=n_points, seed=seed, device=device)
    entry = _generative_entry(scores, gen_used.shape[0])
    result: dict[str, Any] = {
        "n_generated": int(gen.shape[0]), "n_reference": int(ref.shape[0]), "n_used": int(gen_used.shape[0]),
        "generative": {"all": entry}, "clinical": [], "n_invalid_generated": 0,
        "checks": _generative_checks("", entry), "frame_warnings": frames,
    }
    if regions is not None:
        region_t = {name: torch.as_tensor(index).long() for name, index in regions.items()}
        gen_values, invalid = shape_indices_or_nan(gen, faces_t, region_t)
        ref_values = lv_shape_indices(ref, faces_t, region_t)
        rows = clinical_comparison(gen_values, ref_values, CLINICAL_COLUMNS)
        result["clinical"] = [row.as_dict() for row in rows]
        result["n_invalid_generated"] = invalid
        result["checks"] += _clinical_checks([r for r in rows if r.index in ("cavity_ml", "myocardial_mass_g")])
    return result


# ---------------------------------------------------------------------- the model's evaluation
def _check_cohort_matches(model: CardioGenModel, cohort: ShapeCohort, what: str = "test cohort") -> None:
    same_faces = torch.equal(cohort.faces, torch.as_tensor(model.faces).long().cpu())
    if cohort.n_vertices != model.n_vertices or not same_faces:
        raise MeshError(
            what,
            f"has {cohort.n_vertices} vertices and {cohort.faces.shape[0]} faces, the model's template "
            f"{model.n_vertices} and {torch.as_tensor(model.faces).shape[0]}",
            ATLAS_HINT,
        )


def _real_ejection_fraction(cohort: ShapeCohort, cavity_ml: np.ndarray) -> np.ndarray:
    """Per-subject EF (%) of the subjects with both an ED and an ES item."""
    by_phase: dict[str, dict[str, float]] = {p: {} for p in PHASES}
    for subject, phase, volume in zip(cohort.subject_ids, cohort.phases, cavity_ml):
        by_phase[phase][subject] = float(volume)
    paired = [s for s in by_phase["ED"] if s in by_phase["ES"]]
    return pair_ejection_fraction(np.array([by_phase["ED"][s] for s in paired]),
                                  np.array([by_phase["ES"][s] for s in paired]))


def cohort_clinical_values(cohort: ShapeCohort, faces: ArrayLike) -> dict[str, np.ndarray]:
    """The evaluated clinical indices of real shapes: ``EDV_ml`` and ``myocardial_mass_g`` of the
    ED items, ``ESV_ml`` of the ES items, ``EF_percent`` of the subjects with both (each (N,),
    ml, g or %); a phase the cohort lacks leaves its indices out."""
    indices = lv_shape_indices(cohort.verts, torch.as_tensor(faces).long().cpu(), cohort.regions)
    phases = np.asarray(cohort.phases)
    values: dict[str, np.ndarray] = {}
    if (phases == "ED").any():
        values["EDV_ml"] = indices["cavity_ml"][phases == "ED"]
        values["myocardial_mass_g"] = indices["myocardial_mass_g"][phases == "ED"]
    if (phases == "ES").any():
        values["ESV_ml"] = indices["cavity_ml"][phases == "ES"]
    ejection_fraction = _real_ejection_fraction(cohort, indices["cavity_ml"])
    if ejection_fraction.size:
        values["EF_percent"] = ejection_fraction
    return values


def _generated_ejection_fraction(
    model: CardioGenModel, n: int, seed: int, steps: int | None, sampler: str
) -> np.ndarray:
    """EF (%) of ``n`` virtual subjects of ``model.sample_pairs``; NaN where a mesh has no indices."""
    ed, es = model.sample_pairs(n, seed=seed, steps=steps, sampler=sampler)
    edv = shape_indices_or_nan(ed, model.faces, model.regions)[0]["cavity_ml"]
    esv = shape_indices_or_nan(es, model.faces, model.regions)[0]["cavity_ml"]
    valid = np.isfinite(edv) & np.isfinite(esv) & (edv > 0)
    ef = np.full(n, np.nan)
    ef[valid] = pair_ejection_fraction(edv[valid], esv[valid])
    return ef


def _conditional_entry(
    model: CardioGenModel, requests_ml: Sequence[float], n: int, seed: int, steps: int | None, sampler: str
) -> dict[str, Any]:
    """Fraction of conditional ED samples whose EDV lies within ``EDV_TOLERANCE`` of each request."""
    faces, regions = torch.as_tensor(model.faces), model.regions
    requests = []
    for k, target in enumerate(requests_ml):
        shapes = model.sample(n, "ED", seed=seed + k, steps=steps, sampler=sampler,
                              conditions={"EDV_ml": float(target)}, model="conditional")
        edv = shape_indices_or_nan(shapes, faces, regions)[0]["cavity_ml"]
        within = np.abs(edv - target) <= EDV_TOLERANCE * target  # NaN (invalid mesh) counts as a miss
        valid = edv[np.isfinite(edv)]
        requests.append({"requested_edv_ml": float(target), "n": n,
                         "mean_edv_ml": float(valid.mean()) if valid.size else None,
                         "within_percent": 100.0 * float(within.mean())})
    overall = float(np.mean([r["within_percent"] for r in requests]))
    return {"tolerance_percent": 100.0 * EDV_TOLERANCE, "requests": requests, "within_percent": overall}


def evaluate_model(
    model: CardioGenModel,
    test_cohort: ShapeCohort,
    *,
    n_generated: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    sampler: str = DEFAULT_SAMPLER,
    plots_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    training_cohort: ShapeCohort | None = None,
    real_baseline: bool = False,
) -> dict[str, Any]:
    """The issue's evaluation of a model on a held-out cohort, each figure beside its target.

    Per phase (ED, ES) the model generates ``n_generated`` shapes (default: as many as the test
    cohort holds at that phase). 1-NNA, COV and MMD compare equal-size sets: the generated and
    real sets are cut to the smaller one's size (seeded). The VAE reconstruction error is taken
    on every test shape. Clinical distributions use every generated shape: EDV and myocardial
    mass from the ED samples, ESV from the ES samples, EF from ``model.sample_pairs``
    (``n_generated`` virtual subjects, default as many as the test subjects with both phases;
    conditional model only) against each test subject's EF. With a conditional model,
    ``n_generated`` ED shapes (default: the real ED count) are requested at each of the 10th,
    50th and 90th percentiles of the real EDVs and the share within +-10 % of the request is
    reported. Sampling and the Chamfer matrices run on the model's device (move the model
    first); clinical indices on the CPU.

    Args:
        model: a trained :class:`cardiocore.gen.model.CardioGenModel`.
        test_cohort: held-out shapes in the model's template (a split training never saw).
        n_generated: generated shapes per set (None: the matching real set's size).
        seed: seeds sampling (ED: seed, ES: seed + 1, pairs: seed + 2, conditional: seed + 3 + k)
            and the surface points of the metrics.
        steps, sampler: the sampler ("plms", "ddim" or "ddpm") and its steps (None: the
            fast samplers' default, :data:`cardiocore.gen.samplers.DEFAULT_FAST_STEPS`).
        plots_dir: a folder for the PNG plots (``clinical_histograms.png``,
            ``interpolation.png``: the test ED shapes of smallest and largest EDV, ``samples.png``:
            a grid of generated ED and ES shapes); None: no plots.
        overwrite: replace plot files already in ``plots_dir``.
        progress: called with a line of text before each stage.
        training_cohort: the split the model was trained on (optional). Its clinical means are a
            diagnostic with no target: ``clinical_vs_training`` compares the generated indices
            with them (does the model reproduce what it learned?) and ``split_shift`` the test
            split's own indices (how far the held-out split lies from the training split by
            sampling alone; a model that copied its training distribution exactly would miss the
            test means by about this much).
        real_baseline: with ``training_cohort``, also score as many real training shapes as the
            generated set against the same test shapes (:func:`scores_with_real_baseline`): the
            1-NNA a perfect generator would get at this set size, a diagnostic with no target
            (the set-size noise of 1-NNA is a few points at a few hundred shapes). Costs about
            three quarters of the 1-NNA time again; skipped for a phase with too few training shapes.

    Returns:
        JSON-ready dict: ``settings``, ``generative`` {phase: {n, one_nna_percent,
        coverage_percent, mmd_mm}}, ``reconstruction_error_mm`` {"all", "ED", "ES"},
        ``clinical`` [row dicts of :class:`ClinicalRow`], ``clinical_vs_training`` and
        ``split_shift`` (row dicts; empty without ``training_cohort``), ``n_invalid_generated``,
        ``real_baseline`` {phase: {n, one_nna_percent, coverage_percent, mmd_mm}} (empty unless
        requested), ``conditional`` (None without a conditional model), ``checks`` [{figure, value, unit,
        target, passes}], ``plots`` [paths written]. :func:`format_report` prints it.
    """
    say = progress or (lambda line: None)
    _check_cohort_matches(model, test_cohort)
    if training_cohort is not None:
        _check_cohort_matches(model, training_cohort, "training cohort")
    plot_paths = _plot_paths(plots_dir, overwrite)
    if sampler == "ddpm":
        steps = None  # the ancestral sampler always runs the whole chain
    elif steps is None:
        steps = DEFAULT_FAST_STEPS
    if n_generated is not None and int(n_generated) < 2:
        raise CardioInputError("n_generated", f"must be at least 2 shapes per set, got {n_generated}")
    faces = torch.as_tensor(model.faces).long().cpu()
    regions = model.regions
    metrics_device = next(model.parameters()).device
    phases = [p for p in PHASES if p in model.phases_available and p in test_cohort.phases]
    if not phases:
        raise CardioInputError("test cohort", f"has no phase the model generates ({model.phases_available})")
    result: dict[str, Any] = {
        "settings": {"seed": seed, "steps": steps, "sampler": sampler, "n_test_shapes": len(test_cohort),
                     "model": dict(model.card).get("name")},
        "generative": {}, "reconstruction_error_mm": {}, "clinical": [], "clinical_vs_training": [],
        "split_shift": [], "real_baseline": {}, "n_invalid_generated": 0,
        "conditional": None, "checks": [], "plots": [],
    }
    generated_shapes: dict[str, torch.Tensor] = {}
    with_baseline = real_baseline and training_cohort is not None

    say(f"reconstruction error of {len(test_cohort)} held-out shapes ...")
    result["reconstruction_error_mm"]["all"] = reconstruction_error_mm(model, test_cohort.verts)
    generated_values: dict[str, np.ndarray] = {}
    real_values = cohort_clinical_values(test_cohort, faces)
    for offset, phase in enumerate(phases):
        real = test_cohort.phase(phase)
        result["reconstruction_error_mm"][phase] = reconstruction_error_mm(model, real.verts)
        n = len(real) if n_generated is None else int(n_generated)
        n_used = min(n, len(real))
        say(f"{phase}: sampling {n} shapes ({sampler}, {steps} steps); 1-NNA of {n_used} vs {n_used} real ...")
        samples = torch.as_tensor(model.sample(n, phase, seed=seed + offset, steps=steps, sampler=sampler
                                               )).detach().float().cpu()
        generated_shapes[phase] = samples
        generated_cut, real_cut = equal_size(samples, real.verts, seed)
        training_shapes = None
        if with_baseline and phase in training_cohort.phases:
            training_shapes = training_cohort.phase(phase).verts
        if training_shapes is not None and len(training_shapes) >= n_used:
            scores, baseline = scores_with_real_baseline(generated_cut, real_cut, training_shapes, faces, seed,
                                                         metrics_device)
            result["real_baseline"][phase] = _generative_entry(baseline, n_used)
        else:
            scores = generative_scores(generated_cut, real_cut, faces, seed=seed, device=metrics_device)
        entry = _generative_entry(scores, n_used)
        result["generative"][phase] = entry
        result["checks"] += _generative_checks(phase, entry)
        values, invalid = shape_indices_or_nan(samples, faces, regions)
        result["n_invalid_generated"] += invalid
        generated_values["EDV_ml" if phase == "ED" else "ESV_ml"] = values["cavity_ml"]
        if phase == "ED":
            generated_values["myocardial_mass_g"] = values["myocardial_mass_g"]
    result["checks"].append(_check("reconstruction error", result["reconstruction_error_mm"]["all"], "mm",
                                   "mean per-vertex distance (lower is better)", None))

    n_real_pairs = real_values.get("EF_percent", np.empty(0)).size
    if "conditional" in model.diffusion and n_real_pairs >= 2:  # virtual subjects need the conditional model
        n_pairs = n_real_pairs if n_generated is None else int(n_generated)
        say(f"EF: sampling {n_pairs} virtual subjects (ED + ES) ...")
        generated_values["EF_percent"] = _generated_ejection_fraction(model, n_pairs, seed + 2, steps, sampler)
    columns = [c for c in EVALUATED_INDICES if c in generated_values and c in real_values]
    rows = clinical_comparison(generated_values, real_values, columns)
    result["clinical"] = [row.as_dict() for row in rows]
    result["checks"] += _clinical_checks(rows)
    if training_cohort is not None:
        say(f"clinical indices of the {len(training_cohort)} training shapes (diagnostic) ...")
        training_values = cohort_clinical_values(training_cohort, faces)
        shared = [c for c in columns if c in training_values]
        result["clinical_vs_training"] = [
            row.as_dict() for row in clinical_comparison(generated_values, training_values, shared)]
        result["split_shift"] = [row.as_dict() for row in clinical_comparison(real_values, training_values, shared)]

    if "conditional" in model.diffusion and "EDV_ml" in real_values:
        ed_real = real_values["EDV_ml"]
        requests = np.percentile(ed_real, EDV_REQUEST_PERCENTILES)
        n_cond = len(ed_real) if n_generated is None else int(n_generated)
        say(f"conditional: {n_cond} ED shapes at each of EDV {', '.join(f'{r:.0f}' for r in requests)} ml ...")
        entry = _conditional_entry(model, requests, n_cond, seed + 3, steps, sampler)
        result["conditional"] = entry
        result["checks"].append(_check(
            f"conditional: samples within +-{100 * EDV_TOLERANCE:g} % of the requested EDV", entry["within_percent"],
            "%", f">= {TARGETS['within_edv_min_percent']:g} %",
            entry["within_percent"] >= TARGETS["within_edv_min_percent"]))
    if plot_paths:
        say(f"plots in {plots_dir} ...")
        result["plots"] = _write_plots(model, test_cohort, generated_shapes, generated_values, real_values,
                                       plot_paths)
    return result


def _plot_paths(folder: str | Path | None, overwrite: bool) -> dict[str, Path]:
    """The evaluation's PNG paths in ``folder`` (none without a folder), checked before any work."""
    if folder is None:
        return {}
    paths = {name: Path(folder) / f"{name}.png" for name in PLOT_NAMES}
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise CardioInputError(", ".join(existing), "already exist", "choose another folder or pass overwrite=True")
    return paths


def _write_plots(
    model: CardioGenModel, test_cohort: ShapeCohort, generated_shapes: Mapping[str, torch.Tensor],
    generated_values: Mapping[str, np.ndarray], real_values: Mapping[str, np.ndarray], paths: Mapping[str, Path],
) -> list[str]:
    """The evaluation's PNGs (see :func:`evaluate_model`); returns the paths written."""
    from cardiocore.gen.plots import clinical_histograms, interpolation_strip, shape_grid

    columns = [c for c in EVALUATED_INDICES if c in generated_values]
    written = [clinical_histograms(generated_values, real_values, columns, paths["clinical_histograms"],
                                   overwrite=True)]
    if "EDV_ml" in real_values:
        ed = test_cohort.phase("ED").verts
        edv = real_values["EDV_ml"]
        strip = model.interpolate(ed[int(np.argmin(edv))], ed[int(np.argmax(edv))], INTERPOLATION_FRAMES)
        written.append(interpolation_strip(strip, model.faces, paths["interpolation"], overwrite=True))
    shapes, titles = [], []
    for phase, samples in generated_shapes.items():
        shapes += list(samples[:GRID_PER_PHASE])
        titles += [f"{phase} {i + 1}" for i in range(min(GRID_PER_PHASE, len(samples)))]
    written.append(shape_grid(torch.stack(shapes), model.faces, paths["samples"], ncols=GRID_PER_PHASE,
                              titles=titles, overwrite=True))
    return [str(path) for path in written]


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    table = [list(header)] + [list(line) for line in lines]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def format_report(result: Mapping[str, Any]) -> str:
    """A readable report of :func:`evaluate_model` or :func:`evaluate_generated`: the checks
    (figure, value, target, pass), then the clinical table, then the conditional requests."""
    verdict = {True: "PASS", False: "FAIL", None: ""}
    parts = [_table(
        ("figure", "value", "unit", "target", "result"),
        [(c["figure"], _number(c["value"]), c["unit"], c["target"], verdict[c["passes"]])
         for c in result["checks"]],
    )]
    parts += [f"warning: {problem}; the generative figures measure that as much as the shapes"
              for problem in result.get("frame_warnings", [])]
    if result.get("real_baseline"):
        parts.append("diagnostic, no target: as many real training shapes scored against the same test shapes "
                     "(what a generator drawing exactly from the data distribution would get at this set size)")
        generative = result["generative"]
        parts.append(_table(
            ("phase", "n", "1-NNA % gen", "1-NNA % real", "COV % gen", "COV % real", "MMD mm gen", "MMD mm real"),
            [(phase, str(entry["n"]), _number(generative[phase]["one_nna_percent"]),
              _number(entry["one_nna_percent"]), _number(generative[phase]["coverage_percent"]),
              _number(entry["coverage_percent"]), _number(generative[phase]["mmd_mm"]), _number(entry["mmd_mm"]))
             for phase, entry in result["real_baseline"].items()],
        ))
    if result.get("clinical"):
        parts.append("clinical indices, generated vs real (SD: ddof 1; diff 95 % CI: Welch, from both sample "
                     "sizes; KS: two-sided)")
        parts.append(_table(
            ("index", "n gen", "n real", "mean gen", "mean real", "diff %", "diff 95 % CI", "SD gen", "SD real",
             "SD ratio", "KS D", "KS p", "result"),
            [(r["index"], str(r["n_generated"]), str(r["n_real"]), _number(r["generated_mean"]),
              _number(r["real_mean"]), _number(r["mean_difference_percent"], 3),
              f"{_number(r['difference_ci_low_percent'], 3)} .. {_number(r['difference_ci_high_percent'], 3)}",
              _number(r["generated_sd"]),
              _number(r["real_sd"]), _number(r["sd_ratio"], 3), _number(r["ks_statistic"], 3),
              _number(r["ks_p_value"], 3), verdict[r["passes"]]) for r in result["clinical"]],
        ))
    if result.get("clinical_vs_training"):
        parts.append("diagnostic, no target: means against the training split (the held-out split's own shift "
                     "from it is what a model that copied its training distribution would miss by)")
        shift = {r["index"]: r for r in result.get("split_shift", [])}
        parts.append(_table(
            ("index", "mean train", "mean test", "test vs train %", "mean gen", "gen vs train %",
             "gen vs train 95 % CI"),
            [(r["index"], _number(r["real_mean"]), _number(shift[r["index"]]["generated_mean"]),
              _number(shift[r["index"]]["mean_difference_percent"], 3), _number(r["generated_mean"]),
              _number(r["mean_difference_percent"], 3),
              f"{_number(r['difference_ci_low_percent'], 3)} .. {_number(r['difference_ci_high_percent'], 3)}")
             for r in result["clinical_vs_training"]],
        ))
    if result.get("n_invalid_generated"):
        parts.append(f"{result['n_invalid_generated']} generated meshes had no computable clinical indices "
                     "(left out of the clinical table)")
    conditional = result.get("conditional")
    if conditional:
        parts.append(f"conditional model: share of ED samples within +-{conditional['tolerance_percent']:g} % "
                     "of the requested EDV")
        parts.append(_table(
            ("requested EDV ml", "n", "mean EDV ml", "within %"),
            [(_number(r["requested_edv_ml"]), str(r["n"]), _number(r["mean_edv_ml"]), _number(r["within_percent"], 3))
             for r in conditional["requests"]],
        ))
    return "\n\n".join(parts)
