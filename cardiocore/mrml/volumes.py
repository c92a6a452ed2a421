"""Volume nodes <-> numpy arrays with their IJK-to-RAS matrix, and volume files.

Axis order: everywhere in cardiocore a volume array is indexed ``array[i, j, k]``, in the order
of the IJK-to-RAS matrix columns. ``slicer.util.arrayFromVolume`` returns ``[k, j, i]`` (VTK
memory order, I varying fastest); this module transposes at the boundary, so the voxel
``array[i, j, k]`` has its centre at ``ijk_to_ras @ (i, j, k, 1)`` in RAS millimetres, and
matrices returned here map to world RAS (linear parent transforms applied).

The IJK-to-RAS matrix holds the spacing (column norms, mm), the direction cosines (normalised
columns) and the origin (last column, RAS mm of voxel (0, 0, 0)). Oblique and anisotropic
volumes are kept exactly; only matrices a volume node cannot represent are refused.
Files are read and written by ``cardiocore.mrml.storage`` (volume archetype storage nodes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import slicer
import slicer.util
import vtk

from cardiocore.errors import VolumeError
from cardiocore.mrml.app import slicer_app

# Relative tolerance for zero spacing, singular and non-orthogonal (sheared) matrices.
GEOMETRY_TOLERANCE = 1e-6


def volume_to_array(node: Any) -> tuple[np.ndarray, np.ndarray]:
    """Voxels and geometry of a volume node, in world (RAS) coordinates.

    Args:
        node: a ``vtkMRMLVolumeNode`` (scalar, labelmap or vector) with image data. A linear
            parent transform is applied to the returned matrix.

    Returns:
        array: (I, J, K) numpy array (a copy, Fortran-ordered: I varies fastest in memory), or
            (I, J, K, C) for a C-component vector volume.
        ijk_to_ras: (4, 4) float64 matrix mapping voxel indices (i, j, k, 1) to RAS mm.

    Raises:
        VolumeError: no volume node, no voxels, or a non-linear parent transform.
    """
    if node is None or not node.IsA("vtkMRMLVolumeNode"):
        raise VolumeError("volume node", f"expected a volume node, got {describe_node(node)}")
    name = node.GetName()
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise VolumeError(f"volume {name!r}", "has no voxels", "load or compute its image first")
    # Copy in VTK's memory order (fast), then view it as (I, J, K): a Fortran-ordered array.
    array = np.swapaxes(slicer.util.arrayFromVolume(node).copy(), 0, 2)
    return array, _world_ijk_to_ras(node)


def array_to_volume(
    array: np.ndarray,
    ijk_to_ras: np.ndarray | None,
    name: str,
    labelmap: bool = False,
    reference: Any = None,
) -> Any:
    """A new volume node holding ``array`` with the geometry ``ijk_to_ras``.

    Args:
        array: (I, J, K) voxels (bool, integer or float; NaN not allowed). Booleans become uint8,
            64-bit integers 32-bit and float16 float32 (VTK handles none of them well);
            labelmaps need whole numbers.
        ijk_to_ras: (4, 4) affine from voxel indices to world RAS mm (spacing, direction
            cosines, origin); ``None`` takes the geometry of ``reference``.
        name: node name; made unique in the scene (an existing node is never overwritten).
        labelmap: create a ``vtkMRMLLabelMapVolumeNode`` instead of a scalar volume.
        reference: optional existing volume node, used when ``ijk_to_ras`` is None: the new
            node gets its grid and its parent transform (so both stay aligned if it moves).

    Returns:
        the new volume node, with default display nodes.

    Raises:
        VolumeError: empty, non-3D, NaN or (for labelmaps) non-integer arrays; matrices with
            zero spacing, a singular or sheared 3x3 part, non-finite entries, or a last row other
            than (0, 0, 0, 1). Nothing is added to the scene then.
    """
    what = f"volume {name!r}"
    voxels = _validated_voxels(array, what, labelmap)
    parent_transform = None
    if ijk_to_ras is None:
        if reference is None:
            raise VolumeError(what, "no geometry", "pass ijk_to_ras or a reference volume")
        reference_shape = tuple(volume_to_array(reference)[0].shape[:3])
        if voxels.shape != reference_shape:
            raise VolumeError(
                what, f"array shape {voxels.shape} differs from the reference volume's {reference_shape}"
            )
        ijk_to_ras = _node_ijk_to_ras(reference)
        parent_transform = reference.GetParentTransformNode()
    matrix = validate_ijk_to_ras(ijk_to_ras, what)

    node = slicer_app().new_node(
        "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name
    )
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    slicer.util.updateVolumeFromArray(node, np.swapaxes(voxels, 0, 2))
    node.CreateDefaultDisplayNodes()
    if parent_transform is not None:
        node.SetAndObserveTransformNodeID(parent_transform.GetID())
    return node


def validate_ijk_to_ras(ijk_to_ras: np.ndarray, what: str) -> np.ndarray:
    """Check that a (4, 4) matrix is a volume geometry a volume node can hold.

    Returns:
        the matrix as a (4, 4) float64 numpy array.

    Raises:
        VolumeError naming ``what``: wrong shape, NaN/inf, last row not (0, 0, 0, 1), a zero
            spacing (a zero column), a singular 3x3 part, or non-orthogonal axes (shear).
    """
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise VolumeError(what, f"IJK-to-RAS matrix has shape {matrix.shape}, expected (4, 4)")
    if not np.isfinite(matrix).all():
        raise VolumeError(what, "IJK-to-RAS matrix contains NaN or infinite values")
    if not np.allclose(matrix[3], (0.0, 0.0, 0.0, 1.0)):
        raise VolumeError(what, f"IJK-to-RAS last row is {matrix[3].tolist()}, expected [0, 0, 0, 1]")
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    scale = max(float(spacing.max()), 1.0)
    if (spacing <= GEOMETRY_TOLERANCE * scale).any():
        raise VolumeError(
            what, f"zero voxel spacing {spacing.round(6).tolist()} mm", "every axis needs spacing > 0"
        )
    directions = matrix[:3, :3] / spacing
    if abs(np.linalg.det(directions)) < GEOMETRY_TOLERANCE:
        raise VolumeError(what, "IJK-to-RAS matrix is singular (voxel axes are parallel)")
    if not np.allclose(directions.T @ directions, np.eye(3), atol=1e-4):
        raise VolumeError(
            what,
            "IJK-to-RAS axes are not orthogonal (sheared)",
            "a volume node stores spacing and orthonormal directions only; resample first",
        )
    return matrix


def _validated_voxels(array: np.ndarray, what: str, labelmap: bool) -> np.ndarray:
    voxels = np.asarray(array)
    if voxels.ndim != 3:
        raise VolumeError(what, f"array has shape {voxels.shape}, expected 3 axes (I, J, K)")
    if voxels.size == 0:
        raise VolumeError(what, f"array of shape {voxels.shape} is empty")
    if voxels.dtype == bool:
        return voxels.astype(np.uint8)
    if np.issubdtype(voxels.dtype, np.floating):
        if not np.isfinite(voxels).all():
            raise VolumeError(what, "array contains NaN or infinite values")
        if labelmap:
            if not np.array_equal(voxels, np.round(voxels)):
                raise VolumeError(what, "labelmap values must be whole numbers")
            return voxels.astype(np.int32)
        return voxels.astype(np.float32) if voxels.dtype == np.float16 else voxels
    if not np.issubdtype(voxels.dtype, np.integer):
        raise VolumeError(what, f"unsupported voxel type {voxels.dtype}")
    if voxels.dtype.itemsize == 8:
        info = np.iinfo(np.int32)
        if voxels.min() < info.min or voxels.max() > info.max:
            raise VolumeError(what, "64-bit integer values do not fit in 32 bits")
        return voxels.astype(np.int32)
    return voxels


def _node_ijk_to_ras(node: Any) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _world_ijk_to_ras(node: Any) -> np.ndarray:
    """The node's IJK-to-RAS composed with its (linear) parent transforms."""
    return node_to_world_matrix(node, f"volume {node.GetName()!r}") @ _node_ijk_to_ras(node)


def node_to_world_matrix(node: Any, what: str) -> np.ndarray:
    """(4, 4) matrix from a transformable node's own coordinates to world RAS (identity when the
    node has no parent transform).

    Raises:
        VolumeError naming ``what``: the parent transform is not linear.
    """
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise VolumeError(
            what,
            f"is under the non-linear transform {transform.GetName()!r}",
            "harden the transform first",
        )
    to_world = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(to_world)
    return slicer.util.arrayFromVTKMatrix(to_world)


def describe_node(node: Any) -> str:
    """A short description of a node for error messages: class and name, or "None"."""
    return "None" if node is None else f"{node.GetClassName()} {node.GetName()!r}"
