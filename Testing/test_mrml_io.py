"""Files and scene bundles through Slicer storage nodes on a real slicer-core scene."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from conftest import shared_file  # noqa: E402
from grids import oblique_ijk_to_ras  # noqa: E402

from cardiocore.errors import CardioInputError, MeshError  # noqa: E402
from cardiocore.mrml.app import slicer_app  # noqa: E402
from cardiocore.mrml.models import mesh_to_model, model_to_mesh  # noqa: E402
from cardiocore.mrml.polydata import polydata_from_mesh  # noqa: E402
from cardiocore.mrml.segmentations import arrays_to_segmentation, segmentation_to_arrays  # noqa: E402
from cardiocore.mrml.sequences import meshes_to_sequence, sequence_to_meshes  # noqa: E402
from cardiocore.mrml.storage import load_scene, read_node, save_scene, write_node  # noqa: E402
from cardiocore.mrml.tables import column_units, columns_to_table, table_to_columns  # noqa: E402
from cardiocore.mrml.volumes import array_to_volume, volume_to_array  # noqa: E402

# An asymmetric tetrahedron far from the origin: any L/R or A/P flip changes every coordinate.
TETRA_VERTS = np.array([[31.5, -22.0, 7.0], [45.0, -20.5, 9.0], [33.0, -8.0, 6.5], [36.0, -17.0, 28.0]])
TETRA_FACES = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])


@pytest.fixture(autouse=True)
def empty_scene(app):
    return app.scene


def _tetra(name: str = "tetra"):
    return mesh_to_model(
        TETRA_VERTS, TETRA_FACES, name,
        point_data={"thickness": np.array([1.0, 2.0, 3.0, 4.0]), "normal": TETRA_VERTS - TETRA_VERTS.mean(0)},
        cell_data={"region": np.array([1, 2, 3, 4], dtype=np.int32)},
    )


def _files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# --- models: the LPS/RAS trap --------------------------------------------------------------------

@pytest.mark.parametrize("extension", [".vtk", ".vtp", ".stl", ".ply", ".obj"])
def test_model_files_round_trip_in_ras(tmp_path, extension):
    written = write_node(_tetra(), tmp_path / f"tetra{extension}")
    assert written.is_absolute() and written.is_file()
    node = read_node(written)
    assert node.IsA("vtkMRMLModelNode") and node.GetName() == "tetra_1"  # "tetra" is taken
    assert node.GetDisplayNode() is not None
    assert node.GetStorageNode().GetFileName() == str(written)
    mesh = model_to_mesh(node)
    # STL stores unshared triangles, so compare the triangles' corner coordinates
    np.testing.assert_allclose(mesh.verts[mesh.faces], TETRA_VERTS[TETRA_FACES], atol=1e-5)
    if extension != ".stl":
        np.testing.assert_allclose(mesh.verts, TETRA_VERTS, atol=1e-5)
        np.testing.assert_array_equal(mesh.faces, TETRA_FACES)


@pytest.mark.parametrize("extension", [".vtk", ".vtp"])
def test_point_and_cell_arrays_survive_vtk_files(tmp_path, extension):
    mesh = model_to_mesh(read_node(write_node(_tetra(), tmp_path / f"tetra{extension}")))
    np.testing.assert_array_equal(mesh.point_data["thickness"], [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(mesh.cell_data["region"], [1, 2, 3, 4])
    # direction vectors are converted with the points: the file holds LPS, the scene RAS
    np.testing.assert_allclose(mesh.point_data["normal"], TETRA_VERTS - TETRA_VERTS.mean(0), atol=1e-6)


def test_model_files_are_lps_unless_asked_for_ras(tmp_path):
    lps_file = write_node(_tetra(), tmp_path / "lps.vtk")
    ras_file = write_node(_tetra(), tmp_path / "ras.vtk", coordinate_system="RAS")
    for file, flip in ((lps_file, [-1, -1, 1]), (ras_file, [1, 1, 1])):
        reader = vtk.vtkPolyDataReader()
        reader.SetFileName(str(file))
        reader.Update()
        raw = np.array([reader.GetOutput().GetPoint(i) for i in range(4)])
        np.testing.assert_allclose(raw, TETRA_VERTS * flip, atol=1e-5)
        np.testing.assert_allclose(model_to_mesh(read_node(file)).verts, TETRA_VERTS, atol=1e-5)


def test_header_less_model_file_follows_the_requested_convention(tmp_path):
    file = tmp_path / "external.vtk"
    writer = vtk.vtkPolyDataWriter()  # plain VTK: no "SPACE=" header
    writer.SetInputData(polydata_from_mesh(TETRA_VERTS, TETRA_FACES))
    writer.SetFileName(str(file))
    writer.Write()
    np.testing.assert_allclose(model_to_mesh(read_node(file)).verts, TETRA_VERTS * [-1, -1, 1])
    np.testing.assert_allclose(model_to_mesh(read_node(file, coordinate_system="RAS")).verts, TETRA_VERTS)


# --- volumes, labelmaps, segmentations, tables ----------------------------------------------------

@pytest.mark.parametrize("extension", [".nrrd", ".nii", ".nii.gz"])
def test_oblique_anisotropic_volume_round_trips(tmp_path, extension):
    voxels = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    volume = array_to_volume(voxels, oblique_ijk_to_ras(about_r_deg=10.0), "oblique")
    node = read_node(write_node(volume, tmp_path / f"oblique{extension}"))
    assert node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
    array, ijk_to_ras = volume_to_array(node)
    np.testing.assert_array_equal(array, voxels)
    np.testing.assert_allclose(ijk_to_ras, oblique_ijk_to_ras(about_r_deg=10.0), atol=1e-5)



@pytest.mark.parametrize("extension", [".nrrd", ".nii.gz"])
def test_single_slice_files_with_numbered_names_are_read_alone(tmp_path, extension):
    """Two one-slice files named like a series (long-axis views lax7, lax8): each reads as its
    own (I, J, 1) volume; Slicer's archetype reader would take them as one 2-slice series."""
    slices = {}
    for number in (7, 8):
        labels = np.zeros((9, 8, 1), dtype=np.int16)
        labels[1 : number - 3, 2:5, 0] = number
        slices[number] = labels
        write_node(array_to_volume(labels, oblique_ijk_to_ras(about_r_deg=10.0), f"lax{number}", labelmap=True),
                   tmp_path / f"lax{number}{extension}")
    for number, labels in slices.items():
        array, _ = volume_to_array(read_node(tmp_path / f"lax{number}{extension}", kind="labelmap"))
        np.testing.assert_array_equal(array, labels)

