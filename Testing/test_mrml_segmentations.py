"""Segmentation nodes <-> masks, labelmaps, .seg.nrrd files and closed surfaces (slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from conftest import shared_file  # noqa: E402
from grids import oblique_ijk_to_ras, rotation  # noqa: E402

from cardiocore.errors import CardioInputError  # noqa: E402
from cardiocore.geometry.mesh import is_closed  # noqa: E402
from cardiocore.geometry.volume import enclosed_volume  # noqa: E402
from cardiocore.mrml.segmentations import (  # noqa: E402
    arrays_to_segmentation,
    labelmap_to_segmentation,
    segmentation_closed_surfaces,
    segmentation_to_arrays,
    segmentation_to_labelmap,
)
from cardiocore.mrml.storage import read_node, write_node  # noqa: E402
from cardiocore.mrml.volumes import array_to_volume, volume_to_array  # noqa: E402

TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue"
    "~SCT^80891009^Heart~^^~Anatomic codes - DICOM master list~^^~^^"
)
COLOUR_TOLERANCE = 1.0 / 255.0


def _three_labels() -> np.ndarray:
    labels = np.zeros((14, 12, 10), np.int16)
    labels[1:5, 2:6, 1:4] = 205
    labels[6:12, 3:10, 2:8] = 500
    labels[2:4, 8:11, 6:9] = 850
    return labels


def _ball(shape, ijk_to_ras: np.ndarray, centre_ijk, radius_mm: float) -> np.ndarray:
    """Voxels whose centres lie within ``radius_mm`` of the centre (distances measured in RAS)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    ijk = ijk - np.asarray(centre_ijk)
    offsets = ijk @ ijk_to_ras[:3, :3].T
    return np.linalg.norm(offsets, axis=-1) <= radius_mm


def _node_count(app) -> int:
    return app.scene.GetNumberOfNodes()


def test_labelmap_segmentation_round_trip_keeps_names_colours_values_and_voxels(app):
    labels = _three_labels()
    labelmap = array_to_volume(labels, oblique_ijk_to_ras(), "labels", labelmap=True)
    names = {205: "Myocardium", 500: "Left ventricle"}
    segmentation = labelmap_to_segmentation(labelmap, segment_names=names)

    before = _node_count(app)
    segments = segmentation_to_arrays(segmentation)
    assert _node_count(app) == before  # temporary export nodes are gone
    assert segments.names == ["Myocardium", "Left ventricle", "Label 850"]
    assert segments.label_values == [205, 500, 850]
    np.testing.assert_allclose(segments.ijk_to_ras, oblique_ijk_to_ras(), atol=1e-9)
    for value, mask in zip((205, 500, 850), segments.masks):
        np.testing.assert_array_equal(mask, labels == value)

    exported = segmentation_to_labelmap(segmentation)
    array, ijk_to_ras = volume_to_array(exported)
    np.testing.assert_array_equal(array, labels)
    np.testing.assert_allclose(ijk_to_ras, oblique_ijk_to_ras(), atol=1e-9)

    again = segmentation_to_arrays(labelmap_to_segmentation(exported))
    assert again.names == segments.names and again.label_values == segments.label_values
    np.testing.assert_allclose(again.colours, segments.colours, atol=COLOUR_TOLERANCE)
    expected_counts = [np.count_nonzero(labels == value) for value in (205, 500, 850)]
    assert [mask.sum() for mask in again.masks] == expected_counts
    assert volume_to_array(labelmap)[0].sum() == labels.sum()  # the source labelmap is unchanged


