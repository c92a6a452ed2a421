"""Overlap and surface-distance metrics of binary segmentation masks (MONAI-backed).

Masks are (I, J, K) arrays (numpy or torch; bool or 0/1) on the same voxel grid; ``spacing`` is
the voxel size along I, J, K in mm. Surface distances follow MONAI: the surface of a mask is
its voxels that touch the background (6-connectivity erosion), distances run between voxel
centres scaled by ``spacing``.

- Dice = 2|A n B| / (|A| + |B|); Jaccard = |A n B| / |A u B| (fractions in [0, 1]).
- HD95 (mm): symmetric 95th-percentile Hausdorff distance, i.e. the larger of the two directed
  95th percentiles of surface-to-surface distances (MONAI ``compute_hausdorff_distance``).
- ASSD (mm): average symmetric surface distance, the mean over the surface voxels of both masks
  of the distance to the other mask's surface.

Empty masks are handled explicitly (no NaN, no warning): two empty masks agree perfectly
(Dice = Jaccard = 1, HD95 = ASSD = 0); one empty and one non-empty mask give
Dice = Jaccard = 0 and HD95 = ASSD = +inf.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)

from cardiocore.errors import CardioInputError

ArrayLike = torch.Tensor | np.ndarray
Spacing = Sequence[float] | float


def _as_mask_pair(pred: ArrayLike, target: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two (I, J, K) masks and return them as (1, 1, I, J, K) float tensors on one device."""
    masks = []
    for name, mask in (("pred", pred), ("target", target)):
        mask_t = torch.as_tensor(mask)
        if mask_t.dim() != 3:
            raise CardioInputError(name, f"mask must have shape (I, J, K), got {tuple(mask_t.shape)}")
        if mask_t.dtype != torch.bool and bool(((mask_t != 0) & (mask_t != 1)).any()):
            raise CardioInputError(name, "mask must be binary (bool or 0/1)",
                                   "threshold or select one label first")
        masks.append(mask_t)
    if masks[0].shape != masks[1].shape:
        raise CardioInputError("pred, target", f"masks differ in shape: {tuple(masks[0].shape)} "
                               f"vs {tuple(masks[1].shape)}", "resample them to one grid first")
    pred_t = masks[0].to(torch.float32)[None, None]
    target_t = masks[1].to(device=pred_t.device, dtype=torch.float32)[None, None]
    return pred_t, target_t


def _as_spacing(spacing: Spacing) -> tuple[float, float, float]:
    values = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise CardioInputError("spacing", f"must be three positive voxel sizes in mm, got {spacing}")
    return values


def _empty_case(pred: torch.Tensor, target: torch.Tensor, both: float, one: float) -> float | None:
    """The documented value when either mask is empty, else None."""
    pred_empty, target_empty = not bool(pred.any()), not bool(target.any())
    if pred_empty and target_empty:
        return both
    if pred_empty or target_empty:
        return one
    return None


def _monai_surface_metric(metric: Callable[..., torch.Tensor], *args: object, **kwargs: object) -> float:
    """Call a MONAI surface metric, silencing the deprecation warning MONAI >= 1.5 raises against
    its own internal ``get_mask_edges(always_return_as_numpy=...)`` call (nothing a caller can fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        return float(metric(*args, **kwargs))


def dice(pred: ArrayLike, target: ArrayLike) -> float:
    """Dice coefficient 2|A n B| / (|A| + |B|) of two binary masks (I, J, K); 1 if both empty."""
    pred_t, target_t = _as_mask_pair(pred, target)
    empty = _empty_case(pred_t, target_t, both=1.0, one=0.0)
    return empty if empty is not None else float(compute_dice(pred_t, target_t))


def jaccard(pred: ArrayLike, target: ArrayLike) -> float:
    """Jaccard index (IoU) |A n B| / |A u B| of two binary masks (I, J, K); 1 if both empty."""
    pred_t, target_t = _as_mask_pair(pred, target)
    empty = _empty_case(pred_t, target_t, both=1.0, one=0.0)
    return empty if empty is not None else float(compute_iou(pred_t, target_t))


def _surface_distance(metric: Callable[..., Any], pred: ArrayLike, target: ArrayLike, spacing: Spacing, **options: Any) -> float:
    """A MONAI surface-distance metric in mm, with the empty-mask cases decided first (0 / +inf)."""
    pred_t, target_t = _as_mask_pair(pred, target)
    empty = _empty_case(pred_t, target_t, both=0.0, one=float("inf"))
    if empty is not None:
        return empty
    return _monai_surface_metric(metric, pred_t, target_t, include_background=True, spacing=_as_spacing(spacing), **options)


def hd95(pred: ArrayLike, target: ArrayLike, spacing: Spacing = 1.0) -> float:
    """Symmetric 95th-percentile Hausdorff distance between mask surfaces, mm.

    Args:
        pred, target: binary masks (I, J, K).
        spacing: voxel size (sI, sJ, sK) in mm, or one number for isotropic voxels.

    Returns:
        Distance in mm; 0 if both masks are empty, +inf if exactly one is.
    """
    return _surface_distance(compute_hausdorff_distance, pred, target, spacing, percentile=95)


def assd(pred: ArrayLike, target: ArrayLike, spacing: Spacing = 1.0) -> float:
    """Average symmetric surface distance between mask surfaces, mm.

    Args:
        pred, target: binary masks (I, J, K).
        spacing: voxel size (sI, sJ, sK) in mm, or one number for isotropic voxels.

    Returns:
        Distance in mm; 0 if both masks are empty, +inf if exactly one is.
    """
    return _surface_distance(compute_average_surface_distance, pred, target, spacing, symmetric=True)
