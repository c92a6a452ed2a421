"""CardioReconstruct in MRML terms: segmentation or labelmap nodes in, multi-chamber meshes out.

The computing is :mod:`cardiocore.recon`'s (``fit_template`` deforms the bundled template,
``evaluate_meshes`` measures the result); this module only reads nodes into a label array,
and writes the results as NEW nodes in a subject-hierarchy folder:

- one model node per fitted structure (world RAS mm, the template's topology, the structure's
  colour, the per-vertex array :data:`REGION_ARRAY` holding the structure's index in the
  template, as ``HeartTemplate.merged()`` numbers regions);
- a segmentation node made from the meshes (each mesh voxelised on the input's grid);
- a table node with one row per structure (volumes, Dice, HD95, watertightness, worst VR/SVR of
  the rules it is part of) and a table node with one row per rule (VR, SVR, voxel VR).

The input nodes are never changed, and nothing is added to the scene when reconstruction fails
or is cancelled. :func:`fit_label_file` is the ``cardio recon fit`` command's body and
:func:`recon_demo_part` the ``cardio demo`` part.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cardiocore.errors import CardioInputError
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
from cardiocore.recon.fit import FitResult, FitWeights, fit_template
from cardiocore.recon.rules import RuleSet, guess_structure, resolve_rule_set
from cardiocore.recon.template import HeartTemplate, load_template
from cardiocore.train.atomic import atomic_write

ProgressFn = Callable[[float, str], None]
"""``progress(fraction in [0, 1], message)``."""

RuleSpec = RuleSet | str | os.PathLike | Mapping[str, Any] | None
"""A rule set, "default", "mmwhs", "mmwhs-reindexed", a JSON path or dict (see ``resolve_rule_set``)."""

SEGMENTATION_FILE = "meshes.seg.nrrd"
METRICS_FILE = "metrics.json"

# Share of the progress bar per stage: reading, fitting, measuring, writing nodes.
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

    Raises:
        CardioInputError: not a segmentation, an empty mapping, unknown segments or structures,
            no mapped structure with voxels. ReconstructionCancelled: ``should_stop`` returned
            True. Nothing is added to the scene in either case.
    """
    rule_set = resolve_rule_set(rules)
    _segmentation_of(seg_node)
    if mapping is None:
        mapping = guess_mapping(seg_node, rule_set)
    mapping = _checked_mapping(seg_node, mapping, rule_set)
    _report(progress, 0.0, "reading the segmentation")
    arrays = segmentation_to_arrays(seg_node, reference_volume)
    labels = np.zeros(arrays.masks[0].shape, dtype=np.int16)
    for segment_id, mask in zip(arrays.segment_ids, arrays.masks, strict=True):
        if segment_id in mapping:
            labels[mask] = rule_set.structure(mapping[segment_id]).label
    segment_names = dict(zip(arrays.segment_ids, arrays.names, strict=True))
    sources = {s: [segment_names[i] for i, t in mapping.items() if t == s] for s in set(mapping.values())}
    return _reconstruct_to_scene(
        labels, arrays.ijk_to_ras, rule_set.subset(sources), sources,
        options=FitOptions(steps, weights, use_mie, seed, vr_points, svr_points), template=template,
        device=device, progress=progress, should_stop=should_stop,
        folder_name=folder_name or f"CardioReconstruct {seg_node.GetName()}",
        extra={"mapping": {segment_names[i]: s for i, s in mapping.items()},
               "unmapped": [n for n in rule_set.names if n not in sources]},
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
) -> ReconNodes:
    """As :func:`reconstruct_from_segmentation`, from a labelmap volume coded as ``rules`` says
    (default labels 1..7; ``rules="mmwhs"`` for MM-WHS codes 205, 420, ...).

    Raises:
        CardioInputError: not a labelmap volume node, or no structure of ``rules`` in it.
    """
    if labelmap_node is None or not labelmap_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise CardioInputError("input", f"expected a labelmap volume node, got {describe_node(labelmap_node)}",
                               "convert a segmentation or choose the labelmap")
    rule_set = resolve_rule_set(rules)
    _report(progress, 0.0, "reading the labelmap")
    labels, ijk_to_ras = volume_to_array(labelmap_node)
    return _reconstruct_to_scene(
        labels, ijk_to_ras, rule_set, {s.name: [f"label {s.label}"] for s in rule_set.structures},
        options=FitOptions(steps, weights, use_mie, seed, vr_points, svr_points), template=template,
        device=device, progress=progress, should_stop=should_stop,
        folder_name=folder_name or f"CardioReconstruct {labelmap_node.GetName()}", extra={},
    )


