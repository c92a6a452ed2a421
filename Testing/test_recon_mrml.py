"""CardioReconstruct on the headless MRML scene: segment-to-structure mapping, segmentation node
in -> model, segmentation and table nodes out on an oblique anisotropic grid (RAS preserved, input
untouched), cancel and bad input leave the scene as it was, ``cardio recon fit`` files; Predict
mode (a tiny untrained network: the plumbing, not accuracy): image volume in -> the same outputs,
RAS preserved on an oblique grid, reference labels, cancel, bad input, ``cardio recon predict``.

The module's own scenarios (``CardioReconstruct/CardioReconstruct.py``) hold the main checks, so
Slicer's self-test and pytest test the same thing; thresholds are explained there.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("slicer", reason="the headless MRML tests need slicer-core (pip install .[headless])")

from conftest import REPO_ROOT  # noqa: E402
from module_checks import import_module_file_headless

from cardiocore.cli import main as cardio
from cardiocore.errors import CardioInputError, VolumeError, WeightsError
from cardiocore.geometry.primitives import icosphere
from cardiocore.mrml.recon import (
    ReconstructionCancelled,
    centre_from_markups,
    guess_mapping,
    model_problem,
    reconstruct_from_labelmap,
    reconstruct_from_segmentation,
    reconstruct_from_volume,
    summary_text,
)
from cardiocore.mrml.storage import write_node
from cardiocore.mrml.tables import table_to_columns
from cardiocore.mrml.volumes import array_to_volume
from cardiocore.recon.predict import load_predictor
from cardiocore.recon.template import HeartTemplate

MODULE = import_module_file_headless(REPO_ROOT / "CardioReconstruct" / "CardioReconstruct.py")


class _Checks:
    """unittest-style assertions for the module's scenario functions."""

    def __init__(self) -> None:
        import unittest

        self._case = unittest.TestCase()
        self._case.maxDiff = None

    def __getattr__(self, name: str):
        return getattr(self._case, name)


def test_guess_mapping(app) -> None:
    MODULE.scenario_guess_mapping(_Checks())


def test_reconstruct_segmentation_on_oblique_grid(app) -> None:
    result = MODULE.scenario_reconstruct(_Checks())
    assert result.metrics["summary"]["all watertight"]
    assert result.metrics["device"] == "cpu"
    assert f"{MODULE.TEST_STEPS} steps on cpu" in summary_text(result.metrics)


def test_fit_label_file_mmwhs(app, tmp_path) -> None:
    MODULE.scenario_fit_label_file(_Checks(), tmp_path)



