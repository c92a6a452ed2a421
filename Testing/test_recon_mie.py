"""The MIE relational loss: its soft occupancy, violation detection and, above all, the sign of
its gradient (a point inside a forbidden structure pushes the surface the right way)."""

from __future__ import annotations

import pytest
import torch

from cardiocore.errors import CardioInputError

from cardiocore.geometry.primitives import icosphere
from cardiocore.geometry.winding import occupancy
from cardiocore.recon.mie import (
    FaceDipoles,
    bounding_box,
    candidate_pool,
    detect_violations,
    mie_loss,
    mie_term,
    sample_query_points,
    soft_occupancies,
    soft_occupancy,
    soft_occupancy_batch,
)
from cardiocore.recon.rules import Rule

RADIUS = 10.0
B_CENTRE = torch.tensor([21.0, 0.0, 0.0])


def _sphere(centre: torch.Tensor, radius: float = RADIUS) -> tuple[torch.Tensor, torch.Tensor]:
    verts, faces = icosphere(subdivisions=3)
    return verts.double() * radius + centre.double(), faces


def _spiked_pair(depth_into_b: float = 4.0):
    """Sphere A at the origin with its +x vertex pulled ``depth_into_b`` mm into sphere B (which
    touches x = 11 mm); returns (verts_a, faces), (verts_b, faces) and the spike's index."""
    verts_a, faces = _sphere(torch.zeros(3))
    verts_b, _ = _sphere(B_CENTRE)
    tip = int(verts_a[:, 0].argmax())
    verts_a[tip, 0] = B_CENTRE[0] - RADIUS + depth_into_b
    return verts_a, verts_b, faces, tip


