"""The headless Slicer application (slicer-core): scene, module logics, slicer.util helpers."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

import slicer.util  # noqa: E402

from cardiocore.mrml.app import HEADLESS_MODULE_LOGICS, slicer_app  # noqa: E402


def _data_node_names(scene) -> list[str]:
    nodes = (scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes()))
    data_nodes = (n for n in nodes if n.IsA("vtkMRMLStorableNode") and not n.IsA("vtkMRMLColorNode"))
    return sorted(node.GetName() for node in data_nodes)


def test_headless_app_is_built_once_with_module_logics_published_on_slicer(app):
    assert app.is_headless
    assert slicer_app() is app
    assert slicer.mrmlScene is app.scene
    assert app.app_logic.GetMRMLScene() is app.scene
    expected_classes = {
        "Colors": "vtkSlicerColorLogic",
        "Volumes": "vtkSlicerVolumesLogic",
        "Segmentations": "vtkSlicerSegmentationsModuleLogic",
        "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
        "Sequences": "vtkSlicerSequencesLogic",
    }
    for name, class_name in expected_classes.items():
        assert app.logic(name).GetClassName() == class_name
        assert app.logic(name.lower()) is app.logic(name)
        assert getattr(slicer.modules, name.lower()).logic() is app.logic(name)
        assert app.app_logic.GetModuleLogic(name) is app.logic(name)
    assert [name for name, _ in HEADLESS_MODULE_LOGICS][:2] == ["Colors", "Volumes"]
    with pytest.raises(KeyError, match="NoSuchModule"):
        app.logic("NoSuchModule")


def test_default_colour_tables_exist_and_survive_clear(app):
    labels = app.scene.GetNodeByID("vtkMRMLColorTableNodeLabels")
    assert labels is not None and labels.GetNumberOfColors() > 0
    app.new_node("vtkMRMLScalarVolumeNode", "to be cleared")
    app.clear()
    assert _data_node_names(app.scene) == []
    assert app.scene.GetNodeByID("vtkMRMLColorTableNodeLabels") is not None


def test_new_node_gets_a_unique_name_and_leaves_the_users_node_alone(app):
    users = app.new_node("vtkMRMLModelNode", "Heart")
    users.SetAttribute("owner", "user")
    first = app.new_node("vtkMRMLModelNode", "Heart")
    second = app.new_node("vtkMRMLModelNode", "Heart")
    assert users.GetName() == "Heart" and users.GetAttribute("owner") == "user"
    assert len({users.GetName(), first.GetName(), second.GetName()}) == 3
    assert first.GetName().startswith("Heart") and second.GetName().startswith("Heart")
    assert first.GetID() != users.GetID()


def test_data_nodes_get_subject_hierarchy_items_and_helpers_do_not(app):
    hierarchy = app.scene.GetSubjectHierarchyNode()
    volume = app.new_node("vtkMRMLScalarVolumeNode", "volume")
    model = app.new_node("vtkMRMLModelNode", "model")
    segmentation = app.new_node("vtkMRMLSegmentationNode", "segmentation")
    segmentation.CreateDefaultDisplayNodes()
    for node in (volume, model, segmentation):
        item = hierarchy.GetItemByDataNode(node)
        assert item != 0
        assert hierarchy.GetItemParent(item) == hierarchy.GetSceneItemID()
    assert hierarchy.GetItemByDataNode(segmentation.GetDisplayNode()) == 0


def test_slicer_util_volume_helpers_work_headless_in_kji_order(app):
    voxels_kji = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    ijk_to_ras = np.diag([0.5, 0.75, 2.0, 1.0])
    node = slicer.util.addVolumeFromArray(voxels_kji, ijk_to_ras, name="helper volume")
    assert node.GetImageData().GetDimensions() == (4, 3, 2)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels_kji)
    slicer.util.updateVolumeFromArray(node, voxels_kji * 2)
    assert slicer.util.arrayFromVolume(node)[1, 2, 3] == 2 * voxels_kji[1, 2, 3]
    assert node.GetSpacing() == (0.5, 0.75, 2.0)


def test_slicer_util_model_and_segment_helpers_work_headless(app):
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(10.0, -5.0, 3.0)
    sphere.SetRadius(4.0)
    sphere.Update()
    model = app.new_node("vtkMRMLModelNode", "sphere")
    model.SetAndObservePolyData(sphere.GetOutput())
    points = slicer.util.arrayFromModelPoints(model)
    np.testing.assert_allclose(points.mean(axis=0), [10.0, -5.0, 3.0], atol=1e-3)

    reference = slicer.util.addVolumeFromArray(np.zeros((5, 6, 7), np.uint8), np.diag([1.0, 2.0, 3.0, 1.0]))
    segmentation = app.new_node("vtkMRMLSegmentationNode", "segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "box")
    mask_kji = np.zeros((5, 6, 7), np.uint8)
    mask_kji[1:4, 2:5, 3:6] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask_kji, segmentation, segment_id, reference)
    read_back = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, reference)
    np.testing.assert_array_equal(read_back, mask_kji)


def test_scene_bundle_opens_headless_with_geometry_and_one_hierarchy_item(app, tmp_path):
    ijk_to_ras = np.diag([0.7, 1.3, 2.5, 1.0])
    ijk_to_ras[:3, 3] = [-12.0, 30.5, 4.0]
    voxels_kji = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    volume = slicer.util.addVolumeFromArray(voxels_kji, ijk_to_ras, name="bundled")
    volume.AddDefaultStorageNode()
    bundle = tmp_path / "scene.mrb"
    assert app.scene.WriteToMRB(str(bundle))
    app.clear()
    assert app.app_logic.OpenSlicerDataBundle(str(bundle), str(app.temporary_directory))

    reopened = app.scene.GetFirstNodeByName("bundled")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(reopened), voxels_kji)
    matrix = vtk.vtkMatrix4x4()
    reopened.GetIJKToRASMatrix(matrix)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), ijk_to_ras, atol=1e-9)
    hierarchy = app.scene.GetSubjectHierarchyNode()
    assert hierarchy.GetItemByDataNode(reopened) != 0
    assert hierarchy.GetNumberOfItems() == 2  # the scene item and the volume, nothing duplicated
