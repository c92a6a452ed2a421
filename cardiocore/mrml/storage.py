"""Reading and writing nodes and whole scenes through Slicer's storage nodes.

Files are read and written exactly as the Slicer application does (same storage-node classes,
same coordinate conventions): model files are stored in LPS unless their header says otherwise
and the model storage node converts to and from the scene's RAS; volumes keep spacing, origin and
direction cosines. Every path is made absolute (storage nodes and ``.mrb`` bundles need that).

Writes are atomic: the storage node writes into a fresh hidden folder next to the target, using
the target's own file name (so the extension, and side files such as a table's ``.schema.csv``
or an OBJ's ``.mtl``, come out right), and the finished files are then moved into place with
``os.replace``. An existing file is never overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slicer

from cardiocore.errors import CardioInputError
from cardiocore.mrml.app import slicer_app
from cardiocore.mrml.polydata import mesh_from_polydata


@dataclass(frozen=True)
class NodeKind:
    """How one kind of data is held in the scene and which files hold it."""

    node_class: str
    storage_class: str
    extensions: tuple[str, ...]


MESH_EXTENSIONS = (".vtk", ".vtp", ".stl", ".ply", ".obj")
VOLUME_EXTENSIONS = (".nrrd", ".nii", ".nii.gz")
KINDS: dict[str, NodeKind] = {
    "volume": NodeKind(
        "vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode", VOLUME_EXTENSIONS
    ),
    "labelmap": NodeKind(
        "vtkMRMLLabelMapVolumeNode", "vtkMRMLVolumeArchetypeStorageNode", VOLUME_EXTENSIONS
    ),
    # a labelmap file read as a segmentation gets one segment per label value
    "segmentation": NodeKind(
        "vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode", (".seg.nrrd", *VOLUME_EXTENSIONS)
    ),
    "model": NodeKind("vtkMRMLModelNode", "vtkMRMLModelStorageNode", MESH_EXTENSIONS),
    "table": NodeKind("vtkMRMLTableNode", "vtkMRMLTableStorageNode", (".csv", ".tsv")),
}
# The kind a file is read as when none is asked for, by extension (longest extensions first, so
# "a.seg.nrrd" is a segmentation and "a.nii.gz.vtk" a model).
DEFAULT_KIND_BY_EXTENSION: dict[str, str] = {
    ".seg.nrrd": "segmentation",
    ".nii.gz": "volume",
    ".nii": "volume",
    ".nrrd": "volume",
    **{extension: "model" for extension in MESH_EXTENSIONS},
    ".csv": "table",
    ".tsv": "table",
}
# Extensions each kind of node can be written to (segmentations only as .seg.nrrd bundles).
WRITE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "vtkMRMLSegmentationNode": (".seg.nrrd",),
    "vtkMRMLVolumeNode": VOLUME_EXTENSIONS,
    "vtkMRMLModelNode": MESH_EXTENSIONS,
    "vtkMRMLTableNode": (".csv", ".tsv"),
}
COORDINATE_SYSTEMS = {
    "RAS": slicer.vtkMRMLStorageNode.CoordinateSystemRAS,
    "LPS": slicer.vtkMRMLStorageNode.CoordinateSystemLPS,
}
# Characters Slicer's table writer does not escape: a value holding one would not read back.
_UNSAFE_TABLE_CHARACTERS = {".csv": '"\n\r', ".tsv": '"\n\r\t'}


def read_node(
    path: str | os.PathLike,
    kind: str | None = None,
    name: str | None = None,
    coordinate_system: str | None = None,
) -> Any:
    """Read one file into a new node of the application's scene.

    Args:
        path: the file (``.nrrd .nii .nii.gz .seg.nrrd .vtk .vtp .stl .ply .obj .csv .tsv``).
        kind: "volume", "labelmap", "segmentation", "model" or "table"; default from the
            extension (volume files are read as scalar volumes unless asked otherwise).
        name: node name (made unique); default the file name without its extension.
        coordinate_system: for model files without a ``SPACE=`` header, "LPS" (Slicer's
            default) or "RAS"; a header in the file always wins.

    Returns:
        the new node, with a display node and its storage node pointing at ``path``.

    Raises:
        CardioInputError: missing file, unknown extension or kind, a file the reader cannot read,
            or a model file that holds no valid triangle surface. No node is left in the scene.
    """
    file_path = _absolute(path)
    if not file_path.is_file():
        raise CardioInputError(str(file_path), "does not exist or is not a file")
    extension = _extension(file_path, tuple(DEFAULT_KIND_BY_EXTENSION))
    kind = kind or DEFAULT_KIND_BY_EXTENSION[extension]
    if kind not in KINDS:
        raise CardioInputError(f"kind {kind!r}", "is unknown", f"use one of {sorted(KINDS)}")
    node_kind = KINDS[kind]
    if extension not in node_kind.extensions:
        raise CardioInputError(
            str(file_path), f"cannot be read as a {kind}",
            f"{kind} files end in {', '.join(node_kind.extensions)}",
        )

    coordinates = _coordinate_system_code(coordinate_system)

    scene = slicer_app().scene
    node = slicer_app().new_node(node_kind.node_class, name or file_path.name[: -len(extension)])
    storage = scene.AddNewNodeByClass(node_kind.storage_class)
    storage.SetFileName(str(file_path))
    if storage.IsA("vtkMRMLVolumeArchetypeStorageNode"):
        # The file named, never a series guessed from its neighbours' names: two single-slice
        # files such as lax7.nii.gz and lax8.nii.gz would otherwise be read as one 2-slice series.
        storage.SetSingleFile(True)
    if coordinates is not None:
        storage.SetCoordinateSystem(coordinates)
    node.SetAndObserveStorageNodeID(storage.GetID())
    try:
        if not storage.ReadData(node):
            raise CardioInputError(
                str(file_path), f"could not be read as a {kind}", _messages(storage) or None
            )
        _check_read(node, kind, file_path)
    except Exception:
        remove_with_helpers(scene, node)
        raise
    if node.IsA("vtkMRMLDisplayableNode") and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def write_node(
    node: Any,
    path: str | os.PathLike,
    overwrite: bool = False,
    coordinate_system: str | None = None,
) -> Path:
    """Write a volume, labelmap, segmentation, model or table node to a file, atomically.

    Args:
        node: the node to write; it is not changed (its own storage node is left alone). A model
            is written in its own coordinates: parent transforms are not hardened.
        path: the target file; its extension picks the format.
        overwrite: replace an existing file (otherwise an existing file is an error).
        coordinate_system: for models, "LPS" (Slicer's default, recorded in the file header) or
            "RAS".

    Returns:
        the absolute path written.

    Raises:
        CardioInputError: unknown extension for this node, existing file without ``overwrite``,
            missing folder, an empty or invalid model, table text Slicer cannot write back
            readably, or a writer failure. Nothing is written (or left behind) on error.
    """
    target = _absolute(path)
    node_name = node.GetName() if hasattr(node, "GetName") else repr(node)
    extension = _extension(target, _write_extensions(node, node_name))
    if node.IsA("vtkMRMLModelNode"):
        _check_model_writable(node, node_name)
    if node.IsA("vtkMRMLTableNode"):
        _check_table_writable(node, node_name, extension)
    coordinates = _coordinate_system_code(coordinate_system)
    storage = node.CreateDefaultStorageNode()
    if coordinates is not None:
        storage.SetCoordinateSystem(coordinates)
    _write_atomically(target, overwrite, lambda staged: _write_with(storage, node, staged, target))
    return target


def save_scene(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save the application's whole scene as a Slicer data bundle (``.mrb``), atomically.

    Every data node without a storage node gets its default one first, so all of them are written
    into the bundle.

    Raises:
        CardioInputError: not a ``.mrb`` path, existing file without ``overwrite``, missing
            folder, or a write failure (with Slicer's messages).
    """
    target = _absolute(path)
    _extension(target, (".mrb",))
    scene = slicer_app().scene
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        storable = node.IsA("vtkMRMLStorableNode") and node.GetSaveWithScene()
        if storable and node.GetStorageNode() is None:
            node.AddDefaultStorageNode()

    def write_bundle(staged: Path) -> None:
        messages = slicer.vtkMRMLMessageCollection()
        if not scene.WriteToMRB(str(staged), None, messages):
            raise CardioInputError(
                str(target), "the scene could not be saved", messages.GetAllMessagesAsString() or None
            )

    _write_atomically(target, overwrite, write_bundle)
    return target


def load_scene(path: str | os.PathLike, clear: bool = True) -> list[Any]:
    """Load a Slicer data bundle (``.mrb``) into the application's scene.

    Args:
        path: the ``.mrb`` file.
        clear: empty the scene first (as opening a scene in Slicer); False adds to it.

    Returns:
        the data nodes (storable nodes such as volumes, models, tables) the bundle added.

    Raises:
        CardioInputError: missing file, not a ``.mrb``, or a bundle Slicer cannot read.
    """
    source = _absolute(path)
    if not source.is_file():
        raise CardioInputError(str(source), "does not exist or is not a file")
    _extension(source, (".mrb",))
    scene = slicer_app().scene
    before = {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}
    messages = slicer.vtkMRMLMessageCollection()
    if not scene.ReadFromMRB(str(source), clear, messages):
        raise CardioInputError(
            str(source), "could not be read as a Slicer scene bundle",
            messages.GetAllMessagesAsString() or None,
        )
    nodes = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
    return [
        node for node in nodes
        if (clear or node.GetID() not in before) and node.IsA("vtkMRMLStorableNode")
        and not node.GetHideFromEditors()
    ]


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _extension(path: Path, supported: tuple[str, ...]) -> str:
    """The longest of ``supported`` that the file name ends with (case-insensitive)."""
    lower_name = path.name.lower()
    matches = [extension for extension in supported if lower_name.endswith(extension)]
    if not matches:
        raise CardioInputError(
            str(path), "has an unsupported file extension", f"use one of {', '.join(supported)}"
        )
    return max(matches, key=len)


def _write_extensions(node: Any, node_name: str) -> tuple[str, ...]:
    for node_class, extensions in WRITE_EXTENSIONS.items():
        if node is not None and hasattr(node, "IsA") and node.IsA(node_class):
            return extensions
    raise CardioInputError(
        node_name, "cannot be written to a file here",
        "write_node handles volume, labelmap, segmentation, model and table nodes; "
        "save_scene writes everything else",
    )


def _coordinate_system_code(coordinate_system: str | None) -> int | None:
    """The storage-node constant for "LPS" / "RAS" (None: keep the storage node's default)."""
    if coordinate_system is None:
        return None
    if str(coordinate_system).upper() not in COORDINATE_SYSTEMS:
        raise CardioInputError(
            f"coordinate_system {coordinate_system!r}", "is unknown", "use 'LPS' or 'RAS'"
        )
    return COORDINATE_SYSTEMS[str(coordinate_system).upper()]


def remove_with_helpers(scene: Any, node: Any) -> None:
    """Remove a node and the display and storage nodes made for it (tables have no display nodes)."""
    helpers = [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    if node.IsA("vtkMRMLDisplayableNode"):
        helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None:
            scene.RemoveNode(helper)


def _messages(storage: Any) -> str:
    return storage.GetUserMessages().GetAllMessagesAsString().strip()


def _check_read(node: Any, kind: str, file_path: Path) -> None:
    """Reject reads that 'succeeded' without data, and model files without a valid triangle
    surface (a polydata, or an unstructured grid of surface cells)."""
    if kind in ("volume", "labelmap") and node.GetImageData() is None:
        raise CardioInputError(str(file_path), f"holds no {kind} image")
    if kind == "model":
        mesh_from_polydata(node.GetMesh(), name=str(file_path))
    if kind == "table" and node.GetNumberOfColumns() == 0:
        raise CardioInputError(str(file_path), "holds no table columns")


def _check_model_writable(node: Any, node_name: str) -> None:
    if node.GetMesh() is None:
        raise CardioInputError(node_name, "has no mesh to write")
    mesh_from_polydata(node.GetMesh(), name=node_name)


def _check_table_writable(node: Any, node_name: str, extension: str) -> None:
    table = node.GetTable()
    unsafe = _UNSAFE_TABLE_CHARACTERS[extension]
    for column_index in range(table.GetNumberOfColumns()):
        column = table.GetColumn(column_index)
        if not column.IsA("vtkStringArray"):
            continue
        for row in range(column.GetNumberOfValues()):
            value = column.GetValue(row)
            if any(character in value for character in unsafe):
                raise CardioInputError(
                    node_name,
                    f"column {column.GetName()!r} row {row} holds {value!r}, which Slicer's "
                    f"{extension} writer cannot store readably",
                    "remove double quotes and line breaks"
                    + (", and tabs in .tsv files" if extension == ".tsv" else ""),
                )


def _write_with(storage: Any, node: Any, staged: Path, target: Path) -> None:
    storage.SetFileName(str(staged))
    if not storage.WriteData(node) or not staged.is_file():
        raise CardioInputError(
            str(target), f"could not be written from node {node.GetName()!r}", _messages(storage) or None
        )


def _write_atomically(target: Path, overwrite: bool, write: Callable[[Path], None]) -> None:
    """Run ``write(staged_path)`` in a hidden folder beside ``target`` and move the results in.

    ``staged_path`` has the same file name as ``target``; side files the writer adds next to it
    (e.g. ``.schema.csv``, ``.mtl``) are moved too, after the same overwrite check.
    """
    if not target.parent.is_dir():
        raise CardioInputError(str(target), "cannot be written: its folder does not exist")
    if target.exists() and not overwrite:
        raise CardioInputError(str(target), "already exists", "pass overwrite=True to replace it")
    try:
        staging = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        )
    except OSError as error:
        raise CardioInputError(str(target), f"cannot be written: {error.strerror}") from error
    try:
        write(staging / target.name)
        produced = sorted(staging.iterdir(), key=lambda file: file.name == target.name)
        clashes = [
            target.parent / file.name for file in produced if (target.parent / file.name).exists()
        ]
        if clashes and not overwrite:
            raise CardioInputError(
                str(target), f"writing it would replace {', '.join(str(c) for c in clashes)}",
                "pass overwrite=True to replace them",
            )
        for file in produced:  # side files first, the target itself last
            os.replace(file, target.parent / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