def test_soft_occupancy_equals_the_smooth_winding_occupancy_and_its_gradient() -> None:
    verts, faces = _sphere(torch.tensor([3.0, -2.0, 1.0]))
    verts = verts + 0.3 * torch.randn(verts.shape, generator=torch.Generator().manual_seed(0), dtype=verts.dtype)
    points = 8.0 * torch.randn(200, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = torch.linspace(-1.0, 1.0, 200, dtype=torch.float64)
    mine, reference = verts.clone().requires_grad_(), verts.clone().requires_grad_()
    ours = soft_occupancy(points, mine, faces, smoothing=1.5)
    theirs = occupancy(points, reference, faces, soft=True, method="smooth", smoothing=1.5)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    assert torch.allclose(ours, theirs, atol=1e-10)
    assert torch.allclose(mine.grad, reference.grad, atol=1e-9)


@pytest.mark.parametrize("dense", [False, True])
def test_detection_finds_the_spike_and_nothing_on_separate_spheres(dense: bool) -> None:
    """``dense``: exact winding numbers for every candidate (the GPU default) instead of the
    tree for those near each structure (the CPU default)."""
    verts_a, verts_b, faces, tip = _spiked_pair()
    rule = [Rule("disjoint", "a", "b")]
    generator = torch.Generator().manual_seed(0)
    meshes = [(verts_a, faces), (verts_b, faces)]
    pool, source = candidate_pool(meshes, n_uniform=4096, generator=generator)
    found = detect_violations(meshes, ["a", "b"], rule, pool, source, dense=dense)
    assert found.points.shape[0] > 0 and bool((found.rule_index == 0).all())
    assert bool(((found.points - B_CENTRE.double()).norm(dim=1) < RADIUS).all())  # all inside B
    assert bool((found.points[:, 0] > B_CENTRE[0] - RADIUS).all())  # and in the spike's reach
    in_a = occupancy(pool, verts_a, faces, method="exact") | (source == 0)
    assert float(found.pool_rates[0]) == pytest.approx(found.points.shape[0] / int(in_a.sum()), rel=0.05)

    apart = [(_sphere(torch.zeros(3))[0], faces), (_sphere(torch.tensor([25.0, 0.0, 0.0]))[0], faces)]
    pool, source = candidate_pool(apart, generator=generator)
    none = detect_violations(apart, ["a", "b"], rule, pool, source, dense=dense)
    assert none.points.shape[0] == 0
    low, high = bounding_box(apart)
    query, is_violation = sample_query_points(none, low, high, 512, 0.2, generator)
    assert query.shape == (512, 3) and not bool(is_violation.any())  # all uniform: nothing violates
    loss = mie_loss(apart, ["a", "b"], rule, query, smoothing=1.0)
    assert float(loss) < 1e-3


def test_soft_occupancies_of_every_point_equal_those_of_the_near_ones() -> None:
    """The GPU default (every point evaluated, the far ones zeroed) gives the CPU default's
    values and gradients."""
    verts_a, verts_b, faces, _ = _spiked_pair()
    points = 20.0 * torch.randn(300, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    results = []
    for every_point in (False, True):
        a, b = verts_a.clone().requires_grad_(), verts_b.clone().requires_grad_()
        occ = soft_occupancies(points, [(a, faces), (b, faces)], {0, 1}, 1.0, every_point=every_point)
        (occ[0] * occ[1]).sum().backward()
        results.append((occ[0].detach(), occ[1].detach(), a.grad, b.grad))
    assert int((results[0][1] == 0).sum()) > 50  # some points are far from B and get exactly 0
    for near_only, every in zip(*results, strict=True):
        assert torch.allclose(near_only, every, rtol=0, atol=1e-12)


def test_a_batch_of_meshes_of_different_sizes_gives_each_mesh_its_own_occupancy() -> None:
    """Padding a smaller mesh with zero-area faces changes neither its values nor its gradient."""
    meshes = [icosphere(1, radius=10.0, center=(0.0, 0.0, 0.0)), icosphere(3, radius=15.0, center=(8.0, 0.0, 0.0)),
              icosphere(2, radius=6.0, center=(0.0, 9.0, 0.0))]
    points = 12.0 * torch.randn(3, 200, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    smoothing = [1.0, 0.5, 2.0]
    results = []
    for batched in (False, True):
        verts = [v.double().requires_grad_() for v, _ in meshes]
        pairs = [(v, f) for v, (_, f) in zip(verts, meshes, strict=True)]
        if batched:
            occ = soft_occupancy_batch(points, FaceDipoles.of_meshes(pairs), smoothing)
        else:
            occ = torch.stack([soft_occupancy(points[b], *pairs[b], smoothing[b]) for b in range(3)])
        (occ * torch.linspace(-1.0, 1.0, 200, dtype=torch.float64)).sum().backward()
        results.append((occ.detach(), *(v.grad for v in verts)))
    assert 0.1 < float(results[0][0].mean()) < 0.9  # points inside and outside
    for one_by_one, batch in zip(*results, strict=True):
        assert torch.allclose(one_by_one, batch, rtol=0, atol=1e-10)
    dipoles = FaceDipoles.of_meshes([(v.double(), f) for v, f in meshes])
    # Lengths made once as a device tensor (what the fit passes every step): the same values.
    assert torch.equal(soft_occupancy_batch(points, dipoles, torch.tensor(smoothing)), results[1][0])
    assert torch.allclose(dipoles.low[1], meshes[1][0].double().amin(dim=0)) and torch.allclose(
        dipoles.high[2], meshes[2][0].double().amax(dim=0))  # each mesh's own box, padding aside
    for bad in ([1.0, 0.0, 1.0], torch.tensor([1.0, 2.0])):
        with pytest.raises(CardioInputError, match="one positive smoothing length per mesh"):
            soft_occupancy_batch(points, dipoles, bad)


def test_face_dipoles_of_merged_meshes_equal_those_of_the_meshes() -> None:
    """One vertex array holding three meshes, faces padded by rows: the same occupancies and
    vertex gradients as the meshes padded one by one (only the padding's position differs)."""
    meshes = [icosphere(1, radius=10.0), icosphere(2, radius=7.0, center=(5.0, 0.0, 0.0)),
              icosphere(1, radius=4.0, center=(0.0, 6.0, 0.0))]
    sizes = [v.shape[0] for v, _ in meshes]
    starts = [0, sizes[0], sizes[0] + sizes[1]]
    merged_faces = torch.cat([f + s for (_, f), s in zip(meshes, starts, strict=True)])
    counts, width = [f.shape[0] for _, f in meshes], max(f.shape[0] for _, f in meshes)
    face_starts = [0, counts[0], counts[0] + counts[1]]
    columns = torch.arange(width)
    rows = torch.stack([s + torch.where(columns < n, columns, 0) for s, n in zip(face_starts, counts, strict=True)])
    real = torch.stack([(columns < n).double() for n in counts])[:, :, None]
    points = 9.0 * torch.randn(3, 150, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    results = []
    for merged in (False, True):
        verts = torch.cat([v for v, _ in meshes]).double().requires_grad_()
        if merged:
            dipoles = FaceDipoles.of_merged(verts, merged_faces, rows, real)
        else:
            dipoles = FaceDipoles.of_meshes([(part, f) for part, (_, f) in zip(verts.split(sizes), meshes, strict=True)])
        occ = soft_occupancy_batch(points, dipoles.select([0, 1, 2]), [1.0, 1.5, 0.8])
        (occ * torch.linspace(-1.0, 1.0, 150, dtype=torch.float64)).sum().backward()
        results.append((occ.detach(), verts.grad))
    for separately, together in zip(*results, strict=True):
        assert torch.allclose(separately, together, rtol=0, atol=1e-10)
    picked = FaceDipoles.of_meshes([(v.double(), f) for v, f in meshes]).select([2, 0])
    assert torch.equal(picked.areas[0, : counts[2]], FaceDipoles.of_meshes([(meshes[2][0].double(), meshes[2][1])]).areas[0])


def test_query_points_take_the_violation_fraction_from_the_violations() -> None:
    verts_a, verts_b, faces, _ = _spiked_pair()
    meshes = [(verts_a, faces), (verts_b, faces)]
    generator = torch.Generator().manual_seed(2)
    pool, source = candidate_pool(meshes, generator=generator)
    found = detect_violations(meshes, ["a", "b"], [Rule("disjoint", "a", "b")], pool, source)
    low, high = bounding_box(meshes)
    query, is_violation = sample_query_points(found, low, high, 100, 0.3, generator)
    from_violations = (query[:, None, :] == found.points[None].to(query.dtype)).all(dim=2).any(dim=1)
    assert int(from_violations.sum()) == 30 and torch.equal(from_violations, is_violation)


@pytest.mark.parametrize("labelled", [False, True])
def test_disjoint_gradient_pulls_the_spike_out_of_the_forbidden_structure(labelled: bool) -> None:
    verts_a, verts_b, faces, tip = _spiked_pair()
    a, b = verts_a.clone().requires_grad_(), verts_b.clone().requires_grad_()
    meshes = [(a, faces), (b, faces)]

    def labels_from_truth(points: torch.Tensor) -> torch.Tensor:
        # The spike's points belong to B in the target: B keeps them, A must leave.
        in_b = (points - B_CENTRE.to(points.dtype)).norm(dim=1) < RADIUS
        return torch.where(in_b, 1, torch.where(points.norm(dim=1) < RADIUS, 0, -1))

    loss, found = mie_term(meshes, ["a", "b"], [Rule("disjoint", "a", "b")], n_points=1024,
                           point_labels_fn=labels_from_truth if labelled else None, smoothing=1.0,
                           generator=torch.Generator().manual_seed(0))
    assert found.points.shape[0] > 0 and float(loss.detach()) > 0
    loss.backward()
    step = -a.grad[tip]  # a gradient-descent step moves the tip along -grad
    assert float(step[0]) < 0  # back towards A, out of B
    moved = verts_a[tip] + 0.5 * step / step.norm()
    assert float((moved - B_CENTRE.double()).norm()) > float((verts_a[tip] - B_CENTRE.double()).norm())


def test_inside_gradient_pulls_an_escaping_vertex_back_in() -> None:
    outer, faces = _sphere(torch.zeros(3), radius=12.0)
    inner, _ = _sphere(torch.zeros(3), radius=8.0)
    tip = int(inner[:, 2].argmax())
    inner[tip, 2] = 15.0  # 3 mm outside the outer sphere
    a, b = inner.clone().requires_grad_(), outer.clone().requires_grad_()
    loss, found = mie_term([(a, faces), (b, faces)], ["a", "b"], [Rule("inside", "a", "b")], n_points=1024,
                           smoothing=1.0, generator=torch.Generator().manual_seed(0))
    assert found.points.shape[0] > 0
    loss.backward()
    assert float(a.grad[tip, 2]) > 0  # descent lowers z: the tip returns inside