def test_labelmap_and_segmentation_files(tmp_path):
    labels = np.zeros((6, 5, 4), dtype=np.int16)
    labels[1:3, 1:4, 1:3] = 1
    labels[4, 2:4, 0:2] = 2
    labelmap = array_to_volume(labels, oblique_ijk_to_ras(about_r_deg=10.0), "labels", labelmap=True)
    label_file = write_node(labelmap, tmp_path / "labels.nii.gz")
    as_labelmap = read_node(label_file, kind="labelmap")
    assert as_labelmap.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(volume_to_array(as_labelmap)[0], labels)

    as_segmentation = read_node(label_file, kind="segmentation")
    assert as_segmentation.GetSegmentation().GetNumberOfSegments() == 2

    masks = {"LV": labels == 1, "RV": labels == 2}
    segmentation = arrays_to_segmentation(masks, oblique_ijk_to_ras(about_r_deg=10.0), name="heart")
    seg_file = write_node(segmentation, tmp_path / "heart.seg.nrrd")
    back = segmentation_to_arrays(read_node(seg_file))
    assert back.names == ["LV", "RV"]
    for name, mask in zip(back.names, back.masks):
        assert mask.sum() == (labels == {"LV": 1, "RV": 2}[name]).sum()
    with pytest.raises(CardioInputError, match="unsupported file extension"):
        write_node(segmentation, tmp_path / "heart.nii.gz")


