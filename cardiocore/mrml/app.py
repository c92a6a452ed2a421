"""The Slicer application that every ``cardiocore.mrml`` function works on.

Inside 3D Slicer, :func:`slicer_app` wraps the running application (its scene, application logic
and module logics). Headless (the ``slicer-core`` wheel, no Qt), it builds the same pieces once and
caches them: a ``vtkMRMLScene``, a ``vtkSlicerApplicationLogic`` on it and the module logics
registered by name in the order Slicer itself uses (Colors before Volumes; Segmentations before
any segmentation node so its labelmap <-> closed-surface converter rules exist). It then sets
``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` so the array helpers of ``slicer.util``
(``arrayFromVolume``, ``updateVolumeFromArray``, ``addVolumeFromArray``, ``arrayFromModelPoints``,
``arrayFromSegmentBinaryLabelmap``, ``updateSegmentBinaryLabelmapFromArray``) work the same
headless as in the application.

Headless extras that the application would otherwise provide:

- a subject-hierarchy item for every data node added to the scene (the application's
  subject-hierarchy plugin logic does this; without it, data nodes are invisible in the Data tree
  once a scene is opened in Slicer);
- ``.mrb`` (Slicer data bundle) reading and writing: a remote-IO logic and a data-IO manager
  logic with a cache folder in a temporary directory.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer
import vtk

# Module logics of a headless application, in set-up order: (name, class name in ``slicer``).
# Colors must come before Volumes (volumes look up default colour tables) and Segmentations
# before any segmentation node is created (its SetMRMLScene registers the converter rules).
# Terminologies is left out: the wheel ships none of its terminology files, so its logic only
# logs load errors; terminology entries are plain segment strings and need no logic.
HEADLESS_MODULE_LOGICS: tuple[tuple[str, str], ...] = (
    ("Colors", "vtkSlicerColorLogic"),
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Models", "vtkSlicerModelsLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Sequences", "vtkSlicerSequencesLogic"),
    ("Markups", "vtkSlicerMarkupsLogic"),
    ("Transforms", "vtkSlicerTransformLogic"),
    ("Tables", "vtkSlicerTablesLogic"),
)


def running_inside_slicer() -> bool:
    """True when ``slicer`` is the 3D Slicer application's module (``slicer.app`` exists)."""
    return getattr(slicer, "app", None) is not None


@dataclass
class SlicerApp:
    """A MRML scene with its application logic and module logics.

    Attributes:
        scene: the ``vtkMRMLScene`` all nodes live in (``slicer.mrmlScene``).
        app_logic: the ``vtkSlicerApplicationLogic`` on that scene.
        is_headless: False inside the 3D Slicer application, True on the slicer-core wheel.
        temporary_directory: folder for caches and unpacked ``.mrb`` bundles (headless only;
            inside Slicer the application's temporary path).
    """

    scene: Any
    app_logic: Any
    is_headless: bool
    temporary_directory: Path
    _logics: dict[str, Any] = field(default_factory=dict, repr=False)
    _keep_alive: list[Any] = field(default_factory=list, repr=False)

    def logic(self, name: str) -> Any:
        """The logic of the module ``name`` (e.g. ``"Segmentations"``); case-insensitive.

        Raises:
            KeyError: no such module logic in this application.
        """
        if not self.is_headless:
            module = getattr(slicer.modules, name.lower(), None)
            if module is None:
                raise KeyError(f"module {name!r} is not loaded in this Slicer")
            return module.logic()
        for registered_name, module_logic in self._logics.items():
            if registered_name.lower() == name.lower():
                return module_logic
        raise KeyError(f"module logic {name!r} is not set up; available: {sorted(self._logics)}")

    def new_node(self, class_name: str, name: str) -> Any:
        """Add a new node of MRML class ``class_name`` named ``name``, made unique in the scene.

        An existing node with the same name is never reused or overwritten: the new node gets
        ``name`` when it is free, else ``name_1``, ``name_2``, ...
        """
        return self.scene.AddNewNodeByClass(class_name, self.scene.GenerateUniqueName(name))

    def clear(self) -> None:
        """Remove every data node from the scene (as Slicer's "Close scene"), e.g. for a fresh
        test; keeps singletons such as the subject-hierarchy node and the default colour tables.
        Inside Slicer this closes the user's scene: call it from tests only."""
        self.scene.Clear(False)


_HEADLESS_APP: SlicerApp | None = None


def slicer_app() -> SlicerApp:
    """The application to work on: the running 3D Slicer, or a cached headless one."""
    global _HEADLESS_APP
    if running_inside_slicer():
        return SlicerApp(
            scene=slicer.mrmlScene,
            app_logic=slicer.app.applicationLogic(),
            is_headless=False,
            temporary_directory=Path(slicer.app.temporaryPath),
        )
    if _HEADLESS_APP is None:
        _HEADLESS_APP = _build_headless_app()
    return _HEADLESS_APP