def test_masks_round_trip_with_overlap_colours_and_terminology(app):
    shape = (16, 13, 11)
    heart = np.zeros(shape, bool)
    heart[2:12, 2:10, 2:9] = True
    cavity = np.zeros(shape, bool)
    cavity[5:14, 4:8, 3:6] = True  # overlaps the heart
    seg_node = arrays_to_segmentation(
        {"heart": heart, "cavity": cavity.astype(np.uint8), "nothing yet": np.zeros(shape)},
        oblique_ijk_to_ras(),
        colours={"heart": (0.8, 0.1, 0.2)},
        terminologies={"heart": TERMINOLOGY},
        name="chambers",
    )
    segments = segmentation_to_arrays(seg_node)
    assert segments.names == ["heart", "cavity", "nothing yet"]
    np.testing.assert_array_equal(segments.mask("heart"), heart)
    np.testing.assert_array_equal(segments.mask("cavity"), cavity)
    assert not segments.mask("nothing yet").any()
    np.testing.assert_allclose(segments.colours[0], (0.8, 0.1, 0.2))
    assert segments.terminologies[0] == TERMINOLOGY
    np.testing.assert_allclose(segments.ijk_to_ras, oblique_ijk_to_ras(), atol=1e-9)

    grid = array_to_volume(np.zeros(shape), oblique_ijk_to_ras(), "grid")
    on_grid = segmentation_to_arrays(seg_node, reference_volume=grid)
    np.testing.assert_array_equal(on_grid.mask("cavity"), cavity)


def test_seg_nrrd_file_round_trip_keeps_segments_and_geometry(app, tmp_path):
    labels = _three_labels()
    masks = {"Myocardium": labels == 205, "LV": labels == 500, "Aorta": labels == 850}
    colours = {"Myocardium": (0.7, 0.2, 0.2), "LV": (0.1, 0.4, 0.9), "Aorta": (0.9, 0.9, 0.1)}
    seg_node = arrays_to_segmentation(
        masks, oblique_ijk_to_ras(), colours=colours, terminologies={"LV": TERMINOLOGY}
    )
    path = write_node(seg_node, tmp_path / "heart.seg.nrrd")
    reread = read_node(path)
    assert reread.IsA("vtkMRMLSegmentationNode")
    assert reread.GetStorageNode().IsA("vtkMRMLSegmentationStorageNode")
    segments = segmentation_to_arrays(reread)
    assert segments.names == list(masks)
    assert segments.terminologies[1] == TERMINOLOGY
    np.testing.assert_allclose(segments.colours, list(colours.values()), atol=1e-6)
    np.testing.assert_allclose(segments.ijk_to_ras, oblique_ijk_to_ras(), atol=1e-5)
    for segment_name, mask in masks.items():
        np.testing.assert_array_equal(segments.mask(segment_name), mask)


def test_closed_surface_of_a_ball_has_its_volume_and_centre_in_ras(app):
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation(2, 25.0) @ rotation(1, -15.0) @ np.diag([0.7, 0.9, 1.1])
    ijk_to_ras[:3, 3] = [30.0, -60.0, 15.0]
    shape, centre_ijk, radius = (44, 36, 30), (21.5, 17.0, 14.5), 12.0
    ball = _ball(shape, ijk_to_ras, centre_ijk, radius)
    seg_node = arrays_to_segmentation({"ball": ball}, ijk_to_ras)

    verts, faces = segmentation_closed_surfaces(seg_node)["ball"]
    assert verts.dtype == np.float64 and faces.dtype == np.int64 and faces.shape[1] == 3
    assert is_closed(faces)
    expected_volume = 4.0 / 3.0 * np.pi * radius**3
    assert float(enclosed_volume(verts, faces)) == pytest.approx(expected_volume, rel=0.02)
    expected_centre = (ijk_to_ras @ [*centre_ijk, 1.0])[:3]
    np.testing.assert_allclose(verts.mean(axis=0), expected_centre, atol=0.1)
    np.testing.assert_allclose(np.linalg.norm(verts - expected_centre, axis=1).mean(), radius, rtol=0.03)


def test_masks_and_surfaces_are_in_world_coordinates_under_a_parent_transform(app):
    ball = _ball((20, 20, 20), np.eye(4), (8, 10, 12), 6.0)  # stays inside the grid when shifted
    seg_node = arrays_to_segmentation({"ball": ball}, np.eye(4))
    shift = np.eye(4)
    shift[:3, 3] = [3.0, 0.0, -5.0]
    transform = app.new_node("vtkMRMLLinearTransformNode", "shift")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    seg_node.SetAndObserveTransformNodeID(transform.GetID())

    verts, _ = segmentation_closed_surfaces(seg_node)["ball"]
    np.testing.assert_allclose(verts.mean(axis=0), [11.0, 10.0, 7.0], atol=0.1)
    own_grid = segmentation_to_arrays(seg_node)
    np.testing.assert_allclose(own_grid.ijk_to_ras, shift, atol=1e-9)
    np.testing.assert_array_equal(own_grid.masks[0], ball)
    untransformed_grid = array_to_volume(np.zeros((20, 20, 20)), np.eye(4), "grid")
    resampled = segmentation_to_arrays(seg_node, reference_volume=untransformed_grid)
    np.testing.assert_array_equal(resampled.masks[0], np.roll(ball, shift=(3, 0, -5), axis=(0, 1, 2)))