@pytest.mark.parametrize("extension", [".csv", ".tsv"])
def test_table_file_round_trip_keeps_types_and_units(tmp_path, extension):
    columns = {
        "structure": ["LV endo", "RV, free wall", "Ümlaut"], "volume": [120.5, 130.25, 1e-3], "n": [1, 2, 3]
    }
    table = columns_to_table(columns, "metrics", units={"volume": "ml"})
    written = write_node(table, tmp_path / f"metrics{extension}")
    assert _files(tmp_path) == sorted([written.name, f"metrics.schema{extension}"])
    back_node = read_node(written)
    back = table_to_columns(back_node)
    assert back["structure"].tolist() == columns["structure"]
    np.testing.assert_array_equal(back["volume"], columns["volume"])
    assert back["n"].tolist() == [1, 2, 3]
    assert column_units(back_node)["volume"] == "ml"


def test_table_text_the_writer_cannot_escape_is_refused(tmp_path):
    table = columns_to_table({"note": ['say "hi"', "ok"]}, "notes")
    with pytest.raises(CardioInputError, match="notes: column 'note' row 0"):
        write_node(table, tmp_path / "notes.csv")
    assert _files(tmp_path) == []


# --- scene bundles -------------------------------------------------------------------------------

def test_scene_bundle_round_trip(tmp_path):
    voxels = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    array_to_volume(voxels, oblique_ijk_to_ras(about_r_deg=10.0), "CT")
    _tetra("heart mesh")
    columns_to_table({"structure": ["LV"], "volume": [120.5]}, "metrics", units={"volume": "ml"})
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[1, 1:3, 2:4] = True
    arrays_to_segmentation({"LV": mask}, oblique_ijk_to_ras(about_r_deg=10.0), name="segmentation")
    frames = [TETRA_VERTS + [0.0, 0.0, 2.0 * t] for t in range(3)]
    meshes_to_sequence(frames, "beat", faces=TETRA_FACES)

    bundle = save_scene(tmp_path / "study.mrb")
    assert _files(tmp_path) == ["study.mrb"]
    with pytest.raises(CardioInputError, match="already exists"):
        save_scene(bundle)

    slicer_app().clear()
    assert slicer_app().scene.GetFirstNodeByName("CT") is None
    loaded = {node.GetName(): node for node in load_scene(bundle)}
    assert {"CT", "heart mesh", "metrics", "segmentation", "beat"} <= set(loaded)
    array, ijk_to_ras = volume_to_array(loaded["CT"])
    np.testing.assert_array_equal(array, voxels)
    np.testing.assert_allclose(ijk_to_ras, oblique_ijk_to_ras(about_r_deg=10.0), atol=1e-5)
    mesh = model_to_mesh(loaded["heart mesh"])
    np.testing.assert_allclose(mesh.verts, TETRA_VERTS, atol=1e-5)
    np.testing.assert_array_equal(mesh.point_data["thickness"], [1.0, 2.0, 3.0, 4.0])
    assert table_to_columns(loaded["metrics"])["volume"].tolist() == [120.5]
    assert column_units(loaded["metrics"])["volume"] == "ml"
    segments = segmentation_to_arrays(loaded["segmentation"])
    assert segments.names == ["LV"] and segments.masks[0].sum() == mask.sum()
    sequence = slicer_app().scene.GetFirstNodeByClass("vtkMRMLSequenceNode")
    for mesh, expected in zip(sequence_to_meshes(sequence), frames, strict=True):
        np.testing.assert_allclose(mesh.verts, expected, atol=1e-5)


def test_load_scene_without_clear_adds_to_the_scene(tmp_path):
    _tetra("kept")
    bundle = save_scene(tmp_path / "one.mrb")
    loaded = load_scene(bundle, clear=False)
    models = slicer_app().scene.GetNodesByClass("vtkMRMLModelNode")
    assert [node.IsA("vtkMRMLModelNode") for node in loaded] == [True]
    assert models.GetNumberOfItems() == 2


# --- atomic, non-clobbering writes ---------------------------------------------------------------

