"""DICOM image series -> volume node, with the geometry from the DICOM tags (pydicom).

Slicer's DICOM module is not part of slicer-core, so series are read with pydicom, which Slicer
also bundles. The geometry comes from the tags: ImageOrientationPatient (row and column
directions), PixelSpacing (row spacing, column spacing), ImagePositionPatient (centre of the
first voxel of each slice) and the slice order along the slice normal; all in LPS, converted to
RAS. Pixel values get RescaleSlope/RescaleIntercept.

Cine MR series hold several frames (time points) at each slice position, and a short-axis stack
is often stored as one series per slice: :func:`load_dicom_series` therefore takes one or several
series, groups images by slice position and picks one frame per position.

Voxel axes of the volume: I along the row direction (the pixel array's column index), J along
the column direction (its row index), K along the slice normal (row x column direction), from
the first slice to the last.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cardiocore.errors import CardioInputError
from cardiocore.mrml.volumes import array_to_volume

# Header tags read to group and order images (reading only these is several times faster).
_HEADER_TAGS = (
    "SeriesInstanceUID", "SeriesDescription", "Modality", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "Rows", "Columns", "NumberOfFrames",
    "TriggerTime", "InstanceNumber",
)
# Tags an image needs to be placed in a volume; files without them are skipped.
_REQUIRED_TAGS = ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Tolerances: direction cosines that differ by less are "the same orientation"; slice gaps that
# differ by less than this fraction of the mean gap are "even".
ORIENTATION_TOLERANCE = 1e-4
SLICE_GAP_TOLERANCE = 0.01


@dataclass(frozen=True)
class DicomSeries:
    """One series found in a folder.

    Attributes:
        uid: SeriesInstanceUID.
        description: SeriesDescription ("" when absent).
        modality: Modality ("" when absent).
        files: paths of its image files.
        orientation: ImageOrientationPatient of its first image (row cosines, column cosines; LPS).
        n_positions: number of distinct slice positions.
        n_frames: images per slice position (time points of a cine series; 1 for a static one).
    """

    uid: str
    description: str
    modality: str
    files: tuple[Path, ...]
    orientation: tuple[float, ...]
    n_positions: int
    n_frames: int


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """The image series under ``folder`` (searched recursively), sorted by description and UID.

    Raises:
        CardioInputError: the folder does not exist or holds no DICOM images.
    """
    headers = _read_headers(Path(folder))
    by_uid: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for path, header in headers:
        by_uid[str(header.SeriesInstanceUID)].append((path, header))
    series = []
    for uid, members in by_uid.items():
        first = members[0][1]
        positions = {_position_key(header) for _, header in members}
        series.append(
            DicomSeries(
                uid=uid,
                description=str(first.get("SeriesDescription", "")),
                modality=str(first.get("Modality", "")),
                files=tuple(path for path, _ in members),
                orientation=tuple(float(value) for value in first.ImageOrientationPatient),
                n_positions=len(positions),
                n_frames=-(-len(members) // len(positions)),
            )
        )
    return sorted(series, key=lambda item: (item.description, item.uid))


def load_dicom_series(
    folder: str | Path,
    series_uids: str | Sequence[str] | None = None,
    frame: int = 0,
    name: str | None = None,
) -> Any:
    """Read DICOM images into a new scalar volume node with the geometry of the tags.

    Args:
        folder: folder searched recursively for DICOM files.
        series_uids: SeriesInstanceUID(s) to load. Several series with the same orientation and
            image size are stacked by slice position (e.g. a short-axis stack stored one slice per
            series). ``None``: every image in the folder, which must then share one orientation.
        frame: which image to take at each slice position when there are several (cine frames,
            ordered by TriggerTime, then InstanceNumber); 0-based.
        name: node name (made unique); default: the first series' description.

    Returns:
        the new ``vtkMRMLScalarVolumeNode`` (float32 voxels when a rescale applies, else the
        stored integer type), voxel (i, j, k) at RAS ``ijk_to_ras @ (i, j, k, 1)``.

    Raises:
        CardioInputError: no DICOM images, unknown series UIDs, mixed orientations, image
            sizes or pixel spacings, uneven slice gaps, slices not stacked along their normal (gantry tilt),
            multi-frame (enhanced) files, or ``frame`` out of range. No node is created then.
    """
    folder = Path(folder)
    what = f"DICOM folder {str(folder)!r}"
    headers = _read_headers(folder)
    if series_uids is not None:
        wanted = {series_uids} if isinstance(series_uids, str) else set(series_uids)
        unknown = wanted - {str(header.SeriesInstanceUID) for _, header in headers}
        if unknown:
            raise CardioInputError(what, f"has no series {sorted(unknown)}", _series_hint(folder))
        headers = [(path, header) for path, header in headers if str(header.SeriesInstanceUID) in wanted]
    _check_single_geometry(headers, what, folder)

    slices = _one_frame_per_position(headers, frame, what)
    row_cosines, column_cosines, normal = _axes(slices[0][1])
    slices.sort(key=lambda item: float(np.dot(normal, _position(item[1]))))
    ijk_to_lps = np.eye(4)
    row_spacing, column_spacing = (float(value) for value in slices[0][1].PixelSpacing)
    ijk_to_lps[:3, 0] = row_cosines * column_spacing
    ijk_to_lps[:3, 1] = column_cosines * row_spacing
    ijk_to_lps[:3, 2] = normal * _slice_step(slices, normal, what)
    ijk_to_lps[:3, 3] = _position(slices[0][1])

    voxels = np.stack([_pixels(path) for path, _ in slices], axis=-1)
    first = slices[0][1]
    node_name = name or str(first.get("SeriesDescription", "")) or "DICOM volume"
    return array_to_volume(voxels, LPS_TO_RAS @ ijk_to_lps, node_name)


def _read_headers(folder: Path) -> list[tuple[Path, Any]]:
    """(path, header without pixels) of every DICOM image under ``folder``; other files skipped."""
    import pydicom

    what = f"DICOM folder {str(folder)!r}"
    if not folder.is_dir():
        raise CardioInputError(what, "does not exist or is not a folder")
    headers = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if all(tag in header for tag in _REQUIRED_TAGS):
            headers.append((path, header))
    if not headers:
        raise CardioInputError(what, f"holds no DICOM images with the tags {', '.join(_REQUIRED_TAGS)}")
    return headers


def _check_single_geometry(headers: list[tuple[Path, Any]], what: str, folder: Path) -> None:
    """All images share orientation, image size and pixel spacing, and are single-frame."""
    first_path, first = headers[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    pixel_spacing = np.asarray(first.PixelSpacing, dtype=float)
    size = (int(first.Rows), int(first.Columns))
    for path, header in headers:
        if not np.allclose(np.asarray(header.ImageOrientationPatient, dtype=float), orientation,
                           atol=ORIENTATION_TOLERANCE):
            problem = f"mixes slice orientations ({path.name} differs from {first_path.name})"
            raise CardioInputError(what, problem, _series_hint(folder))
        if (int(header.Rows), int(header.Columns)) != size:
            problem = f"mixes image sizes ({path.name} is not {size[0]}x{size[1]})"
            raise CardioInputError(what, problem, _series_hint(folder))
        if not np.allclose(np.asarray(header.PixelSpacing, dtype=float), pixel_spacing, rtol=1e-4):
            problem = f"mixes pixel spacings ({path.name} differs from {first_path.name})"
            raise CardioInputError(what, problem, _series_hint(folder))
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            raise CardioInputError(
                f"DICOM file {str(path)!r}",
                "is a multi-frame (enhanced) image",
                "export it as classic single-frame DICOM",
            )


def _one_frame_per_position(
    headers: list[tuple[Path, Any]], frame: int, what: str
) -> list[tuple[Path, Any]]:
    """The ``frame``-th image (in trigger-time order) at every slice position."""
    by_position: dict[tuple[float, ...], list[tuple[Path, Any]]] = defaultdict(list)
    for path, header in headers:
        by_position[_position_key(header)].append((path, header))
    n_frames = min(len(images) for images in by_position.values())
    if not 0 <= frame < n_frames:
        raise CardioInputError(
            what, f"frame {frame} is out of range", f"slice positions have {n_frames} frame(s)"
        )
    return [sorted(images, key=_acquisition_order)[frame] for images in by_position.values()]


def _acquisition_order(image: tuple[Path, Any]) -> tuple[float, int]:
    header = image[1]
    return float(header.get("TriggerTime", 0) or 0), int(header.get("InstanceNumber", 0) or 0)


def _axes(header: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row direction, column direction and slice normal (row x column), LPS."""
    cosines = np.asarray(header.ImageOrientationPatient, dtype=float)
    row_cosines = cosines[:3] / np.linalg.norm(cosines[:3])
    column_cosines = cosines[3:] / np.linalg.norm(cosines[3:])
    normal = np.cross(row_cosines, column_cosines)
    return row_cosines, column_cosines, normal / np.linalg.norm(normal)


