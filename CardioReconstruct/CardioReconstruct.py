"""CardioReconstruct: multi-chamber heart meshes (LV cavity and myocardium, RV, LA, RA, aorta,
pulmonary artery) from a segmentation (Fit mode) or a CT/MR image (Predict mode), free of
inter-chamber violations (MIE loss).

Four classes, as every CardioShape module:

- ``CardioReconstruct(ScriptedLoadableModule)``: title, category, help;
- ``CardioReconstructWidget``: input segmentation and/or volume, an editable segment-to-structure
  mapping guessed from the segment names, mode Fit (settings) or Predict (model file, default the
  bundled model, with a clear message when it is missing; an optional heart-centre point list;
  refinement against the network's segmentation),
  Apply with progress and Cancel;
- ``CardioReconstructLogic``: explicit arguments, no GUI; delegates to :mod:`cardiocore.mrml.recon`;
- ``CardioReconstructTest``: ``runTest()`` runs the scenario functions below, which pytest runs
  too (``Testing/test_recon_mrml.py``).

The compute packages are imported only when used, so the module loads before they are
installed; the widget installs them on first use, after asking.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
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
    from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
    from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper

    @parameterNodeWrapper
    class CardioReconstructParameterNode:
        """Widget state stored in the scene."""

        inputSegmentation: vtkMRMLSegmentationNode
        inputVolume: vtkMRMLScalarVolumeNode
        heartCentre: vtkMRMLMarkupsFiducialNode
        iterations: Annotated[int, WithinRange(1, 5000)] = 150
        useMie: bool = True
        refinePrediction: bool = False
        cpuOnly: bool = False


NOT_USED = "(not used)"


class CardioReconstruct(ScriptedLoadableModule):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.parent.title = "CardioReconstruct"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = []
        self.parent.contributors = ["The CardioShape contributors"]
        self.parent.helpText = (
            "Reconstruct multi-chamber heart meshes (LV cavity, LV myocardium, RV, LA, RA, aorta, pulmonary "
            "artery). Fit mode: from a segmentation made with the Segment Editor or TotalSegmentator, or from a "
            "labelmap, a multi-chamber template is deformed to the segments; a relational loss (MIE) keeps the "
            "chambers from passing through each other. A cine short-axis stack (thick, widely spaced slices) is "
            "fitted on its slices; segmentations of its long-axis views, selected as Long-axis segmentations, are "
            "fitted with it and pin the base and apex. Predict mode: from a CT or MR image, a trained network "
            "(the bundled model, or a model file made with 'cardio recon train') predicts the meshes in seconds "
            "(the bundled network was trained on few label maps: check its meshes); its 192 mm field of view is "
            "centred on the image, or on the first point of the Heart centre point list when one is chosen; "
            "'Refine against the network's segmentation' then fits the meshes to the network's own segmentation "
            "(about 8 s more on a CPU; a closer myocardium and almost no rule violations); a "
            "segmentation selected as well serves as reference for Dice and HD95. Outputs: one "
            "watertight model per structure with the template's topology, a segmentation made from the meshes, "
            "and tables of volumes, Dice, HD95 (when there are labels) and violation rates. The input nodes are "
            "never modified."
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
        self.ui.fitRadioButton.checked = True
        self.ui.mappingTable.setColumnCount(2)
        self.ui.mappingTable.setHorizontalHeaderLabels(["Segment", "Structure"])
        self.ui.mappingTable.horizontalHeader().setStretchLastSection(True)
        self.ui.inputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.guessMappingButton.connect("clicked(bool)", self.onGuessMapping)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.predictRadioButton.connect("toggled(bool)", self.onModeChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModeChanged)
        self.onSegmentationChanged(self._parameterNode.inputSegmentation)
        self.onModeChanged()

    # ------------------------------------------------------------------ mode
    def _predictMode(self) -> bool:
        return self.ui.predictRadioButton.checked

    def _modelPath(self) -> str | None:
        return self.ui.modelPathLineEdit.currentPath or None

    def onModeChanged(self, *_: Any) -> None:
        """Show the chosen mode's settings; in Predict mode say whether the model is there, and
        keep Apply disabled while it is not."""
        predict = self._predictMode()
        for widget in (self.ui.iterationsLabel, self.ui.iterationsSpinBox, self.ui.useMieCheckBox,
                       self.ui.viewSegmentationsLabel, self.ui.viewSegmentationsSelector):
            widget.visible = not predict
        for widget in (self.ui.modelLabel, self.ui.modelPathLineEdit, self.ui.modelStatusLabel,
                       self.ui.heartCentreLabel, self.ui.heartCentreSelector, self.ui.refinePredictionCheckBox):
            widget.visible = predict
        self.ui.applyButton.enabled = True
        if not predict:
            return
        problem = "the compute packages are not installed"
        with slicer.util.tryWithErrorDisplay("CardioReconstruct could not check the model.", waitCursor=True):
            self._ensureRequirements()
            problem = self.logic.model_problem(self._modelPath())
        self.ui.modelStatusLabel.text = (
            f"Predict mode is not available: {problem}." if problem
            else f"Model: {self._modelPath() or 'the bundled model'}. Select the image as Volume."
        )
        self.ui.applyButton.enabled = problem is None

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
                from cardiocore.recon.refine import DEFAULT_REFINE_STEPS

                common = {
                    "mapping": self._mapping() if parameters.inputSegmentation is not None else None,
                    "device": "cpu" if parameters.cpuOnly else "auto",
                    "progress": self._progress,
                    "should_stop": lambda: self._cancelRequested,
                }
                try:
                    if self._predictMode():
                        refine_steps = DEFAULT_REFINE_STEPS if parameters.refinePrediction else 0
                        result = self.logic.predict(parameters.inputVolume, self._modelPath(),
                                                    reference_labels=parameters.inputSegmentation,
                                                    centre_ras=self.logic.heart_centre(parameters.heartCentre),
                                                    refine_steps=refine_steps,
                                                    **common)
                    else:
                        views = [node for node in self.ui.viewSegmentationsSelector.checkedNodes()
                                 if node is not parameters.inputSegmentation]
                        result = self.logic.reconstruct(parameters.inputSegmentation, parameters.inputVolume,
                                                        steps=parameters.iterations, use_mie=parameters.useMie,
                                                        view_segmentations=views, **common)
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
        view_segmentations: Sequence[Any] = (),
        **fit_options: Any,
    ) -> Any:
        """Fit the template to ``seg_node`` (on ``volume_node``'s grid when given), or to
        ``volume_node`` when it is a labelmap and no segmentation is given; returns ``ReconNodes``.
        ``view_segmentations``: segmentations of other views of the heart (long-axis slices),
        fitted with ``seg_node``. ``fit_options``: further keyword arguments of
        ``reconstruct_from_segmentation`` (seed, weights, vr_points, svr_points).

        Raises:
            CardioInputError: no input, only an image (that is Predict mode: :meth:`predict`), or
                long-axis segmentations without the main segmentation.
        """
        from cardiocore.mrml.recon import reconstruct_from_labelmap, reconstruct_from_segmentation

        options = {"steps": steps, "use_mie": use_mie, "device": device, "progress": progress,
                   "should_stop": should_stop, **fit_options}
        if seg_node is not None:
            return reconstruct_from_segmentation(seg_node, mapping=mapping, reference_volume=volume_node,
                                                 view_segmentations=view_segmentations, **options)
        if view_segmentations:
            raise CardioInputError("long-axis segmentations", "are fitted together with a main segmentation",
                                   "select the short-axis (or main) segmentation as Segmentation")
        if volume_node is not None and volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
            return reconstruct_from_labelmap(volume_node, **options)
        if volume_node is not None:
            raise CardioInputError(
                f"volume {volume_node.GetName()!r}", "is an image, not a labelmap: Fit mode needs labels",
                "choose Predict mode, or segment it (Segment Editor or TotalSegmentator) and select the segmentation",
            )
        raise CardioInputError("input", "no segmentation or labelmap selected",
                               "select the segmentation to reconstruct")

    def predict(
        self,
        volume_node: Any,
        model_path: str | None = None,
        *,
        device: str = "auto",
        progress: Callable[[float, str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        reference_labels: Any = None,
        mapping: Mapping[str, str] | None = None,
        **predict_options: Any,
    ) -> Any:
        """Predict mode: meshes from the CT/MR image ``volume_node`` by the network in
        ``model_path`` (None: the bundled model); returns ``ReconNodes``. ``reference_labels``:
        optional segmentation (segments mapped by ``mapping``, default guessed) or labelmap to
        measure Dice and HD95 against. ``predict_options``: further keyword arguments of
        ``reconstruct_from_volume`` (predictor, structures, centre_ras, refine_steps, vr_points,
        svr_points, seed).

        Raises:
            CardioInputError: no image, a labelmap as image, bad reference labels.
            WeightsError: the model file or the bundled model is missing or unreadable.
        """
        from cardiocore.mrml.recon import reconstruct_from_volume

        return reconstruct_from_volume(volume_node, model_path=model_path, device=device, progress=progress,
                                       should_stop=should_stop, reference_labels=reference_labels, mapping=mapping,
                                       **predict_options)

    def heart_centre(self, markups_node: Any) -> list[float] | None:
        """RAS mm of the first point of a point list (world coordinates, so a transformed list
        counts where it is shown), or None without a node.

        Raises:
            CardioInputError: a point list without points.
        """
        from cardiocore.mrml.recon import centre_from_markups

        return centre_from_markups(markups_node)

    def model_problem(self, model_path: str | None = None) -> str | None:
        """Why Predict mode cannot run with ``model_path`` (None: the bundled model), or None."""
        from cardiocore.mrml.recon import model_problem

        return model_problem(model_path)


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
#: A tiny UNTRAINED Predict network (it checks the plumbing, not accuracy): a 32^3 grid of 6 mm.
#: The strong alignment ridge keeps its global alignment an isotropic scaling (the decoder's
#: offsets start at zero), so it outputs a shrunken, image-dependent copy of the template:
#: closed, outward oriented and in place (a free untrained affine may mirror the meshes).
TINY_PREDICT_SPEC = {"grid_size": 32, "spacing_mm": 6.0, "unet_features": (4, 4, 8, 8, 8, 4), "graph_channels": 8,
                     "graph_layers": 1, "alignment_ridge": 1e4}
#: RAS mm centre of the Predict test images, away from the origin (an LPS mix-up moves it by 78 mm).
PREDICT_CENTRE_RAS = (25.0, -30.0, 40.0)
#: The same phantom image on two grids: (I, J, K) voxels of (mm), rotated (degrees) about R, A, S.
PREDICT_GRIDS = {"axis-aligned": ((60, 60, 50), (3.2, 3.2, 3.2), (0.0, 0.0, 0.0)),
                 "oblique": ((80, 64, 48), (2.4, 3.0, 4.0), (20.0, -10.0, 35.0))}
#: Quality samples per rule of the Predict scenario (the untrained meshes all overlap: few samples).
PREDICT_QUALITY_POINTS = {"vr_points": 100, "svr_points": 100}
#: Largest vertex distance (mm) between the meshes predicted from the two grids: the network sees
#: the same frame image. Measured 0.25 mm; the same image with its I axis flipped moves them by
#: 3.3 mm, so a quarter of a frame voxel (1.5 mm) tells a correct reading from an axis mistake.
PREDICT_AGREEMENT_MM = 1.5
#: Largest distance (mm) of the predicted meshes' vertex centroid from the image centre (the
#: untrained network keeps the template near the frame centre; measured 1.7 mm): one frame voxel.
PREDICT_CENTRE_MM = 6.0


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
    test.assertIsNone(metrics["thick_slice_axis"])  # 3.6 mm slices of 3 mm pixels: a volume
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



def scenario_long_axis_segmentations(test: ScriptedLoadableModuleTest) -> None:
    """A cine-like study segmented in the Segment Editor: the phantom's LV and RV on 12 mm
    short-axis slices of 2.5 mm pixels, and one long-axis slice through the heart's centre on its
    own grid, same segment names, and a second long-axis slice with only the RV segmented. The
    logic fits the stack on its slice planes, with the long-axis segmentations (left unmodified;
    each annotates the structures it has segments for), says so in the summary, and refuses
    long-axis segmentations without a main segmentation."""
    import numpy as np

    from cardiocore.mrml.recon import summary_text
    from cardiocore.mrml.segmentations import arrays_to_segmentation
    from cardiocore.phantoms.heart import heart_label_phantom

    names = EDITOR_NAMES[:3]
    stack = heart_label_phantom(shape=(56, 56, 10), spacing=(2.5, 2.5, 12.0), seed=2)
    view = heart_label_phantom(shape=(56, 1, 56), spacing=(2.5, 6.0, 2.5), seed=2)
    segmentation = arrays_to_segmentation({n: stack.labels == k for k, n in enumerate(names, start=1)},
                                          stack.ijk_to_ras, name="short axis")
    long_axis = arrays_to_segmentation({n: view.labels == k for k, n in enumerate(names, start=1)},
                                       view.ijk_to_ras, name="long axis")
    other = heart_label_phantom(shape=(1, 56, 56), spacing=(6.0, 2.5, 2.5), seed=2)
    rv_view = arrays_to_segmentation({names[2]: other.labels == 3}, other.ijk_to_ras, name="RV only")
    logic = CardioReconstructLogic()
    alone = logic.reconstruct(segmentation, None, steps=10, device="cpu", **TEST_QUALITY_POINTS)
    test.assertEqual((alone.metrics["thick_slice_axis"], alone.metrics["views"]), (2, 0))
    test.assertEqual(set(alone.model_nodes), {"lv_cavity", "lv_myocardium", "rv"})
    before = _snapshot(long_axis)
    both = logic.reconstruct(segmentation, None, steps=10, device="cpu", view_segmentations=[long_axis, rv_view],
                             **TEST_QUALITY_POINTS)
    test.assertEqual((both.metrics["thick_slice_axis"], both.metrics["views"]), (2, 2))
    test.assertEqual(both.metrics["view_structures"], [["lv_cavity", "lv_myocardium", "rv"], ["rv"]])
    test.assertIn("thick slices: fitted on the slice planes, with 2 more view(s)", summary_text(both.metrics))
    after = _snapshot(long_axis)
    test.assertEqual(before[:2], after[:2])
    test.assertTrue(all(np.array_equal(a, b) for a, b in zip(before[2], after[2], strict=True)))
    with test.assertRaises(CardioInputError) as raised:
        logic.reconstruct(None, None, view_segmentations=[long_axis])
    test.assertIn("long-axis segmentations: are fitted together with a main segmentation", str(raised.exception))

def tiny_predictor(template: Any = None, seed: int = 0) -> Any:
    """An untrained ``MeshPredictor`` of :data:`TINY_PREDICT_SPEC` over ``template`` (default the
    bundled one), seeded, in eval mode."""
    import torch

    from cardiocore.recon.predict import MeshPredictor
    from cardiocore.recon.predict_net import PredictNetSpec
    from cardiocore.recon.template import load_template

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        predictor = MeshPredictor.create(PredictNetSpec(**TINY_PREDICT_SPEC), template or load_template())
    predictor.net.eval()
    return predictor


def phantom_image(grid: str, seed: int = 1) -> tuple[Any, Any]:
    """The heart phantom as a CT-like image (40 times the label) on ``PREDICT_GRIDS[grid]``,
    centred on :data:`PREDICT_CENTRE_RAS`, as a new scalar volume node; returns (node, ``HeartPhantom``)."""
    import numpy as np
    from scipy.spatial.transform import Rotation

    from cardiocore.mrml.volumes import array_to_volume
    from cardiocore.phantoms.heart import heart_label_phantom

    shape, spacing, rotation = PREDICT_GRIDS[grid]
    direction = Rotation.from_euler("xyz", rotation, degrees=True).as_matrix()
    origin = np.asarray(PREDICT_CENTRE_RAS) - direction @ (np.asarray(spacing) * (np.asarray(shape) - 1) / 2.0)
    phantom = heart_label_phantom(shape=shape, spacing=spacing, direction=direction, origin=tuple(origin), seed=seed)
    node = array_to_volume((phantom.labels * 40.0).astype(np.float32), phantom.ijk_to_ras, f"phantom image {grid}")
    return node, phantom


def scenario_predict(test: ScriptedLoadableModuleTest, predictor: Any = None) -> dict[str, Any]:
    """Predict mode on the same phantom image on an axis-aligned and on an oblique, anisotropic
    grid: a model per structure (region array, template topology), a segmentation on the image
    grid, tables, all in one folder, the input volume unchanged (voxels and matrix), no Dice
    without labels; the meshes of both grids agree within PREDICT_AGREEMENT_MM and sit at the
    image centre in RAS. Returns grid name -> ``ReconNodes``."""
    import numpy as np

    from cardiocore.mrml.app import slicer_app
    from cardiocore.mrml.mesh_folders import REGION_ARRAY
    from cardiocore.mrml.models import model_to_mesh
    from cardiocore.mrml.segmentations import segmentation_to_arrays
    from cardiocore.mrml.tables import table_to_columns
    from cardiocore.mrml.volumes import volume_to_array

    predictor = predictor or tiny_predictor()
    hierarchy = slicer_app().scene.GetSubjectHierarchyNode()
    results, verts = {}, {}
    for grid in PREDICT_GRIDS:
        node, phantom = phantom_image(grid)
        before = volume_to_array(node)
        result = CardioReconstructLogic().predict(node, predictor=predictor, **PREDICT_QUALITY_POINTS)
        after = volume_to_array(node)
        test.assertTrue(np.array_equal(before[0], after[0]))
        np.testing.assert_array_equal(before[1], after[1])
        test.assertEqual(list(result.model_nodes), list(predictor.names))
        output = segmentation_to_arrays(result.segmentation_node)
        np.testing.assert_allclose(output.ijk_to_ras, phantom.ijk_to_ras, atol=1e-6)
        meshes = []
        for index, (name, model) in enumerate(result.model_nodes.items()):
            mesh = model_to_mesh(model)
            test.assertTrue(np.all(mesh.point_data[REGION_ARRAY] == index), name)
            np.testing.assert_array_equal(mesh.faces, predictor.template_faces[index].numpy())
            meshes.append(mesh.verts)
        for extra in (*result.model_nodes.values(), result.segmentation_node, result.table_node,
                      result.rule_table_node):
            test.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(extra)), result.folder_item_id)
        columns = table_to_columns(result.table_node)
        test.assertEqual(list(columns["structure"]), list(predictor.names))
        test.assertTrue(np.isnan(np.asarray(columns["Dice"], dtype=float)).all())
        test.assertEqual(result.rule_table_node.GetNumberOfRows(), 21)
        metrics = result.metrics
        test.assertEqual((metrics["mode"], metrics["predicted"]), ("predict", list(predictor.names)))
        test.assertTrue(all(m["dice"] is None and m["hd95_mm"] is None for m in metrics["structures"].values()))
        test.assertIsInstance(metrics["warnings"], list)
        verts[grid] = np.concatenate(meshes)
        centre_mm = float(np.linalg.norm(verts[grid].mean(axis=0) - np.asarray(PREDICT_CENTRE_RAS)))
        test.assertLess(centre_mm, PREDICT_CENTRE_MM, grid)
        results[grid] = result
    distance = np.linalg.norm(verts["axis-aligned"] - verts["oblique"], axis=1).max()
    test.assertLess(float(distance), PREDICT_AGREEMENT_MM)
    return results


class CardioReconstructTest(ScriptedLoadableModuleTest):
    def runTest(self) -> None:
        from cardiocore.mrml.app import slicer_app

        slicer_app().clear()
        scenario_guess_mapping(self)
        scenario_reconstruct(self)
        scenario_predict(self)
        scenario_long_axis_segmentations(self)
        with tempfile.TemporaryDirectory() as workdir:
            scenario_fit_label_file(self, workdir)
        self.delayDisplay("CardioReconstruct scenarios passed")
