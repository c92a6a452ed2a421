"""Model nodes (``vtkMRMLModelNode``) <-> triangle meshes in RAS millimetres."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import slicer
import vtk

from cardiocore.errors import CardioInputError
from cardiocore.mrml.app import slicer_app
from cardiocore.mrml.polydata import Mesh, mesh_from_polydata, polydata_from_mesh, surface_polydata

__all__ = ["Mesh", "model_to_mesh", "mesh_to_model"]


def model_to_mesh(node: Any, world: bool = True) -> Mesh:
    """The triangle mesh of a model node.

    Args:
        node: a ``vtkMRMLModelNode`` holding a surface (polydata).
        world: apply the node's parent transforms, giving world RAS coordinates (as shown in the
            views); False gives the node's own (local) coordinates.

    Returns:
        ``Mesh`` with verts (V, 3) float64 RAS mm, faces (F, 3) int64 and the point/cell arrays.

    Raises:
        CardioInputError: not a model node, or a model without mesh data.
        MeshError: empty mesh, NaN coordinates, vertex/line cells, or a volumetric
            (unstructured grid with 3-D cells) model.
    """
    name = _model_name(node)
    polydata = surface_polydata(node.GetMesh(), name)
    if polydata is None:
        raise CardioInputError(name, "has no mesh data")
    if world and node.GetParentTransformNode() is not None:
        polydata = _transformed_to_world(node, polydata)
    verts, faces, point_data, cell_data = mesh_from_polydata(polydata, name=name)
    return Mesh(verts, faces, point_data, cell_data, name=name)


def mesh_to_model(
    verts: Any,
    faces: Any,
    name: str,
    point_data: dict[str, Any] | None = None,
    cell_data: dict[str, Any] | None = None,
    color: Sequence[float] | None = None,
    replace: Any = None,
) -> Any:
    """Put a triangle mesh into the scene as a model node.

    Args:
        verts: (V, 3) vertex positions, RAS mm (numpy array or tensor).
        faces: (F, 3) integer triangles.
        name: name of the new node; made unique (``name_1``...) if taken.
        point_data: name -> (V,) or (V, C) per-vertex arrays.
        cell_data: name -> (F,) or (F, C) per-triangle arrays.
        color: display colour (r, g, b) in [0, 1].
        replace: an existing model node whose mesh is replaced (its name and display are kept).
            Without it a NEW node is always created: user nodes are never overwritten.

    Returns:
        the ``vtkMRMLModelNode`` (with a display node).

    Raises:
        MeshError: bad mesh or data arrays; CardioInputError: bad colour or ``replace`` node.
        Nothing is added to the scene when an error is raised.
    """
    polydata = polydata_from_mesh(verts, faces, point_data, cell_data, name=name)
    rgb = checked_color(color, name)
    if replace is not None:
        node = replace
        _model_name(node)
    else:
        node = slicer_app().new_node("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(polydata)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    if rgb is not None:
        node.GetDisplayNode().SetColor(*rgb)
    return node


def _model_name(node: Any) -> str:
    """The node's name for messages, after checking it is a model node."""
    if node is None or not hasattr(node, "IsA") or not node.IsA("vtkMRMLModelNode"):
        what = node.GetName() if hasattr(node, "GetName") else repr(node)
        raise CardioInputError(what, "is not a model node (vtkMRMLModelNode)")
    return node.GetName() or node.GetID() or "model"


def checked_color(color: Sequence[float] | None, name: str) -> tuple[float, float, float] | None:
    """A display colour as (r, g, b) floats in [0, 1], or None; raises CardioInputError."""
    if color is None:
        return None
    values = [float(c) for c in color]
    if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
        raise CardioInputError(f"color of {name}", f"must be (r, g, b) in [0, 1], got {color!r}")
    return values[0], values[1], values[2]


def _transformed_to_world(node: Any, polydata: vtk.vtkPolyData) -> vtk.vtkPolyData:
    to_world = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(node.GetParentTransformNode(), None, to_world)
    transform_filter = vtk.vtkTransformPolyDataFilter()
    transform_filter.SetTransform(to_world)
    transform_filter.SetInputData(polydata)
    transform_filter.Update()
    return transform_filter.GetOutput()