def _slice_step(slices: list[tuple[Path, Any]], normal: np.ndarray, what: str) -> float:
    """Distance between consecutive slices along the normal (mm); for a single slice, the
    SpacingBetweenSlices or SliceThickness tag (1 mm if neither is there)."""
    if len(slices) == 1:
        header = slices[0][1]
        return float(header.get("SpacingBetweenSlices") or header.get("SliceThickness") or 1.0)
    positions = np.stack([_position(header) for _, header in slices])
    steps = np.diff(positions, axis=0)
    along_normal = steps @ normal
    mean_gap = float(along_normal.mean())
    if mean_gap <= 0 or np.abs(along_normal - mean_gap).max() > SLICE_GAP_TOLERANCE * mean_gap:
        raise CardioInputError(
            what,
            f"slice gaps along the normal are uneven "
            f"({along_normal.min():.3f} to {along_normal.max():.3f} mm)",
            "a slice may be missing or the series mixes stacks; choose series with series_uids",
        )
    in_plane = steps - np.outer(along_normal, normal)
    if np.linalg.norm(in_plane, axis=1).max() > SLICE_GAP_TOLERANCE * mean_gap:
        raise CardioInputError(
            what,
            "slices are not stacked along their normal (gantry tilt or shifted slices)",
            "resample the series in a DICOM tool first",
        )
    return mean_gap


