"""Volume nodes <-> IJK arrays, volume files and DICOM series, on a real slicer-core scene."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

import slicer.util  # noqa: E402
from conftest import shared_file  # noqa: E402
from grids import OBLIQUE_ORIGIN, OBLIQUE_SPACING, oblique_ijk_to_ras, rotation  # noqa: E402

from cardiocore.errors import CardioInputError, VolumeError  # noqa: E402
from cardiocore.mrml.dicom import list_dicom_series, load_dicom_series  # noqa: E402
from cardiocore.mrml.storage import read_node, write_node  # noqa: E402
from cardiocore.mrml.volumes import array_to_volume, validate_ijk_to_ras, volume_to_array  # noqa: E402

SPACING = OBLIQUE_SPACING
ORIGIN = OBLIQUE_ORIGIN
MMWHS_LABELS = {205, 420, 500, 550, 600, 820, 850}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def expected_ras(ijk: tuple[int, int, int]) -> np.ndarray:
    """RAS of a voxel centre, from the spacing, rotated unit axes and origin (not the matrix)."""
    directions = rotation(2, 30.0) @ rotation(0, 20.0)
    steps = [index * spacing * directions[:, axis] for axis, (index, spacing) in enumerate(zip(ijk, SPACING))]
    return ORIGIN + sum(steps)


def _node_count(app) -> int:
    return app.scene.GetNumberOfNodes()


def test_oblique_anisotropic_volume_round_trips_exactly_in_ijk_order(app):
    voxels = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    node = array_to_volume(voxels, oblique_ijk_to_ras(), "oblique")
    array, ijk_to_ras = volume_to_array(node)
    np.testing.assert_array_equal(array, voxels)
    np.testing.assert_allclose(ijk_to_ras, oblique_ijk_to_ras(), atol=1e-12)
    np.testing.assert_allclose(node.GetSpacing(), SPACING, atol=1e-12)
    np.testing.assert_allclose(node.GetOrigin(), ORIGIN, atol=1e-12)
    # slicer.util (and VTK memory) index K, J, I; cardiocore indexes I, J, K.
    assert slicer.util.arrayFromVolume(node)[4, 3, 2] == voxels[2, 3, 4]
    vtk_matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vtk_matrix)
    np.testing.assert_allclose(vtk_matrix.MultiplyPoint((2, 3, 4, 1))[:3], expected_ras((2, 3, 4)), atol=1e-9)
    np.testing.assert_allclose((ijk_to_ras @ [5, 6, 7, 1])[:3], expected_ras((5, 6, 7)), atol=1e-9)


def test_volume_arrays_are_copies_and_vector_volumes_keep_components_last(app):
    node = array_to_volume(np.zeros((3, 4, 5), np.float32), np.eye(4), "scalar")
    array, _ = volume_to_array(node)
    array[:] = 7.0
    assert volume_to_array(node)[0].max() == 0.0
    components_kji = np.arange(5 * 4 * 3 * 2, dtype=np.float32).reshape(5, 4, 3, 2)
    vector = slicer.util.addVolumeFromArray(components_kji, nodeClassName="vtkMRMLVectorVolumeNode")
    vector_array, _ = volume_to_array(vector)
    assert vector_array.shape == (3, 4, 5, 2)
    np.testing.assert_array_equal(vector_array[2, 1, 4], components_kji[4, 1, 2])


@pytest.mark.parametrize("extension", [".nrrd", ".nii.gz"])
def test_oblique_volume_file_round_trip_keeps_voxels_and_coordinates(app, tmp_path, extension):
    voxels = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    node = array_to_volume(voxels, oblique_ijk_to_ras(), "oblique file")
    path = write_node(node, tmp_path / f"oblique{extension}")
    reread = read_node(path, kind="volume")
    assert reread.GetStorageNode().IsA("vtkMRMLVolumeArchetypeStorageNode")
    array, ijk_to_ras = volume_to_array(reread)
    np.testing.assert_array_equal(array, voxels)
    np.testing.assert_allclose(ijk_to_ras, oblique_ijk_to_ras(), atol=1e-5)
    # The voxel holding value v = 42*i + 7*j + k sits at the same RAS point after the file trip.
    i, j, k = 3, 1, 6
    assert array[i, j, k] == 42 * i + 7 * j + k
    np.testing.assert_allclose((ijk_to_ras @ [i, j, k, 1])[:3], expected_ras((i, j, k)), atol=1e-4)


def test_labelmaps_get_labelmap_nodes_and_vtk_friendly_types(app):
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 2:4, 3:5] = True
    labelmap = array_to_volume(mask, oblique_ijk_to_ras(), "mask", labelmap=True)
    assert labelmap.IsA("vtkMRMLLabelMapVolumeNode")
    array, _ = volume_to_array(labelmap)
    assert array.dtype == np.uint8 and array.sum() == 8
    wide = array_to_volume(np.full((2, 2, 2), 7, np.int64), np.eye(4), "wide", labelmap=True)
    assert volume_to_array(wide)[0].dtype == np.int32


def test_new_volume_never_overwrites_and_can_take_reference_geometry_and_transform(app):
    original = array_to_volume(np.ones((3, 4, 5)), oblique_ijk_to_ras(), "heart")
    transform = app.new_node("vtkMRMLLinearTransformNode", "shift")
    shift = np.eye(4)
    shift[:3, 3] = [10.0, -20.0, 5.0]
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    original.SetAndObserveTransformNodeID(transform.GetID())

    derived = array_to_volume(np.zeros((3, 4, 5)), None, "heart", reference=original)
    assert derived.GetID() != original.GetID() and derived.GetName() != "heart"
    assert volume_to_array(original)[0].sum() == 60
    assert derived.GetParentTransformNode() is transform
    # volume_to_array returns world coordinates: the parent transform is applied.
    np.testing.assert_allclose(volume_to_array(derived)[1], shift @ oblique_ijk_to_ras(), atol=1e-12)


def _matrix_with(column: int, values) -> np.ndarray:
    matrix = oblique_ijk_to_ras()
    matrix[:3, column] = values
    return matrix


@pytest.mark.parametrize(
    ("array", "matrix", "message"),
    [
        (np.ones((3, 3, 3)), _matrix_with(1, [0.0, 0.0, 0.0]), "zero voxel spacing"),
        (np.ones((3, 3, 3)), _matrix_with(2, oblique_ijk_to_ras()[:3, 0] * 2), "singular"),
        (np.ones((3, 3, 3)), _matrix_with(2, oblique_ijk_to_ras()[:3, 2] + oblique_ijk_to_ras()[:3, 0]),
         "sheared"),
        (np.ones((3, 3, 3)), _matrix_with(3, [np.nan, 0.0, 0.0]), "NaN"),
        (np.ones((3, 3, 3)), np.eye(3), "shape"),
        (np.full((3, 3, 3), np.nan), oblique_ijk_to_ras(), "NaN"),
        (np.ones((3, 3)), oblique_ijk_to_ras(), "3 axes"),
        (np.zeros((0, 3, 3)), oblique_ijk_to_ras(), "empty"),
    ],
)
def test_bad_volumes_raise_errors_naming_the_volume_and_create_no_node(app, array, matrix, message):
    before = _node_count(app)
    with pytest.raises(VolumeError, match=message) as error:
        array_to_volume(array, matrix, "patient CT")
    assert "patient CT" in str(error.value)
    assert _node_count(app) == before


def test_non_integer_labelmap_and_volume_without_voxels_are_refused(app):
    with pytest.raises(VolumeError, match="whole numbers"):
        array_to_volume(np.full((2, 2, 2), 0.5), np.eye(4), "labels", labelmap=True)
    empty = app.new_node("vtkMRMLScalarVolumeNode", "never loaded")
    with pytest.raises(VolumeError, match="never loaded.*no voxels"):
        volume_to_array(empty)
    assert validate_ijk_to_ras(oblique_ijk_to_ras(), "ok").shape == (4, 4)


def test_mmwhs_ct_label_map_loads_with_its_spacing_labels_and_nifti_geometry(app):
    path = shared_file("mmwhs_ct_labels/ct_train_1002_label.nii.gz")
    node = read_node(path, kind="labelmap")
    labels, ijk_to_ras = volume_to_array(node)
    np.testing.assert_allclose(np.linalg.norm(ijk_to_ras[:3, :3], axis=0), [0.488, 0.488, 0.625], atol=0.002)
    assert set(np.unique(labels).tolist()) == {0} | MMWHS_LABELS
    nibabel = pytest.importorskip("nibabel")
    image = nibabel.load(str(path))
    nifti_labels = np.asanyarray(image.dataobj)
    # Every labelled voxel of the file lands, through Slicer's matrix, on a voxel with the same label.
    nifti_ijk = np.argwhere(nifti_labels[::7, ::7, ::7] > 0) * 7
    ras = (image.affine @ np.c_[nifti_ijk, np.ones(len(nifti_ijk))].T).T
    slicer_ijk = np.rint((np.linalg.inv(ijk_to_ras) @ ras.T).T[:, :3]).astype(int)
    np.testing.assert_array_equal(labels[tuple(slicer_ijk.T)], nifti_labels[tuple(nifti_ijk.T)])


def test_heartdeformnets_template_label_map_loads(app):
    node = read_node(shared_file("heartdeformnets_templates/mmwhs.nii.gz"), kind="labelmap")
    labels, ijk_to_ras = volume_to_array(node)
    assert labels.ndim == 3 and set(np.unique(labels).tolist()) == set(range(8))
    assert np.all(np.linalg.norm(ijk_to_ras[:3, :3], axis=0) > 0.1)


# --- DICOM -------------------------------------------------------------------------------------

ROW_SPACING, COLUMN_SPACING, SLICE_GAP = 0.8, 0.6, 3.0
ROWS, COLUMNS = 5, 4


def _dicom_axes(tilt: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Oblique LPS row and column directions (rotations about two axes)."""
    directions = rotation(1, tilt) @ rotation(0, 35.0)
    return directions[:, 0], directions[:, 1]