def test_existing_files_are_kept_unless_overwrite(tmp_path):
    target = tmp_path / "mesh.vtk"
    target.write_text("precious")
    with pytest.raises(CardioInputError, match="already exists.*overwrite=True"):
        write_node(_tetra(), target)
    assert target.read_text() == "precious"
    write_node(_tetra(), target, overwrite=True)
    np.testing.assert_allclose(model_to_mesh(read_node(target)).verts, TETRA_VERTS, atol=1e-5)
    assert _files(tmp_path) == ["mesh.vtk"]  # no temporary files or folders left


def test_side_files_are_not_clobbered_either(tmp_path):
    (tmp_path / "mesh.mtl").write_text("someone else's materials")
    with pytest.raises(CardioInputError, match="mesh.mtl"):
        write_node(_tetra(), tmp_path / "mesh.obj")
    assert _files(tmp_path) == ["mesh.mtl"]
    assert (tmp_path / "mesh.mtl").read_text() == "someone else's materials"


def test_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = write_node(_tetra(), "relative.vtp")
    assert written == tmp_path / "relative.vtp"
    assert read_node("relative.vtp").GetStorageNode().GetFileName() == str(tmp_path / "relative.vtp")


# --- bad input -----------------------------------------------------------------------------------

def _model_count() -> int:
    return slicer_app().scene.GetNumberOfNodesByClass("vtkMRMLModelNode")


def test_missing_unknown_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(CardioInputError, match=r"missing\.vtk: does not exist"):
        read_node(tmp_path / "missing.vtk")
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(CardioInputError, match=r"notes\.docx: has an unsupported file extension"):
        read_node(tmp_path / "notes.docx")
    (tmp_path / "garbage.nrrd").write_text("not a volume")
    with pytest.raises(CardioInputError, match=r"garbage\.nrrd: could not be read as a volume"):
        read_node(tmp_path / "garbage.nrrd")
    with pytest.raises(CardioInputError, match="cannot be read as a table"):
        read_node(tmp_path / "garbage.nrrd", kind="table")
    with pytest.raises(CardioInputError, match="kind 'mesh'"):
        read_node(tmp_path / "garbage.nrrd", kind="mesh")
    assert slicer_app().scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == 0
    assert slicer_app().scene.GetNumberOfNodesByClass("vtkMRMLStorageNode") == 0
    with pytest.raises(CardioInputError, match=r"study\.mrb: does not exist"):
        load_scene(tmp_path / "study.mrb")


def _write_raw_polydata(path: Path, points: np.ndarray, lines: bool = False) -> None:
    polydata = vtk.vtkPolyData()
    vtk_points = vtk.vtkPoints()
    for point in points:
        vtk_points.InsertNextPoint(*point)
    polydata.SetPoints(vtk_points)
    cells = vtk.vtkCellArray()
    for face in TETRA_FACES if len(points) else ():
        if lines:
            cells.InsertNextCell(2, face[:2])
        else:
            cells.InsertNextCell(3, face)
    polydata.SetLines(cells) if lines else polydata.SetPolys(cells)
    writer = vtk.vtkXMLPolyDataWriter()
    writer.SetInputData(polydata)
    writer.SetFileName(str(path))
    writer.Write()


@pytest.mark.parametrize(
    "points, lines, problem",
    [
        (np.zeros((0, 3)), False, "has no points"),
        (TETRA_VERTS, True, "line cells"),
        (np.where(TETRA_VERTS > 40, np.nan, TETRA_VERTS), False, "NaN"),
    ],
    ids=["empty", "lines", "nan"],
)
def test_bad_model_files_are_refused_and_leave_no_node(tmp_path, points, lines, problem):
    file = tmp_path / "bad.vtp"
    _write_raw_polydata(file, points, lines)
    with pytest.raises(MeshError, match=problem) as error:
        read_node(file)
    assert str(file) in str(error.value)
    assert _model_count() == 0
    assert slicer_app().scene.GetNumberOfNodesByClass("vtkMRMLStorageNode") == 0


