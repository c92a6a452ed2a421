"""The biv-me example study (``../shared/data/bivme_patient1``, Apache-2.0) for the real-MR benchmarks.

A 3T bSSFP cine: 6 short-axis slices 17.7 mm apart at 1.41 mm pixels, 25 frames; expert contour
guide points per frame (LPS mm, on the slices' pixel grid) and biventricular meshes fitted to them
(LV endocardium, RV endocardium, epicardium; VTK files in LPS, read as RAS). ED is frame 0, ES
frame 9.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from cardiocore.geometry.distance import point_to_mesh_distance
from cardiocore.geometry.volume import close_boundary, enclosed_volume
from cardiocore.mrml.dicom import list_dicom_series, load_dicom_series
from cardiocore.mrml.mesh_folders import read_mesh_file
from cardiocore.mrml.volumes import volume_to_array

STUDY = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "bivme_patient1" / "example"
FRAMES = {"ED": 0, "ES": 9}
# Our structure -> the study's fitted surface.
FITTED_SURFACES = {"lv_cavity": "LV_ENDOCARDIAL", "rv": "RV_ENDOCARDIAL"}


def short_axis_stack(frame: int) -> tuple[np.ndarray, np.ndarray]:
    """The short-axis slices of one frame as a volume: intensities (I, J, K) and IJK-to-RAS (4, 4), mm.

    Needs Slicer's application logic (:func:`cardiocore.mrml.app.slicer_app`) started.
    """
    folder = STUDY / "dicoms" / "patient1"
    series = list_dicom_series(folder)
    orientation = next(item.orientation for item in series if item.files[0].parent.name == "Se1")
    uids = [item.uid for item in series if np.allclose(item.orientation, orientation)]
    return volume_to_array(load_dicom_series(folder, series_uids=uids, frame=frame))


def _slice_ids() -> dict[str, int]:
    """DICOM file name -> the slice id the guide points use (``SliceInfoFile.txt``)."""
    lines = (STUDY / "guidepoints" / "default" / "patient1" / "SliceInfoFile.txt").read_text().splitlines()
    return {line.split("\t")[0].strip(): int(line.split("\t")[2]) for line in lines if line.strip()}


def long_axis_slice(slice_id: int, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """One long-axis view (the series holding guide-point slice ``slice_id``) of one frame:
    intensities (I, J, 1) and IJK-to-RAS (4, 4), mm (the third column spans the slice thickness)."""
    folder = STUDY / "dicoms" / "patient1"
    ids = _slice_ids()
    item = next(item for item in list_dicom_series(folder) if slice_id in {ids.get(f.name) for f in item.files})
    return volume_to_array(load_dicom_series(folder, series_uids=[item.uid], frame=frame))


def fitted_meshes(frame: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per structure of :data:`FITTED_SURFACES`: the study's fitted surface, vertices (V, 3) RAS mm
    and faces (F, 3) (open at the valves)."""
    folder = STUDY / "fitted-models" / "default" / "patient1" / "vtk"
    return {name: read_mesh_file(folder / f"patient1_{surface}_{frame:03d}.vtk")
            for name, surface in FITTED_SURFACES.items()}


def guide_points(frame: int) -> list[tuple[str, int, np.ndarray]]:
    """The expert contour points of one frame: (contour type, slice id, RAS point (3,) mm) each."""
    path = STUDY / "guidepoints" / "default" / "patient1" / f"GPFile_{frame:03d}.txt"
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    return [(row[3], int(row[4]), np.array([float(x) for x in row[:3]]) * lps_to_ras) for row in rows]


def closed_ml(verts: np.ndarray, faces: np.ndarray) -> float:
    """Volume (ml) enclosed by a surface after closing its open boundaries with fans."""
    closed_verts, closed_faces = close_boundary(torch.as_tensor(verts), torch.as_tensor(faces))
    return abs(float(enclosed_volume(closed_verts, closed_faces))) / 1000.0


def mesh_ml(verts: np.ndarray | torch.Tensor, faces: np.ndarray | torch.Tensor) -> float:
    """Volume (ml) enclosed by a closed surface."""
    return abs(float(enclosed_volume(torch.as_tensor(verts), torch.as_tensor(faces)))) / 1000.0


def distances(points: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> tuple[float, float]:
    """Mean and 95th percentile (mm) of the distances from points (N, 3) to a surface."""
    distance, _ = point_to_mesh_distance(torch.as_tensor(points, dtype=torch.float64),
                                         torch.as_tensor(verts, dtype=torch.float64), torch.as_tensor(faces))
    return float(distance.mean()), float(torch.quantile(distance, 0.95))


def compare(name: str, verts: np.ndarray, faces: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> str:
    """One line: distances both ways between a reconstructed surface and the fitted one, and volumes."""
    ref_verts, ref_faces = reference
    to_result = distances(ref_verts, verts, faces)
    to_reference = distances(verts, ref_verts, ref_faces)
    return (f"{name:9s} fitted->ours {to_result[0]:5.1f} mm (p95 {to_result[1]:5.1f}), ours->fitted "
            f"{to_reference[0]:5.1f} mm (p95 {to_reference[1]:5.1f}); volume {mesh_ml(verts, faces):6.1f} ml "
            f"vs fitted {closed_ml(*reference):6.1f} ml")