def test_segmentations_without_usable_segments_raise_clear_errors_and_create_no_node(app):
    empty = app.new_node("vtkMRMLSegmentationNode", "empty segmentation")
    before = _node_count(app)
    for convert in (segmentation_to_arrays, segmentation_to_labelmap, segmentation_closed_surfaces):
        with pytest.raises(CardioInputError, match="'empty segmentation'.*no segments"):
            convert(empty)
    with pytest.raises(CardioInputError, match="no masks"):
        arrays_to_segmentation({}, np.eye(4), name="nothing")
    with pytest.raises(CardioInputError, match="different shapes"):
        arrays_to_segmentation({"a": np.ones((2, 2, 2)), "b": np.ones((3, 2, 2))}, np.eye(4))
    with pytest.raises(CardioInputError, match="zero voxel spacing"):
        arrays_to_segmentation({"a": np.ones((2, 2, 2))}, np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(CardioInputError, match="colour"):
        arrays_to_segmentation({"a": np.ones((2, 2, 2))}, np.eye(4), colours={"a": (255, 0, 0)})
    with pytest.raises(CardioInputError, match="expected a segmentation node"):
        segmentation_to_arrays(None)
    assert _node_count(app) == before

    blank = array_to_volume(np.zeros((3, 3, 3), np.uint8), np.eye(4), "blank", labelmap=True)
    scalar = array_to_volume(np.ones((3, 3, 3)), np.eye(4), "scalar")
    before = _node_count(app)
    with pytest.raises(CardioInputError, match="'blank'.*no non-zero voxels"):
        labelmap_to_segmentation(blank)
    with pytest.raises(CardioInputError, match="expected a labelmap"):
        labelmap_to_segmentation(scalar)
    assert _node_count(app) == before


def test_closed_surfaces_refuse_empty_segments_and_repeated_names(app):
    mask = _ball((12, 12, 12), np.eye(4), (6, 6, 6), 4.0)
    with_empty = arrays_to_segmentation({"ball": mask, "empty": np.zeros_like(mask)}, np.eye(4))
    with pytest.raises(CardioInputError, match="segment 'empty'.*empty"):
        segmentation_closed_surfaces(with_empty)
    twins = arrays_to_segmentation({"ball": mask}, np.eye(4))
    twins.GetSegmentation().AddEmptySegment("", "ball")
    with pytest.raises(CardioInputError, match="several segments named"):
        segmentation_closed_surfaces(twins)


def test_mmwhs_labels_become_seven_segments_with_their_voxels(app):
    full = read_node(shared_file("mmwhs_ct_labels/ct_train_1002_label.nii.gz"), kind="labelmap")
    labels, ijk_to_ras = volume_to_array(full)
    step = np.array([4, 4, 3])
    coarse = np.ascontiguousarray(labels[:: step[0], :: step[1], :: step[2]])
    coarse_ijk_to_ras = ijk_to_ras.copy()
    coarse_ijk_to_ras[:3, :3] *= step
    labelmap = array_to_volume(coarse, coarse_ijk_to_ras, "MM-WHS 1002 coarse", labelmap=True)

    segments = segmentation_to_arrays(labelmap_to_segmentation(labelmap))
    assert segments.label_values == [205, 420, 500, 550, 600, 820, 850]
    assert segments.names == [f"Label {value}" for value in segments.label_values]
    for value, mask in zip(segments.label_values, segments.masks):
        assert mask.sum() == np.count_nonzero(coarse == value) > 0
    np.testing.assert_allclose(segments.ijk_to_ras, coarse_ijk_to_ras, atol=1e-6)