def _pixels(path: Path) -> np.ndarray:
    """(I, J) = (columns, rows) pixel values of one image, with the rescale applied."""
    import pydicom

    what = f"DICOM file {str(path)!r}"
    dataset = pydicom.dcmread(path)
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises several types for missing codecs
        raise CardioInputError(
            what,
            f"pixel data cannot be decoded: {error}",
            "install the pydicom codec for its transfer syntax (e.g. pylibjpeg)",
        ) from error
    if pixels.ndim != 2:
        raise CardioInputError(
            what,
            f"pixel array has shape {pixels.shape}, expected 2-D",
            "colour and multi-frame images are not supported",
        )
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        pixels = pixels.astype(np.float32) * slope + intercept
    return pixels.T


def _position(header: Any) -> np.ndarray:
    return np.asarray(header.ImagePositionPatient, dtype=float)


def _position_key(header: Any) -> tuple[float, ...]:
    """ImagePositionPatient rounded to 1 micrometre, to group images of one slice position."""
    return tuple(round(float(value), 3) for value in header.ImagePositionPatient)


def _series_hint(folder: Path) -> str:
    listing = "; ".join(
        f"{series.uid} ({series.description or 'no description'}, {series.n_positions} position(s) "
        f"x {series.n_frames} frame(s))"
        for series in list_dicom_series(folder)
    )
    return f"pick series with series_uids: {listing}"
