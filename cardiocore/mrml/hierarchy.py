"""Subject-hierarchy folders for the nodes a module creates (Slicer's Data module tree)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cardiocore.mrml.app import slicer_app


def folder_with(name: str, nodes: Sequence[Any]) -> int:
    """A new subject-hierarchy folder under the scene holding ``nodes``; returns its item id."""
    hierarchy = slicer_app().scene.GetSubjectHierarchyNode()
    folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), name)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, folder)
        else:
            hierarchy.CreateItem(folder, node)
    return folder
