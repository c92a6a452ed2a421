"""Triangle meshes <-> ``vtkPolyData``, with per-point and per-cell arrays.

A mesh here is ``verts`` (V, 3) float64 in RAS millimetres plus ``faces`` (F, 3) int64, the house
convention; ``point_data`` maps array names to (V,) or (V, C) arrays and ``cell_data`` names to
(F,) or (F, C) arrays (one row per triangle). The conversion copies: the polydata never shares
memory with the numpy arrays it was built from, so either side can be changed freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support

from cardiocore.errors import MeshError
from cardiocore.geometry.mesh import as_mesh

ArrayDict = dict[str, np.ndarray]


@dataclass
class Mesh:
    """A triangle mesh taken out of (or to be put into) Slicer.

    Attributes:
        verts: (V, 3) float64 vertex positions, RAS millimetres.
        faces: (F, 3) int64 vertex indices of the triangles.
        point_data: name -> (V,) or (V, C) array per vertex.
        cell_data: name -> (F,) or (F, C) array per triangle.
        name: where the mesh came from (node name), for messages.
    """

    verts: np.ndarray
    faces: np.ndarray
    point_data: ArrayDict = field(default_factory=dict)
    cell_data: ArrayDict = field(default_factory=dict)
    name: str = "mesh"


def to_numpy(array: Any) -> np.ndarray:
    """A numpy view/copy of a numpy array, sequence or torch tensor (on any device)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def polydata_from_mesh(
    verts: Any,
    faces: Any,
    point_data: dict[str, Any] | None = None,
    cell_data: dict[str, Any] | None = None,
    name: str = "mesh",
) -> vtk.vtkPolyData:
    """Build a ``vtkPolyData`` of triangles from vertices, faces and optional data arrays.

    Args:
        verts: (V, 3) vertex positions (RAS mm); numpy array or tensor.
        faces: (F, 3) integer vertex indices.
        point_data: name -> (V,) or (V, C) numeric array.
        cell_data: name -> (F,) or (F, C) numeric array.
        name: what to call the mesh in error messages.

    Raises:
        MeshError: empty mesh, NaN coordinates, non-triangle faces, indices out of range, or a
            data array whose first dimension does not match the vertex / face count.
    """
    verts_t, faces_t = as_mesh(to_numpy(verts), to_numpy(faces), name=name)
    verts_np = verts_t.numpy().astype(np.float64)
    faces_np = faces_t.numpy().astype(np.int64)
    point_arrays = _checked_arrays(point_data, len(verts_np), "point", name)
    cell_arrays = _checked_arrays(cell_data, len(faces_np), "cell", name)

    points = vtk.vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(verts_np, deep=True))
    offsets = np.arange(0, 3 * len(faces_np) + 1, 3, dtype=np.int64)
    triangles = vtk.vtkCellArray()
    triangles.SetData(
        numpy_support.numpy_to_vtkIdTypeArray(offsets, deep=True),
        numpy_support.numpy_to_vtkIdTypeArray(faces_np.ravel(), deep=True),
    )
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetPolys(triangles)
    for attributes, arrays in ((polydata.GetPointData(), point_arrays), (polydata.GetCellData(), cell_arrays)):
        for array_name, values in arrays.items():
            vtk_array = numpy_support.numpy_to_vtk(values, deep=True)
            vtk_array.SetName(array_name)
            attributes.AddArray(vtk_array)
    return polydata


def surface_polydata(
    dataset: vtk.vtkPolyData | vtk.vtkUnstructuredGrid | None, name: str = "mesh"
) -> vtk.vtkPolyData | None:
    """A polydata as is, or the polydata of an unstructured grid made of surface cells only
    (points and their order kept, point and cell arrays passed on).

    Raises:
        MeshError: the grid holds volumetric (3-D), line or vertex cells.
    """
    if not isinstance(dataset, vtk.vtkUnstructuredGrid):
        return dataset
    grid = dataset
    cell_types = numpy_support.vtk_to_numpy(grid.GetDistinctCellTypesArray())
    # vtkCellTypeUtilities is VTK >= 9.4; the VTK inside older Slicer releases has vtkCellTypes only.
    cell_type_utilities = getattr(vtk, "vtkCellTypeUtilities", vtk.vtkCellTypes)
    dimensions = {cell_type_utilities.GetDimension(int(cell_type)) for cell_type in cell_types}
    if dimensions - {2}:
        raise MeshError(
            name, f"holds cells of dimension {sorted(dimensions - {2})}, not only surface cells",
            "extract the boundary surface first (e.g. vtkGeometryFilter)",
        )
    geometry_filter = vtk.vtkGeometryFilter()
    geometry_filter.SetInputData(grid)
    geometry_filter.MergingOff()
    geometry_filter.Update()
    return geometry_filter.GetOutput()


