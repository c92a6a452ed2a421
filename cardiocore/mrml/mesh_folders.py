"""Folders of mesh files (and lists of model nodes) <-> CardioGen shape cohorts.

A cohort folder holds one triangle mesh per file (``.vtk .vtp .ply .stl .obj``), all in vertex
correspondence (same vertex count and faces). Files are read and written through Slicer's model
storage nodes (:mod:`cardiocore.mrml.storage`), so coordinates are RAS millimetres in memory and
follow Slicer's file conventions on disk (LPS unless the file's header says otherwise).

The cardiac phase of a file comes from a token ``ED``/``ES`` (or ``ed``/``es``) in its name,
delimited by ``_ - .`` or a space (``case12_ED.vtk``, ``ES-case12.ply``), or from an explicit
``phases`` mapping; the subject is the name without that token (``case12``), so the ED and ES
meshes of one subject pair up.

LV regions travel as a per-vertex array :data:`REGION_ARRAY` (0 endocardium, 1 epicardium):
:func:`write_mesh_folder` and the CardioGen nodes write it, and cohorts read from files or
nodes that carry it get their ``regions`` from it.

STL files store every triangle's corners separately; the reader merges them back in
first-use order, so an STL round trip keeps the faces' connectivity but not the vertex order.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import torch

from cardiocore.errors import CardioInputError, MeshError
from cardiocore.gen.data import ShapeCohort, infer_lv_regions
from cardiocore.mrml.app import slicer_app
from cardiocore.mrml.models import model_to_mesh
from cardiocore.mrml.polydata import Mesh, mesh_from_polydata, polydata_from_mesh, to_numpy
from cardiocore.mrml.storage import write_node

MESH_SUFFIXES = (".vtk", ".vtp", ".ply", ".stl", ".obj")
"""File name endings (case-insensitive) read as meshes; other files in a folder are ignored."""

REGION_ARRAY = "region"
"""Per-vertex array naming each vertex's LV surface."""

REGION_CODES = {"endocardium": 0, "epicardium": 1}
"""Value of :data:`REGION_ARRAY` for each region."""

_DELIMITED = re.compile(r"([_\-. ]+)")
_PHASE_TOKENS = {"ED": "ED", "ed": "ED", "ES": "ES", "es": "ES"}


# ---------------------------------------------------------------------------- reading
def read_mesh_folder(folder: str | os.PathLike) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every mesh file of a folder, sorted by file name.

    Returns:
        ``(file name, verts (V, 3) float64 RAS mm, faces (F, 3) int64)`` per file.

    Raises:
        CardioInputError: the folder is missing or holds no mesh file; MeshError or
            CardioInputError naming the file that cannot be read as a triangle surface.
    """
    return [(mesh.name, mesh.verts, mesh.faces) for mesh in read_folder_meshes(folder)]


def read_folder_meshes(folder: str | os.PathLike) -> list[Mesh]:
    """Like :func:`read_mesh_folder`, as :class:`~cardiocore.mrml.polydata.Mesh` objects with their point
    and cell arrays, named by file name."""
    source = Path(folder).expanduser()
    if not source.is_dir():
        raise CardioInputError(str(source), "is not an existing folder", "give the folder holding the mesh files")
    files = sorted(path for path in source.iterdir() if path.is_file() and path.name.lower().endswith(MESH_SUFFIXES))
    if not files:
        raise CardioInputError(str(source), f"holds no mesh files (looked for {', '.join(MESH_SUFFIXES)})")
    return [_read_mesh_file(path) for path in files]


def read_mesh_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One mesh file: verts (V, 3) float64 RAS mm and faces (F, 3) int64.

    Raises:
        CardioInputError: a missing file or one that cannot be read as a mesh (named).
    """
    source = Path(path).expanduser()
    if not source.is_file() or not source.name.lower().endswith(MESH_SUFFIXES):
        raise CardioInputError(str(source), "is not an existing mesh file", f"give a {', '.join(MESH_SUFFIXES)} file")
    mesh = _read_mesh_file(source)
    return mesh.verts, mesh.faces


def _read_mesh_file(path: Path) -> Mesh:
    """One mesh file through Slicer's model storage node (as :func:`~cardiocore.mrml.storage.read_node`
    reads it), into a hidden helper node that leaves the scene afterwards."""
    with _helper_model_node() as carrier:
        storage = slicer.vtkMRMLModelStorageNode()
        storage.SetFileName(str(path.resolve()))
        if not storage.ReadData(carrier):
            messages = storage.GetUserMessages().GetAllMessagesAsString().strip()
            raise CardioInputError(str(path), "could not be read as a mesh", messages or None)
        verts, faces, point_data, cell_data = mesh_from_polydata(carrier.GetMesh(), name=str(path))
    return Mesh(verts, faces, point_data, cell_data, name=path.name)


