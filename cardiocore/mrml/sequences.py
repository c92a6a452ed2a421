"""Animated meshes as Slicer sequences (``vtkMRMLSequenceNode`` of model nodes + a browser).

A sequence shows, for example, the cardiac cycle or an ED -> ES interpolation: every frame is a
triangle mesh (RAS mm), and the sequence browser's proxy model node displays the current frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import slicer

from cardiocore.errors import CardioInputError
from cardiocore.mrml.app import slicer_app
from cardiocore.mrml.models import checked_color
from cardiocore.mrml.polydata import Mesh, mesh_from_polydata, polydata_from_mesh, to_numpy


def meshes_to_sequence(
    frames: Any,
    name: str,
    faces: Any = None,
    index_name: str = "frame",
    index_unit: str = "",
    index_values: Sequence[float] | Sequence[str] | None = None,
    color: Sequence[float] | None = None,
) -> tuple[Any, Any]:
    """Add a sequence of model frames and a browser to play it.

    Args:
        frames: a list of ``(verts, faces)`` pairs; or, with ``faces`` given, a list of (V, 3)
            vertex arrays or one (T, V, 3) array/tensor sharing those faces.
        name: name of the new sequence node (made unique); the browser is "<name> browser".
        faces: (F, 3) triangles shared by all frames (only with vertex-only frames).
        index_name: what the index counts ("frame", "time", "phase").
        index_unit: unit of the index ("ms", "%", or "").
        index_values: one value per frame (numbers, or strings for a text index); default
            0, 1, ..., T-1. Values must be distinct.
        color: display colour (r, g, b) in [0, 1] of the proxy model.

    Returns:
        (``vtkMRMLSequenceNode``, ``vtkMRMLSequenceBrowserNode``); the browser's proxy model node
        shows the first frame.

    Raises:
        CardioInputError / MeshError: no frames, a bad frame (named by its number), faces given
            both ways or not at all, or index values of the wrong count or repeated. Nothing is
            added to the scene when an error is raised.
    """
    frame_meshes = _frame_meshes(frames, faces, name)
    values, numeric = _index_values(index_values, len(frame_meshes), name)
    polydatas = [
        polydata_from_mesh(verts, frame_faces, name=f"{name} frame {number}")
        for number, (verts, frame_faces) in enumerate(frame_meshes)
    ]
    rgb = checked_color(color, name)

    app = slicer_app()
    sequence = app.new_node("vtkMRMLSequenceNode", name)
    sequence.SetIndexName(index_name)
    sequence.SetIndexUnit(index_unit)
    sequence.SetIndexType(
        slicer.vtkMRMLSequenceNode.NumericIndex if numeric else slicer.vtkMRMLSequenceNode.TextIndex
    )
    frame_node = slicer.vtkMRMLModelNode()
    for value, polydata in zip(values, polydatas):
        frame_node.SetName(f"{sequence.GetName()} {index_name}={value}")
        frame_node.SetAndObservePolyData(polydata)
        sequence.SetDataNodeAtValue(frame_node, value)

    browser = app.new_node("vtkMRMLSequenceBrowserNode", f"{sequence.GetName()} browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    app.logic("Sequences").UpdateProxyNodesFromSequences(browser)
    browser.SetSelectedItemNumber(0)
    proxy = browser.GetProxyNode(sequence)
    if proxy.GetDisplayNode() is None:
        proxy.CreateDefaultDisplayNodes()
    if rgb is not None:
        proxy.GetDisplayNode().SetColor(*rgb)
    return sequence, browser


def sequence_to_meshes(sequence: Any) -> list[Mesh]:
    """The frames of a sequence of model nodes, in index order, as meshes (RAS mm).

    Raises:
        CardioInputError: not a sequence node, empty, or a frame that is not a model node.
        MeshError: a frame without a usable triangle mesh.
    """
    if sequence is None or not hasattr(sequence, "IsA") or not sequence.IsA("vtkMRMLSequenceNode"):
        what = sequence.GetName() if hasattr(sequence, "GetName") else repr(sequence)
        raise CardioInputError(what, "is not a sequence node (vtkMRMLSequenceNode)")
    name = sequence.GetName()
    if sequence.GetNumberOfDataNodes() == 0:
        raise CardioInputError(name, "has no frames")
    meshes = []
    for number in range(sequence.GetNumberOfDataNodes()):
        frame_name = f"{name} {sequence.GetIndexName()}={sequence.GetNthIndexValue(number)}"
        node = sequence.GetNthDataNode(number)
        if node is None or not node.IsA("vtkMRMLModelNode") or node.GetMesh() is None:
            raise CardioInputError(frame_name, "is not a surface model frame")
        verts, faces, point_data, cell_data = mesh_from_polydata(node.GetMesh(), name=frame_name)
        meshes.append(Mesh(verts, faces, point_data, cell_data, name=frame_name))
    return meshes


def _frame_meshes(frames: Any, faces: Any, name: str) -> list[tuple[Any, Any]]:
    """(verts, faces) per frame from either accepted layout of ``frames``."""
    given_pairs = isinstance(frames, Sequence) and any(_is_pair(frame) for frame in frames)
    if faces is None:
        if not isinstance(frames, Sequence) or not all(_is_pair(frame) for frame in frames):
            raise CardioInputError(
                f"frames of {name!r}", "must be (verts, faces) pairs when no shared faces are given"
            )
        pairs = list(frames)
    elif given_pairs:
        raise CardioInputError(
            f"frames of {name!r}", "hold (verts, faces) pairs and shared faces were given too",
            "give faces either per frame or shared, not both",
        )
    else:
        shared = to_numpy(faces)
        vertex_frames = frames if isinstance(frames, Sequence) else to_numpy(frames)
        pairs = [(verts, shared) for verts in vertex_frames]
    if not pairs:
        raise CardioInputError(f"frames of {name!r}", "is empty", "give at least one frame")
    return pairs


def _is_pair(frame: Any) -> bool:
    return isinstance(frame, (tuple, list)) and len(frame) == 2


def _index_values(
    index_values: Sequence[float] | Sequence[str] | None, count: int, name: str
) -> tuple[list[str], bool]:
    """Index values as the strings Slicer stores, and whether they are numeric."""
    if index_values is None:
        return [str(number) for number in range(count)], True
    values = list(index_values)
    if len(values) != count:
        raise CardioInputError(
            f"index_values of {name!r}", f"has {len(values)} values for {count} frames"
        )
    numeric = all(
        isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        for value in values
    )
    strings = [_numeric_text(value) if numeric else str(value) for value in values]
    if len(set(strings)) != count:
        raise CardioInputError(f"index_values of {name!r}", "repeats a value", "give distinct values")
    return strings, numeric


def _numeric_text(value: float) -> str:
    """Exact text of a number: "10" for integers, the shortest round-trip repr for floats."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(float(value))
