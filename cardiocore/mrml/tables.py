"""Table nodes (``vtkMRMLTableNode``) <-> named numpy columns.

Columns hold numbers (kept at their numpy dtype; booleans become int8) or strings. A unit can be
part of the column name ("volume [ml]") or a column property (``units={"volume": "ml"}``), which
Slicer shows in the table view and writes into the ``.schema.csv`` file next to a saved table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support

from cardiocore.errors import CardioInputError
from cardiocore.mrml.app import slicer_app
from cardiocore.mrml.polydata import to_numpy


def columns_to_table(
    columns: Mapping[str, Any],
    name: str,
    units: Mapping[str, str] | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> Any:
    """Add a new table node holding ``columns`` (name -> 1-D array or list of N values).

    Args:
        columns: column name -> N numbers or N strings, all columns of the same length N.
        name: name of the new node; made unique if taken.
        units: column name -> unit label (e.g. "ml", "mm", "%").
        descriptions: column name -> free text shown as the column's tooltip.

    Returns:
        the new ``vtkMRMLTableNode``; existing nodes are never changed.

    Raises:
        CardioInputError: no columns, columns of different lengths, multi-dimensional columns,
            or units/descriptions naming a column that is not there. No node is created.
    """
    if not columns:
        raise CardioInputError(f"columns of table {name!r}", "is empty", "give at least one column")
    vtk_columns = [_vtk_column(column_name, values, name) for column_name, values in columns.items()]
    lengths = {column.GetName(): column.GetNumberOfTuples() for column in vtk_columns}
    if len(set(lengths.values())) > 1:
        raise CardioInputError(f"columns of table {name!r}", f"have different lengths {lengths}")
    for label, properties in (("units", units), ("descriptions", descriptions)):
        unknown = sorted(set(properties or {}) - set(lengths))
        if unknown:
            raise CardioInputError(f"{label} of table {name!r}", f"name unknown columns {unknown}")

    node = slicer_app().new_node("vtkMRMLTableNode", name)
    table = node.GetTable()
    for column in vtk_columns:
        table.AddColumn(column)
    for column_name, unit in (units or {}).items():
        node.SetColumnUnitLabel(column_name, unit)
    for column_name, description in (descriptions or {}).items():
        node.SetColumnDescription(column_name, description)
    node.Modified()
    return node


def table_to_columns(node: Any) -> dict[str, np.ndarray]:
    """The columns of a table node, in order: name -> (N,) numeric array (or (N, C) for
    multi-component columns), or (N,) unicode string array for text columns.

    Raises:
        CardioInputError: ``node`` is not a table node.
    """
    table = _table_of(node)
    columns: dict[str, np.ndarray] = {}
    for index in range(table.GetNumberOfColumns()):
        column = table.GetColumn(index)
        column_name = column.GetName() or f"column {index}"
        columns[column_name] = _numpy_column(column)
    return columns


def column_units(node: Any) -> dict[str, str]:
    """Column name -> unit label ("" when none is set) of a table node."""
    table = _table_of(node)
    names = [table.GetColumn(index).GetName() for index in range(table.GetNumberOfColumns())]
    return {column_name: node.GetColumnUnitLabel(column_name) or "" for column_name in names}


def _table_of(node: Any) -> vtk.vtkTable:
    if node is None or not hasattr(node, "IsA") or not node.IsA("vtkMRMLTableNode"):
        what = node.GetName() if hasattr(node, "GetName") else repr(node)
        raise CardioInputError(what, "is not a table node (vtkMRMLTableNode)")
    return node.GetTable()


def _vtk_column(column_name: str, values: Any, table_name: str) -> vtk.vtkAbstractArray:
    """One column as a vtkStringArray (text) or a numeric vtkDataArray (numbers)."""
    array = to_numpy(values)
    if array.ndim != 1:
        raise CardioInputError(
            f"column {column_name!r} of table {table_name!r}",
            f"must be one-dimensional, got shape {array.shape}",
        )
    if array.dtype.kind in "biuf":
        numeric = array.astype(np.int8) if array.dtype == bool else array
        column = numpy_support.numpy_to_vtk(np.ascontiguousarray(numeric), deep=True)
    elif array.dtype.kind in "USO":
        column = vtk.vtkStringArray()
        for value in array:
            column.InsertNextValue(value.decode() if isinstance(value, bytes) else str(value))
    else:
        raise CardioInputError(
            f"column {column_name!r} of table {table_name!r}",
            f"holds {array.dtype} values", "use numbers or strings",
        )
    column.SetName(str(column_name))
    return column


def _numpy_column(column: vtk.vtkAbstractArray) -> np.ndarray:
    if isinstance(column, vtk.vtkStringArray):
        return np.array([column.GetValue(i) for i in range(column.GetNumberOfValues())], dtype=str)
    if isinstance(column, vtk.vtkDataArray) and not isinstance(column, vtk.vtkBitArray):
        return numpy_support.vtk_to_numpy(column).copy()
    return np.array(
        [column.GetVariantValue(i).ToString() for i in range(column.GetNumberOfValues())], dtype=str
    )