def _report(progress: ProgressFn | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


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
) -> ReconNodes:
    """Fit, measure, then add every node at the end (all or nothing)."""
    started = time.perf_counter()
    template = template or load_template()
    torch_device = resolve_device(device)

    def fit_progress(step: int, steps: int, _: Mapping[str, float]) -> None:
        _report(progress, _FIT_START + (_FIT_END - _FIT_START) * step / steps, f"fitting: step {step} of {steps}")

    _report(progress, _FIT_START, "fitting the template")
    result = fit_template(
        labels, ijk_to_ras, rules, template, weights=options.weights, steps=options.steps, use_mie=options.use_mie,
        device=torch_device, seed=options.seed, progress=fit_progress, should_stop=should_stop,
    )
    if result.cancelled or (should_stop is not None and should_stop()):
        raise ReconstructionCancelled("reconstruction cancelled; nothing was added to the scene")
    if result.missing:
        logging.getLogger(__name__).warning(
            "CardioReconstruct: no voxels (or too few) for %s; fitted %s",
            ", ".join(result.missing), ", ".join(result.names),
        )
    _report(progress, _FIT_END, "measuring Dice, HD95, violations and watertightness")
    meshes = dict(zip(result.names, result.meshes(), strict=True))
    quality = evaluate_meshes(
        meshes, labels, ijk_to_ras, {s.name: s.label for s in rules.structures}, rules,
        vr_points=options.vr_points, svr_points=options.svr_points, seed=options.seed,
    )
    metrics = quality.to_dict() | dict(extra) | {
        "fitted": list(result.names),
        "device": str(torch_device),
        "steps": options.steps,
        "use_mie": options.use_mie,
        "seconds": {**{f"fit_{k}": v for k, v in result.seconds.items()}, "total": time.perf_counter() - started},
    }
    _report(progress, _EVAL_END, "adding the models, segmentation and tables")
    nodes = _add_nodes(result, quality, rules, template, labels.shape, ijk_to_ras, sources, folder_name, metrics)
    metrics["seconds"]["total"] = time.perf_counter() - started
    _report(progress, 1.0, "done")
    return nodes


def _add_nodes(
    result: FitResult,
    quality: ReconMetrics,
    rules: RuleSet,
    template: HeartTemplate,
    shape: tuple[int, ...],
    ijk_to_ras: np.ndarray,
    sources: Mapping[str, list[str]],
    folder_name: str,
    metrics: dict[str, Any],
) -> ReconNodes:
    """All output nodes, or none: nodes made before an error are removed again."""
    scene = slicer_app().scene
    created: list[Any] = []
    try:
        colours = {name: tuple(c / 255.0 for c in rules.structure(name).color) for name in result.names}
        models = {}
        masks = {}
        for name, (verts, faces) in zip(result.names, result.meshes(), strict=True):
            region = np.full(verts.shape[0], template.names.index(name), dtype=np.int32)
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


# ---------------------------------------------------------------------------- files (cardio recon fit)
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

    Returns:
        the metrics dict written to ``metrics.json``.

    Raises:
        CardioInputError: an unreadable file, no structure of the coding in it, or (without
            ``overwrite``) output files already there, checked before any fitting. Every file is
            written atomically; the nodes used on the way are removed from the scene.
    """
    rules = resolve_rule_set(structures)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise CardioInputError(str(out), "exists and is not a folder")
    targets = [out / f"{name}.vtk" for name in rules.names] + [out / SEGMENTATION_FILE, out / METRICS_FILE]
    existing = [t.name for t in targets if t.exists()]
    if existing and not overwrite:
        raise CardioInputError(str(out), f"already holds {', '.join(existing)}",
                               "choose another folder or pass --overwrite")
    app = slicer_app()
    labelmap = read_node(labels_path, kind="labelmap")
    try:
        nodes = reconstruct_from_labelmap(labelmap, rules=rules, steps=steps, use_mie=use_mie, device=device,
                                          vr_points=vr_points, svr_points=svr_points, progress=progress)
    finally:
        remove_with_helpers(app.scene, labelmap)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, node in nodes.model_nodes.items():
            write_node(node, out / f"{name}.vtk", overwrite=overwrite, coordinate_system="RAS")
        write_node(nodes.segmentation_node, out / SEGMENTATION_FILE, overwrite=overwrite)
        metrics = nodes.metrics | {"labels": str(Path(labels_path).resolve())}
        with atomic_write(out / METRICS_FILE) as stream:
            stream.write(json.dumps(metrics, indent=2).encode())
    finally:
        remove_outputs(nodes)
    return metrics


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
    """A few lines for a status display: per structure Dice and volume, the worst rule, the mesh
    checks, missing structures and the time taken."""
    summary = metrics["summary"]
    lines = [
        f"{name}: Dice {m['dice']:.3f}, {m['volume_ml']:.1f} ml" for name, m in metrics["structures"].items()
    ]
    lines.append(f"max VR {summary['max VR (%)']:.2f} %, max SVR {summary['max SVR (%)']:.2f} %; "
                 f"watertight: {'all' if summary['all watertight'] else 'NOT all'}; "
                 f"self-intersections: {summary['self-intersections']}")
    absent = sorted(set(metrics.get("missing", [])) | set(metrics.get("unmapped", [])))
    if absent:
        lines.append(f"not reconstructed (no segment or no voxels): {', '.join(absent)}")
    lines.append(f"{metrics['steps']} steps on {metrics['device']}, {metrics['seconds']['total']:.1f} s")
    return "\n".join(lines)
