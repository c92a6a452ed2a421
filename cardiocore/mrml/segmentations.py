"""Segmentation nodes <-> binary numpy masks, labelmap volumes and closed-surface meshes.

Masks are indexed ``mask[i, j, k]`` like every cardiocore volume (see ``volumes.py``), with one
(4, 4) IJK-to-RAS matrix shared by all segments of a segmentation. Conversions go through the
Segmentations module logic, as in Slicer, so overlapping segments, shared labelmap layers and
segments stored as closed surfaces are all handled the way Slicer handles them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer
import slicer.util
import vtk
from vtk.util import numpy_support

from cardiocore.errors import CardioInputError
from cardiocore.geometry.grid import occupied_box
from cardiocore.mrml.app import slicer_app
from cardiocore.mrml.polydata import mesh_from_polydata
from cardiocore.mrml.volumes import describe_node, node_to_world_matrix, validate_ijk_to_ras, volume_to_array

Colour = tuple[float, float, float]

# Colour tables whose entry names are generic placeholders rather than anatomy: segments
# imported through them (or through no colour table) are named "Label <value>" instead.
_GENERIC_COLOUR_TABLE_IDS = frozenset({"vtkMRMLColorTableNodeLabels", "vtkMRMLColorTableNodeRandom"})


@dataclass
class SegmentArrays:
    """The segments of a segmentation as binary masks on one voxel grid.

    Attributes:
        segment_ids: Slicer segment IDs, in segment order.
        names: segment names (may repeat, as in Slicer).
        masks: one (I, J, K) bool array per segment.
        colours: (r, g, b) in [0, 1] per segment.
        terminologies: Slicer terminology entry string per segment ("" when unset).
        label_values: label value per segment (the value it had in an imported labelmap).
        ijk_to_ras: (4, 4) matrix from voxel indices to RAS mm, shared by all masks.
    """

    segment_ids: list[str]
    names: list[str]
    masks: list[np.ndarray]
    colours: list[Colour]
    terminologies: list[str]
    label_values: list[int]
    ijk_to_ras: np.ndarray

    def mask(self, name: str) -> np.ndarray:
        """The (I, J, K) bool mask of the first segment called ``name``."""
        if name not in self.names:
            raise CardioInputError(f"segment {name!r}", "not found", f"segments: {self.names}")
        return self.masks[self.names.index(name)]


def segmentation_to_arrays(seg_node: Any, reference_volume: Any = None) -> SegmentArrays:
    """Binary masks of every segment, on one grid.

    Args:
        seg_node: a ``vtkMRMLSegmentationNode`` with at least one segment.
        reference_volume: optional volume node whose grid (geometry and extent) the masks are
            resampled to. Default: the segmentation's own reference geometry (the grid it was
            made on), or, when it has none, the smallest grid holding all segments.

    Returns:
        SegmentArrays; the matrix maps to world RAS (a parent transform of the segmentation is
        applied, as Slicer's export does).

    Raises:
        CardioInputError: not a segmentation node, or one without segments.
    """
    segmentation = _segmentation_with_segments(seg_node)
    segment_ids = _segment_ids(segmentation)
    logic = slicer_app().logic("Segmentations")
    with _temporary_labelmap() as grid:
        if reference_volume is None:
            _export(logic, seg_node, segment_ids, grid, None, _default_extent_mode(segmentation))
            reference_volume = grid
        masks = []
        ijk_to_ras = None
        for segment_id in segment_ids:
            with _temporary_labelmap() as exported:
                _export(logic, seg_node, [segment_id], exported, reference_volume)
                labels, ijk_to_ras = volume_to_array(exported)
                masks.append(labels > 0)
    segments = [segmentation.GetSegment(segment_id) for segment_id in segment_ids]
    return SegmentArrays(
        segment_ids=segment_ids,
        names=[segment.GetName() for segment in segments],
        masks=masks,
        colours=[tuple(segment.GetColor()) for segment in segments],
        terminologies=[segment.GetTerminology() or "" for segment in segments],
        label_values=[segment.GetLabelValue() for segment in segments],
        ijk_to_ras=ijk_to_ras,
    )


def arrays_to_segmentation(
    masks: Mapping[str, np.ndarray],
    ijk_to_ras: np.ndarray,
    colours: Mapping[str, Colour] | None = None,
    terminologies: Mapping[str, str] | None = None,
    name: str = "Segmentation",
) -> Any:
    """A new segmentation node with one segment per mask (binary labelmap source representation).

    Args:
        masks: segment name -> (I, J, K) array, non-zero inside; all the same shape. Segments may
            overlap; an all-zero mask gives an empty segment.
        ijk_to_ras: (4, 4) voxel-index to RAS mm matrix of the masks; it also becomes the
            segmentation's reference geometry.
        colours: optional segment name -> (r, g, b) in [0, 1]; others get Slicer's automatic colours.
        terminologies: optional segment name -> Slicer terminology entry string.
        name: node name (made unique; existing nodes are never overwritten).

    Raises:
        CardioInputError: no masks, masks of different or non-3D shapes, NaN values, colours out
            of [0, 1], or a bad matrix (VolumeError). Nothing is added to the scene then.
    """
    what = f"segmentation {name!r}"
    if not masks:
        raise CardioInputError(what, "no masks given", "pass at least one segment name -> mask")
    matrix = validate_ijk_to_ras(ijk_to_ras, what)
    binary_masks = {
        segment: _binary_mask(mask, f"{what} segment {segment!r}") for segment, mask in masks.items()
    }
    shapes = {mask.shape for mask in binary_masks.values()}
    if len(shapes) != 1:
        raise CardioInputError(what, f"masks have different shapes {sorted(shapes)}", "use one voxel grid")
    colours = dict(colours or {})
    for segment, colour in colours.items():
        if len(colour) != 3 or not all(0.0 <= channel <= 1.0 for channel in colour):
            raise CardioInputError(
                f"{what} segment {segment!r}", f"colour {colour} is not (r, g, b) in [0, 1]"
            )
    terminologies = dict(terminologies or {})

    seg_node = slicer_app().new_node("vtkMRMLSegmentationNode", name)
    seg_node.CreateDefaultDisplayNodes()
    segmentation = seg_node.GetSegmentation()
    segmentation.SetConversionParameter(
        _reference_geometry_parameter(),
        slicer.vtkSegmentationConverter.SerializeImageGeometry(_oriented_image(shapes.pop(), matrix)),
    )
    for segment_name, mask in binary_masks.items():
        segment = slicer.vtkSegment()
        segment.SetName(segment_name)
        if segment_name in colours:
            segment.SetColor(*colours[segment_name])
        if segment_name in terminologies:
            segment.SetTerminology(terminologies[segment_name])
        segment.AddRepresentation(
            slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
            _oriented_image(mask.shape, matrix, mask),
        )
        segmentation.AddSegment(segment)
    segmentation.CollapseBinaryLabelmaps(False)
    return seg_node


def labelmap_to_segmentation(
    labelmap_node: Any, name: str | None = None, segment_names: Mapping[int, str] | None = None
) -> Any:
    """A new segmentation with one segment per non-zero label of a labelmap volume node.

    Uses ``ImportLabelmapToSegmentationNode``; the segmentation's reference geometry is the
    labelmap's grid, and each segment keeps its label value (``GetLabelValue``).

    Args:
        labelmap_node: a ``vtkMRMLLabelMapVolumeNode`` with at least one non-zero voxel.
        name: node name (made unique); default "<labelmap name> segmentation".
        segment_names: optional label value -> segment name. Otherwise names come from the
            labelmap's colour table, or "Label <value>" when that table is a generic one.

    Raises:
        CardioInputError: not a labelmap node, or a labelmap without non-zero voxels.
    """
    if labelmap_node is None or not labelmap_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise CardioInputError(
            "labelmap",
            f"expected a labelmap volume node, got {describe_node(labelmap_node)}",
            'read label files with kind="labelmap" or use array_to_volume(..., labelmap=True)',
        )
    what = f"labelmap {labelmap_node.GetName()!r}"
    labels, _ = volume_to_array(labelmap_node)
    if not labels.any():
        raise CardioInputError(what, "has no non-zero voxels (no segments)")
    app = slicer_app()
    seg_node = app.new_node("vtkMRMLSegmentationNode", name or f"{labelmap_node.GetName()} segmentation")
    seg_node.CreateDefaultDisplayNodes()
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(labelmap_node)
    if not app.logic("Segmentations").ImportLabelmapToSegmentationNode(labelmap_node, seg_node):
        app.scene.RemoveNode(seg_node)
        raise CardioInputError(what, "could not be imported as segments")
    display = labelmap_node.GetDisplayNode()
    colour_table = display.GetColorNode() if display is not None else None
    generic_names = colour_table is None or colour_table.GetID() in _GENERIC_COLOUR_TABLE_IDS
    segmentation = seg_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = segment.GetLabelValue()
        if segment_names and value in segment_names:
            segment.SetName(segment_names[value])
        elif generic_names or not segment.GetName():
            segment.SetName(f"Label {value}")
    return seg_node


def segmentation_to_labelmap(seg_node: Any, reference_volume: Any = None, name: str | None = None) -> Any:
    """A new labelmap volume node holding all segments (``ExportSegmentsToLabelmapNode``).

    When the segments have distinct names and distinct positive label values (``GetLabelValue``,
    e.g. the values of an imported labelmap), each is written with its label value and a new
    colour table "<name> colours" carries the segment names and colours, so importing the
    labelmap again restores them. Otherwise Slicer numbers the segments 1..N in segment order
    (with its own colour table). Where segments overlap, the later segment wins.

    Args:
        seg_node: segmentation node with at least one segment.
        reference_volume: optional volume whose grid the labelmap gets; default: the
            segmentation's reference geometry (or the smallest grid holding all segments).
        name: node name (made unique); default "<segmentation name> labelmap".

    Raises:
        CardioInputError: not a segmentation node or no segments; nothing is left in the scene.
    """
    segmentation = _segmentation_with_segments(seg_node)
    segment_ids = _segment_ids(segmentation)
    app = slicer_app()
    labelmap = app.new_node("vtkMRMLLabelMapVolumeNode", name or f"{seg_node.GetName()} labelmap")
    segments = [segmentation.GetSegment(segment_id) for segment_id in segment_ids]
    colour_table = _label_value_colour_table(segments, f"{labelmap.GetName()} colours")
    try:
        _export(
            app.logic("Segmentations"), seg_node, segment_ids, labelmap, reference_volume,
            _default_extent_mode(segmentation), colour_table,
        )
    except CardioInputError:
        for node in (labelmap, colour_table):
            if node is not None:
                app.scene.RemoveNode(node)
        raise
    return labelmap


def _label_value_colour_table(segments: list[Any], name: str) -> Any:
    """A colour table with each segment's name and colour at its label value, or None when the
    segments' names or label values repeat or a label value is not positive."""
    names = [segment.GetName() for segment in segments]
    values = [segment.GetLabelValue() for segment in segments]
    if len(set(names)) < len(names) or len(set(values)) < len(values) or min(values) <= 0:
        return None
    colour_table = slicer_app().new_node("vtkMRMLColorTableNode", name)
    colour_table.SetTypeToUser()
    colour_table.SetNumberOfColors(max(values) + 1)
    colour_table.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    for segment, value in zip(segments, values):
        colour_table.SetColor(value, segment.GetName(), *segment.GetColor(), 1.0)
    return colour_table


def segmentation_closed_surfaces(seg_node: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Closed-surface triangle meshes of every segment, in world RAS millimetres.

    Creates the segmentation's closed-surface representation if needed (Slicer's labelmap ->
    closed surface conversion, with the node's smoothing settings), as "Show 3D" does in Slicer.

    Returns:
        segment name -> (verts (V, 3) float64 RAS mm, faces (F, 3) int64), outward-oriented
        closed triangle meshes.

    Raises:
        CardioInputError: not a segmentation, no segments, repeated segment names, or a segment
            with an empty surface.
    """
    segmentation = _segmentation_with_segments(seg_node)
    what = f"segmentation {seg_node.GetName()!r}"
    segment_ids = _segment_ids(segmentation)
    names = [segmentation.GetSegment(segment_id).GetName() for segment_id in segment_ids]
    repeated = sorted({segment_name for segment_name in names if names.count(segment_name) > 1})
    if repeated:
        raise CardioInputError(
            what, f"has several segments named {repeated}", "give each segment its own name"
        )
    to_world = node_to_world_matrix(seg_node, what)
    seg_node.CreateClosedSurfaceRepresentation()
    surfaces = {}
    for segment_id, segment_name in zip(segment_ids, names):
        polydata = seg_node.GetClosedSurfaceInternalRepresentation(segment_id)
        segment_what = f"{what} segment {segment_name!r}"
        if polydata is None or polydata.GetNumberOfPolys() == 0:
            raise CardioInputError(segment_what, "is empty (no surface)", "paint the segment or remove it")
        verts, faces, _, _ = mesh_from_polydata(polydata, name=segment_what)
        surfaces[segment_name] = (verts @ to_world[:3, :3].T + to_world[:3, 3], faces)
    return surfaces


def _segmentation_with_segments(seg_node: Any) -> Any:
    if seg_node is None or not seg_node.IsA("vtkMRMLSegmentationNode"):
        raise CardioInputError(
            "segmentation", f"expected a segmentation node, got {describe_node(seg_node)}"
        )
    segmentation = seg_node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        raise CardioInputError(
            f"segmentation {seg_node.GetName()!r}", "has no segments", "add or import segments first"
        )
    return segmentation


def _segment_ids(segmentation: Any) -> list[str]:
    return [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())]


def _default_extent_mode(segmentation: Any) -> int:
    """Export onto the segmentation's reference geometry (the grid it was made on) when it has
    one, else onto the smallest grid holding all segments."""
    if segmentation.GetConversionParameter(_reference_geometry_parameter()):
        return slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    return slicer.vtkSegmentation.EXTENT_UNION_OF_SEGMENTS


def _export(
    logic: Any,
    seg_node: Any,
    segment_ids: Sequence[str],
    labelmap: Any,
    reference_volume: Any,
    extent_mode: int = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
    colour_table: Any = None,
) -> None:
    exported = logic.ExportSegmentsToLabelmapNode(
        seg_node, list(segment_ids), labelmap, reference_volume, extent_mode, colour_table
    )
    if not exported:
        raise CardioInputError(
            f"segmentation {seg_node.GetName()!r}", "could not be exported to a labelmap"
        )


@contextmanager
def _temporary_labelmap() -> Iterator[Any]:
    """A hidden labelmap node (no subject-hierarchy item), removed after use together with its
    display node and the colour table an export made for it (default tables are singletons)."""
    scene = slicer_app().scene
    node = slicer.vtkMRMLLabelMapVolumeNode()
    node.SetName(scene.GenerateUniqueName("cardiocore temporary labelmap"))
    node.SetHideFromEditors(True)
    scene.AddNode(node)
    try:
        yield node
    finally:
        display = node.GetDisplayNode()
        if display is not None:
            colour_table = display.GetColorNode()
            if colour_table is not None and colour_table.GetSingletonTag() is None:
                scene.RemoveNode(colour_table)
            scene.RemoveNode(display)
        scene.RemoveNode(node)


def _reference_geometry_parameter() -> str:
    return slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()


def _binary_mask(mask: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 3:
        raise CardioInputError(what, f"mask has shape {array.shape}, expected 3 axes (I, J, K)")
    if array.size == 0:
        raise CardioInputError(what, f"mask of shape {array.shape} is empty")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise CardioInputError(what, "mask contains NaN or infinite values")
    return array if array.dtype == bool else array != 0


def _oriented_image(
    shape: tuple[int, int, int], ijk_to_ras: np.ndarray, mask: np.ndarray | None = None
) -> Any:
    """A vtkOrientedImageData on the grid ``ijk_to_ras`` of ``shape`` (I, J, K): geometry only
    when ``mask`` is None, else ``mask`` as uint8 0/1 over the box of its set voxels (its extent
    within the grid, as Slicer keeps segments; a single 0 voxel for an empty mask), which spares
    copying a whole CT grid for a structure that fills a few percent of it."""
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    if mask is None:
        image.SetDimensions(*shape)
        return image
    box = occupied_box(mask) or (slice(0, 1),) * 3
    image.SetExtent(*(end for axis in box for end in (axis.start, axis.stop - 1)))
    # VTK memory order is I fastest, i.e. a Fortran-order ravel of the (I, J, K) array.
    voxels = numpy_support.numpy_to_vtk(
        mask[box].astype(np.uint8).ravel(order="F"), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR
    )
    image.GetPointData().SetScalars(voxels)
    return image
