"""The resolution step: untangling self-intersections and pushing rule violations out.

Known-truth cases: two icospheres of radius 20 mm overlapping by 6 mm (a planted penetration),
and an icosphere with a planted fold (a vertex pushed through the opposite side).
"""

from __future__ import annotations

import torch

from cardiocore.geometry.intersection import count_self_intersections
from cardiocore.geometry.primitives import icosphere
from cardiocore.geometry.untangle import untangle
from cardiocore.geometry.winding import winding_number
from cardiocore.metrics.violation import volume_violation_rate
from cardiocore.recon.resolve import resolve_meshes
from cardiocore.recon.rules import Rule


def _sphere(centre: tuple[float, float, float], radius: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    verts, faces = icosphere(subdivisions=3, radius=radius)
    return verts + torch.tensor(centre), faces


def test_untangle_removes_a_planted_fold_and_leaves_the_rest_alone() -> None:
    verts, faces = _sphere((0.0, 0.0, 0.0))
    folded = verts.clone()
    top = int(verts[:, 2].argmax())
    folded[top] = torch.tensor([0.0, 0.0, -25.0])  # pulled through the bottom of the sphere
    assert count_self_intersections(folded, faces) > 0
    fixed, left = untangle(folded, faces)
    assert left == 0 and count_self_intersections(fixed, faces) == 0
    far = verts[:, 2].abs() < 10.0  # the equator, far from the fold at the poles: untouched
    assert torch.equal(fixed[far], folded[far])
    clean, left = untangle(verts, faces)
    assert left == 0 and torch.equal(clean, verts)


def test_resolve_separates_overlapping_disjoint_structures() -> None:
    a, b = _sphere((0.0, 0.0, 0.0)), _sphere((34.0, 0.0, 0.0))  # 6 mm deep overlap
    generator = torch.Generator().manual_seed(0)
    before = float(volume_violation_rate(*a, *b, "disjoint", 20_000, generator))
    assert before > 0.01
    (new_a, new_b), report = resolve_meshes([a, b], ["a", "b"], [Rule("disjoint", "a", "b")])
    after = float(volume_violation_rate(*new_a, *new_b, "disjoint", 20_000, generator))
    assert after < 0.05 * before
    assert not bool((winding_number(new_a[0], *new_b) > 0.5).any())
    assert report.moved_per_round[0] > 0 and report.self_intersections_left == {"a": 0, "b": 0}
    # Vertices away from the overlap do not move.
    far = a[0][:, 0] < 0.0
    assert torch.equal(new_a[0][far], a[0][far])


def test_resolve_pulls_a_structure_back_inside_its_container() -> None:
    inner, outer = _sphere((8.0, 0.0, 0.0), radius=15.0), _sphere((0.0, 0.0, 0.0), radius=20.0)
    assert bool((winding_number(inner[0], *outer) < 0.5).any())  # pokes out by 3 mm
    (new_inner, _), _ = resolve_meshes([inner, outer], ["inner", "outer"], [Rule("inside", "inner", "outer")])
    assert bool((winding_number(new_inner[0], *outer) > 0.5).all())
