"""The resolution step: untangling self-intersections and pushing rule violations out.

Known-truth cases: two icospheres of radius 20 mm overlapping by 6 mm (a planted penetration),
an icosphere with a planted fold (a vertex pushed through the opposite side), and a tube whose
walls cross over a band.
"""

from __future__ import annotations

import pytest
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


def test_untangle_keeps_going_through_a_deep_fold() -> None:
    """An elongated ellipsoid (a vessel-like tube, 6 mm radius) whose walls cross over a 20 mm
    band: the count of intersecting pairs plateaus for about 30 rounds before it falls, as on two
    refined Predict meshes (an aorta and an LA), so the default rounds must outlast the plateau."""
    verts, faces = icosphere(subdivisions=4, radius=1.0)
    tube = verts * torch.tensor([6.0, 6.0, 40.0])
    crossed = tube.clone()
    band = tube[:, 2].abs() < 10.0
    crossed[band, 0] = -0.3 * tube[band, 0]
    assert count_self_intersections(crossed, faces) > 100
    assert untangle(crossed, faces, max_rounds=30)[1] > 0
    fixed, left = untangle(crossed, faces)
    assert left == 0 and count_self_intersections(fixed, faces) == 0
    ends = tube[:, 2].abs() > 30.0
    assert torch.equal(fixed[ends], crossed[ends])


def test_untangle_gives_up_on_a_fold_of_the_connectivity() -> None:
    """Walls crossed over a 40 mm band do not unfold by relaxation: the count stalls, and the
    untangling stops after ``patience`` rounds without progress instead of running all rounds
    (the same result for 100 and 1,000 rounds allowed), reporting the pairs left."""
    verts, faces = icosphere(subdivisions=4, radius=1.0)
    tube = verts * torch.tensor([6.0, 6.0, 40.0])
    crossed = tube.clone()
    band = tube[:, 2].abs() < 20.0
    crossed[band, 0] = -0.6 * tube[band, 0]
    fixed, left = untangle(crossed, faces)
    assert left == count_self_intersections(fixed, faces) > 0
    longer, _ = untangle(crossed, faces, max_rounds=1000)
    assert torch.equal(fixed, longer)


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


_CASCADE = (
    [((0.0, 0.0, 0.0), 20.0), ((30.0, 0.0, 0.0), 12.0), ((20.0, 0.0, 8.0), 8.0), ((10.0, 0.0, 0.0), 40.0)],
    [Rule("disjoint", "m1", "m2"), Rule("disjoint", "m0", "m1"), Rule("disjoint", "m0", "m2"),
     Rule("inside", "m2", "m3")],
)
_DEEP_PAIR = ([((0.0, 0.0, 0.0), 20.0), ((20.0, 0.0, 0.0), 20.0)], [Rule("disjoint", "m0", "m1")])


@pytest.mark.parametrize("spheres, rules", [_CASCADE, _DEEP_PAIR], ids=["cascade", "deep-pair"])
def test_skipping_settled_rules_gives_the_meshes_of_checking_every_rule_every_round(
    spheres: list[tuple[tuple[float, float, float], float]], rules: list[Rule]
) -> None:
    """Skipping a rule whose meshes did not change since a check that moved nothing must give
    exactly what re-checking every rule in every round gives. Two scenes where one round is not
    enough: three structures overlapping each other (pushing m1 out of m0 lands it in m2), and two
    spheres overlapping by half, where one rule keeps moving vertices round after round."""
    from cardiocore.recon.resolve import DEFAULT_MARGIN_MM, _push

    meshes = [_sphere(centre, radius) for centre, radius in spheres]
    names = [f"m{k}" for k in range(len(meshes))]
    resolved, report = resolve_meshes(meshes, names, rules, rounds=6)

    verts = [v.clone() for v, _ in meshes]
    faces = [f for _, f in meshes]
    moved_per_round = []
    for _ in range(6):
        moved = 0
        for rule in rules:
            a, b = names.index(rule.a), names.index(rule.b)
            moved += _push(verts[a], (verts[b], faces[b]), rule.kind == "inside", DEFAULT_MARGIN_MM)
            if rule.kind == "disjoint":
                moved += _push(verts[b], (verts[a], faces[a]), False, DEFAULT_MARGIN_MM)
        moved_per_round.append(moved)
        if moved == 0:
            break
    assert len(moved_per_round) >= 3  # one round was not enough
    assert report.moved_per_round == tuple(moved_per_round)
    for (new, _), expected, face in zip(resolved, verts, faces, strict=True):
        untangled, _ = untangle(expected, face)
        assert torch.equal(new, untangled)
