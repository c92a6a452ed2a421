"""CardioGen: generate left-ventricle meshes at end-diastole and end-systole (MeshLDM: a mesh VAE
and latent diffusion), interpolate between shapes, train on your own cohort and evaluate.

Four classes, as every CardioShape module:

- ``CardioGen(ScriptedLoadableModule)``: title, category, help;
- ``CardioGenWidget``: the four sections of ``Resources/UI/CardioGen.ui`` bound to the parameter
  node; training runs in a background process polled by a timer (progress bar, Cancel);
- ``CardioGenLogic``: explicit arguments, no GUI; delegates to :mod:`cardiocore.mrml.gen`;
- ``CardioGenTest``: ``runTest()`` runs the scenario functions below, which pytest runs too
  (``Testing/test_gen_mrml.py``).

The compute packages (torch, MONAI, PyTorch Geometric) are imported only when used, so the
module loads before they are installed; the widget installs them on first use, after asking.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from cardiocore.errors import CardioInputError
from cardiocore.gen.samplers import DEFAULT_FAST_STEPS
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
    from slicer import vtkMRMLModelNode
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

    @parameterNodeWrapper
    class CardioGenParameterNode:
        """Widget state stored in the scene."""

        phase: Annotated[str, Choice(["ED", "ES", "any"])] = "ED"
        useEDVTarget: bool = False
        edvMin: Annotated[float, WithinRange(10.0, 600.0)] = 120.0
        edvMax: Annotated[float, WithinRange(10.0, 600.0)] = 160.0
        useEFTarget: bool = False
        efMin: Annotated[float, WithinRange(5.0, 90.0)] = 50.0
        efMax: Annotated[float, WithinRange(5.0, 90.0)] = 65.0
        count: Annotated[int, WithinRange(1, 5000)] = 10
        seed: Annotated[int, WithinRange(0, 2_000_000_000)] = 0
        steps: Annotated[int, WithinRange(1, 1000)] = DEFAULT_FAST_STEPS
        interpolateFrom: vtkMRMLModelNode
        interpolateTo: vtkMRMLModelNode
        frames: Annotated[int, WithinRange(2, 500)] = 10
        trainFromNodes: bool = False
        trainFolder: Path
        trainName: str = "cardiogen-user"
        trainStepsScale: Annotated[float, WithinRange(0.01, 10.0)] = 1.0
        trainAlign: bool = False
        trainOutput: Path
        generatedFolder: Path
        referenceFolder: Path


class CardioGen(ScriptedLoadableModule):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.parent.title = "CardioGen"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = []
        self.parent.contributors = ["The CardioShape contributors"]
        self.parent.helpText = (
            "Generate realistic left-ventricle meshes at end-diastole (ED) and end-systole (ES) with a mesh "
            "VAE and latent diffusion (MeshLDM), optionally with target EDV and EF; interpolate between two "
            "meshes of the model's template, wherever they lie in the scene; train a model on your own cohort "
            "of meshes in correspondence; "
            "evaluate generated meshes against real ones (1-NNA, COV, MMD, clinical distributions)."
        )
        self.parent.acknowledgementText = (
            "Method: MeshLDM (arXiv 2508.14122). Bundled weights trained on the Cardiac Atlas Project LV "
            "shape atlas; see the model card in Resources/Models/models.json."
        )


class CardioGenWidget(ScriptedLoadableModuleWidget):
    TIMER_MS = 500

    def setup(self) -> None:
        super().setup()
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CardioGen.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CardioGenLogic()
        self._parameterNode = CardioGenParameterNode(self.logic.getParameterNode())
        self._parameterNode.connectGui(self.ui)
        self._modelChoices: list[Any] = []
        self._training = None
        self._trainingName = ""
        self._trainingTimer = qt.QTimer()
        self._trainingTimer.setInterval(self.TIMER_MS)
        self._trainingTimer.connect("timeout()", self.onTrainingTimer)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.onRefreshModels)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerate)
        self.ui.interpolateButton.connect("clicked(bool)", self.onInterpolate)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.cancelTrainingButton.connect("clicked(bool)", self.onCancelTraining)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        from cardiocore.mrml.dependencies import missing_requirements

        if missing_requirements():  # listing models needs torch: install on the first click instead
            self.ui.modelComboBox.addItem("(press Refresh to install the Python packages CardioGen needs)")
            self.ui.generateButton.enabled = False
            self.ui.interpolateButton.enabled = False
        else:
            self.refreshModels()

    def cleanup(self) -> None:
        self._trainingTimer.stop()
        if self._training is not None and not self._training.finished:
            self._training.cancel()

    # ------------------------------------------------------------------ helpers
    def _ensureRequirements(self) -> None:
        from cardiocore.mrml.dependencies import ensure_requirements

        ensure_requirements(confirm=slicer.util.confirmOkCancelDisplay)

    def onRefreshModels(self) -> None:
        with slicer.util.tryWithErrorDisplay("CardioGen could not list the models.", waitCursor=True):
            self._ensureRequirements()
            self.refreshModels()

    def refreshModels(self) -> None:
        """Fill the model list from the bundled and user manifests."""
        from cardiocore.mrml.gen import available_models

        self._modelChoices = available_models()
        self.ui.modelComboBox.clear()
        for choice in self._modelChoices:
            self.ui.modelComboBox.addItem(choice.label)
        if not self._modelChoices:
            self.ui.modelComboBox.addItem("(no model: train one below)")
        self.ui.generateButton.enabled = bool(self._modelChoices)
        self.ui.interpolateButton.enabled = bool(self._modelChoices)

    def _selectedModel(self) -> Any:
        return self.logic.model(self._modelChoices[self.ui.modelComboBox.currentIndex])

    # ------------------------------------------------------------------ generate / interpolate
    @staticmethod
    @contextmanager
    def _warningsShown() -> Iterator[None]:
        """Show the back-end's warnings (a target beyond the training shapes, a mesh unlike them) in
        a dialog once the work is done, instead of leaving them in the Python console."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            yield
        messages = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
        if messages:
            slicer.util.warningDisplay("\n\n".join(messages), windowTitle="CardioGen")

    def onGenerate(self) -> None:
        with slicer.util.tryWithErrorDisplay("CardioGen could not generate meshes.", waitCursor=True), \
                self._warningsShown():
            self._ensureRequirements()
            parameters = self._parameterNode
            conditions = {}
            if parameters.useEDVTarget:
                conditions["EDV_ml"] = (parameters.edvMin, parameters.edvMax)
            if parameters.useEFTarget:
                conditions["EF_percent"] = (parameters.efMin, parameters.efMax)
            result = self.logic.generate(
                self._selectedModel(), parameters.count, None if parameters.phase == "any" else parameters.phase,
                seed=parameters.seed, steps=parameters.steps, conditions=conditions or None,
            )
            self.ui.generateStatusLabel.text = (
                f"{len(result.model_nodes)} meshes; clinical indices in table '{result.table_node.GetName()}'"
            )
            slicer.modules.plots.logic().ShowChartInLayout(result.plot_chart_node)

    def onInterpolate(self) -> None:
        with slicer.util.tryWithErrorDisplay("CardioGen could not interpolate.", waitCursor=True), \
                self._warningsShown():
            self._ensureRequirements()
            parameters = self._parameterNode
            _, browser = self.logic.interpolate(
                self._selectedModel(), parameters.interpolateFrom, parameters.interpolateTo, parameters.frames
            )
            slicer.modules.sequences.showSequenceBrowser(browser)

    # ------------------------------------------------------------------ train
    def onTrain(self) -> None:
        with slicer.util.tryWithErrorDisplay("CardioGen could not start training.", waitCursor=True):
            self._ensureRequirements()
            parameters = self._parameterNode
            workFolder = self.logic.work_folder(parameters.trainName, parameters.trainOutput)
            if parameters.trainFromNodes:
                data = self.logic.prepare_training_data(self.ui.trainNodesSelector.checkedNodes(), workFolder)
            else:
                data = parameters.trainFolder
            self._training = self.logic.start_training(
                data, workFolder, parameters.trainName, parameters.trainStepsScale, align=parameters.trainAlign
            )
            self._trainingName = parameters.trainName
            self.ui.trainProgressBar.value = 0
            self.ui.trainStatusLabel.text = f"Training started in {workFolder}"
            self.ui.trainButton.enabled = False
            self.ui.cancelTrainingButton.enabled = True
            self._trainingTimer.start()

    def onCancelTraining(self) -> None:
        if self._training is not None:
            self._training.cancel()
            self.ui.trainStatusLabel.text = "Stopping after the current step (a checkpoint is saved)..."

    def onTrainingTimer(self) -> None:
        training = self._training
        for event in training.poll():
            total = max(1, int(event.get("total", 1)))
            self.ui.trainProgressBar.value = int(100 * int(event.get("step", 0)) / total)
            loss = event.get("metrics", {}).get("loss")
            detail = f", loss {loss:.4g}" if isinstance(loss, (int, float)) else ""
            self.ui.trainStatusLabel.text = f"{event['stage']}: step {event.get('step')} of {total}{detail}"
        if not training.finished:
            return
        self._trainingTimer.stop()
        self.ui.trainButton.enabled = True
        self.ui.cancelTrainingButton.enabled = False
        code = training.returncode
        if code == 0:
            self.ui.trainProgressBar.value = 100
            self.ui.trainStatusLabel.text = f"Model '{self._trainingName}' trained and added to the model list."
            self.refreshModels()
            from cardiocore.weights import parse_version

            trained = [i for i, choice in enumerate(self._modelChoices) if choice.name == self._trainingName]
            if trained:  # the newest version of that name: the one just registered
                self.ui.modelComboBox.currentIndex = max(
                    trained, key=lambda i: parse_version(self._modelChoices[i].version))
        elif code == CardioGenLogic.STOPPED_EXIT_CODE or code < 0:
            self.ui.trainStatusLabel.text = "Training stopped. Press Train with the same work folder to resume."
        else:
            self.ui.trainStatusLabel.text = f"Training failed (exit status {code})."
            slicer.util.errorDisplay("CardioGen training failed.", detailedText="\n".join(training.log))

    # ------------------------------------------------------------------ evaluate
    def onEvaluate(self) -> None:
        with slicer.util.tryWithErrorDisplay("CardioGen could not evaluate the folders.", waitCursor=True), \
                self._warningsShown():
            self._ensureRequirements()
            parameters = self._parameterNode
            table = self.logic.evaluate(parameters.generatedFolder, parameters.referenceFolder)
            layoutManager = slicer.app.layoutManager()
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            applicationLogic = slicer.app.applicationLogic()
            applicationLogic.GetSelectionNode().SetActiveTableID(table.GetID())
            applicationLogic.PropagateTableSelection()