def _build_headless_app() -> SlicerApp:
    temporary_directory = Path(tempfile.mkdtemp(prefix="cardiocore-slicer-"))
    atexit.register(shutil.rmtree, temporary_directory, ignore_errors=True)
    # The colour logic reads extra colour files from <home>/<share>/ColorFiles; none ship with the
    # wheel, so point it at an empty folder (the built-in default colour tables are still added).
    (temporary_directory / "share" / "ColorFiles").mkdir(parents=True)

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetHomeDirectory(str(temporary_directory))
    app_logic.SetShareDirectory("share")
    app_logic.SetTemporaryPath(str(temporary_directory))
    app_logic.SetMRMLScene(scene)

    app = SlicerApp(
        scene=scene, app_logic=app_logic, is_headless=True, temporary_directory=temporary_directory
    )
    _set_up_data_io(app)
    for name, class_name in HEADLESS_MODULE_LOGICS:
        module_logic = getattr(slicer, class_name)()
        module_logic.SetMRMLApplicationLogic(app_logic)
        module_logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, module_logic)
        app._logics[name] = module_logic
        if name == "Colors":
            module_logic.AddDefaultColorNodes()
    _observe_subject_hierarchy(app)
    _publish_on_slicer_module(app)
    return app


def _set_up_data_io(app: SlicerApp) -> None:
    """Hook remote IO and the data-IO manager into the scene, as the application does, so that
    ``.mrb`` bundles can be read and written; the download cache lives in the temporary folder."""
    remote_io = slicer.vtkMRMLRemoteIOLogic()
    cache_directory = app.temporary_directory / "RemoteIO"
    cache_directory.mkdir()
    remote_io.GetCacheManager().SetRemoteCacheDirectory(str(cache_directory))
    data_io_manager = slicer.vtkDataIOManagerLogic()
    data_io_manager.SetMRMLApplicationLogic(app.app_logic)
    data_io_manager.SetAndObserveDataIOManager(remote_io.GetDataIOManager())
    app.app_logic.SetMRMLSceneDataIO(app.scene, remote_io, data_io_manager)
    app._keep_alive += [remote_io, data_io_manager]


def _is_subject_hierarchy_data_node(node: Any) -> bool:
    """Data nodes (volumes, models, segmentations, markups, tables, sequences, transforms) shown
    in Slicer's Data tree; not display, storage or colour-table nodes, nor hidden helpers."""
    if node is None or not node.IsA("vtkMRMLStorableNode") or node.IsA("vtkMRMLColorNode"):
        return False
    if node.GetHideFromEditors():
        return False
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    return not node.GetAttribute(constants.GetSubjectHierarchyExcludeFromTreeAttributeName())


def _add_subject_hierarchy_item(scene: Any, node: Any) -> None:
    if not _is_subject_hierarchy_data_node(node):
        return
    hierarchy = scene.GetSubjectHierarchyNode()
    if hierarchy.GetItemByDataNode(node) == 0:
        hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)


def _observe_subject_hierarchy(app: SlicerApp) -> None:
    """Give every data node a subject-hierarchy item when it is added (or, while a scene file is
    being imported, once the import has ended and the file's own hierarchy has been read)."""
    scene = app.scene

    def on_node_added(caller: Any, event: str, node: Any) -> None:
        if not scene.IsImporting():
            _add_subject_hierarchy_item(scene, node)

    on_node_added.CallDataType = vtk.VTK_OBJECT

    def on_import_ended(caller: Any, event: str) -> None:
        for index in range(scene.GetNumberOfNodes()):
            _add_subject_hierarchy_item(scene, scene.GetNthNode(index))

    def on_node_removed(caller: Any, event: str, node: Any) -> None:
        # Slicer's subject-hierarchy plugin drops a data node's item with the node; headless we do
        hierarchy = scene.GetSubjectHierarchyNode()
        item = hierarchy.GetItemByDataNode(node) if hierarchy is not None and node is not None else 0
        if item:
            hierarchy.RemoveItem(item, False, False)

    on_node_removed.CallDataType = vtk.VTK_OBJECT

    scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, on_node_added)
    scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, on_node_removed)
    scene.AddObserver(slicer.vtkMRMLScene.EndImportEvent, on_import_ended)
    app._keep_alive += [on_node_added, on_node_removed, on_import_ended]


def _publish_on_slicer_module(app: SlicerApp) -> None:
    """Set ``slicer.mrmlScene`` and ``slicer.modules.<lowercase name>.logic()`` as the application
    does, so ``slicer.util`` helpers find the scene and the Volumes/Segmentations logics."""
    slicer.mrmlScene = app.scene
    modules = getattr(slicer, "modules", None) or types.SimpleNamespace()
    for name, module_logic in app._logics.items():
        setattr(modules, name.lower(), types.SimpleNamespace(logic=lambda logic=module_logic: logic))
    slicer.modules = modules
