"""Chamfer / Hausdorff distances and the PointFlow generative metrics against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.primitives import icosphere
from cardiocore.metrics.distance import (
    chamfer_distance,
    hausdorff_distance,
    mesh_chamfer,
    nearest_neighbour_distance,
    padded_chamfer,
    pairwise_chamfer,
)
from cardiocore.metrics.generative import (
    coverage,
    generative_metrics,
    generative_metrics_per_set,
    mmd,
    one_nna,
)

METHODS = ["brute", "kdtree"]


def unit_directions(n: int, seed: int = 0) -> torch.Tensor:
    """n random unit vectors (n, 3), float64."""
    directions = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return directions / directions.norm(dim=1, keepdim=True)


def dense_reference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Chamfer and Hausdorff from the full float64 distance matrix."""
    d = torch.cdist(a.double(), b.double())
    d_ab, d_ba = d.min(dim=1).values, d.min(dim=0).values
    return float(0.5 * (d_ab.mean() + d_ba.mean())), float(torch.maximum(d_ab.max(), d_ba.max()))


@pytest.mark.parametrize("method", METHODS)
def test_concentric_spheres_on_shared_directions_are_radius_gap_apart(method: str) -> None:
    directions = unit_directions(1500)
    inner, outer = 10.0 * directions, 12.5 * directions
    assert chamfer_distance(inner, outer, method=method).item() == pytest.approx(2.5, abs=1e-9)
    assert hausdorff_distance(inner, outer, method=method).item() == pytest.approx(2.5, abs=1e-9)


def test_independently_sampled_concentric_spheres_approach_radius_gap() -> None:
    inner, outer = 20.0 * unit_directions(8000, seed=1), 23.0 * unit_directions(8000, seed=2)
    value = chamfer_distance(inner.float(), outer.float()).item()
    # Nearest neighbours are slightly off-radial: the tangential spacing (~0.5 mm) adds a few %.
    assert 3.0 <= value < 3.0 * 1.05


@pytest.mark.parametrize("method", METHODS)
def test_identical_sets_are_zero_apart_even_far_from_origin(method: str) -> None:
    points = (torch.rand(3000, 3, generator=torch.Generator().manual_seed(3)) * 50 + 500).float()
    assert chamfer_distance(points, points.clone(), method=method).item() == 0.0
    assert hausdorff_distance(points, points.clone(), method=method).item() == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_hand_computed_hausdorff_and_chamfer(method: str) -> None:
    a = torch.tensor([[0.0, 0, 0], [1, 0, 0]])
    b = torch.tensor([[0.0, 0, 0], [0, 3, 0], [5, 0, 0]])
    # a -> b: 0, 1 (mean 1/2, max 1); b -> a: 0, 3, 4 (mean 7/3, max 4).
    assert hausdorff_distance(a, b, method=method).item() == pytest.approx(4.0)
    assert chamfer_distance(a, b, method=method).item() == pytest.approx(0.5 * (0.5 + 7 / 3))
    assert nearest_neighbour_distance(b, a, method=method).tolist() == pytest.approx([0.0, 3.0, 4.0])


@pytest.mark.parametrize("method", METHODS)
def test_chunked_search_matches_dense_matrix(method: str) -> None:
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(1001, 3, generator=gen) * 40, torch.randn(777, 3, generator=gen) * 40
    chamfer_ref, hausdorff_ref = dense_reference(a, b)
    assert chamfer_distance(a, b, chunk_size=64, method=method).item() == pytest.approx(chamfer_ref, rel=1e-5)
    hausdorff = hausdorff_distance(a, b, chunk_size=100, method=method).item()
    assert hausdorff == pytest.approx(hausdorff_ref, rel=1e-5)
    nn = nearest_neighbour_distance(a, b, chunk_size=13, method=method)
    assert torch.allclose(nn.double(), torch.cdist(a.double(), b.double()).min(dim=1).values, rtol=1e-5)


def test_chamfer_accepts_numpy_and_is_differentiable() -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    b = np.random.default_rng(0).normal(size=(150, 3))
    a_var = a.clone().requires_grad_()
    chamfer_distance(a_var, b, method="brute").backward()
    assert a_var.grad is not None and bool(torch.isfinite(a_var.grad).all())
    assert float(a_var.grad.abs().sum()) > 0