def test_bad_models_are_not_written(tmp_path):
    empty = slicer_app().new_node("vtkMRMLModelNode", "empty model")
    with pytest.raises(CardioInputError, match="empty model"):
        write_node(empty, tmp_path / "empty.vtk")
    broken = _tetra("broken")
    broken.GetPolyData().GetPoints().SetPoint(0, np.nan, 0.0, 0.0)
    with pytest.raises(MeshError, match="broken: has NaN"):
        write_node(broken, tmp_path / "broken.stl")
    with pytest.raises(CardioInputError, match="unsupported file extension"):
        write_node(_tetra(), tmp_path / "tetra.nrrd")
    with pytest.raises(CardioInputError, match="folder does not exist"):
        write_node(_tetra(), tmp_path / "no such folder" / "tetra.vtk")
    with pytest.raises(CardioInputError, match="cannot be written"):
        write_node(slicer_app().new_node("vtkMRMLLinearTransformNode", "t"), tmp_path / "t.vtk")
    assert _files(tmp_path) == []


# --- public data ---------------------------------------------------------------------------------

BIVME = "bivme_patient1/example"


def test_heartdeformnets_template_loads_with_region_ids():
    node = read_node(shared_file("heartdeformnets_templates/mmwhs_template.vtp"))
    mesh = model_to_mesh(node)
    assert mesh.verts.shape == (22829, 3) and mesh.faces.shape == (45629, 3)
    assert sorted(np.unique(mesh.point_data["RegionId"]).tolist()) == [1, 2, 3, 4, 5, 6, 7]
    # The template is stored in normalised image coordinates (inside the unit cube), not in mm:
    # users must scale it to an image before use.
    extent = mesh.verts.max(0) - mesh.verts.min(0)
    assert (np.abs(mesh.verts) < 1.0).all() and ((extent > 0.3) & (extent < 1.0)).all()


def test_bivme_fitted_mesh_lands_on_its_dicom_guide_points():
    """biv-me files are header-less and in DICOM patient (LPS) coordinates: read through the
    storage node they must sit on the LV epicardial contour points (LPS -> RAS by hand)."""
    fitted = shared_file(f"{BIVME}/fitted-models/default/patient1/vtk/patient1_EPICARDIAL_000.vtk")
    mesh = model_to_mesh(read_node(fitted))
    assert mesh.verts.shape == (2502, 3) and mesh.faces.shape == (4864, 3)
    extent = mesh.verts.max(0) - mesh.verts.min(0)
    assert ((extent > 60.0) & (extent < 200.0)).all()  # a biventricular epicardium, in mm
    lines = shared_file(f"{BIVME}/guidepoints/default/patient1/GPFile_000.txt").read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    epicardium_lps = np.array(
        [[float(value) for value in row[:3]] for row in rows if row[3].endswith("LV_EPICARDIAL")]
    )
    tree = cKDTree(mesh.verts)
    on_surface = np.median(tree.query(epicardium_lps * [-1.0, -1.0, 1.0])[0])
    if_not_converted = np.median(tree.query(epicardium_lps)[0])
    assert on_surface < 3.0 < if_not_converted


def test_mmwhs_lv_surface_loads_with_heart_sized_extent():
    mesh = model_to_mesh(read_node(shared_file("mmwhs_ct_labels/ct_train_1010_label.nii.gz.vtk")))
    assert mesh.verts.shape == (5213, 3) and mesh.faces.shape == (10422, 3)
    assert {"GlobalNodeID"} <= set(mesh.point_data) and {"ModelFaceID"} <= set(mesh.cell_data)
    extent = mesh.verts.max(0) - mesh.verts.min(0)
    assert ((extent > 50.0) & (extent < 150.0)).all()


def test_cardiomesh_lv_template_unstructured_grid_loads_with_aha_segments():
    template = shared_file("cardiomesh_templates/LV_4396_vertices_with_aha_segments.vtk")
    mesh = model_to_mesh(read_node(template))
    assert mesh.verts.shape == (4396, 3) and mesh.faces.shape == (8794, 3)
    assert sorted(np.unique(mesh.point_data["subpartID"]).astype(int).tolist()) == list(range(18))
