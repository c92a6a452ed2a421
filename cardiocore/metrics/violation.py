"""Anatomical violation rates between two structures A and B (e.g. cardiac chambers).

Two rules say what a violation is:

- ``"disjoint"``: A and B must not overlap (two chambers, or a chamber and the myocardium);
  a point of A violates when it lies **inside** B.
- ``"inside"``: A must lie within B (a cavity within its epicardium); a point of A violates when
  it lies **outside** B.

Inside/outside is the hard occupancy of B's surface: generalized winding number > 0.5
(:func:`cardiocore.geometry.winding.occupancy`), so B should be a closed, outward-oriented mesh.
Every rate is a fraction in [0, 1]:

- :func:`violation_rate`: fraction of the given points of A that violate.
- :func:`volume_violation_rate` (VR): fraction of A's **volume** that violates, estimated from
  points drawn uniformly in A's interior (rejection sampling in A's bounding box).
- :func:`mask_violation_rate` (VR on voxels): fraction of A's voxels that violate B's mask.
- :func:`surface_violation_rate` (SVR): fraction of A's **surface area** that violates, estimated
  from area-uniform samples of A's surface.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import as_mesh
from cardiocore.geometry.sampling import sample_surface
from cardiocore.geometry.winding import occupancy

ArrayLike = torch.Tensor | np.ndarray
Rule = Literal["disjoint", "inside"]


def _check_rule(rule: str) -> None:
    if rule not in ("disjoint", "inside"):
        raise CardioInputError("rule", f"unknown violation rule {rule!r}", "use 'disjoint' or 'inside'")


def _violates(inside_b: torch.Tensor, rule: Rule) -> torch.Tensor:
    """Boolean violation flags from inside-B flags under ``rule``."""
    return inside_b if rule == "disjoint" else ~inside_b


def violation_rate(
    points_a: ArrayLike, verts_b: ArrayLike, faces_b: ArrayLike, rule: Rule = "disjoint"
) -> torch.Tensor:
    """Fraction of A's points that violate B under ``rule``.

    Args:
        points_a: points of structure A (P, 3), mm.
        verts_b, faces_b: closed mesh of B, (V, 3) mm and (F, 3) int64.
        rule: ``"disjoint"`` (violation = inside B) or ``"inside"`` (violation = outside B).

    Returns:
        Scalar tensor in [0, 1].
    """
    _check_rule(rule)
    verts_t, faces_t = as_mesh(verts_b, faces_b, name="mesh B")
    points_t = torch.as_tensor(points_a)
    if points_t.dim() != 2 or points_t.shape[-1] != 3 or points_t.shape[0] == 0:
        raise CardioInputError("points_a", f"must be a non-empty (P, 3) array, got {tuple(points_t.shape)}")
    points_t = points_t.to(device=verts_t.device, dtype=verts_t.dtype)
    inside_b = occupancy(points_t, verts_t, faces_t).to(torch.bool)
    return _violates(inside_b, rule).to(verts_t.dtype).mean()


def volume_violation_rate(
    verts_a: ArrayLike,
    faces_a: ArrayLike,
    verts_b: ArrayLike,
    faces_b: ArrayLike,
    rule: Rule = "disjoint",
    n_points: int = 20_000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Volume violation rate VR: fraction of A's volume that violates B under ``rule``.

    ``n_points`` candidates are drawn uniformly in A's axis-aligned bounding box; those inside A
    (by winding number) are uniform in A's interior and are tested against B. The standard error
    is about ``sqrt(VR (1 - VR) / n_inside)``.

    Args:
        verts_a, faces_a: closed mesh of A, mm.
        verts_b, faces_b: closed mesh of B, mm.
        rule: ``"disjoint"`` or ``"inside"`` (module docstring).
        n_points: candidate points in A's bounding box.
        generator: torch generator for reproducible sampling (its device draws the numbers).

    Returns:
        Scalar tensor in [0, 1].
    """
    verts_t, faces_t = as_mesh(verts_a, faces_a, name="mesh A")
    low, high = verts_t.min(dim=0).values, verts_t.max(dim=0).values
    random_device = generator.device if generator is not None else verts_t.device
    unit = torch.rand(n_points, 3, generator=generator, dtype=verts_t.dtype, device=random_device)
    unit = unit.to(verts_t.device)
    candidates = low + unit * (high - low)
    interior = candidates[occupancy(candidates, verts_t, faces_t).to(torch.bool)]
    if interior.shape[0] == 0:
        raise CardioInputError("mesh A", "no sample fell inside it",
                               "check that it is closed and outward-oriented, or raise n_points")
    return violation_rate(interior, verts_b, faces_b, rule)


def mask_violation_rate(mask_a: ArrayLike, mask_b: ArrayLike, rule: Rule = "disjoint") -> float:
    """Voxel VR: fraction of A's voxels that violate B's mask under ``rule``.

    Args:
        mask_a, mask_b: binary masks (I, J, K) on the same grid.
        rule: ``"disjoint"`` (violation = voxel of A also in B) or ``"inside"`` (voxel of A
            not in B).

    Returns:
        Fraction in [0, 1]; 0.0 when A is empty (nothing can violate).
    """
    _check_rule(rule)
    a = torch.as_tensor(mask_a).to(torch.bool)
    b = torch.as_tensor(mask_b).to(device=a.device, dtype=torch.bool)
    if a.shape != b.shape or a.dim() != 3:
        raise CardioInputError("mask_a, mask_b", f"must be (I, J, K) masks of one shape, got "
                               f"{tuple(a.shape)} and {tuple(b.shape)}")
    n_a = int(torch.count_nonzero(a))  # count_nonzero: a bool sum widens every voxel to int64
    if n_a == 0:
        return 0.0
    return int(torch.count_nonzero(a & _violates(b, rule))) / n_a


def surface_violation_rate(
    verts_a: ArrayLike,
    faces_a: ArrayLike,
    verts_b: ArrayLike,
    faces_b: ArrayLike,
    rule: Rule = "disjoint",
    n_points: int = 10_000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Surface violation rate SVR: fraction of A's surface area that violates B under ``rule``.

    Args:
        verts_a, faces_a: mesh of A (need not be closed), mm.
        verts_b, faces_b: closed mesh of B, mm.
        rule: ``"disjoint"`` or ``"inside"`` (module docstring).
        n_points: area-uniform samples of A's surface.
        generator: torch generator for reproducible sampling.

    Returns:
        Scalar tensor in [0, 1].
    """
    points = sample_surface(verts_a, faces_a, n_points, generator=generator)[0]
    return violation_rate(points, verts_b, faces_b, rule)
