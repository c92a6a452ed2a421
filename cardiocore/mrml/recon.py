"""CardioReconstruct in MRML terms: segmentation, labelmap or image nodes in, multi-chamber meshes out.

The computing is :mod:`cardiocore.recon`'s (``fit_template`` deforms the bundled template to
labels, ``predict_meshes`` runs the Predict-mode network on an image, ``evaluate_meshes``
measures the result); this module only reads nodes into arrays, and writes the results of both
modes as NEW nodes in a subject-hierarchy folder:

- one model node per structure (world RAS mm, the template's topology, the structure's
  colour, the per-vertex array :data:`REGION_ARRAY` holding the structure's index in the
  template, as ``HeartTemplate.merged()`` numbers regions);
- a segmentation node made from the meshes (each mesh voxelised on the input's grid);
- a table node with one row per structure (volumes, Dice, HD95, watertightness, worst VR/SVR of
  the rules it is part of) and a table node with one row per rule (VR, SVR, voxel VR).

Predict mode needs no labels: the figures of the meshes alone (volume, LSE, watertightness,
self-intersections, VR, SVR) are always measured, Dice, HD95 and Chamfer only against optional
reference labels (:func:`measure_quality`).

The input nodes are never changed, and nothing is added to the scene when reconstruction fails
or is cancelled. :func:`fit_label_file` and :func:`predict_image_file` are the ``cardio recon
fit`` and ``cardio recon predict`` commands' bodies, :func:`recon_demo_part` the ``cardio demo`` part.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cardiocore.errors import CardioInputError, VolumeError, WeightsError
from cardiocore.geometry.grid import checked_label_values, label_mask
from cardiocore.geometry.surface import surface_from_mask
from cardiocore.geometry.voxelize import voxelize_mesh
from cardiocore.mrml.app import slicer_app
from cardiocore.mrml.mesh_folders import REGION_ARRAY
from cardiocore.mrml.hierarchy import folder_with
from cardiocore.mrml.models import mesh_to_model, model_to_mesh
from cardiocore.mrml.segmentations import arrays_to_segmentation, segmentation_to_arrays
from cardiocore.mrml.storage import read_node, remove_with_helpers, write_node
from cardiocore.mrml.tables import columns_to_table
from cardiocore.mrml.volumes import describe_node, volume_to_array
from cardiocore.recon.evaluate import SVR_POINTS, VR_POINTS, ReconMetrics, evaluate_meshes
from cardiocore.recon.fit import FitResult, FitView, FitWeights, fit_template
from cardiocore.recon.predict import BUNDLED_PREDICTOR, MeshPredictor, load_predictor, predict_meshes
from cardiocore.recon.rules import RuleSet, guess_structure, resolve_rule_set
from cardiocore.recon.template import HeartTemplate, load_template
from cardiocore.train.atomic import write_json

ProgressFn = Callable[[float, str], None]
"""``progress(fraction in [0, 1], message)``."""

RuleSpec = RuleSet | str | os.PathLike | Mapping[str, Any] | None
"""A rule set, "default", "mmwhs", "mmwhs-reindexed", a JSON path or dict (see ``resolve_rule_set``)."""

SEGMENTATION_FILE = "meshes.seg.nrrd"
METRICS_FILE = "metrics.json"

OUTPUT_MAX_VOXELS = 256**3
"""Largest output segmentation grid of Predict mode (voxels); larger images are subsampled."""
# Share of the progress bar per stage: reading, fitting (or predicting), measuring, writing nodes.
_FIT_START, _FIT_END, _EVAL_END = 0.05, 0.8, 0.95


class ReconstructionCancelled(RuntimeError):
    """``should_stop`` asked to stop; nothing was added to the scene."""


@dataclass
class ReconNodes:
    """What a reconstruction added to the scene.

    Attributes:
        folder_item_id: subject-hierarchy folder holding all nodes below.
        model_nodes: structure name -> ``vtkMRMLModelNode`` (RAS mm, template topology).
        segmentation_node: ``vtkMRMLSegmentationNode`` with one segment per mesh (named by structure).
        table_node: ``vtkMRMLTableNode``, one row per structure.
        rule_table_node: ``vtkMRMLTableNode``, one row per rule between fitted structures.
        metrics: JSON-ready figures (:meth:`ReconMetrics.to_dict` plus mapping, missing
            structures, device, steps and seconds).
    """

    folder_item_id: int
    model_nodes: dict[str, Any]
    segmentation_node: Any
    table_node: Any
    rule_table_node: Any
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FitOptions:
    """The fit and quality-sampling arguments of :func:`reconstruct_from_segmentation`, together."""

    steps: int
    weights: FitWeights | None
    use_mie: bool
    seed: int
    vr_points: int
    svr_points: int


@dataclass(frozen=True)
class QualitySampling:
    """Monte-Carlo samples per rule for VR and SVR and the seed of every random draw
    (:func:`cardiocore.recon.evaluate.evaluate_meshes`)."""

    vr_points: int = VR_POINTS
    svr_points: int = SVR_POINTS
    seed: int = 0


@dataclass(frozen=True)
class ReferenceLabels:
    """Labels to measure meshes against: (I, J, K) int label map, its (4, 4) voxel-to-RAS
    matrix (mm), and structure name -> label value."""

    labels: np.ndarray
    ijk_to_ras: np.ndarray
    label_of: dict[str, int]


# ---------------------------------------------------------------------------- mapping
def _terminology_names(terminology: str) -> list[str]:
    """Candidate names from a Slicer terminology entry string
    (``context~category~type~type modifier~...``, each code as ``scheme^value^meaning``):
    "<modifier> <type>" and "<type>"."""
    parts = terminology.split("~")
    meanings = [p.split("^")[2] if len(p.split("^")) >= 3 else "" for p in parts[2:4]]
    meanings += [""] * (2 - len(meanings))
    kind, modifier = meanings
    return [name for name in (f"{modifier} {kind}".strip(), kind) if name]


def guess_mapping(seg_node: Any, rules: RuleSpec = None) -> dict[str, str]:
    """Segment ID -> structure name, guessed from each segment's name, then its terminology.

    Segment Editor names ("Left ventricle", "LV myocardium"), TotalSegmentator names
    ("heart_ventricle_left") and terminology entries ("Ventricle" modified by "Left") are
    understood (:func:`cardiocore.recon.rules.guess_structure`); segments that match no
    structure are left out. The segmentation is only read.

    Raises:
        CardioInputError: not a segmentation node.
    """
    segmentation = _segmentation_of(seg_node)
    rule_set = resolve_rule_set(rules)
    mapping: dict[str, str] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        for name in [segment.GetName(), *_terminology_names(segment.GetTerminology() or "")]:
            structure = guess_structure(name, rule_set)
            if structure is not None:
                mapping[segment_id] = structure
                break
    return mapping


def _segmentation_of(seg_node: Any) -> Any:
    if seg_node is None or not hasattr(seg_node, "IsA") or not seg_node.IsA("vtkMRMLSegmentationNode"):
        raise CardioInputError("input", f"expected a segmentation node, got {describe_node(seg_node)}")
    return seg_node.GetSegmentation()


def _checked_mapping(seg_node: Any, mapping: Mapping[str, str], rules: RuleSet) -> dict[str, str]:
    what = f"mapping of segmentation {seg_node.GetName()!r}"
    segmentation = seg_node.GetSegmentation()
    known = {segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise CardioInputError(what, f"names segments that are not in it: {unknown}", f"its segments: {sorted(known)}")
    for structure in mapping.values():
        rules.structure(structure)
    if not mapping:
        raise CardioInputError(
            what, "maps no segment to a heart structure",
            "name the segments (e.g. 'Left ventricle', 'heart_ventricle_left') or map them to: "
            + ", ".join(rules.names),
        )
    return dict(mapping)


# ---------------------------------------------------------------------------- reconstruction
def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _segmentation_labels(
    seg_node: Any, mapping: Mapping[str, str] | None, rules: RuleSet, reference_volume: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]], dict[str, str]]:
    """The mapped segments of ``seg_node`` as one label map in ``rules``' coding.

    Segments mapped to the same structure are united; a later segment wins where segments
    overlap. ``mapping`` (segment ID -> structure) defaults to :func:`guess_mapping`.

    Returns:
        labels (I, J, K) int16 on ``reference_volume``'s grid (default the segmentation's own),
        its ijk_to_ras (4, 4) RAS mm, structure -> names of its segments, and segment name ->
        structure (for the metrics).

    Raises:
        CardioInputError: an empty mapping, unknown segments or structures.
    """
    if mapping is None:
        mapping = guess_mapping(seg_node, rules)
    mapping = _checked_mapping(seg_node, mapping, rules)
    arrays = segmentation_to_arrays(seg_node, reference_volume)
    labels = np.zeros(arrays.masks[0].shape, dtype=np.int16)
    for segment_id, mask in zip(arrays.segment_ids, arrays.masks, strict=True):
        if segment_id in mapping:
            labels[mask] = rules.structure(mapping[segment_id]).label
    segment_names = dict(zip(arrays.segment_ids, arrays.names, strict=True))
    sources = {s: [segment_names[i] for i, t in mapping.items() if t == s] for s in set(mapping.values())}
    return labels, arrays.ijk_to_ras, sources, {segment_names[i]: s for i, s in mapping.items()}


def reconstruct_from_segmentation(
    seg_node: Any,
    *,
    mapping: Mapping[str, str] | None = None,
    rules: RuleSpec = None,
    reference_volume: Any = None,
    steps: int = 150,
    weights: FitWeights | None = None,
    use_mie: bool = True,
    seed: int = 0,
    vr_points: int = VR_POINTS,
    svr_points: int = SVR_POINTS,
    template: HeartTemplate | None = None,
    device: str | torch.device = "auto",
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    folder_name: str | None = None,
    view_segmentations: Sequence[Any] = (),
) -> ReconNodes:
    """Multi-chamber meshes fitted to a segmentation, added to the scene as new nodes.

    Args:
        seg_node: ``vtkMRMLSegmentationNode`` (never modified).
        mapping: segment ID -> structure name; default :func:`guess_mapping`. Segments mapped
            to the same structure are united; a later segment wins where segments overlap.
        rules: the structures and rules (default: the seven-structure cardiac set); only the
            mapped structures and the rules between them are used.
        reference_volume: optional volume whose grid the segments are read on; default the
            segmentation's own reference geometry.
        steps: optimisation steps; weights: loss weights (default ``FitWeights()``); use_mie:
            enforce the rules with the MIE term; seed: seed of every random draw.
        vr_points, svr_points: Monte-Carlo samples per rule for VR and SVR
            (:func:`cardiocore.recon.evaluate.evaluate_meshes`).
        template: the template to deform (default: the bundled one).
        device: "auto" (CUDA when available), "cpu", "cuda", ...
        progress: ``progress(fraction, message)``; should_stop: polled during the fit.
        folder_name: subject-hierarchy folder name (default "CardioReconstruct <input name>").
        view_segmentations: segmentations of other views of the same heart on their own grids
            (the long-axis cines next to a short-axis stack; ``fit_template``'s ``views``), their
            segments mapped by name (:func:`guess_mapping`); never modified. A view annotates the
            structures it has a mapped segment for (an empty segment says the structure is not
            on its planes); a structure without one is unknown there, not background.

    Raises:
        CardioInputError: not a segmentation, an empty mapping, unknown segments or structures,
            no mapped structure with voxels. ReconstructionCancelled: ``should_stop`` returned
            True. Nothing is added to the scene in either case.
    """
    rule_set = resolve_rule_set(rules)
    _segmentation_of(seg_node)
    for view in view_segmentations:
        _segmentation_of(view)
    _report(progress, 0.0, "reading the segmentation")
    labels, ijk_to_ras, sources, named_mapping = _segmentation_labels(seg_node, mapping, rule_set, reference_volume)
    views = []
    for view in view_segmentations:
        view_labels, view_matrix, view_sources, _ = _segmentation_labels(view, None, rule_set, None)
        views.append(FitView(view_labels, view_matrix, sorted(set(view_sources) & set(sources))))
    return _reconstruct_to_scene(
        labels, ijk_to_ras, rule_set.subset(sources), sources,
        options=FitOptions(steps, weights, use_mie, seed, vr_points, svr_points), template=template,
        device=device, progress=progress, should_stop=should_stop,
        folder_name=folder_name or f"CardioReconstruct {seg_node.GetName()}",
        extra={"mapping": named_mapping, "unmapped": [n for n in rule_set.names if n not in sources]},
        views=views,
    )


def reconstruct_from_labelmap(
    labelmap_node: Any,
    *,
    rules: RuleSpec = None,
    steps: int = 150,
    weights: FitWeights | None = None,
    use_mie: bool = True,
    seed: int = 0,
    vr_points: int = VR_POINTS,
    svr_points: int = SVR_POINTS,
    template: HeartTemplate | None = None,
    device: str | torch.device = "auto",
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    folder_name: str | None = None,
    view_nodes: Sequence[Any] = (),
    view_structures: Sequence[Collection[str] | None] = (),
) -> ReconNodes:
    """As :func:`reconstruct_from_segmentation`, from a labelmap volume coded as ``rules`` says
    (default labels 1..7; ``rules="mmwhs"`` for MM-WHS codes 205, 420, ...). ``view_nodes``:
    more labelmap volumes of the same heart on their own grids, coded the same way (the
    long-axis slices of a cine study next to its short-axis stack; ``fit_template``'s
    ``views``); the quality figures are measured against ``labelmap_node``. ``view_structures``:
    the structure names each view annotates, one entry per view node (None or no entry: all;
    a structure a view does not annotate is unknown on its planes, not background).

    Raises:
        CardioInputError: not a labelmap volume node, or no structure of ``rules`` in it.
            VolumeError: a labelmap or view whose values cannot be labels (negative, fractional,
            NaN: an image loaded as a labelmap).
    """
    for role, node in (("input", labelmap_node), *((f"view {v}", n) for v, n in enumerate(view_nodes, start=1))):
        if node is None or not node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise CardioInputError(role, f"expected a labelmap volume node, got {describe_node(node)}",
                                   "convert a segmentation or choose the labelmap")
    if len(view_structures) > len(view_nodes):
        raise CardioInputError("view structures", f"{len(view_structures)} entries for {len(view_nodes)} views",
                               "give at most one entry per view")
    rule_set = resolve_rule_set(rules)
    _report(progress, 0.0, "reading the labelmap")
    labels, ijk_to_ras = volume_to_array(labelmap_node)
    annotated = list(view_structures) + [None] * (len(view_nodes) - len(view_structures))
    # The fit checks its label maps, calling them "labels" and "view N": name the nodes instead.
    node_names = {"labels": f"labelmap {labelmap_node.GetName()!r}"} | {
        f"view {v}": f"view {node.GetName()!r}" for v, node in enumerate(view_nodes, start=1)}
    try:
        return _reconstruct_to_scene(
            labels, ijk_to_ras, rule_set, {s.name: [f"label {s.label}"] for s in rule_set.structures},
            options=FitOptions(steps, weights, use_mie, seed, vr_points, svr_points), template=template,
            device=device, progress=progress, should_stop=should_stop,
            folder_name=folder_name or f"CardioReconstruct {labelmap_node.GetName()}", extra={},
            views=[FitView(*volume_to_array(node), structures) for node, structures in zip(view_nodes, annotated)],
        )
    except VolumeError as error:
        if error.what not in node_names:
            raise
        raise VolumeError(node_names[error.what], error.problem, error.hint) from error


def _report(progress: ProgressFn | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


def _stopped(should_stop: Callable[[], bool] | None) -> bool:
    return should_stop is not None and should_stop()


def _cancelled() -> ReconstructionCancelled:
    return ReconstructionCancelled("reconstruction cancelled; nothing was added to the scene")


def _reconstruct_to_scene(
    labels: np.ndarray,
    ijk_to_ras: np.ndarray,
    rules: RuleSet,
    sources: Mapping[str, list[str]],
    *,
    options: FitOptions,
    template: HeartTemplate | None,
    device: str | torch.device,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
    folder_name: str,
    extra: Mapping[str, Any],
    views: Sequence[FitView] = (),
) -> ReconNodes:
    """Fit (with ``views``, other label maps of the heart: ``fit_template``'s), then measure
    against ``labels`` and add the nodes (:func:`_measure_to_scene`)."""
    started = time.perf_counter()
    template = template or load_template()
    torch_device = resolve_device(device)

    def fit_progress(step: int, steps: int, _: Mapping[str, float]) -> None:
        _report(progress, _FIT_START + (_FIT_END - _FIT_START) * step / steps, f"fitting: step {step} of {steps}")

    _report(progress, _FIT_START, "fitting the template")
    result = fit_template(
        labels, ijk_to_ras, rules, template, weights=options.weights, steps=options.steps, use_mie=options.use_mie,
        device=torch_device, seed=options.seed, progress=fit_progress, should_stop=should_stop, views=views,
    )
    if result.cancelled or _stopped(should_stop):
        raise _cancelled()
    if result.missing:
        logging.getLogger(__name__).warning(
            "CardioReconstruct: no voxels (or too few) for %s; fitted %s",
            ", ".join(result.missing), ", ".join(result.names),
        )
    if result.slice_axis is not None:
        logging.getLogger(__name__).info(
            "CardioReconstruct: thick slices along voxel axis %d: the labels were fitted on the slice planes, "
            "the surface between them follows the template", result.slice_axis,
        )
    collapsed = [
        f"{name}: not fitted: its {labelled:.2g} ml of labels are too few for the template to deform onto "
        f"(the mesh {'turned inside out' if enclosed <= 0 else f'shrank to {enclosed:.2g} ml'}); segment the whole "
        "structure, or leave it out" for name, (labelled, enclosed) in result.collapsed.items()
    ]
    mirrored = ["the structures sit as the mirror image of a normal heart (left and right swapped), so the "
                "template's mirror image was fitted: check the image's orientation (an axis read flipped?) unless "
                "the heart is mirrored (situs inversus, dextrocardia)"] if result.mirrored else []
    metrics = dict(extra) | {
        "mode": "fit",
        "warnings": mirrored + collapsed,
        "mirrored": result.mirrored,
        "fitted": list(result.names),
        "thick_slice_axis": result.slice_axis,
        "views": len(views),
        "view_structures": [None if v.structures is None else sorted(v.structures) for v in views],
        "device": str(torch_device),
        "steps": options.steps,
        "use_mie": options.use_mie,
        "seconds": {f"fit_{k}": v for k, v in result.seconds.items()},
    }
    reference = ReferenceLabels(labels, ijk_to_ras, {s.name: s.label for s in rules.structures})
    return _measure_to_scene(
        result, rules, template.names, reference, labels.shape, ijk_to_ras, sources,
        folder_name=folder_name, metrics=metrics,
        sampling=QualitySampling(options.vr_points, options.svr_points, options.seed), progress=progress,
        started=started,
    )


def _measure_to_scene(
    result: FitResult,
    rules: RuleSet,
    region_names: Sequence[str],
    reference: ReferenceLabels | None,
    shape: tuple[int, ...],
    ijk_to_ras: np.ndarray,
    sources: Mapping[str, list[str]],
    *,
    folder_name: str,
    metrics: dict[str, Any],
    sampling: QualitySampling,
    progress: ProgressFn | None,
    started: float,
) -> ReconNodes:
    """The shared end of Fit and Predict: measure the meshes (:func:`measure_quality`), then add
    every node at the end (all or nothing), the output segmentation on the grid ``shape``,
    ``ijk_to_ras``. ``metrics`` (mode-specific figures, with a ``"seconds"`` dict) is merged
    into the quality figures; ``started``: ``time.perf_counter()`` at the start of the run."""
    _report(progress, _FIT_END, "measuring the quality figures (violations, watertightness, Dice when labelled)")
    meshes = dict(zip(result.names, result.meshes(), strict=True))
    quality = measure_quality(meshes, rules, reference, shape, ijk_to_ras, sampling)
    metrics = quality.to_dict() | metrics
    _report(progress, _EVAL_END, "adding the models, segmentation and tables")
    nodes = _add_nodes(result, quality, rules, region_names, shape, ijk_to_ras, sources, folder_name, metrics)
    metrics["seconds"]["total"] = time.perf_counter() - started
    _report(progress, 1.0, "done")
    return nodes


def measure_quality(
    meshes: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    rules: RuleSet,
    reference: ReferenceLabels | None,
    shape: tuple[int, ...],
    ijk_to_ras: np.ndarray,
    sampling: QualitySampling = QualitySampling(),
) -> ReconMetrics:
    """Quality figures of reconstructed meshes (:func:`cardiocore.recon.evaluate.evaluate_meshes`).

    The reference figures (Dice, HD95, Chamfer; label volume) need labels; the others (volume,
    LSE, watertightness, self-intersections, VR, SVR, and voxel VR on the grid) only the meshes.
    Without ``reference`` the meshes are measured against an EMPTY label map on the grid
    ``shape``, ``ijk_to_ras`` (cheap: no label surface to build), and the reference figures,
    meaningless then, are set to NaN (None in JSON), label volume included. With a reference,
    Dice, HD95 and Chamfer are NaN for the structures it has no voxels of.

    Args:
        meshes: structure -> (verts (V, 3) RAS mm, faces (F, 3) int64).
        rules: the rules between the structures.
        reference: reference labels, or None.
        shape, ijk_to_ras: the grid (I, J, K) and its (4, 4) voxel-to-RAS matrix, mm, used for
            voxel VR when there is no reference.
        sampling: VR and SVR samples per rule and the seed.
    """
    labels = reference if reference is not None else ReferenceLabels(
        np.zeros(shape, dtype=np.uint8), ijk_to_ras, dict.fromkeys(meshes, 1))
    quality = evaluate_meshes(
        meshes, labels.labels, labels.ijk_to_ras, labels.label_of, rules,
        vr_points=sampling.vr_points, svr_points=sampling.svr_points, seed=sampling.seed,
    )
    nan = float("nan")
    structures = {
        name: m if m.label_volume_ml > 0 else dataclasses.replace(
            m, dice=nan, hd95_mm=nan, chamfer_mm=nan, label_volume_ml=m.label_volume_ml if reference is not None else nan)
        for name, m in quality.structures.items()
    }
    return dataclasses.replace(quality, structures=structures)


# ---------------------------------------------------------------------------- predict mode
def model_problem(model_path: str | os.PathLike | None = None) -> str | None:
    """Why Predict mode cannot run with ``model_path`` (None: the bundled model), in one sentence
    for the user, or None when the weights are there. Cheap: nothing is loaded."""
    from cardiocore.weights import resolve_model

    if model_path:
        path = Path(model_path).expanduser()
        return None if path.is_file() else f"model file {str(path)!r} does not exist"
    try:
        resolve_model(BUNDLED_PREDICTOR)
    except WeightsError as error:
        return (f"the bundled Predict model {BUNDLED_PREDICTOR!r} is not installed ({error}); choose a model "
                "file trained with 'cardio recon train', or segment the image and use Fit")
    return None


def _image_of(volume_node: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """(image (I, J, K), ijk_to_ras (4, 4), name for errors) of a scalar image volume node (a copy).

    Raises:
        CardioInputError: no scalar volume, or a labelmap. VolumeError: no voxels, several
            components per voxel.
    """
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise CardioInputError("input", f"expected a scalar (CT or MR) volume node, got {describe_node(volume_node)}",
                               "select the image volume")
    what = f"volume {volume_node.GetName()!r}"
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise CardioInputError(what, "is a labelmap, and Predict mode reads a CT or MR image",
                               "use Fit mode for a labelmap or segmentation")
    image, ijk_to_ras = volume_to_array(volume_node)
    if image.ndim != 3:
        raise VolumeError(what, f"has {image.shape[3]} components per voxel",
                          "Predict mode reads one intensity per voxel: choose a scalar (grey-scale) volume")
    return image, ijk_to_ras, what


def _reference_of(
    node: Any, mapping: Mapping[str, str] | None, rules: RuleSet, volume_node: Any
) -> tuple[ReferenceLabels | None, dict[str, list[str]], dict[str, Any]]:
    """Reference labels for the quality figures from a labelmap (its grid, ``rules``' coding)
    or a segmentation node (on ``volume_node``'s grid), the segments (or labels) of each
    structure, and what the metrics should say about them; (None, {}, {}) when ``node`` is None.

    Raises:
        CardioInputError: another kind of node, or no structure of ``rules`` in it (VolumeError:
            a labelmap whose values cannot be labels).
    """
    if node is None:
        return None, {}, {}
    if node.IsA("vtkMRMLSegmentationNode"):
        labels, ijk_to_ras, sources, named_mapping = _segmentation_labels(node, mapping, rules, volume_node)
        extra: dict[str, Any] = {"mapping": named_mapping}
    elif node.IsA("vtkMRMLLabelMapVolumeNode"):
        labels, ijk_to_ras = volume_to_array(node)
        checked_label_values(labels, f"reference labels {node.GetName()!r}")
        sources, extra = {s.name: [f"label {s.label}"] for s in rules.structures}, {}
    else:
        raise CardioInputError("reference labels",
                               f"expected a labelmap or segmentation node, got {describe_node(node)}")
    label_of = {s.name: s.label for s in rules.structures}
    if not label_mask(labels, list(label_of.values())).any():
        raise CardioInputError(f"reference labels {node.GetName()!r}", "hold no structure of the label coding",
                               "labels: " + ", ".join(f"{name} {label}" for name, label in label_of.items()))
    return ReferenceLabels(labels, ijk_to_ras, label_of), sources, extra | {"reference": node.GetName()}


def centre_from_markups(markups_node: Any) -> list[float] | None:
    """RAS mm (3,) of the first control point of a point list, in world coordinates (a list under
    a transform counts where it is displayed), for ``centre_ras`` of :func:`reconstruct_from_volume`;
    None for no node.

    Raises:
        CardioInputError: a node without control points.
    """
    if markups_node is None:
        return None
    if markups_node.GetNumberOfControlPoints() < 1:
        raise CardioInputError(f"point list {markups_node.GetName()!r}", "has no point to centre the network on",
                               "place one point on the heart, or clear the Heart centre selection")
    position = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPositionWorld(0, position)
    return [float(v) for v in position]


def reconstruct_from_volume(
    volume_node: Any,
    *,
    predictor: MeshPredictor | None = None,
    model_path: str | os.PathLike | None = None,
    structures: Sequence[str] | None = None,
    reference_labels: Any = None,
    mapping: Mapping[str, str] | None = None,
    rules: RuleSpec = None,
    device: str | torch.device = "auto",
    centre_ras: Sequence[float] | None = None,
    refine_steps: int = 0,
    vr_points: int = VR_POINTS,
    svr_points: int = SVR_POINTS,
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    folder_name: str | None = None,
) -> ReconNodes:
    """Predict mode: multi-chamber meshes predicted from a CT or MR image by a trained network
    (:func:`cardiocore.recon.predict.predict_meshes`), added to the scene as new nodes, the
    same outputs as Fit mode (the output segmentation on the image's grid).

    Args:
        volume_node: ``vtkMRMLScalarVolumeNode`` holding the image (any orientation and
            spacing; never modified).
        predictor: the network; default ``model_path``'s, else the bundled one
            (:func:`cardiocore.recon.predict.load_predictor`).
        model_path: a predictor file (``cardio recon train``), used when ``predictor`` is None.
        structures: the structures to output (default every one the network predicts).
        reference_labels: optional labelmap (coded as ``rules`` says) or segmentation node
            (segments mapped by ``mapping``, default guessed from their names) to measure Dice,
            HD95 and Chamfer against; without it those figures are None (:func:`measure_quality`).
        rules: the rule set and label coding (default: the seven-structure cardiac set).
        device: where the network runs when it is loaded here ("auto": CUDA when available).
        centre_ras: (3,) RAS mm centre of the network's field of view (default the image centre).
        refine_steps: when > 0, refine the predicted meshes against the network's own
            segmentation for that many fit steps (:mod:`cardiocore.recon.refine`; seconds more).
        vr_points, svr_points, seed: quality sampling (:func:`measure_quality`).
        progress: ``progress(fraction, message)``; should_stop: polled before and after the network
            and at every refinement step.
        folder_name: subject-hierarchy folder name (default "CardioReconstruct <volume name>").

    Returns:
        :class:`ReconNodes`; ``metrics["warnings"]`` holds the network's warnings (resampling,
        anisotropy), which are logged too.

    Raises:
        CardioInputError: no scalar volume, a labelmap as image, bad reference labels, unknown
            structures. VolumeError (naming the volume): a 2-D volume, several components per
            voxel, an unusable matrix. WeightsError: no such or no bundled model.
        ReconstructionCancelled: ``should_stop`` returned True. Nothing is added to the scene in
            any of these cases.
    """
    started = time.perf_counter()
    _report(progress, 0.0, "reading the image")
    image, ijk_to_ras, what = _image_of(volume_node)
    rule_set = resolve_rule_set(rules)
    reference, sources, extra = _reference_of(reference_labels, mapping, rule_set, volume_node)
    if predictor is None:
        predictor = load_predictor(model_path, device)
    if _stopped(should_stop):
        raise _cancelled()

    def net_progress(fraction: float, message: str) -> None:
        _report(progress, _FIT_START + (_FIT_END - _FIT_START) * fraction, message)

    try:
        result, warnings = predict_meshes(image, ijk_to_ras, predictor, centre_ras=centre_ras,
                                          structures=structures, refine_steps=refine_steps,
                                          progress=net_progress, should_stop=should_stop)
    except VolumeError as error:  # the checks call the array "image": name the node instead
        raise VolumeError(what, error.problem, error.hint) from error
    if _stopped(should_stop):
        raise _cancelled()
    grid_shape, grid_matrix, stride = output_grid(image.shape, ijk_to_ras)
    if stride > 1:
        warnings.append(f"the output segmentation and voxel figures use every {stride}th voxel of the "
                        f"{'x'.join(map(str, image.shape))} image grid ({'x'.join(map(str, grid_shape))} voxels)")
    for warning in warnings:
        logging.getLogger(__name__).warning("CardioReconstruct Predict, %s: %s", what, warning)
    metrics = extra | {
        "mode": "predict",
        "predicted": list(result.names),
        "missing": list(result.missing),
        "warnings": list(warnings),
        "model": str(model_path) if model_path else predictor.card.get("name", "unnamed model"),
        "refine_steps": int(refine_steps),
        "device": str(next(predictor.net.parameters()).device),
        "seconds": {f"predict_{k}": v for k, v in result.seconds.items()},
    }
    return _measure_to_scene(
        result, rule_set.subset(result.names), predictor.names, reference, grid_shape, grid_matrix, sources,
        folder_name=folder_name or f"CardioReconstruct {volume_node.GetName()}", metrics=metrics,
        sampling=QualitySampling(vr_points, svr_points, seed), progress=progress, started=started,
    )


def output_grid(
    shape: Sequence[int], ijk_to_ras: np.ndarray, max_voxels: int = OUTPUT_MAX_VOXELS
) -> tuple[tuple[int, ...], np.ndarray, int]:
    """The grid of Predict mode's output segmentation: the image grid, or every ``stride``-th
    voxel along each axis (the same field of view) when the image has more than ``max_voxels``
    voxels, so a 512 x 512 x 300 CT does not make 300-million-voxel outputs.

    Returns:
        shape (I', J', K'), its (4, 4) voxel-to-RAS matrix (mm), and the stride (1: unchanged).
    """
    stride = 1
    while int(np.prod([-(-n // stride) for n in shape])) > max_voxels:
        stride += 1
    matrix = np.asarray(ijk_to_ras, dtype=np.float64).copy()
    matrix[:3, :3] *= stride
    return tuple(-(-int(n) // stride) for n in shape), matrix, stride


def _add_nodes(
    result: FitResult,
    quality: ReconMetrics,
    rules: RuleSet,
    region_names: Sequence[str],
    shape: tuple[int, ...],
    ijk_to_ras: np.ndarray,
    sources: Mapping[str, list[str]],
    folder_name: str,
    metrics: dict[str, Any],
) -> ReconNodes:
    """All output nodes, or none: nodes made before an error are removed again. A model's
    region array holds its structure's index in ``region_names`` (the template's order)."""
    scene = slicer_app().scene
    created: list[Any] = []
    try:
        colours = {name: tuple(c / 255.0 for c in rules.structure(name).color) for name in result.names}
        models = {}
        masks = {}
        for name, (verts, faces) in zip(result.names, result.meshes(), strict=True):
            region = np.full(verts.shape[0], list(region_names).index(name), dtype=np.int32)
            models[name] = mesh_to_model(verts.numpy(), faces.numpy(), name=f"{folder_name} {name}",
                                         point_data={REGION_ARRAY: region}, color=colours[name])
            created.append(models[name])
            masks[name] = voxelize_mesh(verts, faces, shape, ijk_to_ras).cpu().numpy()
        segmentation = arrays_to_segmentation(masks, ijk_to_ras, colours=colours, name=f"{folder_name} meshes")
        created.append(segmentation)
        table = _structure_table(quality, sources, f"{folder_name} structures")
        created.append(table)
        rule_table = _rule_table(quality, f"{folder_name} rules")
        created.append(rule_table)
        folder = folder_with(folder_name, created)
    except Exception:
        for node in created:
            remove_with_helpers(scene, node)
        raise
    return ReconNodes(folder, models, segmentation, table, rule_table, metrics)


def _structure_table(quality: ReconMetrics, sources: Mapping[str, list[str]], name: str) -> Any:
    structures = list(quality.structures.values())

    def worst(attribute: str, structure: str) -> float:
        values = [getattr(r, attribute) for r in quality.rules if structure in (r.a, r.b)]
        return 100.0 * max(values, default=0.0)

    columns = {
        "structure": [m.name for m in structures],
        "segments": [", ".join(sources.get(m.name, [])) for m in structures],
        "volume": np.array([m.volume_ml for m in structures]),
        "label volume": np.array([m.label_volume_ml for m in structures]),
        "Dice": np.array([m.dice for m in structures]),
        "HD95": np.array([m.hd95_mm for m in structures]),
        "Chamfer": np.array([m.chamfer_mm for m in structures]),
        "watertight": np.array([m.watertight for m in structures]),
        "self-intersections": np.array([m.self_intersections for m in structures]),
        "max VR": np.array([worst("vr", m.name) for m in structures]),
        "max SVR": np.array([worst("svr", m.name) for m in structures]),
    }
    units = {"volume": "ml", "label volume": "ml", "HD95": "mm", "Chamfer": "mm", "max VR": "%", "max SVR": "%"}
    descriptions = {
        "segments": "input segments (or labels) of the structure",
        "volume": "volume enclosed by the mesh",
        "label volume": "volume of the input voxels",
        "Dice": "voxelised mesh vs input voxels",
        "HD95": "95th-percentile Hausdorff distance, voxelised mesh vs input voxels",
        "max VR": "worst volume violation rate of the rules the structure is part of",
        "max SVR": "worst surface violation rate of the rules the structure is part of",
    }
    return columns_to_table(columns, name=name, units=units, descriptions=descriptions)


def _rule_table(quality: ReconMetrics, name: str) -> Any:
    rules = quality.rules
    return columns_to_table(
        {
            "rule": [r.label for r in rules],
            "VR": np.array([100.0 * r.vr for r in rules]),
            "SVR": np.array([100.0 * r.svr for r in rules]),
            "voxel VR": np.array([100.0 * r.voxel_vr for r in rules]),
        },
        name=name,
        units={"VR": "%", "SVR": "%", "voxel VR": "%"},
        descriptions={"VR": "share of A's volume violating the rule", "SVR": "share of A's surface violating it"},
    )


def remove_outputs(nodes: ReconNodes) -> None:
    """Remove every node of a reconstruction (with its display and storage nodes) and its folder
    from the scene."""
    scene = slicer_app().scene
    for node in [*nodes.model_nodes.values(), nodes.segmentation_node, nodes.table_node, nodes.rule_table_node]:
        remove_with_helpers(scene, node)
    scene.GetSubjectHierarchyNode().RemoveItem(nodes.folder_item_id)


# ---------------------------------------------------------------------------- files (cardio recon fit, predict)
def _checked_out_dir(out_dir: str | os.PathLike, names: Sequence[str], overwrite: bool) -> Path:
    """The output folder, refused before any work when it is a file or (without ``overwrite``)
    already holds ``<name>.vtk`` for one of ``names``, ``meshes.seg.nrrd`` or ``metrics.json``."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise CardioInputError(str(out), "exists and is not a folder")
    targets = [out / f"{name}.vtk" for name in names] + [out / SEGMENTATION_FILE, out / METRICS_FILE]
    existing = [t.name for t in targets if t.exists()]
    if existing and not overwrite:
        raise CardioInputError(str(out), f"already holds {', '.join(existing)}",
                               "choose another folder or pass --overwrite")
    return out


@contextmanager
def _file_nodes(*files: tuple[str | os.PathLike, str]) -> Iterator[list[Any]]:
    """Nodes read from ``(path, kind)`` files (:func:`read_node`), removed from the scene when
    the block ends (also when a later file cannot be read)."""
    scene = slicer_app().scene
    nodes: list[Any] = []
    try:
        for path, kind in files:
            nodes.append(read_node(path, kind=kind))
        yield nodes
    finally:
        for node in nodes:
            remove_with_helpers(scene, node)


def _write_outputs(nodes: ReconNodes, out: Path, overwrite: bool, inputs: Mapping[str, str]) -> dict[str, Any]:
    """Write ``out/<structure>.vtk`` (RAS mm), ``out/meshes.seg.nrrd`` and ``out/metrics.json``
    (the metrics plus ``inputs``), each atomically, then remove the nodes from the scene.
    Returns the metrics written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, node in nodes.model_nodes.items():
            write_node(node, out / f"{name}.vtk", overwrite=overwrite, coordinate_system="RAS")
        write_node(nodes.segmentation_node, out / SEGMENTATION_FILE, overwrite=overwrite)
        metrics = nodes.metrics | dict(inputs)
        write_json(out / METRICS_FILE, metrics)
    finally:
        remove_outputs(nodes)
    return metrics


def fit_label_file(
    labels_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    structures: RuleSpec = "default",
    steps: int = 150,
    device: str = "auto",
    overwrite: bool = False,
    use_mie: bool = True,
    vr_points: int = VR_POINTS,
    svr_points: int = SVR_POINTS,
    progress: ProgressFn | None = None,
    view_paths: Sequence[str | os.PathLike] = (),
    view_structures: Sequence[Collection[str] | None] = (),
) -> dict[str, Any]:
    """``cardio recon fit``: fit a label map file and write ``out_dir/<structure>.vtk`` (RAS mm,
    one per fitted structure, with the region array), ``out_dir/meshes.seg.nrrd`` and
    ``out_dir/metrics.json``.

    Args:
        labels_path: label map (.nii.gz, .nii, .nrrd) coded as ``structures`` says.
        out_dir: output folder (created if needed).
        structures: "default" (labels 1..7), "mmwhs" (205, 420, 500, 550, 600, 820, 850),
            "mmwhs-reindexed", or a rule-set JSON file.
        steps, device, use_mie: fit settings; vr_points, svr_points: samples per rule for VR and
            SVR. overwrite: replace existing output files. progress: ``progress(fraction, message)``.
        view_paths: more label map files of the same heart, coded the same way (long-axis
            slices; :func:`reconstruct_from_labelmap`'s ``view_nodes``); view_structures: the
            structures each annotates (its ``view_structures``).

    Returns:
        the metrics dict written to ``metrics.json``.

    Raises:
        CardioInputError: an unreadable file, no structure of the coding in it, or (without
            ``overwrite``) output files already there, checked before any fitting. Every file is
            written atomically; the nodes used on the way are removed from the scene.
    """
    rules = resolve_rule_set(structures)
    out = _checked_out_dir(out_dir, rules.names, overwrite)
    with _file_nodes((labels_path, "labelmap"), *((path, "labelmap") for path in view_paths)) as (labelmap, *views):
        nodes = reconstruct_from_labelmap(labelmap, rules=rules, steps=steps, use_mie=use_mie, device=device,
                                          vr_points=vr_points, svr_points=svr_points, progress=progress,
                                          view_nodes=views, view_structures=view_structures)
    return _write_outputs(nodes, out, overwrite, {"labels": str(Path(labels_path).resolve()),
                                                  "view_labels": [str(Path(v).resolve()) for v in view_paths]})


def predict_image_file(
    image_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    structures: RuleSpec = "default",
    labels_path: str | os.PathLike | None = None,
    device: str = "auto",
    overwrite: bool = False,
    centre_ras: Sequence[float] | None = None,
    refine_steps: int = 0,
    vr_points: int = VR_POINTS,
    svr_points: int = SVR_POINTS,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """``cardio recon predict``: predict the meshes of a CT or MR image file and write the same
    files as :func:`fit_label_file` (``out_dir/<structure>.vtk``, ``meshes.seg.nrrd`` on the
    image's grid, ``metrics.json``).

    Args:
        image_path: the image (.nrrd, .nii, .nii.gz), read as a scalar volume.
        out_dir: output folder (created if needed).
        model: a predictor file written by ``cardio recon train``; default the bundled model.
        structures: the label coding of ``labels_path`` ("default", "mmwhs", ... or a rule-set
            JSON file) and the rules measured.
        labels_path: optional reference label map for Dice, HD95 and Chamfer.
        centre_ras: (3,) RAS mm centre of the network's field of view (default: the image's
            centre); give it when the heart is far from the middle of a large field of view.
        device, overwrite, vr_points, svr_points, progress: as :func:`fit_label_file`.

    Returns:
        the metrics dict written to ``metrics.json`` (with ``warnings`` from the network).

    Raises:
        CardioInputError: an unreadable file, a reference without any structure of the coding,
            or (without ``overwrite``) output files already there, checked before any work.
            WeightsError: no such model file, or the bundled model is not installed.
    """
    rules = resolve_rule_set(structures)
    out = _checked_out_dir(out_dir, rules.names, overwrite)
    predictor = load_predictor(model, device)
    files = [(image_path, "volume")] + ([(labels_path, "labelmap")] if labels_path else [])
    with _file_nodes(*files) as read:
        nodes = reconstruct_from_volume(read[0], predictor=predictor, rules=rules,
                                        reference_labels=read[1] if labels_path else None, centre_ras=centre_ras,
                                        refine_steps=refine_steps, vr_points=vr_points, svr_points=svr_points,
                                        progress=progress)
    inputs = {"image": str(Path(image_path).resolve()),
              "model": str(Path(model).expanduser().resolve()) if model else BUNDLED_PREDICTOR}
    if labels_path:
        inputs["labels"] = str(Path(labels_path).resolve())
    return _write_outputs(nodes, out, overwrite, inputs)


# ---------------------------------------------------------------------------- demo part
#: Demo grid: 2 x 2 x 3 mm voxels, rotated 25 degrees about S and 15 about R (oblique, anisotropic).
DEMO_SHAPE = (72, 72, 48)
DEMO_SPACING_MM = (2.0, 2.0, 3.0)
DEMO_ROTATION_DEG = (15.0, 0.0, 25.0)
DEMO_STEPS = 50
DEMO_QUALITY_POINTS = (4000, 2000)


def demo_segmentation(seed: int = 0, name: str = "CardioReconstruct demo segmentation") -> Any:
    """A phantom heart (:func:`cardiocore.phantoms.heart.heart_label_phantom`) on the demo grid
    as a new segmentation node with Segment-Editor-like segment names."""
    from scipy.spatial.transform import Rotation

    from cardiocore.phantoms.heart import heart_label_phantom

    direction = Rotation.from_euler("xyz", DEMO_ROTATION_DEG, degrees=True).as_matrix()
    phantom = heart_label_phantom(shape=DEMO_SHAPE, spacing=DEMO_SPACING_MM, direction=direction, seed=seed)
    masks = {s.name: phantom.labels == s.label for s in phantom.structures}
    colours = {s.name: tuple(c / 255.0 for c in s.color) for s in phantom.structures}
    return arrays_to_segmentation(masks, phantom.ijk_to_ras, colours=colours, name=name)


def recon_demo_part(
    workdir: str | os.PathLike, seed: int, progress: Callable[[str], None], seg_node: Any = None
) -> dict[str, Any]:
    """CardioReconstruct for ``cardio demo``: fit the template to a phantom segmentation (``seg_node``,
    or a fresh one on the demo grid), add the outputs to the scene and render ``recon.png``.

    Returns:
        figures for the report: per-structure Dice, max VR and SVR (%), all watertight,
        self-intersections, fit steps and seconds.
    """
    from cardiocore.render import SceneMesh, render_panels

    progress("CardioReconstruct: fitting the multi-chamber template to the phantom segmentation")
    started = time.perf_counter()
    seg_node = seg_node if seg_node is not None else demo_segmentation(seed)
    vr_points, svr_points = DEMO_QUALITY_POINTS
    nodes = reconstruct_from_segmentation(
        seg_node, steps=DEMO_STEPS, seed=seed, vr_points=vr_points, svr_points=svr_points, device="cpu",
        folder_name="CardioReconstruct demo",
    )
    arrays = segmentation_to_arrays(seg_node)
    structure_of = guess_mapping(seg_node)
    index = dict(zip(arrays.segment_ids, range(len(arrays.segment_ids)), strict=True))
    inputs, outputs = [], []
    for segment_id, name in structure_of.items():
        node = nodes.model_nodes.get(name)
        if node is None:
            continue
        colour = node.GetDisplayNode().GetColor()
        opacity = 0.35 if name == "lv_myocardium" else 1.0
        verts, faces = surface_from_mask(arrays.masks[index[segment_id]], arrays.ijk_to_ras)
        inputs.append(SceneMesh(np.asarray(verts), np.asarray(faces), colour, opacity, name))
        mesh = model_to_mesh(node)
        outputs.append(SceneMesh(mesh.verts, mesh.faces, colour, opacity, name))
    summary = nodes.metrics["summary"]
    render_panels(
        [("input segmentation (marching cubes)", inputs),
         (f"fitted template, min Dice {summary['min Dice']:.2f}, max VR {summary['max VR (%)']:.2f} %", outputs)],
        Path(workdir) / "recon.png", elevation=15.0, azimuth=75.0,
    )
    return {
        "dice": {name: round(m["dice"], 3) for name, m in nodes.metrics["structures"].items()},
        "max_vr_percent": round(summary["max VR (%)"], 3),
        "max_svr_percent": round(summary["max SVR (%)"], 3),
        "all_watertight": summary["all watertight"],
        "self_intersections": summary["self-intersections"],
        "steps": DEMO_STEPS,
        "seconds": round(time.perf_counter() - started, 1),
    }


def summary_text(metrics: Mapping[str, Any]) -> str:
    """A few lines for a status display: per structure Dice (when measured) and volume, the worst
    rule, the mesh checks, missing structures, Predict-mode warnings, whether thick slices were
    fitted on their planes, and the time taken."""
    summary = metrics["summary"]
    lines = [
        (f"{name}: Dice {m['dice']:.3f}, " if m["dice"] is not None else f"{name}: ") + f"{m['volume_ml']:.1f} ml"
        for name, m in metrics["structures"].items()
    ]
    lines.append(f"max VR {summary['max VR (%)']:.2f} %, max SVR {summary['max SVR (%)']:.2f} %; "
                 f"watertight: {'all' if summary['all watertight'] else 'NOT all'}; "
                 f"self-intersections: {summary['self-intersections']}")
    absent = sorted(set(metrics.get("missing", [])) | set(metrics.get("unmapped", [])))
    if absent:
        lines.append(f"not reconstructed (no segment, no voxels or not predicted): {', '.join(absent)}")
    lines += [f"warning: {warning}" for warning in metrics.get("warnings", [])]
    if metrics.get("thick_slice_axis") is not None:
        lines.append("thick slices: fitted on the slice planes"
                     + (f", with {metrics['views']} more view(s)" if metrics.get("views") else ""))
    how = f"{metrics['steps']} steps" if metrics["mode"] == "fit" else f"predicted by {metrics['model']}"
    lines.append(f"{how} on {metrics['device']}, {metrics['seconds']['total']:.1f} s")
    return "\n".join(lines)