def mesh_from_polydata(
    polydata: vtk.vtkPolyData | vtk.vtkUnstructuredGrid, name: str = "polydata"
) -> tuple[np.ndarray, np.ndarray, ArrayDict, ArrayDict]:
    """Vertices, triangles and named data arrays of a ``vtkPolyData``.

    Polygons and triangle strips are split into triangles (``vtkTriangleFilter``; cell arrays are
    repeated for every triangle of a split cell). String, bit and unnamed arrays are skipped.
    A ``vtkUnstructuredGrid`` holding only surface cells (as meshio writes triangle meshes) is
    accepted too, with its points and their order kept.

    Returns:
        verts (V, 3) float64, faces (F, 3) int64, point_data {name: (V,) or (V, C)},
        cell_data {name: (F,) or (F, C)}.

    Raises:
        MeshError: no points or no surface cells, vertex or line cells (which cannot be made
            into triangles), volumetric (3-D) cells, or NaN/infinite coordinates.
    """
    polydata = surface_polydata(polydata, name)
    if polydata is None or polydata.GetNumberOfPoints() == 0:
        raise MeshError(name, "has no points")
    n_verts_cells, n_lines = polydata.GetNumberOfVerts(), polydata.GetNumberOfLines()
    if n_verts_cells or n_lines:
        raise MeshError(
            name,
            f"holds {n_verts_cells} vertex and {n_lines} line cells, which are not surface triangles",
            "give a surface mesh (polygons or triangle strips only)",
        )
    if polydata.GetNumberOfPolys() + polydata.GetNumberOfStrips() == 0:
        raise MeshError(name, "has no polygons")
    if polydata.GetNumberOfStrips() or not _all_triangles(polydata.GetPolys()):
        polydata = _triangulated(polydata)

    verts = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)
    connectivity = numpy_support.vtk_to_numpy(polydata.GetPolys().GetConnectivityArray())
    faces = connectivity.astype(np.int64).reshape(-1, 3)
    verts_t, faces_t = as_mesh(verts, faces, name=name)
    point_data = _arrays_of(polydata.GetPointData())
    cell_data = _arrays_of(polydata.GetCellData())
    return verts_t.numpy(), faces_t.numpy(), point_data, cell_data


def _checked_arrays(
    arrays: dict[str, Any] | None, count: int, location: str, name: str
) -> ArrayDict:
    """Data arrays as contiguous numeric numpy arrays with ``count`` rows (1 or 2 dimensions)."""
    checked: ArrayDict = {}
    for array_name, values in (arrays or {}).items():
        array = np.ascontiguousarray(to_numpy(values))
        if array.dtype == bool:
            array = array.astype(np.uint8)
        if array.ndim not in (1, 2) or array.shape[0] != count or not np.issubdtype(array.dtype, np.number):
            raise MeshError(
                name,
                f"{location} array {array_name!r} has shape {array.shape} and dtype {array.dtype}",
                f"expected a numeric ({count},) or ({count}, C) array, one row per {location}",
            )
        checked[str(array_name)] = array
    return checked


def _all_triangles(cells: vtk.vtkCellArray) -> bool:
    offsets = numpy_support.vtk_to_numpy(cells.GetOffsetsArray())
    return bool(np.all(np.diff(offsets) == 3))


def _triangulated(polydata: vtk.vtkPolyData) -> vtk.vtkPolyData:
    triangle_filter = vtk.vtkTriangleFilter()
    triangle_filter.SetInputData(polydata)
    triangle_filter.PassVertsOff()
    triangle_filter.PassLinesOff()
    triangle_filter.Update()
    return triangle_filter.GetOutput()


def _arrays_of(attributes: vtk.vtkDataSetAttributes) -> ArrayDict:
    """Named numeric arrays of point or cell data as numpy copies ((N,) or (N, C))."""
    arrays: ArrayDict = {}
    for index in range(attributes.GetNumberOfArrays()):
        vtk_array = attributes.GetArray(index)
        if vtk_array is None or not vtk_array.GetName() or vtk_array.IsA("vtkBitArray"):
            continue
        arrays[vtk_array.GetName()] = numpy_support.vtk_to_numpy(vtk_array).copy()
    return arrays
