"""Statistical shape-model quality: compactness, generalization and specificity, plus a PCA model.

Shapes are in point correspondence: a set is a tensor (N, V, 3) of N shapes with V corresponding
vertices in mm. The distance between two corresponding shapes is the **mean per-vertex
Euclidean distance** ``mean_v |x_v - y_v|`` in mm (no alignment is applied: align first).

- Compactness (Davies et al.): cumulative fraction of the total variance captured by the first
  m modes, for m = 1..K.
- Generalization (mm): how well a model built on training shapes reconstructs unseen shapes
  with its first m modes (mean over test shapes of the shape distance between each test shape
  and its reconstruction).
- Specificity (mm): how close generated shapes stay to real ones (mean over samples of the shape
  distance to the nearest training shape).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from cardiocore.errors import CardioInputError

ArrayLike = torch.Tensor | np.ndarray


def _as_shapes(shapes: ArrayLike, name: str, min_count: int = 1) -> torch.Tensor:
    """Validate a shape set (N, V, 3) and return it as a float tensor."""
    shapes_t = torch.as_tensor(shapes)
    if not torch.is_floating_point(shapes_t):
        shapes_t = shapes_t.to(torch.get_default_dtype())
    if shapes_t.dim() != 3 or shapes_t.shape[-1] != 3 or shapes_t.shape[1] == 0:
        raise CardioInputError(name, f"must have shape (N, V, 3) with V > 0, got {tuple(shapes_t.shape)}")
    if shapes_t.shape[0] < min_count:
        raise CardioInputError(name, f"needs at least {min_count} shapes, got {shapes_t.shape[0]}")
    if not bool(torch.isfinite(shapes_t).all()):
        raise CardioInputError(name, "has NaN or infinite coordinates")
    return shapes_t


def shape_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean per-vertex Euclidean distance between corresponding shapes (..., V, 3) -> (...), mm."""
    return torch.linalg.vector_norm(x - y, dim=-1).mean(dim=-1)


