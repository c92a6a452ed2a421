"""PCA shape model, compactness, generalization and specificity on a synthetic set of known rank."""

from __future__ import annotations

import pytest
import torch

from cardiocore.errors import CardioInputError
from cardiocore.metrics.shape_model import compactness, generalization, pca_fit, specificity

N_VERTS = 40
MODE_STD = torch.tensor([6.0, 3.0, 1.0], dtype=torch.float64)  # rank-3 population, mm


def synthetic_population(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shapes (n, V, 3) = mean + coefficients @ modes with three orthonormal modes."""
    gen = torch.Generator().manual_seed(0)  # the same mean and modes for every draw
    mean = 20.0 * torch.randn(N_VERTS, 3, generator=gen, dtype=torch.float64)
    modes = torch.linalg.qr(torch.randn(3 * N_VERTS, 3, generator=gen, dtype=torch.float64))[0].t()
    coefficients = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    coefficients = coefficients * MODE_STD
    return mean + (coefficients @ modes).reshape(n, N_VERTS, 3), modes, coefficients


def test_pca_recovers_rank_and_variances() -> None:
    shapes, modes, coefficients = synthetic_population(60, seed=1)
    model = pca_fit(shapes)
    assert model.components.shape == (59, N_VERTS, 3)
    assert torch.allclose(model.variances[3:], torch.zeros(56, dtype=torch.float64), atol=1e-12)
    centred = coefficients - coefficients.mean(dim=0)
    sample_cov_eigs = torch.linalg.eigvalsh(centred.t() @ centred / 59).flip(0)
    assert torch.allclose(model.variances[:3], sample_cov_eigs, rtol=1e-8)
    # The first three modes span the generating subspace.
    principal = model.components[:3].reshape(3, -1)
    assert torch.allclose(principal @ modes.t() @ modes, principal, atol=1e-8)
    assert torch.allclose(model.reconstruct(shapes), shapes, atol=1e-8)


def test_compactness_reaches_one_at_the_true_rank() -> None:
    curve = compactness(pca_fit(synthetic_population(60, seed=2)[0]).variances)
    assert curve[0] < curve[1] < 1.0 - 1e-6
    assert curve[2].item() == pytest.approx(1.0, abs=1e-12)
    assert compactness(torch.tensor([1.0, 3.0])).tolist() == pytest.approx([0.75, 1.0])
    with pytest.raises(CardioInputError, match="eigenvalues"):
        compactness(torch.tensor([-1.0, 2.0]))


def test_generalization_falls_to_zero_with_enough_modes() -> None:
    train, test = synthetic_population(30, seed=3)[0], synthetic_population(10, seed=4)[0]
    errors = generalization(train, test, modes=[1, 2, 3, 5])
    assert errors[0] > errors[1] > errors[2]
    assert errors[2].item() == pytest.approx(0.0, abs=1e-8)
    assert errors[3].item() == pytest.approx(0.0, abs=1e-8)
    # With one mode the residual is the unexplained modes 2 and 3: of the order of their std.
    assert 0.2 < errors[0].item() < 3.0 * (MODE_STD[1:] ** 2).sum().sqrt().item()


def test_specificity_hand_cases() -> None:
    train = synthetic_population(20, seed=5)[0]
    assert specificity(train, train).item() == pytest.approx(0.0, abs=1e-12)
    # Training shapes: every vertex at the origin, or every vertex at (10, 0, 0). Samples at
    # (3, 0, 0) and (0, 4, 0) are 3 and 4 mm from the first: specificity 3.5 mm.
    points = lambda x, y: torch.tensor([x, y, 0.0]).expand(5, 3)  # noqa: E731
    hand_train = torch.stack([points(0, 0), points(10, 0)])
    hand_samples = torch.stack([points(3, 0), points(0, 4)])
    assert specificity(hand_samples, hand_train, chunk_size=1).item() == pytest.approx(3.5)
    model = pca_fit(train)
    samples = model.sample(50, generator=torch.Generator().manual_seed(6))
    assert samples.shape == (50, N_VERTS, 3)
    assert 0.0 < specificity(samples, train).item() < 15.0
    again = model.sample(50, generator=torch.Generator().manual_seed(6))
    assert torch.equal(samples, again)


def test_bad_shape_sets_raise() -> None:
    with pytest.raises(CardioInputError, match="at least 2 shapes"):
        pca_fit(torch.zeros(1, 5, 3))
    with pytest.raises(CardioInputError, match="correspondence"):
        specificity(torch.zeros(2, 5, 3), torch.zeros(2, 6, 3))
    with pytest.raises(CardioInputError, match="n_modes"):
        pca_fit(torch.randn(4, 5, 3), n_modes=4)