@contextlib.contextmanager
def _helper_model_node() -> Iterator[Any]:
    """A model node hidden from the data tree, in the scene only inside the block (storage nodes
    need their node in a scene; hidden nodes get no subject-hierarchy item)."""
    scene = slicer_app().scene
    carrier = slicer.vtkMRMLModelNode()
    carrier.SetHideFromEditors(True)
    scene.AddNode(carrier)
    try:
        yield carrier
    finally:
        scene.RemoveNode(carrier)


# ---------------------------------------------------------------------------- names
def _phase_or_none(name: str) -> str | None:
    """The one phase token of a file name ("ED"/"ES"), or None when there is none or several."""
    tokens = [_PHASE_TOKENS[token] for token in _DELIMITED.split(_stem(name)) if token in _PHASE_TOKENS]
    return tokens[0] if len(tokens) == 1 else None


def phase_from_name(name: str) -> str:
    """The cardiac phase ("ED" or "ES") named by a token of a file name.

    The token is ``ED``, ``ES``, ``ed`` or ``es`` between delimiters ``_ - .`` or spaces (or the
    name's ends): ``s01_ED.vtk`` and ``ES-s01.ply`` qualify, ``MEDIAL.vtk`` does not.

    Raises:
        CardioInputError: no phase token, or more than one.
    """
    phase = _phase_or_none(name)
    if phase is None:
        raise CardioInputError(
            name, "names no single cardiac phase",
            "put one token ED or ES in the file name, delimited by _ - . or a space (e.g. case01_ED.vtk)",
        )
    return phase


def subject_from_name(name: str) -> str:
    """A file name without its mesh suffix and phase token: ``s01_ED.vtk`` -> ``s01``,
    ``ES-case 3.ply`` -> ``case 3``. A name that is only a phase token gives ``"subject"``."""
    parts = _DELIMITED.split(_stem(name))  # tokens at even positions, delimiters between them
    for index in range(0, len(parts), 2):
        if parts[index] in _PHASE_TOKENS:
            cut = slice(index, index + 2) if index == 0 else slice(index - 1, index + 1)
            del parts[cut]
            break
    return "".join(parts).strip("_-. ") or "subject"


def _stem(name: str) -> str:
    """The name without a mesh suffix."""
    lower = name.lower()
    for suffix in MESH_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------- cohorts
def cohort_from_folder(folder: str | os.PathLike, phases: Mapping[str, str] | None = None) -> ShapeCohort:
    """A CardioGen cohort from a folder of meshes in correspondence.

    Args:
        folder: the folder of mesh files (see :data:`MESH_SUFFIXES`).
        phases: file name -> "ED"/"ES", for files whose names carry no phase token (it wins over
            a token); every key must be a mesh file of the folder.

    Returns:
        the cohort: items in file-name order, subject ids from :func:`subject_from_name`, item
        names the file names, regions from the :data:`REGION_ARRAY` point array when every file
        has the same one.

    Raises:
        CardioInputError: missing folder, no meshes, files without a phase (all listed), unknown
            keys in ``phases``; MeshError: an unreadable file, or files whose topology differs
            (named, pointing to CardioAtlas).
    """
    meshes = read_folder_meshes(folder)
    return _cohort(meshes, _phases_of(meshes, phases, f"folder {folder}"), f"folder {folder}")


def cohort_from_model_nodes(nodes: Sequence[Any], phases: Sequence[str] | Mapping[str, str]) -> ShapeCohort:
    """A CardioGen cohort from model nodes in correspondence (world RAS mm).

    Args:
        nodes: model nodes (``vtkMRMLModelNode``); their names are the item names (and give the subjects).
        phases: one "ED"/"ES" per node, or node name -> phase (names missing from the mapping
            fall back to a phase token in the node name).

    Raises:
        CardioInputError: a node that is not a model, phases of the wrong count or value, nodes
            without a phase; MeshError: nodes whose topology differs (named).
    """
    meshes = [model_to_mesh(node) for node in nodes]
    if not meshes:
        raise CardioInputError("model nodes", "none were given", "select the model nodes of the cohort")
    if isinstance(phases, Mapping):
        labels = _phases_of(meshes, phases, "model nodes")
    else:
        labels = [str(phase) for phase in phases]
        if len(labels) != len(meshes):
            raise CardioInputError("phases", f"has {len(labels)} labels for {len(meshes)} model nodes")
    return _cohort(meshes, labels, "model nodes")


def _phases_of(meshes: Sequence[Mesh], phases: Mapping[str, str] | None, what: str) -> list[str]:
    """One phase per mesh from ``phases`` or else the mesh's name; all failures in one error."""
    given = dict(phases or {})
    unknown = sorted(set(given) - {mesh.name for mesh in meshes})
    if unknown:
        raise CardioInputError("phases", f"name items that are not among the {what}: {', '.join(unknown)}")
    labels = [given.get(mesh.name) or _phase_or_none(mesh.name) for mesh in meshes]
    unlabelled = [mesh.name for mesh, label in zip(meshes, labels) if label is None]
    if unlabelled:
        raise CardioInputError(
            what,
            f"{len(unlabelled)} of {len(meshes)} items name no single cardiac phase: {', '.join(unlabelled)}",
            "put one token ED or ES in each name (e.g. case01_ED.vtk), or give their phases explicitly",
        )
    return [str(label) for label in labels]