def test_bad_point_sets_raise() -> None:
    with pytest.raises(CardioInputError, match="a: must have shape"):
        chamfer_distance(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(CardioInputError, match="b: is empty"):
        chamfer_distance(torch.zeros(5, 3), torch.zeros(0, 3))
    with pytest.raises(CardioInputError, match="NaN"):
        chamfer_distance(torch.full((5, 3), float("nan")), torch.zeros(5, 3))
    with pytest.raises(CardioInputError, match="method"):
        chamfer_distance(torch.zeros(5, 3), torch.zeros(5, 3), method="magic")


def test_mesh_chamfer_of_concentric_icospheres() -> None:
    inner, outer = icosphere(4, radius=10.0), icosphere(4, radius=11.0)
    value = mesh_chamfer(*inner, *outer, generator=torch.Generator().manual_seed(6)).item()
    assert 1.0 <= value < 1.1
    # Two independent 2,048-point samplings of one sphere: about half the point spacing apart.
    assert mesh_chamfer(*inner, *inner).item() < 0.5


@pytest.mark.parametrize("method", ["brute", "kdtree"])
def test_pairwise_chamfer_equals_loop(method: str) -> None:
    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(5, 120, 3, generator=gen) * 10, torch.randn(4, 90, 3, generator=gen) * 10
    loop = torch.tensor([[chamfer_distance(x, y).item() for y in b] for x in a])
    result = pairwise_chamfer(a, b, batch_size=3, method=method)
    assert result.shape == (5, 4)
    assert torch.allclose(result, loop, rtol=1e-5)


@pytest.mark.parametrize("method", ["brute", "kdtree"])
def test_a_set_against_itself_is_symmetric_and_matches_a_copy(method: str) -> None:
    """The KD-tree path computes one pass for ``a`` against itself; the result equals the full
    computation against a copy."""
    a = torch.randn(6, 100, 3, generator=torch.Generator().manual_seed(9)) * 10
    itself = pairwise_chamfer(a, a, method=method)
    assert torch.allclose(itself, pairwise_chamfer(a, a.clone(), method=method), rtol=1e-6)
    assert torch.equal(itself, itself.T) and float(itself.diagonal().abs().max()) == 0.0


# --- generative metrics -------------------------------------------------------------------


def sphere_shapes(radii: torch.Tensor, n_points: int = 64) -> torch.Tensor:
    """Spheres on shared directions: their Chamfer distance is exactly the radius gap."""
    return radii.view(-1, 1, 1) * unit_directions(n_points, seed=8).unsqueeze(0)


def test_mmd_and_coverage_hand_case() -> None:
    d_sr = torch.tensor([[1.0, 5.0, 9.0], [2.0, 6.0, 8.0]])
    assert mmd(d_sr).item() == pytest.approx((1 + 5 + 8) / 3)
    assert coverage(d_sr).item() == pytest.approx(1 / 3)
    assert coverage(torch.tensor([[0.0, 1.0], [1.0, 0.0]])).item() == 1.0


def test_one_nna_hand_case_and_ties() -> None:
    # Samples at 0 and 1, references at 10 and 11 on a line: perfectly separable.
    pos_s, pos_r = torch.tensor([0.0, 1.0]), torch.tensor([10.0, 11.0])
    d = lambda x, y: (x[:, None] - y[None, :]).abs()  # noqa: E731
    assert one_nna(d(pos_s, pos_s), d(pos_r, pos_r), d(pos_s, pos_r)).item() == 1.0
    # Every shape coincides: every nearest distance ties across the classes.
    zeros = torch.zeros(3, 3)
    assert one_nna(zeros, zeros, zeros).item() == pytest.approx(0.5)


def test_one_nna_same_distribution_disjoint_and_copies() -> None:
    gen = torch.Generator().manual_seed(9)
    samples = sphere_shapes(10 + torch.rand(60, generator=gen, dtype=torch.float64), n_points=32)
    references = sphere_shapes(10 + torch.rand(60, generator=gen, dtype=torch.float64), n_points=32)
    same = generative_metrics(samples, references)
    # Two draws of 60 from one distribution: 1-NNA scatters about 0.5 with a s.d. of ~0.05.
    assert same.one_nna == pytest.approx(0.5, abs=0.12)
    assert same.coverage > 0.4 and same.mmd_mm < 0.05

    far = generative_metrics(samples, references + 100.0)
    assert far.one_nna == 1.0
    assert far.mmd_mm > 99.0

    copies = generative_metrics(references.clone(), references)
    assert copies.one_nna == 0.0  # memorisation: each sample's unique nearest shape is its twin
    assert copies.coverage == 1.0 and copies.mmd_mm == 0.0


def test_one_nna_rejects_mismatched_matrices() -> None:
    with pytest.raises(CardioInputError, match="d_sr"):
        one_nna(torch.zeros(2, 2), torch.zeros(3, 3), torch.zeros(3, 2))


def test_metrics_per_set_equal_one_set_at_a_time() -> None:
    gen = torch.Generator().manual_seed(12)
    references = sphere_shapes(10 + torch.rand(12, generator=gen, dtype=torch.float64))
    sets = [sphere_shapes(10 + k + torch.rand(12, generator=gen, dtype=torch.float64)) for k in (0.0, 0.6)]
    per_set = generative_metrics_per_set(sets, references)
    assert per_set == [generative_metrics(s, references) for s in sets]
    assert per_set[0].one_nna < per_set[1].one_nna  # the shifted set is easier to tell apart


def test_generative_metrics_on_radius_distributions() -> None:
    gen = torch.Generator().manual_seed(10)
    references = sphere_shapes(10 + torch.rand(40, generator=gen, dtype=torch.float64))
    shifted = sphere_shapes(10.5 + torch.rand(40, generator=gen, dtype=torch.float64))
    result = generative_metrics(shifted, references)
    d_sr = (shifted[:, :1].norm(dim=-1) - references[:, :1].norm(dim=-1).t()).abs()
    assert result.mmd_mm == pytest.approx(float(d_sr.min(dim=0).values.mean()), rel=1e-6)
    assert 0.5 < result.one_nna < 1.0
    assert math.isfinite(result.coverage)


@pytest.mark.cuda
def test_cuda_paths_match_cpu() -> None:
    gen = torch.Generator().manual_seed(11)
    a, b = torch.randn(3000, 3, generator=gen) * 30, torch.randn(2000, 3, generator=gen) * 30
    cpu = chamfer_distance(a, b).item()
    assert chamfer_distance(a.cuda(), b.cuda(), chunk_size=512).item() == pytest.approx(cpu, rel=1e-5)
    assert hausdorff_distance(a.cuda(), b).item() == pytest.approx(hausdorff_distance(a, b).item(), rel=1e-5)
    shapes_a, shapes_b = torch.randn(6, 256, 3, generator=gen), torch.randn(5, 200, 3, generator=gen)
    on_gpu = pairwise_chamfer(shapes_a.cuda(), shapes_b.cuda(), batch_size=4)
    assert on_gpu.is_cuda
    assert torch.allclose(on_gpu.cpu(), pairwise_chamfer(shapes_a, shapes_b), rtol=1e-5)


def test_padded_chamfer_gives_each_pair_of_sets_its_own_chamfer() -> None:
    """Sets of different sizes padded to one: the padding changes neither the symmetric nor the
    one-sided distance, nor the gradient reaching the real points."""
    generator = torch.Generator().manual_seed(7)
    sets_a = [10.0 * torch.randn(n, 3, generator=generator, dtype=torch.float64) + k for k, n in enumerate((50, 80, 30))]
    sets_b = [10.0 * torch.randn(n, 3, generator=generator, dtype=torch.float64) + k for k, n in enumerate((100, 40, 70))]

    def padded(sets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(x.shape[0] for x in sets)
        return (torch.stack([torch.cat([x, x[:1].expand(width - x.shape[0], 3)]) for x in sets]),
                torch.stack([torch.arange(width) < x.shape[0] for x in sets]))

    (a, a_valid), (b, b_valid) = padded(sets_a), padded(sets_b)
    a.requires_grad_()
    symmetric = padded_chamfer(a, a_valid, b, b_valid)
    expected = torch.stack([chamfer_distance(x, y, method="brute") for x, y in zip(sets_a, sets_b, strict=True)])
    torch.testing.assert_close(symmetric, expected, rtol=0, atol=1e-12)
    one_sided = padded_chamfer(a, a_valid, b, b_valid, one_sided=True)
    expected_one_sided = torch.stack([nearest_neighbour_distance(y, x, method="brute").mean()
                                      for x, y in zip(sets_a, sets_b, strict=True)])
    torch.testing.assert_close(one_sided, expected_one_sided, rtol=0, atol=1e-12)
    symmetric.sum().backward()
    leaves = [x.clone().requires_grad_() for x in sets_a]
    torch.stack([chamfer_distance(x, y, method="brute") for x, y in zip(leaves, sets_b, strict=True)]).sum().backward()
    for k, leaf in enumerate(leaves):
        torch.testing.assert_close(a.grad[k, : leaf.shape[0]], leaf.grad, rtol=0, atol=1e-12)
        assert bool((a.grad[k, leaf.shape[0]:] == 0).all())  # padding rows get no gradient
    with pytest.raises(CardioInputError, match="padded_chamfer"):
        padded_chamfer(a, a_valid[:, :5], b, b_valid)