class CardioGenLogic(ScriptedLoadableModuleLogic):
    """CardioGen without a GUI: every method takes explicit arguments and returns new nodes."""

    STOPPED_EXIT_CODE = 130
    """Exit status of ``cardio gen train`` stopped on request (resumable)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._models: dict[tuple[str, str], Any] = {}

    def model(self, choice: Any) -> Any:
        """The :class:`~cardiocore.gen.model.CardioGenModel` of a ``ModelChoice`` (loaded once),
        or of a ``model.pt`` path."""
        from cardiocore.gen.model import CardioGenModel

        if isinstance(choice, (str, os.PathLike)):
            return CardioGenModel.load(choice)
        key = (choice.name, choice.version)
        if key not in self._models:
            self._models[key] = CardioGenModel.from_bundled(choice.name, choice.version)
        return self._models[key]

    def generate(
        self, model: Any, count: int, phase: str | None, *, seed: int = 0, steps: int = DEFAULT_FAST_STEPS,
        conditions: Mapping[str, Any] | None = None,
    ) -> Any:
        """``count`` meshes in a new folder, their table and plot (see ``generate_to_scene``)."""
        from cardiocore.mrml.gen import generate_to_scene

        return generate_to_scene(model, count, phase, seed=seed, steps=steps, conditions=conditions)

    def interpolate(self, model: Any, node_a: Any, node_b: Any, frames: int) -> tuple[Any, Any]:
        """A sequence node (and its browser) from ``node_a`` to ``node_b`` in latent space."""
        from cardiocore.mrml.gen import interpolate_to_sequence

        if node_a is None or node_b is None:
            raise CardioInputError("interpolation", "needs two model nodes", "select the first and the last model")
        return interpolate_to_sequence(model, node_a, node_b, frames)

    def evaluate(self, generated_folder: str | os.PathLike, reference_folder: str | os.PathLike) -> Any:
        """A new table node of generative and clinical figures with their targets."""
        from cardiocore.mrml.gen import evaluate_folders

        return evaluate_folders(generated_folder, reference_folder)

    def work_folder(self, name: str, chosen: str | os.PathLike | None = None) -> Path:
        """``chosen`` when given, else ``<user cache>/training/<name>``."""
        if chosen is not None and str(chosen) not in ("", "."):
            return Path(chosen)
        from cardiocore.weights import cache_dir

        return cache_dir() / "training" / name

    def prepare_training_data(self, nodes: Sequence[Any], work_folder: str | os.PathLike) -> Path:
        """Save model nodes (phase in their names) as ``<work folder>/cohort`` for the trainer."""
        from cardiocore.mrml.gen import write_training_folder

        folder = Path(work_folder) / "cohort"
        write_training_folder(list(nodes), folder, overwrite=True)
        return folder

    def start_training(
        self, data: str | os.PathLike, work_folder: str | os.PathLike, name: str, steps_scale: float = 1.0,
        align: bool = False,
    ) -> Any:
        """Start ``cardio gen train`` in a background process (a ``BackgroundTraining``); the
        model is registered under ``name`` with the next free version. A work folder with
        checkpoints of a stopped run is resumed. ``align``: ``--align`` (meshes in their own frames)."""
        from cardiocore.mrml.gen import next_model_version, train_in_background

        if str(data) in ("", "."):
            raise CardioInputError("training data", "is not set", "choose the folder of meshes (or use model nodes)")
        work = Path(work_folder)
        resume = any(work.glob("*/last.pt")) and not (work / "model.pt").exists()
        return train_in_background(
            data, work, name=name, steps_scale=steps_scale, resume=resume,
            extra=["--register", "--version", next_model_version(name), *(["--align"] if align else [])],
        )


# ---------------------------------------------------------------------------- test scenarios
def write_phantom_cohort(folder: str | os.PathLike, n_subjects: int = 12, seed: int = 0) -> Path:
    """A folder of synthetic LV meshes (``s00_ED.vtk``, ``s00_ES.vtk``, ...) in correspondence, with
    the region array, as a user's cohort would be."""
    import numpy as np

    from cardiocore.mrml.mesh_folders import REGION_ARRAY, write_mesh_folder
    from cardiocore.phantoms.lv import lv_cohort

    pairs = lv_cohort(n_subjects, seed=seed, n_circumferential=16, n_longitudinal=8)
    n_endo = pairs[0][0].endo_verts.shape[0]
    labels = np.repeat(np.array([0, 1], dtype=np.int8), n_endo)
    meshes = [
        (f"s{index:02d}_{phase}", shape.verts.numpy(), shape.faces.numpy())
        for index, pair in enumerate(pairs) for phase, shape in zip(("ED", "ES"), pair)
    ]
    write_mesh_folder(folder, meshes, point_data={REGION_ARRAY: labels})
    return Path(folder)


