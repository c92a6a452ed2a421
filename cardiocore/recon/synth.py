"""Synthetic training images from real label maps (SynthSeg style) and the network's sampling frame.

Predict mode learns from images synthesised from label maps (MM-WHS, HeartDeformNets): each label
gets a random intensity, the background is split into random smooth tissue classes, then a bias
field, blur, thick slices, noise and a gamma change are applied, so the network sees CT- and
MR-like contrasts it never has to be told about (``SynthOptions.contrast`` also offers
contrast-CT-like and bright-blood-MR-like intensity models, for evaluation closer to real images).
Orientation, scale and position vary through a random pose of the sampling frame, and shape through
an optional smooth random deformation of the frame (:class:`FrameWarp`) and optional random scaling
of chosen chambers about their centroids (dilated or contracted ventricles), so a few label maps
give many anatomies. Optionally an image is shown only as a cine short-axis stack would show it
(:class:`ShortAxisStack`), for networks that must read sparse slices.

The frame: the network's physical frame in mm, a cubic grid of ``size``^3 voxels with spacing
``spacing_mm``, centred on the frame origin; voxel (i, j, k) sits at frame position
``((i - (size - 1) / 2) * spacing_mm, (j - ...) * spacing_mm, (k - ...) * spacing_mm)`` and
tensors are indexed [i, j, k]. ``frame_to_ras`` (4, 4) float64 maps frame mm to RAS mm (rotation
times scale plus translation in training; a pure translation at inference, see
:func:`image_to_frame`). Structure index: 0 background, ``s + 1`` for structure ``s`` of the rule
set order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import RandAdjustContrast, RandBiasField, RandGaussianNoise, RandGaussianSmooth
from monai.utils import convert_to_tensor

from cardiocore.errors import CardioInputError, VolumeError
from cardiocore.geometry.grid import checked_matrix, shifted_matrix
from cardiocore.geometry.surface import surface_from_mask
from cardiocore.recon.rules import RuleSet, resolve_rule_set
from cardiocore.recon.template import crop_and_stride, read_label_map

#: Background kept around the labels of a prepared case, mm (room for rotations and shifts).
CASE_MARGIN_MM = 40.0
#: Largest voxel count whose percentiles :func:`normalise_intensity` computes exactly.
QUANTILE_SAMPLE = 1_000_000
_BACKGROUND_FIELD_SIZE = (3, 8)  # coarse grid size range of the background class fields
_MIN_PERCENTILE_SPAN = 1e-3  # percentile range, relative to max - min, below which min-max is used
_WITHIN_LABEL_STD = 0.05  # maximum intensity standard deviation inside one label


# ---------------------------------------------------------------------------- checks


def volume_tensor(volume: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """A 3-D tensor view of ``volume`` (numpy arrays shared when their strides allow it)."""
    if isinstance(volume, torch.Tensor):
        tensor = volume
    else:
        array = np.asarray(volume)
        if any(stride < 0 for stride in array.strides):
            array = np.ascontiguousarray(array)
        tensor = torch.from_numpy(array)
    if tensor.ndim != 3 or min(tensor.shape) < 1:
        raise VolumeError(what, f"must be a non-empty 3-D (I, J, K) array, got shape {tuple(tensor.shape)}")
    return tensor


def _checked_frame(size: int, spacing_mm: float) -> None:
    if int(size) < 1 or not spacing_mm > 0:
        raise CardioInputError("frame", f"needs size >= 1 and spacing_mm > 0, got {size} and {spacing_mm}")


# ---------------------------------------------------------------------------- label cases


@dataclass(frozen=True)
class LabelCase:
    """One real label map prepared for synthesis.

    Attributes:
        name: case name (the file name for :func:`load_cases`).
        index: (I, J, K) uint8 structure index (0 background, s + 1), cropped to the labels plus
            a 40 mm margin and subsampled to about the requested spacing.
        ijk_to_ras: (4, 4) float64 voxel-to-RAS matrix of ``index``, mm.
        surfaces: per structure, (N_s, 3) float32 RAS mm boundary points (marching cubes on the
            full-resolution mask, randomly subsampled); (0, 3) for a structure absent from the map.
        centre: (3,) float64 RAS mm, centroid of all labelled voxels.
        names: structure names, rule-set order.
    """

    name: str
    index: np.ndarray
    ijk_to_ras: np.ndarray
    surfaces: tuple[np.ndarray, ...]
    centre: np.ndarray
    names: tuple[str, ...]

    @cached_property
    def balls_ras(self) -> tuple[np.ndarray, np.ndarray]:
        """Per structure, the centroid (S, 3) RAS mm and the radius (S,) mm of the ball of equal
        volume (0 for a structure absent from ``index``); computed once per case."""
        n = len(self.names) + 1
        counts = np.bincount(self.index.reshape(-1), minlength=n)[1:n].astype(np.float64)
        sums = np.zeros((n - 1, 3))
        for axis, length in enumerate(self.index.shape):  # per-slice label counts: no coordinate arrays
            per_slice = np.stack([np.bincount(np.take(self.index, i, axis=axis).reshape(-1), minlength=n)[1:n]
                                  for i in range(length)])
            sums[:, axis] = np.arange(length) @ per_slice
        centres_ijk = sums / np.maximum(counts, 1.0)[:, None]
        centres = centres_ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]
        voxel_ml = abs(float(np.linalg.det(self.ijk_to_ras[:3, :3])))
        return centres, (3.0 * counts * voxel_ml / (4.0 * math.pi)) ** (1.0 / 3.0)


def _boundary_points(mask: np.ndarray, ijk_to_ras: np.ndarray, n_surface: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n_surface`` marching-cubes vertices (N, 3) float32 RAS mm of a full-resolution mask
    (:func:`surface_from_mask` meshes only the box around its voxels)."""
    verts, _ = surface_from_mask(mask, ijk_to_ras)
    points = verts.numpy().astype(np.float32)
    if points.shape[0] > n_surface:
        points = points[rng.choice(points.shape[0], n_surface, replace=False)]
    return points