class ShapeModel(Protocol):
    """What :func:`generalization` needs from a fitted model."""

    def reconstruct(self, shapes: torch.Tensor, n_modes: int | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class PCAModel:
    """Linear (PCA) shape model ``x = mean + sum_k b_k components[k]``.

    Attributes:
        mean: mean shape (V, 3), mm.
        components: orthonormal modes (K, V, 3), unit norm over all 3V coordinates.
        variances: variance along each mode (K,), mm^2, descending.
    """

    mean: torch.Tensor
    components: torch.Tensor
    variances: torch.Tensor

    def _modes(self, n_modes: int | None) -> torch.Tensor:
        k = self.components.shape[0] if n_modes is None else n_modes
        if not 0 <= k <= self.components.shape[0]:
            raise CardioInputError("n_modes", f"must be in [0, {self.components.shape[0]}], got {k}")
        return self.components[:k].reshape(k, -1)

    def project(self, shapes: ArrayLike, n_modes: int | None = None) -> torch.Tensor:
        """Mode coefficients b (N, k) of shapes (N, V, 3), mm."""
        shapes_t = _as_shapes(shapes, "shapes").to(self.mean)
        modes = self._modes(n_modes)
        return (shapes_t - self.mean).flatten(1) @ modes.t()

    def reconstruct(self, shapes: ArrayLike, n_modes: int | None = None) -> torch.Tensor:
        """Project shapes (N, V, 3) onto the first ``n_modes`` modes (all if None) and back, mm."""
        coefficients = self.project(shapes, n_modes)
        modes = self._modes(n_modes)
        return self.mean + (coefficients @ modes).reshape(-1, *self.mean.shape)

    def sample(
        self, n: int, generator: torch.Generator | None = None, n_modes: int | None = None
    ) -> torch.Tensor:
        """Draw n shapes (n, V, 3) with coefficients b_k ~ N(0, variances[k]), mm."""
        modes = self._modes(n_modes)
        random_device = generator.device if generator is not None else self.mean.device
        z = torch.randn(n, modes.shape[0], generator=generator, dtype=self.mean.dtype,
                        device=random_device).to(self.mean.device)
        coefficients = z * self.variances[: modes.shape[0]].sqrt()
        return self.mean + (coefficients @ modes).reshape(n, *self.mean.shape)


def pca_fit(shapes: ArrayLike, n_modes: int | None = None) -> PCAModel:
    """Fit a PCA shape model to corresponding shapes with ``torch.linalg.svd``.

    Args:
        shapes: training shapes (N, V, 3), mm, N >= 2.
        n_modes: modes to keep (default: all N - 1 that can carry variance).

    Returns:
        :class:`PCAModel` with variances (sample variance, divisor N - 1) in mm^2.
    """
    shapes_t = _as_shapes(shapes, "shapes", min_count=2)
    n = shapes_t.shape[0]
    k = min(n - 1, shapes_t[0].numel()) if n_modes is None else n_modes
    if not 1 <= k <= min(n - 1, shapes_t[0].numel()):
        raise CardioInputError("n_modes", f"must be in [1, {min(n - 1, shapes_t[0].numel())}] "
                               f"for {n} shapes, got {n_modes}")
    mean = shapes_t.mean(dim=0)
    _, singular, vh = torch.linalg.svd((shapes_t - mean).flatten(1), full_matrices=False)
    return PCAModel(
        mean=mean,
        components=vh[:k].reshape(k, *mean.shape),
        variances=singular[:k] ** 2 / (n - 1),
    )


def compactness(eigenvalues: ArrayLike) -> torch.Tensor:
    """Cumulative fraction of total variance captured by the first m modes, m = 1..K.

    Args:
        eigenvalues: mode variances (K,), any order (sorted descending here), mm^2.

    Returns:
        (K,) non-decreasing fractions ending at 1.
    """
    values = torch.as_tensor(eigenvalues)
    if not torch.is_floating_point(values):
        values = values.to(torch.get_default_dtype())
    if values.dim() != 1 or values.numel() == 0 or bool((values < 0).any()) or values.sum() <= 0:
        raise CardioInputError("eigenvalues", "must be a non-empty 1-D set of non-negative variances "
                               "with a positive sum")
    ordered = values.sort(descending=True).values
    return ordered.cumsum(0) / ordered.sum()


def generalization(
    train: ArrayLike,
    test: ArrayLike,
    fit_fn: Callable[[torch.Tensor], ShapeModel] = pca_fit,
    modes: Sequence[int] = (1,),
) -> torch.Tensor:
    """Reconstruction error of held-out shapes by a model fitted on the training shapes.

    Args:
        train: training shapes (N, V, 3), mm.
        test: held-out shapes (T, V, 3), mm, not in ``train``.
        fit_fn: builds a model with ``reconstruct(shapes, n_modes)`` from training shapes
            (default :func:`pca_fit`).
        modes: numbers of modes m at which to evaluate.

    Returns:
        (len(modes),) mean per-vertex distance between each test shape and its reconstruction,
        averaged over test shapes, mm.
    """
    train_t = _as_shapes(train, "train", min_count=2)
    test_t = _as_shapes(test, "test").to(train_t)
    if test_t.shape[1] != train_t.shape[1]:
        raise CardioInputError("test", f"has {test_t.shape[1]} vertices per shape but train has "
                               f"{train_t.shape[1]}", "shapes must be in correspondence")
    model = fit_fn(train_t)
    errors = [shape_distance(model.reconstruct(test_t, n_modes=m), test_t).mean() for m in modes]
    return torch.stack(errors)


def specificity(samples: ArrayLike, train: ArrayLike, chunk_size: int = 64) -> torch.Tensor:
    """Mean distance from each generated shape to its nearest training shape.

    Args:
        samples: generated shapes (S, V, 3), mm.
        train: training shapes (N, V, 3), mm.
        chunk_size: samples compared at once (memory ``chunk_size x N x V`` floats).

    Returns:
        Scalar tensor: mean over samples of ``min_n mean_v |s_v - t_{n,v}|``, mm.
    """
    samples_t = _as_shapes(samples, "samples")
    train_t = _as_shapes(train, "train").to(samples_t)
    if samples_t.shape[1] != train_t.shape[1]:
        raise CardioInputError("samples", f"has {samples_t.shape[1]} vertices per shape but train "
                               f"has {train_t.shape[1]}", "shapes must be in correspondence")
    nearest = [
        shape_distance(block.unsqueeze(1), train_t.unsqueeze(0)).min(dim=1).values
        for block in samples_t.split(chunk_size)
    ]
    return torch.cat(nearest).mean()
