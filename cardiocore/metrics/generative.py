"""Generative-model metrics in the PointFlow convention: MMD, COV and 1-NNA.

All three are read from Chamfer distance matrices (:mod:`cardiocore.metrics.distance`: unsquared
symmetric mean nearest-neighbour distance in mm, on 2,048 surface points per shape) between a
set of generated shapes S and a set of reference shapes R of the same size:

- MMD (minimum matching distance, mm): ``mean_{r in R} min_{s in S} d(s, r)``; lower is better.
- COV (coverage, fraction in [0, 1]): the share of references that are the nearest reference of
  at least one sample; higher is better.
- 1-NNA (1-nearest-neighbour accuracy, fraction in [0, 1]): leave-one-out accuracy of a 1-NN
  classifier telling S from R in S u R. 0.5 is ideal (the sets are indistinguishable); 1.0 means
  fully separable sets; values well below 0.5 mean samples copy references (memorisation: a
  sample that *is* a reference has that reference as its unique nearest neighbour, so sets that
  are exact copies of each other score 0).

Ties in 1-NNA: when a point's nearest distance is attained by points of both classes, the
classifier cannot decide and the point scores 0.5 (the expected accuracy of a fair coin between
the two labels) instead of following an arbitrary index order; a collection of coincident
shapes therefore scores exactly 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cardiocore.errors import CardioInputError
from cardiocore.metrics.distance import ArrayLike, pairwise_chamfer


def _as_matrix(d: ArrayLike, name: str, square: bool = False) -> torch.Tensor:
    d_t = torch.as_tensor(d)
    if not torch.is_floating_point(d_t):
        d_t = d_t.to(torch.get_default_dtype())
    if d_t.dim() != 2 or d_t.numel() == 0:
        raise CardioInputError(name, f"must be a non-empty 2-D distance matrix, got {tuple(d_t.shape)}")
    if square and d_t.shape[0] != d_t.shape[1]:
        raise CardioInputError(name, f"must be square, got {tuple(d_t.shape)}")
    if bool(torch.isnan(d_t).any()):
        raise CardioInputError(name, "contains NaN distances")
    return d_t


def mmd(d_sr: ArrayLike) -> torch.Tensor:
    """Minimum matching distance ``mean_r min_s d_sr[s, r]``.

    Args:
        d_sr: distances (S, R) between samples (rows) and references (columns), mm.

    Returns:
        Scalar tensor in the units of ``d_sr`` (mm).
    """
    return _as_matrix(d_sr, "d_sr").min(dim=0).values.mean()


def coverage(d_sr: ArrayLike) -> torch.Tensor:
    """Coverage: fraction of references that are the nearest reference of some sample.

    Args:
        d_sr: distances (S, R) between samples (rows) and references (columns).

    Returns:
        Scalar tensor in [0, 1].
    """
    d = _as_matrix(d_sr, "d_sr")
    matched = torch.zeros(d.shape[1], dtype=torch.bool, device=d.device)
    matched[d.argmin(dim=1)] = True
    return matched.to(d.dtype).mean()


def one_nna(d_ss: ArrayLike, d_rr: ArrayLike, d_sr: ArrayLike) -> torch.Tensor:
    """Leave-one-out 1-nearest-neighbour accuracy of telling samples from references.

    Each shape of S u R is classified by the label of its nearest *other* shape; a point whose
    nearest distance is shared by both classes scores 0.5 (module docstring).

    Args:
        d_ss: distances (S, S) among samples.
        d_rr: distances (R, R) among references.
        d_sr: distances (S, R) samples vs references.

    Returns:
        Scalar tensor in [0, 1]; 0.5 is ideal.
    """
    ss = _as_matrix(d_ss, "d_ss", square=True)
    rr = _as_matrix(d_rr, "d_rr", square=True)
    sr = _as_matrix(d_sr, "d_sr")
    n_s, n_r = ss.shape[0], rr.shape[0]
    if sr.shape != (n_s, n_r):
        raise CardioInputError("d_sr", f"must have shape ({n_s}, {n_r}) to match d_ss and d_rr, "
                               f"got {tuple(sr.shape)}")
    if n_s + n_r < 2:
        raise CardioInputError("d_ss, d_rr", "1-NNA needs at least two shapes in total")
    rr, sr = rr.to(device=ss.device, dtype=ss.dtype), sr.to(device=ss.device, dtype=ss.dtype)
    full = torch.cat([torch.cat([ss, sr], dim=1), torch.cat([sr.t(), rr], dim=1)], dim=0)
    full.fill_diagonal_(float("inf"))
    is_sample = torch.cat([torch.ones(n_s, dtype=torch.bool), torch.zeros(n_r, dtype=torch.bool)])
    is_sample = is_sample.to(full.device)
    nearest = full == full.min(dim=1, keepdim=True).values  # (S+R, S+R) tied nearest neighbours
    same_label = is_sample.unsqueeze(0) == is_sample.unsqueeze(1)
    any_right = (nearest & same_label).any(dim=1).to(full.dtype)
    any_wrong = (nearest & ~same_label).any(dim=1).to(full.dtype)
    return (0.5 * (1.0 + any_right - any_wrong)).mean()


@dataclass(frozen=True)
class GenerativeMetrics:
    """PointFlow metrics of a generated set against a reference set (Chamfer, mm)."""

    mmd_mm: float
    coverage: float
    one_nna: float


def generative_metrics(
    samples: ArrayLike, references: ArrayLike, batch_size: int | None = None
) -> GenerativeMetrics:
    """MMD, COV and 1-NNA of sampled point clouds against reference point clouds.

    Args:
        samples: generated shapes as surface points (S, P, 3), mm (2,048 points by convention).
        references: reference shapes (R, P, 3), mm; PointFlow uses R == S.
        batch_size: pairs per block for :func:`pairwise_chamfer`.

    Returns:
        :class:`GenerativeMetrics` (MMD in mm, COV and 1-NNA as fractions).
    """
    return generative_metrics_per_set([samples], references, batch_size)[0]


def generative_metrics_per_set(
    sample_sets: list[ArrayLike], references: ArrayLike, batch_size: int | None = None
) -> list[GenerativeMetrics]:
    """:func:`generative_metrics` of several sample sets (each (S_k, P, 3), mm) against one
    reference set (R, P, 3), mm; the reference-to-reference distances are computed once."""
    d_rr = pairwise_chamfer(references, references, batch_size=batch_size)
    results = []
    for samples in sample_sets:
        d_ss = pairwise_chamfer(samples, samples, batch_size=batch_size)
        d_sr = pairwise_chamfer(samples, references, batch_size=batch_size)
        results.append(GenerativeMetrics(
            mmd_mm=float(mmd(d_sr)), coverage=float(coverage(d_sr)), one_nna=float(one_nna(d_ss, d_rr, d_sr))))
    return results
