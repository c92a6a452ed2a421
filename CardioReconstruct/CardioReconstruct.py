"""CardioReconstruct: multi-chamber heart meshes (LV cavity and myocardium, RV, LA, RA, aorta,
pulmonary artery) from a segmentation, free of inter-chamber violations (MIE loss).

Four classes, as every CardioShape module:

- ``CardioReconstruct(ScriptedLoadableModule)``: title, category, help;
- ``CardioReconstructWidget``: input segmentation and/or volume, an editable segment-to-structure
  mapping guessed from the segment names, Fit settings, Apply with progress and Cancel;
- ``CardioReconstructLogic``: explicit arguments, no GUI; delegates to :mod:`cardiocore.mrml.recon`;
- ``CardioReconstructTest``: ``runTest()`` runs the scenario functions below, which pytest runs
  too (``Testing/test_recon_mrml.py``).

The compute packages are imported only when used, so the module loads before they are
installed; the widget installs them on first use, after asking.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from cardiocore.errors import CardioInputError
from cardiocore.mrml.scripted import (
    IN_SLICER,
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

if IN_SLICER:
    import qt
    import slicer
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
    from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper

    @parameterNodeWrapper
    class CardioReconstructParameterNode:
        """Widget state stored in the scene."""

        inputSegmentation: vtkMRMLSegmentationNode
        inputVolume: vtkMRMLScalarVolumeNode
        iterations: Annotated[int, WithinRange(1, 5000)] = 150
        useMie: bool = True
        cpuOnly: bool = False


NOT_USED = "(not used)"
PREDICT_TOOLTIP = (
    "Predict mode (meshes straight from a CT/MR image) needs trained network weights, which are not "
    "bundled yet. Segment the image first (Segment Editor or TotalSegmentator) and use Fit."
)


class CardioReconstruct(ScriptedLoadableModule):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.parent.title = "CardioReconstruct"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = []
        self.parent.contributors = ["The CardioShape contributors"]
        self.parent.helpText = (
            "Reconstruct multi-chamber heart meshes (LV cavity, LV myocardium, RV, LA, RA, aorta, pulmonary "
            "artery) from a segmentation made with the Segment Editor or TotalSegmentator, or from a labelmap. "
            "A multi-chamber template is deformed to the segments (Fit mode); a relational loss (MIE) keeps the "
            "chambers from passing through each other. Outputs: one watertight model per structure with the "
            "template's topology, a segmentation made from the meshes, and tables of volumes, Dice, HD95 and "
            "violation rates. The input segmentation is never modified."
        )
        self.parent.acknowledgementText = (
            "Method: MIE relational loss (arXiv 2503.07874). Template built from an Apache-2.0 HeartDeformNets "
            "label map; see Resources/Templates/README.md."
        )


class CardioReconstructWidget(ScriptedLoadableModuleWidget):
    def setup(self) -> None:
        super().setup()
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CardioReconstruct.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CardioReconstructLogic()
        self._parameterNode = CardioReconstructParameterNode(self.logic.getParameterNode())
        self._parameterNode.connectGui(self.ui)
        self._cancelRequested = False
        self.ui.predictRadioButton.enabled = False
        self.ui.predictRadioButton.toolTip = PREDICT_TOOLTIP
        self.ui.fitRadioButton.checked = True
        self.ui.mappingTable.setColumnCount(2)
        self.ui.mappingTable.setHorizontalHeaderLabels(["Segment", "Structure"])
        self.ui.mappingTable.horizontalHeader().setStretchLastSection(True)
        self.ui.inputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.guessMappingButton.connect("clicked(bool)", self.onGuessMapping)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.onSegmentationChanged(self._parameterNode.inputSegmentation)

    # ------------------------------------------------------------------ mapping table
    def onGuessMapping(self) -> None:
        self.onSegmentationChanged(self._parameterNode.inputSegmentation)

    def onSegmentationChanged(self, segNode: Any) -> None:
        """Fill the mapping table: one row per segment, its structure guessed from its name."""
        table = self.ui.mappingTable
        table.setRowCount(0)
        if segNode is None:
            return
        with slicer.util.tryWithErrorDisplay("CardioReconstruct could not read the segments.", waitCursor=True):
            self._ensureRequirements()
            from cardiocore.recon.rules import RuleSet

            guessed = self.logic.guess_mapping(segNode)
            structures = list(RuleSet.default().names)
            segmentation = segNode.GetSegmentation()
            table.setRowCount(segmentation.GetNumberOfSegments())
            for row in range(segmentation.GetNumberOfSegments()):
                segmentId = segmentation.GetNthSegmentID(row)
                item = qt.QTableWidgetItem(segmentation.GetSegment(segmentId).GetName())
                item.setData(qt.Qt.UserRole, segmentId)
                item.setFlags(qt.Qt.ItemIsEnabled)
                table.setItem(row, 0, item)
                combo = qt.QComboBox()
                combo.addItems([NOT_USED, *structures])
                combo.currentIndex = combo.findText(guessed.get(segmentId, NOT_USED))
                table.setCellWidget(row, 1, combo)

    def _mapping(self) -> dict[str, str]:
        table = self.ui.mappingTable
        mapping = {}
        for row in range(table.rowCount):
            structure = table.cellWidget(row, 1).currentText
            if structure != NOT_USED:
                mapping[table.item(row, 0).data(qt.Qt.UserRole)] = structure
        return mapping

    # ------------------------------------------------------------------ apply / cancel
    def _ensureRequirements(self) -> None:
        from cardiocore.mrml.dependencies import ensure_requirements

        ensure_requirements(confirm=slicer.util.confirmOkCancelDisplay)

    def _progress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message
        slicer.app.processEvents()  # keeps Cancel clickable during the fit

    def onCancel(self) -> None:
        self._cancelRequested = True
        self.ui.statusLabel.text = "Cancelling after the current step..."

    def onApply(self) -> None:
        parameters = self._parameterNode
        self._cancelRequested = False
        self.ui.applyButton.enabled = False
        self.ui.cancelButton.enabled = True
        self.ui.progressBar.value = 0
        self.ui.summaryLabel.text = ""
        try:
            with slicer.util.tryWithErrorDisplay("CardioReconstruct failed.", waitCursor=True):
                self._ensureRequirements()
                from cardiocore.mrml.recon import ReconstructionCancelled, summary_text

                try:
                    result = self.logic.reconstruct(
                        parameters.inputSegmentation, parameters.inputVolume,
                        mapping=self._mapping() if parameters.inputSegmentation is not None else None,
                        steps=parameters.iterations, use_mie=parameters.useMie,
                        device="cpu" if parameters.cpuOnly else "auto",
                        progress=self._progress, should_stop=lambda: self._cancelRequested,
                    )
                except ReconstructionCancelled:
                    self.ui.statusLabel.text = "Cancelled: nothing was added to the scene."
                    return
                self.ui.statusLabel.text = "Done: models, segmentation and tables are in a new folder."
                self.ui.summaryLabel.text = summary_text(result.metrics)
                self._showTable(result.table_node)
        finally:
            self.ui.applyButton.enabled = True
            self.ui.cancelButton.enabled = False

    def _showTable(self, tableNode: Any) -> None:
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        applicationLogic = slicer.app.applicationLogic()
        applicationLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
        applicationLogic.PropagateTableSelection()


class CardioReconstructLogic(ScriptedLoadableModuleLogic):
    """CardioReconstruct without a GUI: every method takes explicit arguments and returns new nodes."""

    def guess_mapping(self, seg_node: Any) -> dict[str, str]:
        """Segment ID -> structure name guessed from the segment names and terminology."""
        from cardiocore.mrml.recon import guess_mapping

        return guess_mapping(seg_node)

    def reconstruct(
        self,
        seg_node: Any,
        volume_node: Any = None,
        *,
        mapping: Mapping[str, str] | None = None,
        steps: int = 150,
        use_mie: bool = True,
        device: str = "auto",
        progress: Callable[[float, str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        **fit_options: Any,
    ) -> Any:
        """Fit the template to ``seg_node`` (on ``volume_node``'s grid when given), or to
        ``volume_node`` when it is a labelmap and no segmentation is given; returns ``ReconNodes``.
        ``fit_options``: further keyword arguments of ``reconstruct_from_segmentation`` (seed,
        weights, vr_points, svr_points).

        Raises:
            CardioInputError: no input, or only an image (Predict mode has no bundled weights).
        """
        from cardiocore.mrml.recon import reconstruct_from_labelmap, reconstruct_from_segmentation

        options = {"steps": steps, "use_mie": use_mie, "device": device, "progress": progress,
                   "should_stop": should_stop, **fit_options}
        if seg_node is not None:
            return reconstruct_from_segmentation(seg_node, mapping=mapping, reference_volume=volume_node, **options)
        if volume_node is not None and volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
            return reconstruct_from_labelmap(volume_node, **options)
        if volume_node is not None:
            raise CardioInputError(
                f"volume {volume_node.GetName()!r}", "is an image, and Predict mode has no bundled weights yet",
                "segment it (Segment Editor or TotalSegmentator) and select the segmentation",
            )
        raise CardioInputError("input", "no segmentation or labelmap selected",
                               "select the segmentation to reconstruct")


# ---------------------------------------------------------------------------- test scenarios
#: Segment names a Segment Editor user and TotalSegmentator give the phantom's labels 1..7.
EDITOR_NAMES = ("Left ventricle", "Myocardium", "Right ventricle", "Left atrium", "Right atrium", "Aorta",
                "Pulmonary artery")
TOTALSEGMENTATOR_NAMES = ("heart_ventricle_left", "heart_myocardium", "heart_ventricle_right", "heart_atrium_left",
                          "heart_atrium_right", "aorta", "pulmonary_artery")
#: Slicer terminology of a segment with a meaningless name: type "Right ventricle".
RV_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue"
                  "~SCT^53085002^Right ventricle~^^~Anatomic codes - DICOM master list~^^~^^")
#: Oblique, anisotropic test grid: (I, J, K) voxels of (mm), rotated (degrees) about R, A, S.
TEST_SHAPE = (72, 54, 40)
TEST_SPACING_MM = (2.0, 2.6, 3.5)
TEST_ROTATION_DEG = (20.0, 0.0, 30.0)
#: Fit steps of the scenario, and quality samples per rule (VR, SVR): few, to keep the test short.
TEST_STEPS = 60
TEST_QUALITY_POINTS = {"vr_points": 1000, "svr_points": 500}
#: Lowest Dice (output segmentation vs input labels) and largest distance (mm) between the mesh's
#: volume centroid and its label's centroid, per structure. Measured after TEST_STEPS steps (CPU,
#: deterministic): Dice 0.989 LV cavity, 0.959 myocardium, 0.950 RV, 0.995 LA, 0.993 RA, 0.890
#: aorta, 0.944 pulmonary artery; centroids 0.3, 0.9, 2.4, 0.2, 0.1, 4.8 (the aortic arch is the
#: part the short fit follows least), 0.5 mm. Thresholds leave a margin below those; an RAS/LPS or
#: axis-order mistake moves the structures by tens of mm and drops Dice far below them.
TEST_MIN_DICE = {"lv_cavity": 0.95, "lv_myocardium": 0.9, "rv": 0.9, "la": 0.95, "ra": 0.95, "aorta": 0.8,
                 "pulmonary_artery": 0.85}
TEST_CENTROID_MM = {"lv_cavity": 2.0, "lv_myocardium": 2.0, "rv": 4.0, "la": 2.0, "ra": 2.0, "aorta": 7.0,
                    "pulmonary_artery": 3.0}
#: The centroid distance (mm) for the short fit of scenario_fit_label_file (3 mm voxels, 15 steps).
FILE_CENTROID_MM = 5.0


def phantom_segmentation(names: tuple[str, ...] = EDITOR_NAMES, seed: int = 1) -> tuple[Any, Any]:
    """A heart phantom on the oblique test grid as a new segmentation node, segment ``names[i]``
    holding label ``i + 1``; returns (node, ``HeartPhantom``)."""
    from scipy.spatial.transform import Rotation

    from cardiocore.mrml.segmentations import arrays_to_segmentation
    from cardiocore.phantoms.heart import heart_label_phantom

    direction = Rotation.from_euler("xyz", TEST_ROTATION_DEG, degrees=True).as_matrix()
    phantom = heart_label_phantom(shape=TEST_SHAPE, spacing=TEST_SPACING_MM, direction=direction, seed=seed)
    masks = {name: phantom.labels == label for label, name in enumerate(names, start=1)}
    node = arrays_to_segmentation(masks, phantom.ijk_to_ras, name=f"phantom {names[0]}")
    return node, phantom


def _snapshot(seg_node: Any) -> tuple[list[str], list[str], list[Any], Any]:
    from cardiocore.mrml.segmentations import segmentation_to_arrays

    arrays = segmentation_to_arrays(seg_node)
    return arrays.segment_ids, arrays.names, arrays.masks, arrays.ijk_to_ras


def scenario_guess_mapping(test: ScriptedLoadableModuleTest) -> None:
    """Segment Editor names, TotalSegmentator names and a terminology entry map to the seven
    structures; a segment that is no heart structure is left out."""
    from cardiocore.mrml.recon import guess_mapping
    from cardiocore.recon.rules import RuleSet

    structures = list(RuleSet.default().names)
    for names in (EDITOR_NAMES, TOTALSEGMENTATOR_NAMES):
        node, _ = phantom_segmentation(names)
        segmentation = node.GetSegmentation()
        mapping = guess_mapping(node)
        test.assertEqual([mapping[segmentation.GetSegmentIdBySegmentName(n)] for n in names], structures)
    rv = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("heart_ventricle_right"))
    rv.SetName("Segment_3")
    test.assertNotIn(segmentation.GetSegmentIdBySegmentName("Segment_3"), guess_mapping(node))
    rv.SetTerminology(RV_TERMINOLOGY)
    test.assertEqual(guess_mapping(node)[segmentation.GetSegmentIdBySegmentName("Segment_3")], "rv")
    rv.SetName("pulmonary_vein")
    rv.SetTerminology("")
    test.assertEqual(len(guess_mapping(node)), 6)


def scenario_reconstruct(test: ScriptedLoadableModuleTest) -> Any:
    """Fit on a phantom segmentation on an oblique, anisotropic grid: a model per structure in RAS
    (mesh centroid within TEST_CENTROID_MM of the label centroid), an output segmentation on the
    input grid with Dice >= TEST_MIN_DICE, tables with a row per structure and rule, all in one
    folder, and the input segmentation unchanged. Returns the ``ReconNodes``."""
    import numpy as np
    import torch

    from cardiocore.geometry.volume import enclosed_volume
    from cardiocore.metrics.overlap import dice
    from cardiocore.mrml.app import slicer_app
    from cardiocore.mrml.mesh_folders import REGION_ARRAY
    from cardiocore.mrml.models import model_to_mesh
    from cardiocore.mrml.segmentations import segmentation_to_arrays
    from cardiocore.mrml.tables import table_to_columns
    from cardiocore.recon.fit import mesh_moments
    from cardiocore.recon.rules import RuleSet

    node, phantom = phantom_segmentation()
    before = _snapshot(node)
    result = CardioReconstructLogic().reconstruct(node, steps=TEST_STEPS, device="cpu", **TEST_QUALITY_POINTS)
    after = _snapshot(node)
    test.assertEqual(before[:2], after[:2])
    test.assertTrue(all(np.array_equal(a, b) for a, b in zip(before[2], after[2])))
    np.testing.assert_allclose(before[3], after[3])

    structures = RuleSet.default().names
    test.assertEqual(list(result.model_nodes), list(structures))
    output = segmentation_to_arrays(result.segmentation_node)
    np.testing.assert_allclose(output.ijk_to_ras, phantom.ijk_to_ras, atol=1e-6)
    voxel_mm3 = abs(np.linalg.det(phantom.ijk_to_ras[:3, :3]))
    hierarchy = slicer_app().scene.GetSubjectHierarchyNode()
    for label, name in enumerate(structures, start=1):
        mask = phantom.labels == label
        overlap = float(dice(torch.as_tensor(output.mask(name)), torch.as_tensor(mask)))
        test.assertGreaterEqual(overlap, TEST_MIN_DICE[name], name)
        mesh = model_to_mesh(result.model_nodes[name])
        test.assertTrue(np.all(mesh.point_data[REGION_ARRAY] == label - 1))
        _, centroid, _ = mesh_moments(torch.as_tensor(mesh.verts), torch.as_tensor(mesh.faces))
        ijk = np.argwhere(mask).mean(axis=0)
        label_centroid = phantom.ijk_to_ras[:3, :3] @ ijk + phantom.ijk_to_ras[:3, 3]
        test.assertLess(float(np.linalg.norm(centroid.numpy() - label_centroid)), TEST_CENTROID_MM[name], name)
        test.assertAlmostEqual(float(enclosed_volume(mesh.verts, mesh.faces)) / 1000.0,
                               result.metrics["structures"][name]["volume_ml"], delta=0.05)
        test.assertAlmostEqual(result.metrics["structures"][name]["label_volume_ml"],
                               float(mask.sum()) * voxel_mm3 / 1000.0, delta=0.01)
        test.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(result.model_nodes[name])),
                         result.folder_item_id)
    columns = table_to_columns(result.table_node)
    test.assertEqual(list(columns["structure"]), list(structures))
    test.assertEqual(list(columns["segments"]), list(EDITOR_NAMES))
    test.assertTrue(all(columns["watertight"]))
    test.assertEqual(result.rule_table_node.GetNumberOfRows(), 21)
    for extra in (result.segmentation_node, result.table_node, result.rule_table_node):
        test.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(extra)), result.folder_item_id)
    return result


def scenario_fit_label_file(test: ScriptedLoadableModuleTest, workdir: str | Path) -> dict[str, Any]:
    """``cardio recon fit`` on an MM-WHS-coded NIfTI file holding three structures: a .vtk per
    structure, meshes.seg.nrrd and metrics.json, missing structures listed, and a second run
    into the same folder refused without overwrite. Returns the metrics."""
    import json

    import numpy as np
    import torch

    from cardiocore.mrml.app import slicer_app
    from cardiocore.mrml.mesh_folders import read_mesh_file
    from cardiocore.mrml.recon import fit_label_file
    from cardiocore.mrml.storage import write_node
    from cardiocore.mrml.volumes import array_to_volume
    from cardiocore.phantoms.heart import HEART_STRUCTURES, heart_label_phantom
    from cardiocore.recon.fit import mesh_moments

    phantom = heart_label_phantom(shape=(48, 48, 40), spacing=(3.0, 3.0, 3.6), seed=2)
    coded = np.zeros_like(phantom.labels)
    kept = {"LV cavity": "lv_cavity", "LV myocardium": "lv_myocardium", "RV": "rv"}
    for structure in HEART_STRUCTURES:
        if structure.name in kept:
            coded[phantom.labels == structure.label] = structure.mmwhs_label
    workdir = Path(workdir)
    labelmap = array_to_volume(coded, phantom.ijk_to_ras, name="mmwhs labels", labelmap=True)
    labels_path = write_node(labelmap, workdir / "labels.nii.gz")
    for node in (labelmap.GetDisplayNode(), labelmap):
        slicer_app().scene.RemoveNode(node)
    nodes_before = slicer_app().scene.GetNumberOfNodes()
    out = workdir / "fit"
    metrics = fit_label_file(labels_path, out, structures="mmwhs", steps=15, device="cpu", **TEST_QUALITY_POINTS)
    test.assertEqual(slicer_app().scene.GetNumberOfNodes(), nodes_before)
    test.assertEqual(sorted(p.name for p in out.iterdir()),
                     sorted([f"{n}.vtk" for n in kept.values()] + ["meshes.seg.nrrd", "metrics.json"]))
    test.assertEqual(sorted(metrics["missing"]), ["aorta", "la", "pulmonary_artery", "ra"])
    test.assertEqual(json.loads((out / "metrics.json").read_text())["fitted"], list(kept.values()))
    for name in kept.values():
        verts, faces = read_mesh_file(out / f"{name}.vtk")
        _, centroid, _ = mesh_moments(torch.as_tensor(verts), torch.as_tensor(faces))
        mask = coded == next(s.mmwhs_label for s in HEART_STRUCTURES if kept.get(s.name) == name)
        label_centroid = phantom.ijk_to_ras[:3, :3] @ np.argwhere(mask).mean(axis=0) + phantom.ijk_to_ras[:3, 3]
        test.assertLess(float(np.linalg.norm(centroid.numpy() - label_centroid)), FILE_CENTROID_MM, name)
    stamp = (out / "metrics.json").stat().st_mtime_ns
    with test.assertRaises(CardioInputError):
        fit_label_file(labels_path, out, structures="mmwhs", steps=1, device="cpu")
    test.assertEqual((out / "metrics.json").stat().st_mtime_ns, stamp)
    return metrics


class CardioReconstructTest(ScriptedLoadableModuleTest):
    def runTest(self) -> None:
        from cardiocore.mrml.app import slicer_app

        slicer_app().clear()
        scenario_guess_mapping(self)
        scenario_reconstruct(self)
        with tempfile.TemporaryDirectory() as workdir:
            scenario_fit_label_file(self, workdir)
        self.delayDisplay("CardioReconstruct scenarios passed")