def _index_centroid(mask: np.ndarray) -> np.ndarray:
    """Centroid (3,) float64 of the True voxels in voxel coordinates, from per-axis counts."""
    total = float(mask.sum())
    return np.array([
        float(np.arange(mask.shape[axis]) @ mask.sum(axis=tuple(a for a in range(3) if a != axis))) / total
        for axis in range(3)
    ])


def _structure_index(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """(I, J, K) uint8 structure index (0 elsewhere, s + 1 where ``labels == values[s]``), by a
    look-up table when the labels are small non-negative integers (MM-WHS: 0.1 s instead of 4 s)."""
    low, high = (int(v) for v in (labels.min(), labels.max())) if labels.size else (0, 0)
    if np.issubdtype(labels.dtype, np.integer) and low >= 0 and high < 2**16:
        table = np.zeros(high + 1, dtype=np.uint8)
        for s, value in enumerate(values):
            if 0 <= value <= high:
                table[value] = s + 1
        return table[labels]
    index = np.zeros(labels.shape, dtype=np.uint8)
    for s, value in enumerate(values):
        index[labels == value] = s + 1
    return index


def prepare_case(
    labels: np.ndarray, ijk_to_ras: np.ndarray, rules: RuleSet, name: str,
    spacing_mm: float = 1.0, n_surface: int = 4000, seed: int = 0,
) -> LabelCase:
    """Structure index map, boundary points and centre of one label map.

    Args:
        labels: (I, J, K) integer label map coded as ``rules`` says.
        ijk_to_ras: (4, 4) voxel-to-RAS matrix, mm.
        rules: the structures (label values) to keep, in this order.
        name: case name, used in errors too.
        spacing_mm: the index map is subsampled (nearest) to about this spacing.
        n_surface: most boundary points kept per structure (random subset, ``seed``).

    Raises:
        VolumeError: labels not 3-D, a bad matrix. CardioInputError: no voxel of any structure.
    """
    array = np.asarray(labels)
    if array.ndim != 3:
        raise VolumeError(name, f"label map must be 3-D (I, J, K), got shape {array.shape}")
    matrix = checked_matrix(ijk_to_ras, f"{name}: ijk_to_ras")
    if len(rules.structures) > 255:
        raise CardioInputError(name, f"{len(rules.structures)} structures do not fit a uint8 index map")
    index = _structure_index(array, [s.label for s in rules.structures])
    counts = np.bincount(index.ravel(order="K"), minlength=len(rules.structures) + 1)[1:]
    present = [s for s, count in enumerate(counts) if count]
    if not present:
        found = np.unique(array)[:12].tolist()
        raise CardioInputError(name, "has no voxel of any structure of the label coding",
                               f"expected labels {[s.label for s in rules.structures]}, found {found}; "
                               "check the coding (--structures)")
    rng = np.random.default_rng(seed)
    surfaces = tuple(
        _boundary_points(index == s + 1, matrix, n_surface, rng) if s in present else np.zeros((0, 3), np.float32)
        for s in range(len(rules.structures))
    )
    centre = matrix[:3, :3] @ _index_centroid(index > 0) + matrix[:3, 3]
    work, work_matrix = crop_and_stride(index, matrix, spacing_mm, margin_mm=CASE_MARGIN_MM)
    return LabelCase(name, work, work_matrix, surfaces, centre, rules.names)


def load_cases(paths: Sequence[str | os.PathLike], structures: str | RuleSet, **kw: float | int) -> list[LabelCase]:
    """Read and prepare label maps (NIfTI or ``.npz``, see
    :func:`cardiocore.recon.template.read_label_map`); ``kw`` goes to :func:`prepare_case`.

    Args:
        paths: label map files; each case is named after its file (extension removed).
        structures: label coding: "default", "mmwhs", "mmwhs-reindexed", a JSON file or a RuleSet.

    Raises:
        CardioInputError: an unreadable file, or one where no structure is recognised (named).
    """
    rules = resolve_rule_set(structures)
    cases = []
    for path in paths:
        source = Path(path)
        labels, matrix = read_label_map(source)
        case_name = source.name.removesuffix(".gz").removesuffix(".nii").removesuffix(".npz")
        try:
            cases.append(prepare_case(labels, matrix, rules, case_name, **kw))  # type: ignore[arg-type]
        except CardioInputError as error:
            raise type(error)(error.what.replace(case_name, str(source), 1), error.problem, error.hint) from None
    return cases


# ---------------------------------------------------------------------------- frame sampling


def frame_grid_points(size: int, spacing_mm: float) -> torch.Tensor:
    """Frame positions (size, size, size, 3) float32 mm of the voxel centres, indexed [i, j, k]."""
    _checked_frame(size, spacing_mm)
    axis = (torch.arange(int(size), dtype=torch.float64) - (int(size) - 1) / 2.0) * spacing_mm
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).float()


def frame_grid_matrix(size: int, spacing_mm: float) -> np.ndarray:
    """(4, 4) float64 matrix from voxel index (i, j, k) of the frame grid to frame mm."""
    _checked_frame(size, spacing_mm)
    matrix = np.diag([float(spacing_mm)] * 3 + [1.0])
    matrix[:3, 3] = -(int(size) - 1) / 2.0 * spacing_mm
    return matrix