def _cohort(meshes: Sequence[Mesh], phases: list[str], what: str) -> ShapeCohort:
    names = [mesh.name for mesh in meshes]
    return ShapeCohort.from_meshes(
        [(mesh.verts, mesh.faces) for mesh in meshes],
        phases=phases,
        subject_ids=[subject_from_name(name) for name in names],
        item_names=names,
        regions=regions_from_point_data(meshes, what) or _regions_from_components(meshes[0]),
    )


def _regions_from_components(mesh: Mesh) -> dict[str, torch.Tensor]:
    """Endocardium/epicardium from the template's two connected surfaces; {} when it has not two."""
    try:
        return infer_lv_regions(mesh.verts, mesh.faces)
    except MeshError:
        return {}


def regions_from_point_data(meshes: Sequence[Mesh], what: str) -> dict[str, torch.Tensor]:
    """LV regions ``{"endocardium": (Ve,) int64, "epicardium": (Vp,) int64}`` from the
    :data:`REGION_ARRAY` point array of meshes of one template; {} when a mesh lacks it.

    Raises:
        MeshError: the meshes' region arrays differ (``what`` names the meshes).
    """
    labels = [mesh.point_data.get(REGION_ARRAY) for mesh in meshes]
    if any(label is None for label in labels):
        return {}
    first = np.asarray(labels[0]).reshape(-1)
    if any(np.asarray(label).reshape(-1).shape != first.shape or not np.array_equal(label, first) for label in labels):
        raise MeshError(
            what, f"the {REGION_ARRAY!r} point arrays differ between items",
            "the meshes of a cohort share one template and one region labelling",
        )
    return {region: torch.as_tensor(np.flatnonzero(first == code)) for region, code in REGION_CODES.items()}


def region_labels(regions: Mapping[str, Any], n_vertices: int) -> np.ndarray:
    """The :data:`REGION_ARRAY` values (V,) int8 of region vertex indices (-1: in no region)."""
    labels = np.full(int(n_vertices), -1, dtype=np.int8)
    for region, code in REGION_CODES.items():
        if region in regions:
            labels[to_numpy(regions[region]).astype(np.int64)] = code
    return labels


# ---------------------------------------------------------------------------- writing
def write_mesh_folder(
    out: str | os.PathLike,
    meshes: Sequence[tuple[str, Any, Any]],
    fmt: str = "vtk",
    overwrite: bool = False,
    point_data: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write meshes as files ``out/<name>.<fmt>``, each atomically, creating ``out`` if needed.

    Args:
        out: the folder.
        meshes: ``(name, verts (V, 3) RAS mm, faces (F, 3))``; a name may already end in the
            format's suffix.
        fmt: one of "vtk", "vtp", "ply", "stl", "obj".
        overwrite: replace existing files; otherwise any existing target is an error and nothing
            is written.
        point_data: array name -> (V,) or (V, C) values written with every mesh (e.g.
            :data:`REGION_ARRAY`); formats without point arrays (stl, obj) drop them.

    Returns:
        the files written, in the order of ``meshes``.

    Raises:
        CardioInputError: unknown format, repeated names, existing files without ``overwrite``;
            MeshError: a bad mesh (named).
    """
    suffix = "." + str(fmt).lower().lstrip(".")
    if suffix not in MESH_SUFFIXES:
        raise CardioInputError(f"format {fmt!r}", "is not a mesh format", f"use one of {', '.join(MESH_SUFFIXES)}")
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CardioInputError(str(folder), "exists and is not a folder")
    targets = [folder / (_stem(str(name)) + suffix) for name, _, _ in meshes]
    repeated = sorted({target.name for target in targets if targets.count(target) > 1})
    if repeated:
        raise CardioInputError("mesh names", f"give the same file more than once: {', '.join(repeated)}")
    existing = [target.name for target in targets if target.exists()]
    if existing and not overwrite:
        raise CardioInputError(
            str(folder), f"already holds {', '.join(existing)}", "choose another folder or pass overwrite=True"
        )
    polydatas = [
        polydata_from_mesh(verts, faces, point_data=dict(point_data or {}), name=str(name))
        for name, verts, faces in meshes
    ]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with _helper_model_node() as carrier:
        for (name, _, _), polydata, target in zip(meshes, polydatas, targets):
            carrier.SetName(str(name))
            carrier.SetAndObservePolyData(polydata)
            written.append(write_node(carrier, target, overwrite=overwrite))
    return written