def tiny_model(cohort_folder: str | os.PathLike, work_folder: str | os.PathLike) -> Any:
    """A CardioGen model trained in seconds (``GenTrainingSpec.tiny``) on a folder of meshes."""
    from cardiocore.gen.training import GenTrainingSpec, train_cardiogen
    from cardiocore.mrml.mesh_folders import cohort_from_folder

    cohort = cohort_from_folder(cohort_folder)
    return train_cardiogen(cohort, work_folder, GenTrainingSpec.tiny(), progress=lambda *args: None).model


def scenario_cohort_folder(test: ScriptedLoadableModuleTest, folder: str | os.PathLike) -> None:
    """A phantom folder reads back as a cohort: ED/ES pairs per subject, LV regions from the files."""
    from cardiocore.mrml.mesh_folders import cohort_from_folder

    cohort = cohort_from_folder(folder)
    test.assertEqual(cohort.phases[:4], ["ED", "ES", "ED", "ES"])
    test.assertEqual(cohort.subject_ids[:4], ["s00", "s00", "s01", "s01"])
    test.assertEqual(sorted(cohort.regions), ["endocardium", "epicardium"])
    test.assertEqual(len(cohort.regions["endocardium"]) + len(cohort.regions["epicardium"]), cohort.n_vertices)


