"""CardioReconstruct on the headless MRML scene: segment-to-structure mapping, segmentation node
in -> model, segmentation and table nodes out on an oblique anisotropic grid (RAS preserved, input
untouched), cancel and bad input leave the scene as it was, ``cardio recon fit`` files.

The module's own scenarios (``CardioReconstruct/CardioReconstruct.py``) hold the main checks, so
Slicer's self-test and pytest test the same thing; thresholds are explained there.
"""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT
from module_checks import import_module_file_headless

from cardiocore.errors import CardioInputError
from cardiocore.mrml.recon import (
    ReconstructionCancelled,
    guess_mapping,
    reconstruct_from_labelmap,
    reconstruct_from_segmentation,
)
from cardiocore.mrml.volumes import array_to_volume

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


def test_fit_label_file_mmwhs(app, tmp_path) -> None:
    MODULE.scenario_fit_label_file(_Checks(), tmp_path)


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
    count = scene.GetNumberOfNodes()
    with pytest.raises(CardioInputError, match="no structure of the rule set"):
        reconstruct_from_labelmap(labelmap, device="cpu")
    with pytest.raises(CardioInputError, match="Predict mode"):
        MODULE.CardioReconstructLogic().reconstruct(None, image)
    with pytest.raises(CardioInputError, match="no segmentation or labelmap"):
        MODULE.CardioReconstructLogic().reconstruct(None, None)
    assert scene.GetNumberOfNodes() == count
