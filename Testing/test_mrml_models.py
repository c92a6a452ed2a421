"""Meshes <-> vtkPolyData, model nodes, table nodes and mesh sequences on a real slicer-core scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from cardiocore.errors import CardioInputError, MeshError  # noqa: E402
from cardiocore.geometry.primitives import box_mesh, icosphere  # noqa: E402
from cardiocore.mrml.app import slicer_app  # noqa: E402
from cardiocore.mrml.models import mesh_to_model, model_to_mesh  # noqa: E402
from cardiocore.mrml.polydata import mesh_from_polydata, polydata_from_mesh  # noqa: E402
from cardiocore.mrml.sequences import meshes_to_sequence, sequence_to_meshes  # noqa: E402
from cardiocore.mrml.tables import column_units, columns_to_table, table_to_columns  # noqa: E402


@pytest.fixture(autouse=True)
def empty_scene(app):
    """Every test starts on an empty scene of the shared headless application."""
    return app.scene


def _box() -> tuple[np.ndarray, np.ndarray]:
    """A closed box away from the origin (every coordinate non-zero, sign-asymmetric)."""
    verts, faces = box_mesh(size=(10.0, 20.0, 40.0), center=(30.0, -20.0, 5.0))
    return verts.double().numpy(), faces.numpy()


def _count(scene, class_name: str) -> int:
    return scene.GetNumberOfNodesByClass(class_name)


def _polydata(points, polys=(), lines=(), strips=()) -> vtk.vtkPolyData:
    polydata = vtk.vtkPolyData()
    vtk_points = vtk.vtkPoints()
    for point in points:
        vtk_points.InsertNextPoint(*point)
    polydata.SetPoints(vtk_points)
    setters = ((polys, polydata.SetPolys), (lines, polydata.SetLines), (strips, polydata.SetStrips))
    for cells, setter in setters:
        if cells:
            array = vtk.vtkCellArray()
            for cell in cells:
                array.InsertNextCell(len(cell), cell)
            setter(array)
    return polydata


# --- polydata ------------------------------------------------------------------------------------

def test_polydata_round_trip_keeps_vertices_faces_and_arrays():
    verts, faces = _box()
    point_data = {"x": verts[:, 0], "normals": verts - verts.mean(0), "inside": verts[:, 2] > 5}
    cell_data = {"face_id": np.arange(len(faces), dtype=np.int32)}
    polydata = polydata_from_mesh(torch.as_tensor(verts), faces, point_data, cell_data)
    assert polydata.GetNumberOfPoints() == 8 and polydata.GetNumberOfPolys() == 12

    verts_back, faces_back, points_back, cells_back = mesh_from_polydata(polydata)
    assert verts_back.dtype == np.float64 and faces_back.dtype == np.int64
    np.testing.assert_array_equal(verts_back, verts)
    np.testing.assert_array_equal(faces_back, faces)
    np.testing.assert_array_equal(points_back["normals"], point_data["normals"])
    np.testing.assert_array_equal(points_back["inside"], point_data["inside"].astype(np.uint8))
    np.testing.assert_array_equal(cells_back["face_id"], cell_data["face_id"])
    verts[0, 0] = 1e6  # the polydata is a copy, not a view
    assert mesh_from_polydata(polydata)[0][0, 0] != 1e6


def test_quads_and_strips_are_split_into_triangles_with_cell_data_repeated():
    square = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)]
    polydata = _polydata(square, polys=[(0, 1, 2, 3)])
    quad_id = vtk.vtkIntArray()
    quad_id.SetName("quad")
    quad_id.InsertNextValue(7)
    polydata.GetCellData().AddArray(quad_id)
    verts, faces, _, cell_data = mesh_from_polydata(polydata)
    assert faces.shape == (2, 3) and set(faces.ravel()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(cell_data["quad"], [7, 7])
    # total area of the split square is 1 mm^2
    a, b, c = (verts[faces[:, k]] for k in range(3))
    assert np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2 == pytest.approx(1.0)

    strip = _polydata(square + [(0, 2, 0)], strips=[(0, 1, 3, 2, 4)])
    assert mesh_from_polydata(strip)[1].shape == (3, 3)


def _grid(cell_type: int, cells) -> vtk.vtkUnstructuredGrid:
    grid = vtk.vtkUnstructuredGrid()
    points = vtk.vtkPoints()
    for point in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        points.InsertNextPoint(*point)
    grid.SetPoints(points)
    for cell in cells:
        grid.InsertNextCell(cell_type, len(cell), cell)
    return grid


def test_unstructured_grid_of_triangles_is_a_surface_but_tetrahedra_are_not():
    faces = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
    grid = _grid(vtk.VTK_TRIANGLE, faces.tolist())
    label = vtk.vtkIntArray()
    label.SetName("label")
    for value in (5, 6, 7, 8):
        label.InsertNextValue(value)
    grid.GetPointData().AddArray(label)
    verts, faces_back, point_data, _ = mesh_from_polydata(grid)
    np.testing.assert_array_equal(verts, [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)])
    np.testing.assert_array_equal(faces_back, faces)
    np.testing.assert_array_equal(point_data["label"], [5, 6, 7, 8])
    with pytest.raises(MeshError, match="tet grid: holds cells of dimension \\[3\\]"):
        mesh_from_polydata(_grid(vtk.VTK_TETRA, [(0, 1, 2, 3)]), name="tet grid")


@pytest.mark.parametrize(
    "polydata, problem",
    [
        (vtk.vtkPolyData(), "no points"),
        (_polydata([(0, 0, 0), (1, 0, 0)], lines=[(0, 1)]), "line cells"),
        (_polydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)]), "no polygons"),
        (_polydata([(0, 0, 0), (1, np.nan, 0), (0, 1, 0)], polys=[(0, 1, 2)]), "NaN"),
    ],
)
def test_mesh_from_polydata_rejects_unusable_surfaces(polydata, problem):
    with pytest.raises(MeshError, match=problem) as error:
        mesh_from_polydata(polydata, name="my surface")
    assert "my surface" in str(error.value)


def test_polydata_from_mesh_rejects_bad_meshes_and_arrays():
    verts, faces = _box()
    with pytest.raises(MeshError, match="no vertices"):
        polydata_from_mesh(np.zeros((0, 3)), faces[:0])
    with pytest.raises(MeshError, match="NaN"):
        polydata_from_mesh(np.where(np.arange(24).reshape(8, 3) == 4, np.nan, verts), faces)
    with pytest.raises(MeshError, match=r"\(F, 3\)"):
        polydata_from_mesh(verts, np.array([[0, 1, 2, 3]]))
    with pytest.raises(MeshError, match="point array 'bad'"):
        polydata_from_mesh(verts, faces, point_data={"bad": np.zeros(7)})
    with pytest.raises(MeshError, match="cell array 'text'"):
        polydata_from_mesh(verts, faces, cell_data={"text": np.array(["a"] * 12)})


# --- model nodes ---------------------------------------------------------------------------------

def test_mesh_to_model_makes_a_new_displayed_node_with_a_unique_name(empty_scene):
    verts, faces = _box()
    first = mesh_to_model(verts, faces, "heart", point_data={"id": np.arange(8)}, color=(1.0, 0.0, 0.0))
    second = mesh_to_model(verts + 1.0, faces, "heart")
    assert first.GetName() == "heart" and second.GetName() != "heart"
    assert first.GetDisplayNode() is not None
    assert first.GetDisplayNode().GetColor() == pytest.approx((1.0, 0.0, 0.0))
    mesh = model_to_mesh(first)
    np.testing.assert_array_equal(mesh.verts, verts)
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_array_equal(mesh.point_data["id"], np.arange(8))
    np.testing.assert_array_equal(model_to_mesh(second).verts, verts + 1.0)  # first is untouched


def test_replace_updates_the_given_node_only(empty_scene):
    verts, faces = _box()
    node = mesh_to_model(verts, faces, "heart")
    sphere_verts, sphere_faces = icosphere(1, radius=5.0)
    same = mesh_to_model(sphere_verts, sphere_faces, "ignored", replace=node)
    assert same is node and node.GetName() == "heart"
    assert _count(empty_scene, "vtkMRMLModelNode") == 1
    assert model_to_mesh(node).faces.shape == (80, 3)
    with pytest.raises(CardioInputError, match="not a model node"):
        mesh_to_model(verts, faces, "x", replace=slicer_app().new_node("vtkMRMLTableNode", "t"))


def test_bad_mesh_or_colour_creates_no_node(empty_scene):
    verts, faces = _box()
    with pytest.raises(MeshError, match="broken"):
        mesh_to_model(np.full_like(verts, np.nan), faces, "broken")
    with pytest.raises(CardioInputError, match="color of tinted"):
        mesh_to_model(verts, faces, "tinted", color=(255, 0, 0))
    assert _count(empty_scene, "vtkMRMLModelNode") == 0


def test_model_to_mesh_applies_parent_transform_for_world_coordinates(empty_scene):
    verts, faces = _box()
    node = mesh_to_model(verts, faces, "moved")
    transform = slicer_app().new_node("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 100.0)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(model_to_mesh(node).verts, verts + [100.0, 0.0, 0.0])
    np.testing.assert_array_equal(model_to_mesh(node, world=False).verts, verts)


def test_model_to_mesh_rejects_other_nodes(empty_scene):
    with pytest.raises(CardioInputError, match="not a model node"):
        model_to_mesh(slicer_app().new_node("vtkMRMLScalarVolumeNode", "vol"))
    with pytest.raises(CardioInputError, match="empty model: has no mesh data"):
        model_to_mesh(slicer_app().new_node("vtkMRMLModelNode", "empty model"))


# --- tables --------------------------------------------------------------------------------------

def test_table_holds_numbers_strings_and_units(empty_scene):
    columns = {
        "structure": ["LV", "RV", "LA"],
        "volume [ml]": np.array([120.5, 130.25, 60.0]),
        "count": np.array([1, 2, 3]),
        "closed": np.array([True, False, True]),
        "mass": torch.tensor([110.0, 40.0, 20.0], dtype=torch.float32),
    }
    node = columns_to_table(columns, "metrics", units={"mass": "g"}, descriptions={"mass": "myocardial mass"})
    back = table_to_columns(node)
    assert list(back) == list(columns)
    assert back["structure"].tolist() == ["LV", "RV", "LA"]
    np.testing.assert_array_equal(back["volume [ml]"], columns["volume [ml]"])
    assert back["count"].dtype.kind == "i" and back["count"].tolist() == [1, 2, 3]
    assert back["closed"].tolist() == [1, 0, 1]
    assert back["mass"].dtype == np.float32
    assert column_units(node) == {"structure": "", "volume [ml]": "", "count": "", "closed": "", "mass": "g"}
    assert node.GetColumnDescription("mass") == "myocardial mass"


def test_bad_tables_create_no_node(empty_scene):
    with pytest.raises(CardioInputError, match="different lengths"):
        columns_to_table({"a": [1, 2], "b": [1, 2, 3]}, "ragged")
    with pytest.raises(CardioInputError, match="one-dimensional"):
        columns_to_table({"a": np.zeros((2, 2))}, "flat")
    with pytest.raises(CardioInputError, match="unknown columns"):
        columns_to_table({"a": [1]}, "units", units={"b": "mm"})
    with pytest.raises(CardioInputError, match="empty"):
        columns_to_table({}, "none")
    assert _count(empty_scene, "vtkMRMLTableNode") == 0


# --- sequences -----------------------------------------------------------------------------------

def test_sequence_of_shared_topology_frames_round_trips(empty_scene):
    verts, faces = _box()
    # ED -> ES: shrink towards the centroid in 4 steps
    centroid = verts.mean(0)
    frames = np.stack([centroid + (verts - centroid) * (1.0 - 0.1 * t) for t in range(4)])
    sequence, browser = meshes_to_sequence(
        torch.as_tensor(frames), "cycle", faces=faces, index_name="time", index_unit="ms",
        index_values=[0, 100, 200.5, 300], color=(0.2, 0.4, 0.8),
    )
    assert sequence.GetNumberOfDataNodes() == 4
    assert sequence.GetIndexName() == "time" and sequence.GetIndexUnit() == "ms"
    assert [sequence.GetNthIndexValue(i) for i in range(4)] == ["0", "100", "200.5", "300"]
    meshes = sequence_to_meshes(sequence)
    assert len(meshes) == 4
    for mesh, expected in zip(meshes, frames):
        np.testing.assert_allclose(mesh.verts, expected)
        np.testing.assert_array_equal(mesh.faces, faces)
    proxy = browser.GetProxyNode(sequence)
    np.testing.assert_allclose(model_to_mesh(proxy).verts, frames[0])
    assert proxy.GetDisplayNode().GetColor() == pytest.approx((0.2, 0.4, 0.8))
    browser.SetSelectedItemNumber(2)
    np.testing.assert_allclose(model_to_mesh(proxy).verts, frames[2])


def test_sequence_of_meshes_with_different_topologies(empty_scene):
    box = _box()
    sphere = tuple(a.numpy() for a in icosphere(1, radius=3.0))
    sequence, _ = meshes_to_sequence([box, sphere], "shapes", index_values=["box", "sphere"])
    assert sequence.GetIndexType() == slicer.vtkMRMLSequenceNode.TextIndex
    meshes = sequence_to_meshes(sequence)
    assert [m.faces.shape[0] for m in meshes] == [12, 80]
    np.testing.assert_allclose(meshes[1].verts, sphere[0], rtol=1e-6)


def test_bad_sequences_create_no_node(empty_scene):
    verts, faces = _box()
    with pytest.raises(MeshError, match="frame 1"):
        meshes_to_sequence([verts, np.full_like(verts, np.nan)], "nan frames", faces=faces)
    with pytest.raises(CardioInputError, match="has 1 values for 2 frames"):
        meshes_to_sequence([verts, verts], "short index", faces=faces, index_values=[0])
    with pytest.raises(CardioInputError, match="repeats"):
        meshes_to_sequence([verts, verts], "same index", faces=faces, index_values=[1, 1])
    with pytest.raises(CardioInputError, match="pairs"):
        meshes_to_sequence([verts, verts], "no faces")
    with pytest.raises(CardioInputError, match="not both"):
        meshes_to_sequence([(verts, faces)], "faces twice", faces=faces)
    with pytest.raises(CardioInputError, match="empty"):
        meshes_to_sequence([], "nothing", faces=faces)
    assert _count(empty_scene, "vtkMRMLSequenceNode") == 0
    assert _count(empty_scene, "vtkMRMLSequenceBrowserNode") == 0