def scenario_generate(test: ScriptedLoadableModuleTest, model: Any, n: int = 4) -> None:
    """``n`` model nodes in one subject-hierarchy folder, a table whose cavity volumes are those of
    the nodes' meshes, and a chart of generated vs training cavity volumes."""
    import numpy as np

    from cardiocore.gen.clinical import lv_shape_indices
    from cardiocore.mrml.app import slicer_app
    from cardiocore.mrml.models import model_to_mesh
    from cardiocore.mrml.tables import table_to_columns

    result = CardioGenLogic().generate(model, n, "ED", seed=3, steps=10)
    hierarchy = slicer_app().scene.GetSubjectHierarchyNode()
    test.assertEqual(len(result.model_nodes), n)
    for node in [*result.model_nodes, result.table_node, result.plot_chart_node]:
        test.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)), result.folder_item_id)
    meshes = [model_to_mesh(node) for node in result.model_nodes]
    verts = np.stack([mesh.verts for mesh in meshes])
    test.assertEqual(verts.shape, (n, model.n_vertices, 3))
    columns = table_to_columns(result.table_node)
    test.assertEqual(list(columns["mesh"]), [node.GetName() for node in result.model_nodes])
    expected = lv_shape_indices(verts, model.faces, model.regions)["cavity_ml"]
    np.testing.assert_allclose(columns["cavity_ml"], expected, rtol=1e-5)
    test.assertEqual(result.plot_chart_node.GetNumberOfPlotSeriesNodes(), 2)
    test.assertEqual(result.plot_chart_node.GetNthPlotSeriesNode(0).GetTableNode().GetTable().GetNumberOfColumns(), 3)