@dataclass(frozen=True)
class FrameWarp:
    """A smooth deformation of the frame: frame point ``p`` reads the label map at ``p + d(p)``.

    Attributes:
        field: (3, G, G, G) float32 displacement d in mm on a control grid spanning the cube
            [-half_mm, half_mm]^3 of frame mm (indexed [axis, i, j, k]); trilinear in between,
            constant beyond the cube.
        half_mm: half the side of the cube, mm.
    """

    field: torch.Tensor
    half_mm: float

    @classmethod
    def on_frame(cls, field: torch.Tensor, size: int, spacing_mm: float) -> FrameWarp:
        """The warp of ``field`` spanning the frame grid of ``size``^3 voxels of ``spacing_mm``."""
        return cls(field, int(size) * float(spacing_mm) / 2.0)

    def displacement(self, points: torch.Tensor) -> torch.Tensor:
        """d (..., 3) float32 mm at frame points (..., 3) mm, on the points' device."""
        flat = points.reshape(1, -1, 1, 1, 3).float()
        field = self.field.to(device=points.device, dtype=torch.float32)
        normalised = (flat / self.half_mm)[..., [2, 1, 0]]  # grid_sample wants (k, j, i)
        sampled = F.grid_sample(field[None], normalised, mode="bilinear", padding_mode="border", align_corners=True)
        return sampled[0, :, :, 0, 0].T.reshape(points.shape)

    def inverse(self, points: torch.Tensor, max_iterations: int = 64, tolerance_mm: float = 1e-3) -> torch.Tensor:
        """Frame points p (..., 3) with ``p + d(p)`` = ``points``: fixed-point iteration, whose
        error shrinks by about the largest displacement gradient per iteration (up to 0.8 with
        scaled chambers), until no point moves by more than ``tolerance_mm``."""
        found = points.float()
        for _ in range(max_iterations):
            updated = points - self.displacement(found)
            converged = not updated.numel() or float((updated - found).abs().max()) < tolerance_mm
            found = updated
            if converged:
                break
        return found


#: Control points per side of a warp that scales structures (6 mm apart on a 64^3 frame of 3 mm).
DILATION_GRID = 33
_MAX_WARP_GRADIENT = 0.6  # bound on the displacement gradient of a random warp (invertibility)


def warp_grid_size(options: SynthOptions) -> int:
    """Control points per side of the warps :func:`random_warp` draws with ``options``."""
    return DILATION_GRID if options.dilate else max(2, int(options.elastic_grid))


def structure_scaling_field(
    centres_mm: torch.Tensor, radii_mm: torch.Tensor, scales: torch.Tensor, size: int, spacing_mm: float, grid: int
) -> torch.Tensor:
    """A :class:`FrameWarp` field (3, grid, grid, grid), mm, that scales balls about their centres.

    Structure ``s`` (centre ``c``, radius ``R``, factor ``k``) reads the label map at
    ``c + (p - c) / k`` within ``R`` of ``c``, so a region of radius ``R`` appears ``k`` times
    larger; beyond ``R`` the radial displacement ``(1/k - 1) R`` fades as a Gaussian of width
    ``R``, pushing the surrounding tissue aside. The displacements of several structures add.

    Args:
        centres_mm: (S, 3) frame mm. radii_mm: (S,) mm. scales: (S,) factors > 0.
        size, spacing_mm: the frame grid the field spans; grid: control points per side.
    """
    half = int(size) * float(spacing_mm) / 2.0
    axis = torch.linspace(-half, half, int(grid), dtype=torch.float64)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    field = torch.zeros(points.shape, dtype=torch.float64)
    for centre, radius, scale in zip(centres_mm.double(), radii_mm.double(), scales.double(), strict=True):
        offset = points - centre
        distance = offset.norm(dim=-1, keepdim=True)
        beyond = (distance - radius).clamp(min=0.0)
        magnitude = (1.0 / scale - 1.0) * torch.minimum(distance, radius) * torch.exp(-(beyond / radius) ** 2)
        field += offset / distance.clamp(min=1e-9) * magnitude
    return field.permute(3, 0, 1, 2).float()


def _steepest(field: torch.Tensor, step_mm: float) -> float:
    """Largest finite-difference displacement gradient of a (3, G, G, G) field."""
    return max(float(field.diff(dim=axis).abs().max()) for axis in (1, 2, 3)) / step_mm