def test_cli_fit_on_a_thick_slice_stack_fits_the_slice_planes(app, tmp_path, capsys) -> None:
    """A short-axis-like label file (LV and RV of the phantom on 12 mm slices of 2.5 mm pixels):
    ``cardio recon fit`` fits it on the slice planes, says so, and records the axis, also with a
    single-slice long-axis view (``--views``; one without any structure is refused, naming it); a
    volume label map of the same heart records none (scenario_fit_label_file)."""
    from cardiocore.phantoms.heart import heart_label_phantom

    phantom = heart_label_phantom(shape=(56, 56, 10), spacing=(2.5, 2.5, 12.0), seed=2)
    labels = np.where(np.isin(phantom.labels, (1, 2, 3)), phantom.labels, 0)
    path = write_node(array_to_volume(labels, phantom.ijk_to_ras, "stack", labelmap=True), tmp_path / "stack.nii.gz")
    out = tmp_path / "fit"
    assert cardio(["recon", "fit", "--labels", str(path), "--out", str(out), "--steps", "10", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["thick_slice_axis"] == 2 and metrics["fitted"] == ["lv_cavity", "lv_myocardium", "rv"]
    assert "thick slices (voxel axis 2): fitted on the slice planes" in capsys.readouterr().out

    # A long-axis-like single slice through the heart's centre as a second view.
    view = heart_label_phantom(shape=(56, 1, 56), spacing=(2.5, 6.0, 2.5), seed=2)
    view_path = write_node(array_to_volume(np.where(np.isin(view.labels, (1, 2, 3)), view.labels, 0),
                                           view.ijk_to_ras, "view", labelmap=True), tmp_path / "view.nii.gz")
    argv = ["recon", "fit", "--labels", str(path), "--views", str(view_path), "--out", str(tmp_path / "fit2"),
            "--steps", "10", "--device", "cpu"]
    assert cardio(argv) == 0
    metrics = json.loads((tmp_path / "fit2" / "metrics.json").read_text())
    assert metrics["views"] == 1 and metrics["view_labels"] == [str(view_path.resolve())]
    assert metrics["view_structures"] == [None]
    # The view said to annotate the RV alone (--view-structures); a count that does not match is refused.
    assert cardio([*argv, "--view-structures", "rv", "--overwrite"]) == 0
    assert json.loads((tmp_path / "fit2" / "metrics.json").read_text())["view_structures"] == [["rv"]]
    assert cardio([*argv, "--view-structures", "rv", "all", "--overwrite"]) == 2
    assert "--view-structures: has 2 entries for 1 --views files" in capsys.readouterr().err
    empty_path = write_node(array_to_volume(np.zeros((8, 8, 1), dtype=np.int16), np.eye(4), "empty", labelmap=True),
                            tmp_path / "empty.nii.gz")
    argv[argv.index("--views") + 1] = str(empty_path)
    assert cardio([*argv, "--overwrite"]) == 2
    assert "view 1: shows none of the fitted structures" in capsys.readouterr().err



def test_long_axis_segmentations_through_the_module_logic(app) -> None:
    MODULE.scenario_long_axis_segmentations(_Checks())

def test_cancel_and_bad_input_add_nothing(app) -> None:
    node, _ = MODULE.phantom_segmentation()
    scene = app.scene
    count = scene.GetNumberOfNodes()
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(ReconstructionCancelled):
        reconstruct_from_segmentation(node, steps=20, device="cpu", should_stop=stop)
    assert scene.GetNumberOfNodes() == count
    with pytest.raises(CardioInputError, match="maps no segment"):
        reconstruct_from_segmentation(node, mapping={}, device="cpu")
    with pytest.raises(CardioInputError, match="not in it"):
        reconstruct_from_segmentation(node, mapping={"no such segment": "rv"}, device="cpu")
    first = node.GetSegmentation().GetNthSegmentID(0)
    with pytest.raises(CardioInputError, match="not in the rule set"):
        reconstruct_from_segmentation(node, mapping={first: "left kidney"}, device="cpu")
    with pytest.raises(CardioInputError, match="expected a segmentation node"):
        guess_mapping(None)
    phantom = MODULE.phantom_segmentation()[1]
    labelmap = array_to_volume((phantom.labels > 0) * 9, phantom.ijk_to_ras, "not cardiac", labelmap=True)
    image = array_to_volume(phantom.labels * 40.0, phantom.ijk_to_ras, "image")
    # An image loaded as a labelmap (CT values), as the input and as a view.
    ct_as_labels = array_to_volume((phantom.labels * 40 - 1000).astype(np.int16), phantom.ijk_to_ras, "ct",
                                   labelmap=True)
    heart_labels = array_to_volume(phantom.labels, phantom.ijk_to_ras, "labels", labelmap=True)
    count = scene.GetNumberOfNodes()
    with pytest.raises(CardioInputError, match="no structure of the rule set"):
        reconstruct_from_labelmap(labelmap, device="cpu")
    with pytest.raises(VolumeError, match="labelmap 'ct': holds negative values"):
        reconstruct_from_labelmap(ct_as_labels, device="cpu")
    with pytest.raises(VolumeError, match="view 'ct': holds negative values"):
        reconstruct_from_labelmap(heart_labels, view_nodes=[ct_as_labels], device="cpu")
    with pytest.raises(CardioInputError, match="choose Predict mode"):
        MODULE.CardioReconstructLogic().reconstruct(None, image)
    with pytest.raises(CardioInputError, match="no segmentation or labelmap"):
        MODULE.CardioReconstructLogic().reconstruct(None, None)
    assert scene.GetNumberOfNodes() == count


def test_a_collapsed_structure_is_reported_and_gets_no_node(app) -> None:
    """A labelmap whose RV is 30 painted voxels (0.47 ml): the RV's fitted mesh turns inside out,
    so the scene gets no RV model or segment, and the metrics and summary say why."""
    from cardiocore.phantoms.heart import heart_label_phantom

    phantom = heart_label_phantom(shape=(48, 48, 48), spacing=(2.5, 2.5, 2.5), seed=1)
    labels = phantom.labels.copy()
    rv = np.argwhere(labels == 3)[:30]
    labels[labels == 3] = 0
    labels[tuple(rv.T)] = 3
    node = array_to_volume(labels, phantom.ijk_to_ras, "few rv voxels", labelmap=True)
    result = reconstruct_from_labelmap(node, steps=40, device="cpu")
    assert "rv" not in result.model_nodes and "rv" in result.metrics["missing"]
    assert "rv" not in result.metrics["structures"] and len(result.model_nodes) == 6
    assert result.metrics["warnings"] == [
        "rv: not fitted: its 0.47 ml of labels are too few for the template to deform onto (the mesh turned inside "
        "out); segment the whole structure, or leave it out"]
    assert "warning: rv: not fitted" in summary_text(result.metrics)


def test_a_mirrored_heart_is_fitted_and_reported(app) -> None:
    """A labelmap read with its first axis flipped: the template's mirror image is fitted (outward
    meshes), and the metrics and summary tell the user to check the orientation."""
    from cardiocore.phantoms.heart import heart_label_phantom

    phantom = heart_label_phantom(shape=(48, 48, 48), spacing=(2.5, 2.5, 2.5), seed=1)
    node = array_to_volume(phantom.labels[::-1].copy(), phantom.ijk_to_ras, "flipped", labelmap=True)
    result = reconstruct_from_labelmap(node, steps=20, device="cpu")
    assert result.metrics["mirrored"] and len(result.model_nodes) == 7
    assert result.metrics["warnings"][0].startswith("the structures sit as the mirror image of a normal heart")
    assert all(m["volume_ml"] > 0 for m in result.metrics["structures"].values())
    assert "warning: the structures sit as the mirror image" in summary_text(result.metrics)


# ---------------------------------------------------------------------------- Predict mode
QUICK = MODULE.PREDICT_QUALITY_POINTS


def test_predict_volume_on_axis_aligned_and_oblique_grids(app) -> None:
    results = MODULE.scenario_predict(_Checks())
    metrics = results["oblique"].metrics
    assert metrics["summary"]["all watertight"] and metrics["device"] == "cpu"
    assert any("resampled" in warning for warning in metrics["warnings"])
    assert all(m["volume_ml"] > 0 for m in metrics["structures"].values())  # closed, outward oriented
    text = summary_text(metrics)
    assert "predicted by unnamed model on cpu" in text and "lv_cavity: 0." in text and "Dice" not in text


def test_the_heart_centre_comes_from_a_point_list_in_world_coordinates(app) -> None:
    """The module's Heart centre: the first point of a (transformed) point list, RAS mm; an empty
    list is named; the network's frame is then placed there."""
    import vtk

    scene = app.scene
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "heart")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    try:
        logic = MODULE.CardioReconstructLogic()
        assert logic.heart_centre(None) is None
        with pytest.raises(CardioInputError, match="'heart'.*no point"):
            logic.heart_centre(points)
        points.AddControlPoint(vtk.vtkVector3d(10.0, -20.0, 30.0))
        points.AddControlPoint(vtk.vtkVector3d(0.0, 0.0, 0.0))
        assert centre_from_markups(points) == pytest.approx([10.0, -20.0, 30.0])
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(0, 3, 5.0)
        matrix.SetElement(2, 3, -7.0)
        transform.SetMatrixTransformToParent(matrix)
        points.SetAndObserveTransformNodeID(transform.GetID())
        assert logic.heart_centre(points) == pytest.approx([15.0, -20.0, 23.0])
    finally:
        scene.RemoveNode(points)
        scene.RemoveNode(transform)


def test_predict_with_reference_labels_and_cancel(app) -> None:
    predictor = MODULE.tiny_predictor()
    node, phantom = MODULE.phantom_image("axis-aligned")
    reference = array_to_volume(phantom.labels, phantom.ijk_to_ras, "reference", labelmap=True)
    kept = ("lv_cavity", "rv")
    result = reconstruct_from_volume(node, predictor=predictor, reference_labels=reference, structures=kept, **QUICK)
    assert list(result.model_nodes) == list(kept)
    voxel_ml = abs(np.linalg.det(phantom.ijk_to_ras[:3, :3])) / 1000.0
    for label, name in ((1, "lv_cavity"), (3, "rv")):
        figures = result.metrics["structures"][name]
        assert 0.0 <= figures["dice"] <= 1.0  # measured against the reference: a number, not None
        assert figures["label_volume_ml"] == pytest.approx((phantom.labels == label).sum() * voxel_ml)
    assert [(r["a"], r["b"]) for r in result.metrics["rules"]] == [("lv_cavity", "rv")]
    assert result.metrics["reference"] == "reference"
    segmentation, _ = MODULE.phantom_segmentation()  # another grid: read on the image's
    result = reconstruct_from_volume(node, predictor=predictor, reference_labels=segmentation, structures=["la"],
                                     **QUICK)
    assert result.metrics["mapping"]["Left atrium"] == "la"
    assert result.metrics["structures"]["la"]["label_volume_ml"] > 10.0
    assert list(table_to_columns(result.table_node)["segments"]) == ["Left atrium"]

    scene = app.scene
    count = scene.GetNumberOfNodes()
    calls = []

    def stop_after_network() -> bool:
        calls.append(1)
        return len(calls) > 1

    for stop in (lambda: True, stop_after_network):
        with pytest.raises(ReconstructionCancelled):
            reconstruct_from_volume(node, predictor=predictor, should_stop=stop, **QUICK)
    assert len(calls) == 2 and scene.GetNumberOfNodes() == count

    # Refinement polls should_stop at every step: Cancel answers within a step, not after the fit.
    polls = []

    def stop_during_refinement() -> bool:
        polls.append(1)
        return len(polls) > 4

    with pytest.raises(ReconstructionCancelled):
        reconstruct_from_volume(node, predictor=predictor, should_stop=stop_during_refinement, refine_steps=500,
                                **QUICK)
    assert 4 < len(polls) < 20 and scene.GetNumberOfNodes() == count


def test_predict_bad_input_names_it_and_adds_nothing(app, tmp_path) -> None:
    predictor = MODULE.tiny_predictor()
    node, phantom = MODULE.phantom_image("axis-aligned")
    labelmap = array_to_volume(phantom.labels, phantom.ijk_to_ras, "heart labels", labelmap=True)
    flat = array_to_volume(np.ones((30, 30, 1), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), "one slice")
    not_cardiac = array_to_volume((phantom.labels > 0) * 9, phantom.ijk_to_ras, "not cardiac", labelmap=True)
    ct_as_labels = array_to_volume(phantom.labels * 40.0 - 1000.0, phantom.ijk_to_ras, "ct as labels", labelmap=True)
    segmentation, _ = MODULE.phantom_segmentation()
    scene = app.scene
    count = scene.GetNumberOfNodes()
    with pytest.raises(CardioInputError, match="'heart labels': is a labelmap"):
        reconstruct_from_volume(labelmap, predictor=predictor)
    with pytest.raises(VolumeError, match="'one slice': has a dimension of size < 2"):
        reconstruct_from_volume(flat, predictor=predictor)
    with pytest.raises(CardioInputError, match="expected a scalar"):
        reconstruct_from_volume(segmentation, predictor=predictor)
    with pytest.raises(CardioInputError, match="expected a scalar"):
        MODULE.CardioReconstructLogic().predict(None, predictor=predictor)
    with pytest.raises(CardioInputError, match="'not cardiac': hold no structure"):
        reconstruct_from_volume(node, predictor=predictor, reference_labels=not_cardiac)
    with pytest.raises(CardioInputError, match="expected a labelmap or segmentation"):
        reconstruct_from_volume(node, predictor=predictor, reference_labels=flat)
    with pytest.raises(VolumeError, match="reference labels 'ct as labels': holds negative values"):
        reconstruct_from_volume(node, predictor=predictor, reference_labels=ct_as_labels)
    with pytest.raises(CardioInputError, match="none of .* is predicted"):
        reconstruct_from_volume(node, predictor=predictor, structures=["left kidney"])
    missing = tmp_path / "missing.pt"
    with pytest.raises(WeightsError, match="no such CardioReconstruct predictor file"):
        reconstruct_from_volume(node, model_path=missing, device="cpu")
    assert "does not exist" in model_problem(missing)
    assert scene.GetNumberOfNodes() == count


def _two_sphere_predictor():
    """A tiny untrained predictor over two small spheres 50 mm apart (LV cavity and RV): fast to
    measure with the CLI's full VR/SVR sampling (their boxes stay apart)."""
    spheres = [icosphere(2, 15.0, (x, 0.0, 0.0)) for x in (-25.0, 25.0)]
    template = HeartTemplate(("lv_cavity", "rv"), tuple(v for v, _ in spheres), tuple(f for _, f in spheres))
    return MODULE.tiny_predictor(template)


def test_cli_predict_writes_files_and_refuses_to_overwrite(app, tmp_path, capsys) -> None:
    node, phantom = MODULE.phantom_image("oblique")
    image = write_node(node, tmp_path / "image.nrrd")
    reference = array_to_volume(phantom.labels, phantom.ijk_to_ras, "labels", labelmap=True)
    labels = write_node(reference, tmp_path / "labels.nii.gz")
    model = _two_sphere_predictor().save(tmp_path / "tiny.pt")
    out = tmp_path / "predicted"
    argv = ["recon", "predict", "--image", str(image), "--out", str(out), "--model", str(model),
            "--labels", str(labels), "--structures", "default", "--device", "cpu"]
    count = app.scene.GetNumberOfNodes()
    assert cardio(argv) == 0
    assert app.scene.GetNumberOfNodes() == count  # the nodes used on the way are removed
    assert sorted(p.name for p in out.iterdir()) == ["lv_cavity.vtk", "meshes.seg.nrrd", "metrics.json", "rv.vtk"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "predict" and metrics["predicted"] == ["lv_cavity", "rv"]
    assert metrics["model"] == str(model.resolve()) and metrics["labels"] == str(labels.resolve())
    assert all(math.isfinite(m["dice"]) for m in metrics["structures"].values())
    printed = capsys.readouterr().out
    assert "lv_cavity disjoint rv" in printed and "metrics.json written to" in printed

    assert cardio([*argv, "--overwrite", "--refine-steps", "3"]) == 0
    assert json.loads((out / "metrics.json").read_text())["refine_steps"] == 3
    assert cardio([*argv, "--overwrite", "--refine-steps", "-1"]) == 2
    assert "refine steps: must be 0 (no refinement) or more" in capsys.readouterr().err

    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert cardio(argv) == 2  # never overwrites without --overwrite
    assert "already holds" in capsys.readouterr().err
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    loaded = load_predictor(model, "cpu")
    assert loaded.names == ("lv_cavity", "rv") and not loaded.net.training
    assert torch.equal(loaded.net.template, _two_sphere_predictor().net.template)

    # --centre moves the network's field of view: the untrained network keeps the (shrunken)
    # template near the middle of its frame, so the meshes follow the given centre.
    from cardiocore.mrml.mesh_folders import read_mesh_file

    centre = np.array(MODULE.PREDICT_CENTRE_RAS) + (20.0, -15.0, 10.0)
    assert cardio([*argv, "--overwrite", "--centre", *map(str, centre)]) == 0
    verts = np.concatenate([np.asarray(read_mesh_file(out / f"{n}.vtk")[0]) for n in ("lv_cavity", "rv")])
    assert np.linalg.norm(verts.mean(axis=0) - centre) < MODULE.PREDICT_CENTRE_MM


def test_predict_output_grid_is_subsampled_for_huge_images() -> None:
    """A 512 x 512 x 300 CT gets its output segmentation on every 2nd voxel, same field of view."""
    from cardiocore.mrml.recon import output_grid

    matrix = np.diag([0.5, 0.5, 0.6, 1.0])
    matrix[:3, 3] = (-100.0, -120.0, 30.0)
    shape, coarse, stride = output_grid((512, 512, 300), matrix)
    assert stride == 2 and shape == (256, 256, 150)
    assert np.allclose(coarse[:3, :3], np.diag([1.0, 1.0, 1.2])) and np.allclose(coarse[:3, 3], matrix[:3, 3])
    assert output_grid((128, 128, 128), matrix)[2] == 1