def scenario_interpolate(test: ScriptedLoadableModuleTest, model: Any, n: int = 5) -> None:
    """A sequence of ``n`` frames between two generated meshes, the second moved into a patient's frame
    by a parent transform: each end frame is that mesh's reconstruction where the node is shown."""
    import numpy as np
    import slicer
    import torch
    import vtk

    from cardiocore.mrml.models import model_to_mesh
    from cardiocore.mrml.sequences import sequence_to_meshes

    ends = CardioGenLogic().generate(model, 2, "ED", seed=5, steps=10).model_nodes
    to_patient = vtk.vtkMatrix4x4()
    for row, values in enumerate([[0.0, -1.0, 0.0, -40.0], [0.0, 0.0, 1.0, 120.0], [-1.0, 0.0, 0.0, 25.0]]):
        for column, value in enumerate(values):
            to_patient.SetElement(row, column, value)
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "to patient")
    transform.SetMatrixTransformToParent(to_patient)
    ends[1].SetAndObserveTransformNodeID(transform.GetID())
    sequence, _ = CardioGenLogic().interpolate(model, ends[0], ends[1], n)
    frames = sequence_to_meshes(sequence)
    test.assertEqual(len(frames), n)
    for frame, node in ((frames[0], ends[0]), (frames[-1], ends[1])):
        shown = model_to_mesh(node).verts  # world RAS, the transform applied
        in_frame = model_to_mesh(node, world=False).verts
        plain = model.reconstruct(torch.as_tensor(in_frame, dtype=torch.float32)[None])[0].numpy()
        error = np.linalg.norm(frame.verts - shown, axis=1).mean()
        test.assertLessEqual(error, np.linalg.norm(plain - in_frame, axis=1).mean() + 1e-3)


class CardioGenTest(ScriptedLoadableModuleTest):
    def runTest(self) -> None:
        from cardiocore.mrml.app import slicer_app

        slicer_app().clear()
        with tempfile.TemporaryDirectory() as workdir:
            cohort = write_phantom_cohort(Path(workdir) / "cohort")
            scenario_cohort_folder(self, cohort)
            model = tiny_model(cohort, Path(workdir) / "train")
            scenario_generate(self, model)
            scenario_interpolate(self, model)
        self.delayDisplay("CardioGen scenarios passed")