def _structure_balls(case: LabelCase, names: Sequence[str], frame_to_ras: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (S, 3) frame mm and radii (S,) mm (of the ball of equal volume; 0 when absent) of
    structures of a case (:attr:`LabelCase.balls_ras` moved into the frame)."""
    unknown = [name for name in names if name not in case.names]
    if unknown:
        raise CardioInputError("dilate", f"names {unknown[0]!r}, which is not a structure of {case.name}",
                               f"its structures: {', '.join(case.names)}")
    rows = [case.names.index(name) for name in names]
    centres_ras, radii_mm = case.balls_ras
    ras_to_frame = np.linalg.inv(frame_to_ras)
    frame_scale = abs(float(np.linalg.det(ras_to_frame[:3, :3]))) ** (1.0 / 3.0)
    centres = centres_ras[rows] @ ras_to_frame[:3, :3].T + ras_to_frame[:3, 3]
    return torch.from_numpy(centres), torch.from_numpy(frame_scale * radii_mm[rows])


def random_warp(
    generator: torch.Generator, size: int, spacing_mm: float, options: SynthOptions,
    case: LabelCase | None = None, frame_to_ras: np.ndarray | None = None,
) -> FrameWarp | None:
    """A random :class:`FrameWarp` over the frame cube, or None when ``options`` asks for no
    deformation (no random draw is made then).

    Elastic part: independent normal displacements of standard deviation ``options.elastic_mm``
    at the ``options.elastic_grid``^3 control points. Scaling part (when ``options.dilate`` names
    structures of ``case``, placed in the frame by ``frame_to_ras``): each scaled by a factor
    drawn log-uniformly in ``options.dilate_range`` (:func:`structure_scaling_field`), on a
    :data:`DILATION_GRID`^3 field. The elastic part is shrunk when needed so that no displacement
    gradient exceeds 0.6 (0.5 without scaling), keeping the warp invertible."""
    if options.elastic_mm <= 0 and not options.dilate:
        return None
    grid = int(options.elastic_grid)
    if grid < 2:
        raise CardioInputError("elastic_grid", f"must be at least 2 control points per side, got {grid}")
    extent_mm = int(size) * float(spacing_mm)
    field = max(options.elastic_mm, 0.0) * torch.randn((3, grid, grid, grid), generator=generator)
    if not options.dilate:
        steepest = _steepest(field, extent_mm / (grid - 1))
        return FrameWarp.on_frame(field * min(1.0, 0.5 / steepest) if steepest > 0 else field, size, spacing_mm)
    low, high = options.dilate_range
    if not 0 < low <= high:
        raise CardioInputError("dilate_range", f"must be two factors 0 < low <= high, got {options.dilate_range}")
    if case is None or frame_to_ras is None:
        raise CardioInputError("dilate", "needs the case and its frame placement to find the structures")
    draws = torch.rand(len(options.dilate), generator=generator, dtype=torch.float64)
    scales = torch.exp(math.log(low) + (math.log(high) - math.log(low)) * draws)
    centres, radii = _structure_balls(case, options.dilate, frame_to_ras)
    present = radii > 0
    scaling = structure_scaling_field(centres[present], radii[present], scales[present], size, spacing_mm,
                                      DILATION_GRID)
    elastic = F.interpolate(field[None], size=(DILATION_GRID,) * 3, mode="trilinear", align_corners=True)[0]
    step_mm = extent_mm / (DILATION_GRID - 1)
    room = max(0.0, _MAX_WARP_GRADIENT - _steepest(scaling, step_mm))
    steepest = _steepest(elastic, step_mm)
    if steepest > room:
        elastic = elastic * (room / steepest)
    return FrameWarp.on_frame(elastic + scaling, size, spacing_mm)


def _sampling_grid(
    shape: Sequence[int], ijk_to_ras: np.ndarray, frame_to_ras: np.ndarray, size: int, spacing_mm: float,
    device: torch.device, warp: FrameWarp | None = None,
) -> torch.Tensor:
    """``grid_sample`` grid (1, size, size, size, 3) float32, (k, j, i) order, align_corners=True,
    of the frame voxel centres (moved by ``warp``) in a volume of ``shape`` with matrix ``ijk_to_ras``."""
    frame_to_ijk = np.linalg.inv(ijk_to_ras) @ frame_to_ras
    extent = np.maximum(np.asarray(shape, dtype=np.float64) - 1.0, 1.0)
    to_normalised = np.diag([*(2.0 / extent), 1.0])
    to_normalised[:3, 3] = -1.0
    if warp is not None:
        matrix = torch.as_tensor((to_normalised @ frame_to_ijk)[[2, 1, 0], :], dtype=torch.float32, device=device)
        points = frame_grid_points(size, spacing_mm).to(device)
        points = points + warp.displacement(points)
        return (points @ matrix[:, :3].T + matrix[:, 3])[None]
    half = (int(size) - 1) / 2.0
    grid_index_to_ijk = frame_to_ijk @ np.array([
        [spacing_mm, 0, 0, -half * spacing_mm], [0, spacing_mm, 0, -half * spacing_mm],
        [0, 0, spacing_mm, -half * spacing_mm], [0, 0, 0, 1.0]])
    matrix = (to_normalised @ grid_index_to_ijk)[[2, 1, 0], :]  # rows: normalised k, j, i
    m = torch.as_tensor(matrix, dtype=torch.float32, device=device)
    steps = torch.arange(int(size), dtype=torch.float32, device=device)
    grid = (m[:, 0] * steps[:, None, None, None] + m[:, 1] * steps[None, :, None, None]
            + m[:, 2] * steps[None, None, :, None] + m[:, 3])
    return grid[None]


def resample_to_frame(
    volume: torch.Tensor | np.ndarray, ijk_to_ras: np.ndarray, frame_to_ras: np.ndarray,
    size: int, spacing_mm: float, mode: str = "bilinear", warp: FrameWarp | None = None,
) -> torch.Tensor:
    """Sample a volume at the frame's voxel centres (each moved by ``warp`` when given).

    Args:
        volume: (I, J, K) array or tensor (any real dtype; a float32 input is not copied, others
            are converted to float32 once). The result is on its device.
        ijk_to_ras: (4, 4) voxel-to-RAS matrix of ``volume``, mm.
        frame_to_ras: (4, 4) frame-mm-to-RAS matrix.
        size, spacing_mm: the frame grid.
        mode: "bilinear" (trilinear; outside the volume takes the nearest edge value) or
            "nearest" (outside -> 0).

    Returns:
        (size, size, size) float32.

    Raises:
        VolumeError: volume not 3-D, a singular or non-finite matrix. CardioInputError: bad mode.
    """
    if mode not in ("bilinear", "nearest"):
        raise CardioInputError("mode", f"must be 'bilinear' or 'nearest', got {mode!r}")
    _checked_frame(size, spacing_mm)
    tensor = volume_tensor(volume, "volume")
    grid = _sampling_grid(tensor.shape, checked_matrix(ijk_to_ras, "ijk_to_ras"),
                          checked_matrix(frame_to_ras, "frame_to_ras"), size, spacing_mm, tensor.device, warp)
    source = tensor if tensor.dtype == torch.float32 else tensor.to(torch.float32)
    sampled = F.grid_sample(source[None, None], grid, mode=mode,
                            padding_mode="border" if mode == "bilinear" else "zeros", align_corners=True)
    return sampled[0, 0]


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    """(3, 3) rotation R_z @ R_y @ R_x for angles (3,) about the x, y and z axes."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_pose(
    generator: torch.Generator, centre_ras: np.ndarray, max_rotation_deg: float = 15.0,
    scale_range: tuple[float, float] = (0.9, 1.1), max_shift_mm: float = 20.0,
) -> np.ndarray:
    """A random frame placement: ``frame_to_ras`` (4, 4) float64.

    Rotation by angles uniform in [-max_rotation_deg, max_rotation_deg] about each axis
    (R_z R_y R_x), isotropic scale uniform in ``scale_range`` (frame mm -> RAS mm), frame origin at
    ``centre_ras`` (3,) mm plus a shift uniform in [-max_shift_mm, max_shift_mm]^3. All draws come
    from ``generator``.
    """
    draws = torch.rand(7, generator=generator, dtype=torch.float64).numpy()
    angles = np.radians(max_rotation_deg) * (2.0 * draws[:3] - 1.0)
    scale = scale_range[0] + (scale_range[1] - scale_range[0]) * draws[3]
    pose = np.eye(4)
    pose[:3, :3] = _rotation(angles) * scale
    pose[:3, 3] = np.asarray(centre_ras, dtype=np.float64).reshape(3) + max_shift_mm * (2.0 * draws[4:] - 1.0)
    return pose


