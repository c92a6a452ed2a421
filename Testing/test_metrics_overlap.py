"""Dice, Jaccard, HD95 and ASSD of binary masks against hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

from cardiocore.errors import CardioInputError
from cardiocore.metrics.overlap import assd, dice, hd95, jaccard

SPACING = (2.0, 1.0, 0.5)


def cube(corner: tuple[int, int, int], size: int, shape: tuple[int, int, int] = (8, 8, 8)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    i, j, k = corner
    mask[i : i + size, j : j + size, k : k + size] = True
    return mask


def test_two_voxel_cubes_offset_by_one_voxel() -> None:
    # 2x2x2 cubes, the second shifted one voxel along I: 4 voxels overlap of 8 + 8.
    a, b = cube((1, 1, 1), 2), cube((2, 1, 1), 2)
    assert dice(a, b) == pytest.approx(2 * 4 / 16)
    assert jaccard(a, b) == pytest.approx(4 / 12)
    # Every voxel is a surface voxel; per mask, 4 lie on the other mask (0 mm) and 4 are one
    # I-step away (2 mm with SPACING): the 95th percentile is 2 mm, the mean 1 mm.
    assert hd95(a, b, spacing=SPACING) == pytest.approx(2.0)
    assert assd(a, b, spacing=SPACING) == pytest.approx(1.0)
    # The same shift along K is worth 0.5 mm.
    c = cube((1, 1, 2), 2)
    assert hd95(a, c, spacing=SPACING) == pytest.approx(0.5)
    assert assd(a, c, spacing=SPACING) == pytest.approx(0.25)


def test_single_voxels_three_steps_apart() -> None:
    a, b = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    a[2, 2, 1], b[2, 2, 4] = True, True
    assert dice(a, b) == 0.0 and jaccard(a, b) == 0.0
    assert hd95(a, b, spacing=SPACING) == pytest.approx(1.5)
    assert assd(a, b, spacing=SPACING) == pytest.approx(1.5)


def reference_surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]
) -> tuple[float, float]:
    """HD95 and ASSD from explicit surface voxels (6-connected erosion) and a KD-tree."""
    surface = lambda m: np.argwhere(m & ~binary_erosion(m)) * np.asarray(spacing)  # noqa: E731
    sa, sb = surface(a), surface(b)
    d_ab, d_ba = cKDTree(sb).query(sa)[0], cKDTree(sa).query(sb)[0]
    return max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)), np.concatenate([d_ab, d_ba]).mean()


def test_offset_cubes_match_explicit_surface_distances() -> None:
    a, b = cube((2, 2, 2), 8, (16, 16, 16)), cube((4, 3, 2), 8, (16, 16, 16))
    assert dice(a, b) == pytest.approx(2 * (6 * 7 * 8) / (2 * 512))
    assert jaccard(a, b) == pytest.approx(6 * 7 * 8 / (2 * 512 - 6 * 7 * 8))
    expected_hd95, expected_assd = reference_surface_distances(a, b, SPACING)
    assert hd95(a, b, spacing=SPACING) == pytest.approx(expected_hd95, rel=1e-6)
    assert assd(torch.as_tensor(a), torch.as_tensor(b).to(torch.uint8), spacing=SPACING) == pytest.approx(
        expected_assd, rel=1e-6
    )


def test_empty_masks_have_documented_values() -> None:
    empty, full = np.zeros((4, 4, 4), bool), cube((1, 1, 1), 2, (4, 4, 4))
    assert (dice(empty, empty), jaccard(empty, empty)) == (1.0, 1.0)
    assert (hd95(empty, empty), assd(empty, empty)) == (0.0, 0.0)
    assert (dice(empty, full), jaccard(full, empty)) == (0.0, 0.0)
    assert math.isinf(hd95(empty, full)) and math.isinf(assd(full, empty))


def test_bad_masks_raise() -> None:
    with pytest.raises(CardioInputError, match="differ in shape"):
        dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(CardioInputError, match="binary"):
        dice(np.full((4, 4, 4), 2), np.zeros((4, 4, 4)))
    with pytest.raises(CardioInputError, match="spacing"):
        hd95(cube((1, 1, 1), 2), cube((1, 1, 1), 2), spacing=(1.0, 0.0, 1.0))
