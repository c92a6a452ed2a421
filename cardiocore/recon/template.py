"""The multi-chamber heart template: one closed, outward-oriented triangle mesh per structure.

The bundled template (``Resources/Templates/heart_template.npz``, see the README there for its
provenance) was built by :func:`build_template_from_labels` from an Apache-2.0 HeartDeformNets
whole-heart label map; rebuild it with::

    python -m cardiocore.recon.template --labels mmwhs.nii.gz --structures mmwhs-reindexed \\
        --out Resources/Templates/heart_template.npz

Per structure: the label's largest connected component is meshed by marching cubes after a
Gaussian blur (:func:`cardiocore.geometry.surface.surface_from_mask`), the largest surface
component is kept and decimated by quadric edge collapse
(:func:`cardiocore.geometry.decimate.quadric_decimate`) to about ``vertices_per_structure``
vertices. Each mesh is watertight and has a positive enclosed volume (outward normals).

File format (``.npz``): ``names`` (S,) str, ``verts_<name>`` (V_s, 3) float32 RAS mm,
``faces_<name>`` (F_s, 3) int32, ``source`` () str, ``format`` () str, ``version`` () int.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cardiocore.errors import CardioInputError, MeshError, VolumeError
from cardiocore.geometry.decimate import quadric_decimate
from cardiocore.geometry.grid import checked_label_values, occupied_box, shifted_matrix
from cardiocore.geometry.mesh import is_closed, mesh_edges
from cardiocore.geometry.surface import surface_from_mask
from cardiocore.geometry.untangle import untangle
from cardiocore.geometry.volume import enclosed_volume
from cardiocore.recon.rules import RuleSet, resolve_rule_set
from cardiocore.train.atomic import atomic_write
from cardiocore.weights import resources_dir

FILE_FORMAT = "cardiocore.heart_template"
FILE_VERSION = 1
TEMPLATE_FILE = "heart_template.npz"
SMOOTHING_TRIES = 3
SMOOTHING_STEP_MM = 0.5


def default_template_path() -> Path:
    """``Resources/Templates/heart_template.npz`` of the extension."""
    return resources_dir() / "Templates" / TEMPLATE_FILE


@dataclass(frozen=True)
class HeartTemplate:
    """Closed meshes of the structures of a heart, in one shared RAS frame.

    Attributes:
        names: structure identifiers (see :class:`cardiocore.recon.rules.RuleSet`), (S,).
        verts: per structure, vertex positions (V_s, 3) float32, RAS mm.
        faces: per structure, outward-oriented triangles (F_s, 3) int64.
        source: provenance text.
    """

    names: tuple[str, ...]
    verts: tuple[torch.Tensor, ...]
    faces: tuple[torch.Tensor, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.verts) == len(self.faces)) or not self.names:
            raise MeshError("template", "needs one vertex and one face array per structure name")
        if len(set(self.names)) != len(self.names):
            raise MeshError("template", f"repeats a structure name: {list(self.names)}")

    def mesh(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertices (V, 3) and faces (F, 3) of one structure."""
        if name not in self.names:
            raise CardioInputError("template structure", f"{name!r} is not in the template",
                                   f"it has: {', '.join(self.names)}")
        index = self.names.index(name)
        return self.verts[index], self.faces[index]

    def subset(self, names: Iterable[str]) -> HeartTemplate:
        """The template restricted to ``names`` (template order kept)."""
        wanted = set(names)
        for name in wanted:
            self.mesh(name)
        keep = [i for i, n in enumerate(self.names) if n in wanted]
        return HeartTemplate(tuple(self.names[i] for i in keep), tuple(self.verts[i] for i in keep),
                             tuple(self.faces[i] for i in keep), self.source)

    def mirrored(self) -> HeartTemplate:
        """The template's mirror image (left and right swapped: x -> -x), its faces turned so they
        still face outward; vertex i of each structure stays the same anatomical point."""
        flip = torch.tensor([-1.0, 1.0, 1.0])
        return HeartTemplate(self.names, tuple(v * flip.to(v.dtype) for v in self.verts),
                             tuple(f[:, [0, 2, 1]] for f in self.faces), f"{self.source} (mirrored)")

    def merged(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All structures as one mesh.

        Returns:
            verts (V, 3) mm, faces (F, 3) int64 (re-indexed), region (V,) int64: the index into
            ``names`` of the structure each vertex belongs to.
        """
        offsets = np.cumsum([0] + [int(v.shape[0]) for v in self.verts])
        verts = torch.cat(list(self.verts))
        faces = torch.cat([f + int(o) for f, o in zip(self.faces, offsets[:-1], strict=True)])
        region = torch.cat([torch.full((int(v.shape[0]),), i, dtype=torch.int64) for i, v in enumerate(self.verts)])
        return verts, faces, region

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the template as ``.npz`` (atomically; an existing file only with ``overwrite``)."""
        target = Path(path)
        if target.exists() and not overwrite:
            raise CardioInputError(str(target), "already exists", "pass overwrite=True to replace it")
        arrays: dict[str, np.ndarray] = {
            "names": np.array(self.names), "source": np.array(self.source),
            "format": np.array(FILE_FORMAT), "version": np.array(FILE_VERSION),
        }
        for name, verts, faces in zip(self.names, self.verts, self.faces, strict=True):
            arrays[f"verts_{name}"] = verts.detach().cpu().numpy().astype(np.float32)
            arrays[f"faces_{name}"] = faces.cpu().numpy().astype(np.int32)
        with atomic_write(target) as stream:
            np.savez_compressed(stream, **arrays)
        return target


def load_template(path: str | os.PathLike | None = None) -> HeartTemplate:
    """Read a template written by :meth:`HeartTemplate.save` (default: the bundled one).

    Raises:
        CardioInputError: missing or unreadable file, or not a heart template.
    """
    source = Path(path) if path is not None else default_template_path()
    if not source.is_file():
        raise CardioInputError(str(source), "heart template not found",
                               "it ships in Resources/Templates; rebuild it with python -m cardiocore.recon.template")
    try:
        with np.load(source, allow_pickle=False) as data:
            if str(data.get("format", "")) != FILE_FORMAT:
                raise CardioInputError(str(source), "is not a CardioShape heart template")
            if int(data["version"]) > FILE_VERSION:
                raise CardioInputError(str(source), f"has template format version {int(data['version'])}",
                                       "update cardiocore to read it")
            names = tuple(str(n) for n in data["names"])
            verts = tuple(torch.from_numpy(data[f"verts_{n}"].astype(np.float32)) for n in names)
            faces = tuple(torch.from_numpy(data[f"faces_{n}"].astype(np.int64)) for n in names)
            text = str(data["source"])
    except (OSError, ValueError, KeyError) as error:
        raise CardioInputError(str(source), f"cannot be read as a heart template ({error})") from None
    return HeartTemplate(names, verts, faces, text)


# ------------------------------------------------------------------------------ label grids


def crop_and_stride(
    labels: np.ndarray, ijk_to_ras: np.ndarray, spacing_mm: float, margin_mm: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """Crop a label map to its labelled voxels (plus a margin) and subsample it (nearest).

    Each axis keeps every ``stride``-th voxel, ``stride = max(1, round(spacing_mm / spacing))``,
    so the working grid is no finer than ``spacing_mm``. The returned matrix maps the new voxel
    indices to the same RAS positions (oblique and anisotropic grids included).

    Args:
        labels: (I, J, K) integer label map; ijk_to_ras: (4, 4) voxel-to-RAS matrix, mm.
        spacing_mm: the finest spacing to keep; margin_mm: background kept around the labels.

    Returns:
        labels (I', J', K') and their IJK-to-RAS (4, 4) float64.
    """
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    box = occupied_box(labels, np.ceil(margin_mm / spacing).astype(int))
    if box is None:
        raise VolumeError("labels", "has no labelled voxel")
    low = np.array([axis.start for axis in box])
    stride = np.maximum(1, np.round(spacing_mm / spacing)).astype(int)
    cropped = labels[tuple(slice(axis.start, axis.stop, st) for axis, st in zip(box, stride, strict=True))]
    new = shifted_matrix(matrix, low)
    new[:3, :3] = matrix[:3, :3] * stride
    return np.ascontiguousarray(cropped), new


# ------------------------------------------------------------------------------ builder


def _largest_mask_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    return components == 1 + int(np.argmax(sizes))


def largest_surface_component(verts: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The connected component of a mesh with the most vertices, re-indexed."""
    edges = mesh_edges(faces).numpy()
    n = verts.shape[0]
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, component = connected_components(graph, directed=False)
    if count == 1:
        return verts, faces
    keep = component == np.argmax(np.bincount(component))
    new_index = np.full(n, -1, dtype=np.int64)
    new_index[keep] = np.arange(int(keep.sum()))
    faces_np = faces.numpy()
    kept_faces = faces_np[keep[faces_np[:, 0]]]
    return verts[torch.from_numpy(keep)], torch.from_numpy(new_index[kept_faces])


def structure_mesh(
    mask: np.ndarray, ijk_to_ras: np.ndarray, n_vertices: int, smoothing_mm: float, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed, outward, decimated surface (V, 3) float32 mm, (F, 3) int64 of a binary mask, free
    of self-intersections: decimation can fold thin parts; small folds are untangled
    (:func:`cardiocore.geometry.untangle.untangle`), and where one stays the mask is blurred
    ``SMOOTHING_STEP_MM`` more and meshed again (at most ``SMOOTHING_TRIES`` times)."""
    for attempt in range(SMOOTHING_TRIES):
        blur = smoothing_mm + attempt * SMOOTHING_STEP_MM
        verts, faces = surface_from_mask(_largest_mask_component(mask), ijk_to_ras, smoothing_mm=blur)
        verts, faces = largest_surface_component(verts, faces)
        coarse = quadric_decimate(verts.double(), faces, n_vertices, name=name)
        verts_c, left = untangle(coarse.verts.float(), coarse.faces)
        if left == 0:
            break
    else:
        raise MeshError(name, f"the decimated surface keeps {left} self-intersecting face pairs",
                        "try a larger smoothing_mm or more vertices")
    faces_c = coarse.faces
    if not is_closed(faces_c):
        raise MeshError(name, "the decimated surface is not closed", "try a larger smoothing_mm")
    if float(enclosed_volume(verts_c.double(), faces_c)) <= 0:
        raise MeshError(name, "the decimated surface encloses no positive volume")
    return verts_c, faces_c


def build_template_from_labels(
    labels: np.ndarray,
    ijk_to_ras: np.ndarray,
    rules: RuleSet,
    vertices_per_structure: int = 1000,
    smoothing_mm: float = 1.5,
    spacing_mm: float = 1.0,
    source: str = "",
) -> HeartTemplate:
    """Build a template from a label map: one closed mesh per structure of ``rules``.

    Args:
        labels: (I, J, K) integer label map coded as ``rules`` says.
        ijk_to_ras: (4, 4) voxel-to-RAS matrix, mm.
        rules: the structures (and their label values) to mesh, in this order.
        vertices_per_structure: target vertex count of each decimated mesh.
        smoothing_mm: Gaussian blur (mm) of each mask before marching cubes.
        spacing_mm: the label map is cropped and subsampled to about this spacing first.
        source: provenance text stored with the template.

    Raises:
        VolumeError: a structure of ``rules`` has no voxel. MeshError: a surface cannot be made
            closed and outward.
    """
    array = np.asarray(labels)
    if array.ndim != 3:
        raise VolumeError("labels", f"must be a 3-D (I, J, K) label map, got shape {array.shape}")
    missing = [s.name for s in rules.structures if not (array == s.label).any()]
    if missing:
        raise VolumeError("labels", f"has no voxel of {', '.join(missing)}",
                          "check the label coding (--structures) or build from a complete heart")
    work, matrix = crop_and_stride(array, ijk_to_ras, spacing_mm)
    verts, faces = [], []
    for s in rules.structures:
        v, f = structure_mesh(work == s.label, matrix, vertices_per_structure, smoothing_mm, s.name)
        verts.append(v)
        faces.append(f)
    return HeartTemplate(rules.names, tuple(verts), tuple(faces), source)


def read_label_map(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Label map (I, J, K) int and IJK-to-RAS (4, 4) from a NIfTI file (needs ``nibabel``) or an
    ``.npz`` holding ``labels`` and ``ijk_to_ras``."""
    source = Path(path)
    if not source.is_file():
        raise CardioInputError(str(source), "label map not found")
    if source.suffix == ".npz":
        with np.load(source) as data:
            labels, matrix = np.asarray(data["labels"]), np.asarray(data["ijk_to_ras"], dtype=np.float64)
        return checked_label_values(labels, str(source)).astype(np.int32), matrix
    try:
        import nibabel
    except ImportError:
        raise CardioInputError(str(source), "reading NIfTI needs nibabel", "pip install nibabel") from None
    image = nibabel.load(str(source))
    # NIfTI's affine maps voxel indices to RAS+ world coordinates, the convention used here.
    labels = checked_label_values(np.asarray(image.dataobj), str(source))
    return labels.astype(np.int32), np.asarray(image.affine, dtype=np.float64)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cardiocore.recon.template --labels FILE --out FILE``: build a template."""
    parser = argparse.ArgumentParser(prog="python -m cardiocore.recon.template", description=__doc__.split("\n")[0])
    parser.add_argument("--labels", required=True, help="label map (.nii/.nii.gz or .npz with labels, ijk_to_ras)")
    parser.add_argument("--out", required=True, help="template file to write (.npz)")
    parser.add_argument("--structures", default="default",
                        help="label coding: default, mmwhs, mmwhs-reindexed or a rule-set JSON file")
    parser.add_argument("--vertices", type=int, default=1000, help="target vertices per structure")
    parser.add_argument("--smoothing-mm", type=float, default=1.5)
    parser.add_argument("--spacing-mm", type=float, default=1.0)
    parser.add_argument("--source", default="", help="provenance text stored in the file")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        labels, matrix = read_label_map(args.labels)
        template = build_template_from_labels(
            labels, matrix, resolve_rule_set(args.structures), args.vertices, args.smoothing_mm,
            args.spacing_mm, args.source or f"built from {Path(args.labels).name}",
        )
        template.save(args.out, overwrite=args.overwrite)
    except CardioInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, verts, faces in zip(template.names, template.verts, template.faces, strict=True):
        volume_ml = float(enclosed_volume(verts.double(), faces)) / 1000.0
        print(f"{name}: {verts.shape[0]} vertices, {faces.shape[0]} faces, {volume_ml:.1f} ml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