def label_lookup(
    case: LabelCase, frame_to_ras: np.ndarray, warp: FrameWarp | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from frame points (N, 3) mm to the structure index minus one (N,) int64 there
    (-1 background or outside the map, ``s`` for structure ``s``), by the nearest voxel of
    ``case.index`` (at the warped point ``p + d(p)`` when ``warp`` is given); it runs on the
    points' device."""
    frame_to_ijk = np.linalg.inv(case.ijk_to_ras) @ checked_matrix(frame_to_ras, "frame_to_ras")
    on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def lookup(points: torch.Tensor) -> torch.Tensor:
        device = points.device
        if device not in on_device:
            on_device[device] = (torch.from_numpy(case.index).to(device),
                                 torch.tensor(case.index.shape, device=device),
                                 torch.as_tensor(frame_to_ijk, dtype=torch.float64, device=device))
        index, shape, matrix = on_device[device]
        moved = points.detach() if warp is None else points.detach() + warp.displacement(points.detach())
        ijk = torch.round(moved.double() @ matrix[:3, :3].T + matrix[:3, 3]).long()
        inside = ((ijk >= 0) & (ijk < shape)).all(dim=1)
        out = torch.full((points.shape[0],), -1, dtype=torch.int64, device=device)
        kept = ijk[inside]
        out[inside] = index[kept[:, 0], kept[:, 1], kept[:, 2]].long() - 1
        return out

    return lookup


# ---------------------------------------------------------------------------- intensities


def normalise_intensity(volume: torch.Tensor, low_pct: float = 0.5, high_pct: float = 99.5) -> torch.Tensor:
    """Map the ``low_pct`` and ``high_pct`` percentiles of a volume to 0 and 1, clipped to [0, 1].

    Percentiles are nearest-rank (``kthvalue``, several times faster than ``torch.quantile``); for
    volumes over 1e6 voxels they come from a fixed-seed random subset of 1e6 voxels. When the
    percentiles (nearly) coincide, e.g. a small object on a constant background, the minimum and
    maximum are used instead; a constant volume gives zeros.

    Args:
        volume: tensor of any shape, float.

    Returns:
        float32 tensor of the same shape, device and values in [0, 1].
    """
    if volume.numel() == 0:
        raise VolumeError("volume", "is empty")
    flat = volume.detach().reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE:
        picker = torch.Generator(device=flat.device).manual_seed(0)
        flat = flat[torch.randint(flat.numel(), (QUANTILE_SAMPLE,), generator=picker, device=flat.device)]
    flat = flat.float()
    low, high = (float(flat.kthvalue(1 + round(pct / 100.0 * (flat.numel() - 1))).values)
                 for pct in (low_pct, high_pct))
    minimum, maximum = (float(v) for v in torch.aminmax(volume.detach().float()))
    if not high - low > _MIN_PERCENTILE_SPAN * (maximum - minimum):
        low, high = minimum, maximum
    if not high > low:
        return torch.zeros(volume.shape, dtype=torch.float32, device=volume.device)
    return ((volume.float() - low) / (high - low)).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class SynthOptions:
    """Randomisation ranges of :func:`synthesize_image`.

    Attributes:
        supersample: images are synthesised at ``size * supersample`` then average-pooled
            (partial-volume effect).
        n_background_classes: random smooth tissue classes painted into the background.
        noise_std: range of the Gaussian noise standard deviation (intensities are in [0, 1]).
        bias_coefficient: Legendre coefficients of the log bias field (MONAI ``RandBiasField``,
            degree 3) are uniform in [-bias_coefficient, bias_coefficient].
        blur_sigma_vox: range of the Gaussian blur sigma per axis, voxels of the synthesis grid.
        thick_slice_prob: probability of averaging one random axis over 2..4 voxels and
            interpolating it back (thick slices, anisotropy).
        gamma: range of the gamma exponent (MONAI ``RandAdjustContrast``).
        flip_contrast_prob: probability of inverting the final image (1 - image).
        elastic_mm: standard deviation, mm, of the random smooth shape deformation
            (:func:`random_warp`); 0 keeps the label map's shape.
        elastic_grid: control points per side of that deformation over the frame cube.
        dilate: structures each scaled about its centroid by its own random factor (a local
            radial warp, :func:`structure_scaling_field`): a dilated or contracted chamber,
            as between end-systole and end-diastole or in a dilated ventricle, with the tissue
            around it pushed aside rather than thickened.
        dilate_range: range of those factors (radius, inside the structure), drawn
            log-uniformly; e.g. (0.85, 1.5) spans about 0.6x to 3.4x the chamber's volume.
        contrast: how label intensities are drawn (:data:`CONTRASTS`): ``"random"``, each label
            U(0, 1) independently (SynthSeg: any contrast, boundaries between labels of similar
            draws may vanish); ``"ct"``, contrast-enhanced cardiac CT (every blood pool bright at
            one level with small differences, myocardium darker, background dark to mid);
            ``"mr"``, bright-blood cine MR (bSSFP: blood pools bright, myocardium dark,
            background anywhere, fat bright). Structures whose name contains ``"myocardium"``
            are muscle, the others blood pools.
        short_axis_stack_prob: probability of showing the image only as a cine short-axis stack
            would (:class:`ShortAxisStack`: thick slices 8-20 mm apart across the LV long axis,
            interpolated back onto the grid); 0 draws nothing, so the other draws are unchanged.
    """

    supersample: int = 2
    n_background_classes: int = 4
    noise_std: tuple[float, float] = (0.0, 0.08)
    bias_coefficient: float = 0.4
    blur_sigma_vox: tuple[float, float] = (0.0, 1.2)
    thick_slice_prob: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    flip_contrast_prob: float = 0.0
    elastic_mm: float = 0.0
    elastic_grid: int = 5
    dilate: tuple[str, ...] = ()
    dilate_range: tuple[float, float] = (1.0, 1.0)
    contrast: str = "random"
    short_axis_stack_prob: float = 0.0


@dataclass(frozen=True)
class SynthSample:
    """One synthetic training example on the frame grid.

    Attributes:
        image: (size, size, size) float32 in [0, 1].
        index: (size, size, size) int64 structure index (nearest sampling of the label map).
        surfaces: per structure (N_s, 3) float32 boundary points, frame mm.
        frame_to_ras: (4, 4) float64 pose of the frame.
        case: the case name.
        warp: the shape deformation, or None (see :class:`FrameWarp`).
    """

    image: torch.Tensor
    index: torch.Tensor
    surfaces: tuple[torch.Tensor, ...]
    frame_to_ras: np.ndarray
    case: str
    warp: FrameWarp | None = None


#: Contrast models of :class:`SynthOptions`.
CONTRASTS = ("random", "ct", "mr")
# Per contrast model: (blood pool level range, spread of each pool about it, myocardium range,
# background range); intensities before bias, noise, gamma and normalisation.
_CONTRAST_RANGES = {
    "ct": ((0.65, 0.9), 0.06, (0.35, 0.5), (0.0, 0.6)),
    "mr": ((0.6, 0.9), 0.06, (0.1, 0.3), (0.0, 0.9)),
}


def is_muscle(structure: str) -> bool:
    """Whether a structure is drawn as myocardium by the ``"ct"`` and ``"mr"`` contrast models."""
    return "myocardium" in structure


def label_means(
    muscle: Sequence[bool], n_background: int, generator: torch.Generator, contrast: str = "random"
) -> torch.Tensor:
    """Mean intensity of every label of a synthetic image.

    Args:
        muscle: per structure, True for myocardium and False for a blood pool (used by the
            ``"ct"`` and ``"mr"`` models only).
        n_background: random background tissue classes.
        contrast: one of :data:`CONTRASTS` (see :class:`SynthOptions`).

    Returns:
        (1 + len(muscle) + n_background,) float32: index 0 background, ``s + 1`` structure ``s``,
        then the background classes.
    """
    n_labels = 1 + len(muscle) + n_background
    if contrast == "random":
        return torch.rand(n_labels, generator=generator)
    if contrast not in _CONTRAST_RANGES:
        raise CardioInputError("contrast", f"unknown contrast model {contrast!r}", f"choose one of {', '.join(CONTRASTS)}")
    blood, spread, myocardium, background = _CONTRAST_RANGES[contrast]
    level = _uniform(generator, *blood)
    means = torch.empty(n_labels)
    for s, muscular in enumerate(muscle):
        means[s + 1] = _uniform(generator, *myocardium) if muscular else level + _uniform(generator, -spread, spread)
    for label in [0, *range(1 + len(muscle), n_labels)]:
        means[label] = _uniform(generator, *background)
    return means


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _background_classes(shape: Sequence[int], n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """(D, H, W) int64 class 0..n_classes-1: argmax of ``n_classes`` smooth random fields (random
    coarse normals, trilinearly upsampled)."""
    coarse = int(torch.randint(_BACKGROUND_FIELD_SIZE[0], _BACKGROUND_FIELD_SIZE[1] + 1, (), generator=generator))
    fields = torch.randn((1, n_classes, coarse, coarse, coarse), generator=generator)
    fields = F.interpolate(fields, size=tuple(shape), mode="trilinear", align_corners=True)[0]
    best, classes = fields[0], torch.zeros(fields.shape[1:], dtype=torch.int64)
    for c in range(1, n_classes):  # ~5x faster than argmax over the leading dimension
        classes[fields[c] > best] = c
        best = torch.maximum(best, fields[c])
    return classes


def _thick_slices(image: torch.Tensor, axis: int, factor: int) -> torch.Tensor:
    """(D, H, W) image averaged over ``factor`` voxels along ``axis`` and linearly interpolated back."""
    reduced = list(image.shape)
    reduced[axis] = max(1, math.ceil(reduced[axis] / factor))
    coarse = F.interpolate(image[None, None], size=tuple(reduced), mode="area")
    return F.interpolate(coarse, size=tuple(image.shape), mode="trilinear", align_corners=False)[0, 0]


def synthesize_image(
    index: torch.Tensor, muscle: Sequence[bool], generator: torch.Generator, options: SynthOptions
) -> torch.Tensor:
    """A random CT/MR-like image of a structure index map.

    Steps: each label (structures and, when ``options.n_background_classes`` > 0, random smooth
    background classes replacing index 0) gets a mean intensity (:func:`label_means`, by
    ``options.contrast``) and a within-label
    standard deviation U(0, 0.05); then a bias field, blur, optional thick slices, Gaussian noise,
    gamma, percentile normalisation to [0, 1] (:func:`normalise_intensity`) and an optional
    contrast flip. Every random draw comes from ``generator`` (MONAI transforms get a numpy
    RandomState seeded from it), so a seed gives one image.

    Args:
        index: (D, H, W) int64 structure index, values in 0..len(muscle).
        muscle: per structure, whether it is myocardium (see :func:`label_means`).

    Returns:
        (D, H, W) float32 in [0, 1], on ``index``'s device (computed on the CPU).
    """
    n_structures = len(muscle)
    if index.ndim != 3:
        raise VolumeError("index", f"must be a 3-D structure index map, got shape {tuple(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) > n_structures):
        raise VolumeError("index", f"values must lie in 0..{n_structures}, got {int(index.min())}..{int(index.max())}")
    device = index.device
    labels = index.cpu()
    n_labels = n_structures + 1
    if options.n_background_classes > 0:
        classes = _background_classes(labels.shape, options.n_background_classes, generator)
        labels = torch.where(labels == 0, n_labels + classes, labels)
        n_labels += options.n_background_classes
    means = label_means(muscle, n_labels - 1 - n_structures, generator, options.contrast)
    stds = _WITHIN_LABEL_STD * torch.rand(n_labels, generator=generator)
    image = means[labels] + stds[labels] * torch.randn(labels.shape, generator=generator)

    random_state = np.random.RandomState(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
    c = options.bias_coefficient
    sigma = options.blur_sigma_vox
    bias = RandBiasField(degree=3, coeff_range=(-c, c), prob=1.0)
    blur = RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=1.0)
    for transform in (bias, blur):
        transform.set_random_state(state=random_state)
        image = convert_to_tensor(transform(image[None]), track_meta=False)[0]
    if float(torch.rand((), generator=generator)) < options.thick_slice_prob:
        axis = int(torch.randint(0, 3, (), generator=generator))
        image = _thick_slices(image, axis, int(torch.randint(2, 5, (), generator=generator)))
    noise = RandGaussianNoise(std=_uniform(generator, *options.noise_std), sample_std=False, prob=1.0)
    gamma = RandAdjustContrast(gamma=options.gamma, prob=1.0)
    for transform in (noise, gamma):
        transform.set_random_state(state=random_state)
        image = convert_to_tensor(transform(image[None]), track_meta=False)[0]
    image = normalise_intensity(image.float())
    if float(torch.rand((), generator=generator)) < options.flip_contrast_prob:
        image = 1.0 - image
    return image.to(device)


#: Ranges of :meth:`ShortAxisStack.draw`: slice spacing (centre to centre), slice thickness as a
#: share of the spacing (at most STACK_MAX_THICKNESS_MM), coverage on each side of the LV centre
#: along its axis, and the tilt of the stack from the LV long axis.
STACK_SPACING_MM = (8.0, 20.0)
STACK_THICKNESS_SHARE = (0.4, 1.0)
STACK_MAX_THICKNESS_MM = 10.0
STACK_HALF_COVERAGE_MM = (30.0, 65.0)
STACK_MAX_TILT_DEG = 20.0


def long_axis_in_frame(case: LabelCase, frame_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (3,) and unit long axis (3,) of the LV cavity in frame mm: the mean and the principal
    direction of its boundary points (of all structures' points when the case has no LV cavity)."""
    cavity = case.names.index("lv_cavity") if "lv_cavity" in case.names else -1
    points = case.surfaces[cavity] if cavity >= 0 and len(case.surfaces[cavity]) > 2 else np.concatenate(case.surfaces)
    ras_to_frame = np.linalg.inv(frame_to_ras)
    frame = points.astype(np.float64) @ ras_to_frame[:3, :3].T + ras_to_frame[:3, 3]
    centre = frame.mean(axis=0)
    _, _, axes = np.linalg.svd(frame - centre, full_matrices=False)
    return centre, axes[0]


@dataclass(frozen=True)
class ShortAxisStack:
    """A stack of parallel thick slices, and how an image looks once resampled from it.

    A cine short-axis study images slices ``spacing_mm`` apart across the LV long axis; resampled
    onto a grid (as :func:`image_to_frame` does), each point takes the linear blend of the two
    slices around it, and beyond the first and last slice the nearest one (border values).

    Attributes:
        normal: (3,) unit slice normal, frame axes.
        first_mm: position of the first slice along ``normal``, frame mm.
        spacing_mm: slice centre to centre; thickness_mm: each slice averages this much along
            the normal; n_slices: >= 2.
    """

    normal: np.ndarray
    first_mm: float
    spacing_mm: float
    thickness_mm: float
    n_slices: int

    @classmethod
    def draw(cls, generator: torch.Generator, centre: np.ndarray, axis: np.ndarray) -> ShortAxisStack:
        """A random stack across ``axis`` (3,) about ``centre`` (3,) frame mm (module ranges)."""
        u = torch.rand(8, generator=generator, dtype=torch.float64).numpy()
        spacing = STACK_SPACING_MM[0] + (STACK_SPACING_MM[1] - STACK_SPACING_MM[0]) * u[0]
        share = STACK_THICKNESS_SHARE[0] + (STACK_THICKNESS_SHARE[1] - STACK_THICKNESS_SHARE[0]) * u[1]
        below, above = (STACK_HALF_COVERAGE_MM[0] + (STACK_HALF_COVERAGE_MM[1] - STACK_HALF_COVERAGE_MM[0]) * v
                        for v in u[2:4])
        axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
        # Tilt about a random direction across the axis.
        helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
        across = np.cross(axis, helper)
        across /= np.linalg.norm(across)
        turn = 2.0 * np.pi * u[4]
        across = np.cos(turn) * across + np.sin(turn) * np.cross(axis, across)
        tilt = np.radians(STACK_MAX_TILT_DEG) * u[5]
        normal = np.cos(tilt) * axis + np.sin(tilt) * across
        first = float(np.asarray(centre) @ normal) - below + spacing * u[6]
        n_slices = max(2, int((below + above - spacing * u[6]) // spacing) + 1)
        return cls(normal, first, spacing, min(share * spacing, STACK_MAX_THICKNESS_MM), n_slices)

    def apply(self, image: torch.Tensor, spacing_mm: float) -> torch.Tensor:
        """The frame image (D, D, D) of voxel ``spacing_mm`` as seen through the stack, (D, D, D)
        float32 renormalised to [0, 1] (:func:`normalise_intensity`)."""
        size = image.shape[0]
        points = frame_grid_points(size, spacing_mm).to(image.device)
        normal = torch.as_tensor(self.normal, dtype=torch.float32, device=image.device)
        depth = points @ normal
        position = ((depth - self.first_mm) / self.spacing_mm).clamp(0, self.n_slices - 1)
        lower = position.floor().clamp(max=self.n_slices - 2)
        upper_weight = position - lower
        to_grid = 2.0 / ((size - 1) * spacing_mm)  # frame mm -> grid_sample's [-1, 1]
        seen = torch.zeros_like(image)
        offsets = (-self.thickness_mm / 3.0, 0.0, self.thickness_mm / 3.0)
        for slice_index, weight in ((lower, 1.0 - upper_weight), (lower + 1.0, upper_weight)):
            for offset in offsets:
                plane = self.first_mm + slice_index * self.spacing_mm + offset
                on_plane = points + (plane - depth)[..., None] * normal
                grid = (on_plane * to_grid).flip(-1)[None]  # (1, D, D, D, 3) in (k, j, i) order
                sampled = F.grid_sample(image[None, None], grid, mode="bilinear", padding_mode="border",
                                        align_corners=True)[0, 0]
                seen += weight * sampled / len(offsets)
        return normalise_intensity(seen)


def synthesize_sample(
    case: LabelCase, size: int, spacing_mm: float, generator: torch.Generator,
    options: SynthOptions = SynthOptions(), pose: np.ndarray | None = None,
) -> SynthSample:
    """A synthetic image of a case on the frame grid, with its index map and boundary points.

    The index map is sampled (nearest) on a grid ``options.supersample`` times finer, the image is
    synthesised there (:func:`synthesize_image`) and average-pooled to ``size``; the index map at
    ``size`` is sampled directly (nearest). With ``options.elastic_mm`` > 0 every frame point
    reads the label map through a random :class:`FrameWarp`. Surfaces are mapped to frame mm by
    the inverse pose and the inverse warp.

    Args:
        case: the prepared label map.
        size, spacing_mm: the frame grid (``size``^3 voxels of ``spacing_mm``).
        generator: source of every random draw.
        pose: (4, 4) frame_to_ras; default :func:`random_pose` about ``case.centre``.
    """
    _checked_frame(size, spacing_mm)
    frame_to_ras = random_pose(generator, case.centre) if pose is None else checked_matrix(pose, "pose")
    warp = random_warp(generator, size, spacing_mm, options, case, frame_to_ras)
    factor = max(1, int(options.supersample))
    fine = resample_to_frame(case.index, case.ijk_to_ras, frame_to_ras, size * factor, spacing_mm / factor,
                             mode="nearest", warp=warp).long()
    image = synthesize_image(fine, [is_muscle(n) for n in case.names], generator, options)
    if options.short_axis_stack_prob > 0 and float(torch.rand((), generator=generator)) < options.short_axis_stack_prob:
        centre, axis = long_axis_in_frame(case, frame_to_ras)
        image = ShortAxisStack.draw(generator, centre, axis).apply(image, spacing_mm / factor)
    if factor > 1:
        image = F.avg_pool3d(image[None, None], factor)[0, 0]
    index = resample_to_frame(case.index, case.ijk_to_ras, frame_to_ras, size, spacing_mm, mode="nearest",
                              warp=warp).long()
    ras_to_frame = np.linalg.inv(frame_to_ras)
    surfaces = tuple(torch.from_numpy((points @ ras_to_frame[:3, :3].T + ras_to_frame[:3, 3]).astype(np.float32))
                     for points in case.surfaces)
    if warp is not None:
        surfaces = tuple(warp.inverse(points) for points in surfaces)
    return SynthSample(image, index, surfaces, frame_to_ras, case.name, warp)


# ---------------------------------------------------------------------------- inference


def image_to_frame(
    volume: np.ndarray | torch.Tensor, ijk_to_ras: np.ndarray, size: int, spacing_mm: float,
    centre_ras: np.ndarray | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """A real CT/MR image on the network's frame (axes along RAS), normalised to [0, 1].

    Only the part of the volume the frame covers is read: that crop is converted to float32 (no
    copy for a float32 input), average-pooled by ``round(spacing_mm / voxel spacing)`` voxels
    along each axis finer than the frame (anti-aliasing), then sampled trilinearly and normalised
    (:func:`normalise_intensity`). Memory stays within about one float32 copy of the crop.

    Args:
        volume: (I, J, K) image, numpy or torch (its device is used).
        ijk_to_ras: (4, 4) voxel-to-RAS matrix, mm (oblique and anisotropic grids allowed).
        size, spacing_mm: the frame grid.
        centre_ras: (3,) frame origin in RAS mm; default the centre of the image's field of view
            (RAS of the middle voxel).

    Returns:
        image (size, size, size) float32 in [0, 1], and frame_to_ras (4, 4) float64 (a translation).

    Raises:
        VolumeError: volume not 3-D, a bad matrix. CardioInputError: a frame outside the image.
    """
    _checked_frame(size, spacing_mm)
    tensor = volume_tensor(volume, "volume")
    matrix = checked_matrix(ijk_to_ras, "ijk_to_ras")
    shape = np.array(tensor.shape)
    if centre_ras is None:
        centre = matrix[:3, :3] @ ((shape - 1) / 2.0) + matrix[:3, 3]
    else:
        centre = np.asarray(centre_ras, dtype=np.float64)
        if centre.shape != (3,) or not np.isfinite(centre).all():
            raise CardioInputError("centre_ras", f"must be three finite RAS coordinates in mm, got {centre_ras}")
    frame_to_ras = np.eye(4)
    frame_to_ras[:3, 3] = centre

    voxel_mm = np.linalg.norm(matrix[:3, :3], axis=0)
    pool = np.maximum(1, np.round(spacing_mm / voxel_mm)).astype(int)
    half = (int(size) / 2.0) * spacing_mm
    corners = np.array(np.meshgrid(*[[-half, half]] * 3, indexing="ij")).reshape(3, -1).T + centre
    corner_ijk = (corners - matrix[:3, 3]) @ np.linalg.inv(matrix[:3, :3]).T
    low = np.clip(np.floor(corner_ijk.min(axis=0)).astype(int) - pool, 0, shape)
    high = np.clip(np.ceil(corner_ijk.max(axis=0)).astype(int) + pool + 1, 0, shape)
    if (high - low < pool).any():
        raise CardioInputError("centre_ras", f"puts the {2 * half:.0f} mm frame outside the image",
                               "leave it out to centre the frame on the image")
    crop = tensor[tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))]
    crop = crop if crop.dtype == torch.float32 else crop.to(torch.float32)
    crop_matrix = shifted_matrix(matrix, low)
    if (pool > 1).any():
        crop = F.avg_pool3d(crop[None, None], tuple(int(p) for p in pool))[0, 0]
        crop_matrix[:3, 3] = crop_matrix[:3, :3] @ ((pool - 1) / 2.0) + crop_matrix[:3, 3]
        crop_matrix[:3, :3] = crop_matrix[:3, :3] * pool
    image = resample_to_frame(crop, crop_matrix, frame_to_ras, size, spacing_mm, mode="bilinear")
    return normalise_intensity(image), frame_to_ras
