"""Reconstruction metrics (cardiocore.recon.evaluate), the Slicer baseline (cardiocore.recon.baseline)
and the smoothing filters it uses (cardiocore.geometry.smoothing)."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import boundary_edges, vertex_normals
from cardiocore.geometry.primitives import box_mesh, icosphere
from cardiocore.geometry.smoothing import (
    slicer_smoothing_parameters,
    taubin_smooth,
    windowed_sinc_coefficients,
    windowed_sinc_smooth,
)
from cardiocore.geometry.volume import enclosed_volume
from cardiocore.phantoms.heart import grid_ijk_to_ras, heart_label_phantom, voxel_centres_ras
from cardiocore.recon.baseline import baseline_meshes, run_baseline_case
from cardiocore.recon.evaluate import ReconMetrics, RuleMetrics, StructureMetrics, evaluate_meshes, is_manifold
from cardiocore.recon.rules import Rule, RuleSet, Structure

# A coarse phantom (4.5 mm voxels) keeps the file fast; three structures, three disjoint rules.
SHAPE, SPACING = (32, 32, 32), (4.5, 4.5, 4.5)
NAMES = ("lv_cavity", "lv_myocardium", "rv")
POINTS = {"vr_points": 3000, "svr_points": 1500}


@pytest.fixture(scope="module")
def case() -> dict:
    phantom = heart_label_phantom(SHAPE, SPACING)
    rules = RuleSet.default().subset(NAMES)
    label_of = {s.name: s.label for s in rules.structures}
    meshes, seconds = run_baseline_case(phantom.labels, phantom.ijk_to_ras, rules, label_of)
    metrics = evaluate_meshes(meshes, phantom.labels, phantom.ijk_to_ras, label_of, rules, **POINTS)
    return {"phantom": phantom, "label_of": label_of, "meshes": meshes, "seconds": seconds, "metrics": metrics}


def test_baseline_meshes_match_the_labels(case: dict) -> None:
    """Marching cubes puts the surface half-way between inside and outside voxel centres; Slicer's
    default smoothing (windowed sinc, pass band 0.01) then removes features a few voxels wide,
    moving the surface by up to about a voxel where it is most curved and shrinking thin parts.
    Dice = 1 - O(shift * area / volume): with 4.5 mm voxels we measured 0.976 (LV cavity), 0.964
    (myocardium) and 0.956 (RV, a thin crescent), volumes 2-6 % low, and overlaps of independently
    smoothed neighbours of at most 2.5 % of a structure's volume (VR); the bounds leave a margin.
    Finer grids do better (Dice 0.97-0.99 at about 2 mm on the phantom and on MM-WHS)."""
    metrics: ReconMetrics = case["metrics"]
    assert list(case["meshes"]) == list(NAMES)
    assert case["seconds"] > 0
    thresholds = {"lv_cavity": 0.95, "lv_myocardium": 0.93, "rv": 0.93}
    voxel_diagonal = math.sqrt(3) * SPACING[0]
    for name, m in metrics.structures.items():
        assert m.dice > thresholds[name], (name, m.dice)
        assert m.hd95_mm <= voxel_diagonal
        assert 0 < m.chamfer_mm < SPACING[0] / 2  # half a voxel: surfaces a fraction of a voxel apart
        assert m.watertight and m.self_intersections == 0
        assert m.lse_mm2 > 0
        assert m.label_volume_ml * 0.9 < m.volume_ml < m.label_volume_ml
    # Independently smoothed surfaces overlap only in thin slivers where they share a wall.
    assert len(metrics.rules) == 3 and not metrics.skipped_rules
    for r in metrics.rules:
        assert r.kind == "disjoint"
        assert 0 <= r.vr < 0.05 and 0 <= r.voxel_vr < 0.05 and 0 <= r.svr <= 1


def test_metrics_json_and_rows(case: dict) -> None:
    metrics: ReconMetrics = case["metrics"]
    data = json.loads(json.dumps(metrics.to_dict(), allow_nan=False))
    assert set(data) == {"structures", "rules", "skipped_rules", "missing", "settings", "summary"}
    assert data["settings"] == {**POINTS, "contact_mm": 0.1, "seed": 0}
    structure_keys = {"dice", "hd95_mm", "chamfer_mm", "lse_mm2", "closed", "manifold", "watertight",
                      "self_intersections", "volume_ml", "label_volume_ml"}
    assert set(data["structures"]) == set(NAMES)
    assert all(set(values) == structure_keys for values in data["structures"].values())
    assert all(set(r) == {"kind", "a", "b", "vr", "svr", "voxel_vr"} for r in data["rules"])
    assert set(data["summary"]) == {"min Dice", "mean Dice", "max VR (%)", "max SVR (%)",
                                    "mean LSE (mm^2)", "all watertight", "self-intersections"}
    rows = metrics.rows()
    assert len(rows) == 6 and len({tuple(row) for row in rows}) == 1  # same columns everywhere
    assert {"Dice", "HD95 (mm)", "Chamfer (mm)", "LSE (mm^2)", "VR (%)", "SVR (%)"} <= set(rows[0])
    assert rows[0]["VR (%)"] is None and rows[-1]["Dice"] is None
    assert rows[-1]["VR (%)"] == pytest.approx(100 * metrics.rules[-1].vr)


def test_mesh_grown_into_its_neighbour_raises_the_disjoint_vr(case: dict) -> None:
    phantom, label_of = case["phantom"], case["label_of"]
    rules = RuleSet.default().subset(["lv_myocardium", "rv"])
    verts, faces = case["meshes"]["rv"]
    grown = verts + 5.0 * vertex_normals(verts, faces)  # 5 mm outwards, into the septum
    meshes = {"lv_myocardium": case["meshes"]["lv_myocardium"], "rv": (grown, faces)}
    metrics = evaluate_meshes(meshes, phantom.labels, phantom.ijk_to_ras, label_of, rules, **POINTS)
    before = next(r for r in case["metrics"].rules if {r.a, r.b} == {"lv_myocardium", "rv"})
    after = metrics.rules[0]
    assert after.vr > before.vr + 0.1 and after.svr > before.svr + 0.05 and after.voxel_vr > 0.1
    assert metrics.structures["rv"].dice < case["metrics"].structures["rv"].dice
    assert metrics.missing == ["lv_cavity"]


@functools.cache
def _sphere_labels() -> tuple[np.ndarray, np.ndarray]:
    """Label map (24^3, 2 mm) of a core (1, radius 10 mm) centred in a shell (2, radius 18 mm)."""
    matrix = grid_ijk_to_ras((24, 24, 24), (2.0, 2.0, 2.0))
    radius = np.linalg.norm(voxel_centres_ras((24, 24, 24), matrix), axis=1).reshape(24, 24, 24)
    return np.where(radius < 10.0, 1, np.where(radius < 18.0, 2, 0)).astype(np.int16), matrix


def test_inside_rule_violation_is_detected() -> None:
    labels, matrix = _sphere_labels()
    rules = RuleSet((Structure("core", 1, (255, 0, 0)), Structure("solid", 2, (0, 0, 255))),
                    (Rule("inside", "core", "solid"),))
    label_of = {"core": 1, "solid": (1, 2)}  # the solid is the union of both labels
    solid = icosphere(2, 18.0)
    inside = evaluate_meshes({"core": icosphere(2, 10.0), "solid": solid}, labels, matrix, label_of, rules, **POINTS)
    assert inside.rules[0].vr == 0 and inside.rules[0].svr == 0
    assert inside.structures["core"].dice > 0.9 and inside.structures["solid"].dice > 0.95
    # Core moved 12 mm: the part beyond the solid's surface (radius 18 mm) violates.
    moved = icosphere(2, 10.0, center=(12.0, 0.0, 0.0))
    outside = evaluate_meshes({"core": moved, "solid": solid}, labels, matrix, label_of, rules, **POINTS)
    # Fractions of the moved ball beyond 18 mm (Monte Carlo, 2e6 points): volume 0.168, surface 0.333.
    assert outside.rules[0].vr == pytest.approx(0.168, abs=0.03)
    assert outside.rules[0].svr == pytest.approx(0.333, abs=0.04)


def test_touching_walls_do_not_count_in_svr_but_penetrations_do() -> None:
    """Two 10 mm cubes sharing the face x = 0 have coincident surfaces there: with the 0.1 mm
    contact depth nothing violates; pushed 1 mm into each other, A's face inside B (100 mm^2)
    and the 0.9 mm-deep strips of its four sides (36 mm^2) violate: 136 / 600 of its area."""
    matrix = grid_ijk_to_ras((12, 12, 12), (2.0, 2.0, 2.0))
    x = voxel_centres_ras((12, 12, 12), matrix)[:, 0].reshape(12, 12, 12)
    labels = np.where(x < 0, 1, 2).astype(np.int16)
    rules = [Rule("disjoint", "a", "b")]
    box_a = box_mesh((10.0, 10.0, 10.0), (-5.0, 0.0, 0.0))
    for shift, expected in ((0.0, 0.0), (1.0, 136 / 600)):
        box_b = box_mesh((10.0, 10.0, 10.0), (5.0 - shift, 0.0, 0.0))
        metrics = evaluate_meshes({"a": box_a, "b": box_b}, labels, matrix, {"a": 1, "b": 2}, rules, **POINTS)
        assert metrics.rules[0].svr == pytest.approx(expected, abs=0.03)
        assert metrics.rules[0].vr == pytest.approx(shift / 10, abs=0.02)


def test_watertightness_flags_open_and_non_manifold_meshes() -> None:
    labels, matrix = _sphere_labels()
    verts, faces = icosphere(2, 10.0)
    metrics = evaluate_meshes({"core": (verts, faces[4:])}, labels, matrix, {"core": 1}, [], **POINTS)
    core = metrics.structures["core"]
    assert not core.closed and core.manifold and not core.watertight
    assert metrics.to_dict()["structures"]["core"]["watertight"] is False
    assert not metrics.summary()["all watertight"]
    assert is_manifold(faces)
    assert not is_manifold(torch.cat([faces[:1].flip(1), faces[1:]]))  # one face flipped
    n = verts.shape[0]
    bowtie = torch.cat([faces, torch.where(faces == 0, faces, faces + n)])  # two spheres, one shared vertex
    assert not is_manifold(bowtie)


def test_unknown_structure_and_missing_rule_meshes() -> None:
    labels, matrix = _sphere_labels()
    with pytest.raises(CardioInputError, match="no label"):
        evaluate_meshes({"liver": icosphere(2, 10.0)}, labels, matrix, {"core": 1}, [])
    rules = [Rule("disjoint", "core", "solid")]
    metrics = evaluate_meshes({"core": icosphere(2, 10.0)}, labels, matrix, {"core": 1, "solid": 2}, rules)
    assert metrics.rules == [] and metrics.skipped_rules == ["core disjoint solid"]
    assert metrics.missing == ["solid"]


def test_baseline_leaves_out_absent_structures_and_checks_factors() -> None:
    labels, matrix = _sphere_labels()
    meshes = baseline_meshes(labels, matrix, {"core": 1, "solid": (1, 2), "absent": 7})
    assert list(meshes) == ["core", "solid"]
    volume_ml = float(enclosed_volume(meshes["solid"][0].double(), meshes["solid"][1])) / 1000
    assert volume_ml == pytest.approx(4 / 3 * math.pi * 18.0**3 / 1000, rel=0.06)
    with pytest.raises(CardioInputError, match="decimation_factor"):
        baseline_meshes(labels, matrix, {"core": 1}, decimation_factor=1.0)
    decimated = baseline_meshes(labels, matrix, {"core": 1}, decimation_factor=0.5)["core"]
    assert decimated[0].shape[0] == pytest.approx(meshes["core"][0].shape[0] / 2, rel=0.05)


@pytest.mark.parametrize("smooth", ["taubin", "windowed_sinc"])
def test_smoothing_denoises_and_keeps_volume(smooth: str) -> None:
    verts, faces = icosphere(4, 10.0)
    noisy = verts + 0.3 * torch.randn(verts.shape, generator=torch.Generator().manual_seed(0))
    error_before = float((noisy.norm(dim=1) - 10.0).abs().mean())
    if smooth == "taubin":
        smoothed = taubin_smooth(noisy, faces, iterations=20, pass_band=0.1)
    else:
        smoothed = windowed_sinc_smooth(noisy, faces, **slicer_smoothing_parameters(0.5))
    assert float((smoothed.norm(dim=1) - 10.0).abs().mean()) < 0.5 * error_before
    assert float(enclosed_volume(smoothed, faces)) == pytest.approx(float(enclosed_volume(verts, faces)), rel=0.03)
    # Open meshes keep their rim.
    function = taubin_smooth if smooth == "taubin" else windowed_sinc_smooth
    rim = torch.unique(boundary_edges(faces[4:]))
    open_smoothed = function(noisy, faces[4:])
    assert rim.numel() > 0 and torch.equal(open_smoothed[rim], noisy[rim])
    assert not torch.equal(open_smoothed, noisy)


def test_windowed_sinc_matches_slicer_settings() -> None:
    """Slicer's factor s gives VTK's order 20 and pass band 10^(-4 s); the filter passes k = 0 and
    k_PB unchanged (f = 1, VTK's condition on sigma) and removes high frequencies."""
    assert slicer_smoothing_parameters(0.5) == {"iterations": 20, "pass_band": pytest.approx(0.01)}
    coefficients = windowed_sinc_coefficients(20, 0.01)

    def transfer(k: float) -> float:
        return sum(c * math.cos(i * math.acos(1 - k / 2)) for i, c in enumerate(coefficients))

    assert transfer(0.01) == pytest.approx(1.0, abs=1e-6)
    assert transfer(0.0) == pytest.approx(1.0, abs=0.01)
    assert abs(transfer(1.0)) < 0.01 and abs(transfer(2.0)) < 0.01
    verts, faces = icosphere(2, 10.0)
    assert torch.equal(windowed_sinc_smooth(verts, faces, **slicer_smoothing_parameters(0.0)), verts)
    with pytest.raises(CardioInputError, match="pass_band"):
        windowed_sinc_smooth(verts, faces, pass_band=3.0)
    with pytest.raises(CardioInputError, match="pass_band"):
        taubin_smooth(verts, faces, pass_band=3.0)


def test_the_summary_line_leaves_out_figures_that_need_labels() -> None:
    """Without reference labels Dice is NaN: the summary's Dice columns are NaN, the VR column
    still reports the rules, and a NaN never decides a min or max."""

    def structure(name: str, dice: float) -> StructureMetrics:
        return StructureMetrics(name, dice, float("nan"), float("nan"), 0.2, True, True, 0, 10.0, float("nan"))

    rules = [RuleMetrics("disjoint", "rv", "la", float("nan"), 0.0, 0.0),
             RuleMetrics("disjoint", "lv", "la", 0.01, 0.02, 0.0)]
    unlabelled = ReconMetrics({"rv": structure("rv", float("nan")), "la": structure("la", float("nan"))}, rules)
    line = unlabelled.summary()
    assert math.isnan(line["min Dice"]) and math.isnan(line["mean Dice"])
    assert line["max VR (%)"] == pytest.approx(1.0) and line["max SVR (%)"] == pytest.approx(2.0)
    mixed = ReconMetrics({"rv": structure("rv", float("nan")), "la": structure("la", 0.9)}, [])
    assert mixed.summary()["min Dice"] == 0.9 and mixed.summary()["max VR (%)"] == 0.0