def _write_series(
    folder: Path,
    n_slices: int = 4,
    n_frames: int = 2,
    axes: tuple[np.ndarray, np.ndarray] | None = None,
    skip_slice: int | None = None,
    shear: float = 0.0,
) -> str:
    """Write a synthetic MR series; stored pixel (row j, column i) of slice k, frame f holds
    i + 10 j + 100 k + 1000 f; rescale slope 2, intercept -5. File names are shuffled."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    row_direction, column_direction = axes or _dicom_axes()
    normal = np.cross(row_direction, column_direction)
    origin = np.array([12.0, -30.0, 45.0])
    series_uid = generate_uid()
    jobs = [(k, f) for k in range(n_slices) if k != skip_slice for f in range(n_frames)]
    names = random.Random(3).sample(range(1000), len(jobs))
    folder.mkdir(parents=True, exist_ok=True)
    for (k, frame), file_number in zip(jobs, names):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = FileDataset(str(folder / f"{file_number}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        dataset.SOPClassUID, dataset.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        dataset.SeriesInstanceUID, dataset.Modality = series_uid, "MR"
        dataset.SeriesDescription = "synthetic cine"
        position = origin + k * SLICE_GAP * normal + k * shear * row_direction
        dataset.ImagePositionPatient = [f"{value:.6f}" for value in position]
        dataset.ImageOrientationPatient = [f"{value:.8f}" for value in (*row_direction, *column_direction)]
        dataset.PixelSpacing = [ROW_SPACING, COLUMN_SPACING]
        dataset.SliceThickness = SLICE_GAP
        dataset.Rows, dataset.Columns = ROWS, COLUMNS
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
        dataset.PixelRepresentation = 1  # signed
        dataset.RescaleSlope, dataset.RescaleIntercept = 2, -5
        dataset.TriggerTime, dataset.InstanceNumber = 40.0 * frame, 1 + frame + n_frames * k
        j, i = np.mgrid[:ROWS, :COLUMNS]
        dataset.PixelData = (i + 10 * j + 100 * k + 1000 * frame).astype(np.int16).tobytes()
        dataset.save_as(folder / f"{file_number}.dcm", enforce_file_format=True)
    return series_uid


def test_synthetic_oblique_dicom_series_gets_the_geometry_of_its_tags(app, tmp_path):
    _write_series(tmp_path / "series")
    (tmp_path / "series" / "README.txt").write_text("not DICOM")
    node = load_dicom_series(tmp_path, frame=1)
    array, ijk_to_ras = volume_to_array(node)
    assert node.GetName() == "synthetic cine"
    assert array.shape == (COLUMNS, ROWS, 4) and array.dtype == np.float32
    i, j, k = 3, 2, 1
    assert array[i, j, k] == 2 * (i + 10 * j + 100 * k + 1000) - 5
    row_direction, column_direction = _dicom_axes()
    lps = np.array([12.0, -30.0, 45.0]) + i * COLUMN_SPACING * row_direction
    lps += j * ROW_SPACING * column_direction + k * SLICE_GAP * np.cross(row_direction, column_direction)
    np.testing.assert_allclose((ijk_to_ras @ [i, j, k, 1])[:3], LPS_TO_RAS @ lps, atol=1e-4)
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [COLUMN_SPACING, ROW_SPACING, SLICE_GAP], atol=1e-5)
    frame_zero, _ = volume_to_array(load_dicom_series(tmp_path, frame=0))
    np.testing.assert_array_equal(array - frame_zero, 2000.0)


def test_dicom_folder_with_two_orientations_needs_a_series_choice(app, tmp_path):
    first = _write_series(tmp_path / "a", n_slices=2, n_frames=1)
    _write_series(tmp_path / "b", n_slices=3, n_frames=1, axes=_dicom_axes(tilt=-40.0))
    series = list_dicom_series(tmp_path)
    assert sorted((item.n_positions, item.n_frames) for item in series) == [(2, 1), (3, 1)]
    before = _node_count(app)
    with pytest.raises(CardioInputError, match="mixes slice orientations") as error:
        load_dicom_series(tmp_path)
    assert first in str(error.value)
    assert _node_count(app) == before
    assert volume_to_array(load_dicom_series(tmp_path, series_uids=first))[0].shape == (COLUMNS, ROWS, 2)


@pytest.mark.parametrize(
    ("series", "load", "message"),
    [
        ({"skip_slice": 2}, {}, "uneven"),
        ({"shear": 1.0}, {}, "not stacked along their normal"),
        ({}, {"frame": 2}, "frame 2 is out of range"),
        ({}, {"series_uids": "1.2.3"}, "has no series"),
    ],
)
def test_bad_dicom_series_raise_clear_errors_and_create_no_node(app, tmp_path, series, load, message):
    _write_series(tmp_path, **series)
    before = _node_count(app)
    with pytest.raises(CardioInputError, match=message):
        load_dicom_series(tmp_path, **load)
    assert _node_count(app) == before
    with pytest.raises(CardioInputError, match="does not exist"):
        load_dicom_series(tmp_path / "missing")


def test_real_cine_short_axis_stack_geometry_matches_its_dicom_tags(app):
    pydicom = pytest.importorskip("pydicom")
    folder = shared_file("bivme_patient1/example/dicoms/patient1")
    series = list_dicom_series(folder)
    assert len(series) == 11 and all(item.n_frames == 25 and item.n_positions == 1 for item in series)
    short_axis_orientation = _series_in_folder(series, "Se1").orientation
    short_axis = [item for item in series if np.allclose(item.orientation, short_axis_orientation)]
    assert len(short_axis) == 6
    node = load_dicom_series(folder, series_uids=[item.uid for item in short_axis], frame=0)
    array, ijk_to_ras = volume_to_array(node)

    headers = [pydicom.dcmread(min(item.files, key=_trigger_time)) for item in short_axis]
    cosines = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(cosines[:3], cosines[3:])
    positions = np.array([np.asarray(header.ImagePositionPatient, dtype=float) for header in headers])
    order = np.argsort(positions @ normal)
    headers, positions = [headers[index] for index in order], positions[order]
    gap = float(np.mean(np.diff(positions @ normal)))
    assert array.shape == (int(headers[0].Columns), int(headers[0].Rows), 6)
    np.testing.assert_allclose(np.linalg.norm(ijk_to_ras[:3, :3], axis=0), [1.40625, 1.40625, gap], atol=1e-4)
    np.testing.assert_allclose(ijk_to_ras[:3, 2] / gap, LPS_TO_RAS @ normal, atol=1e-4)
    np.testing.assert_allclose(ijk_to_ras[:3, 0] / 1.40625, LPS_TO_RAS @ cosines[:3], atol=1e-5)
    np.testing.assert_allclose(ijk_to_ras[:3, 3], LPS_TO_RAS @ positions[0], atol=1e-4)
    np.testing.assert_array_equal(array[:, :, 0], headers[0].pixel_array.T)

    long_axis = load_dicom_series(_series_in_folder(series, "Se6").files[0].parent)
    np.testing.assert_allclose(volume_to_array(long_axis)[0].shape[2], 1)
    np.testing.assert_allclose(long_axis.GetSpacing(), [1.40625, 1.40625, 6.0], atol=1e-5)


def _series_in_folder(series, folder_name: str):
    return next(item for item in series if item.files[0].parent.name == folder_name)


def _trigger_time(path: Path) -> float:
    import pydicom

    return float(pydicom.dcmread(path, stop_before_pixels=True).TriggerTime)
