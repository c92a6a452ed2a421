"""cardiocore.gen data and mesh VAE: cohorts, welding, splits, normalisation, the VAE and a tiny training run."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from conftest import shared_file
from gen_helpers import GRID, phantom_cohort

from cardiocore.errors import CardioInputError, MeshError
from cardiocore.gen.data import (
    ShapeCohort,
    ShapeDataset,
    ShapeNormalizer,
    load_cap_atlas,
    split_by_subject,
    weld_coincident_vertices,
)
from cardiocore.gen.vae import HierarchyPooling, KLAnnealing, MeshVAE, VAEObjective, vae_loss
from cardiocore.geometry.hierarchy import MeshHierarchy
from cardiocore.geometry.primitives import icosphere
from cardiocore.geometry.volume import close_boundary, enclosed_volume
from cardiocore.nets.graph import sparse_node_product
from cardiocore.phantoms.lv import lv_cohort
from cardiocore.train.loop import TrainConfig, Trainer

@pytest.fixture(scope="module")
def cohort() -> ShapeCohort:
    return phantom_cohort(16)


@pytest.fixture(scope="module")
def hierarchy(cohort) -> MeshHierarchy:
    return MeshHierarchy.build(cohort.mean_shape(), cohort.faces, factors=(2, 2, 2, 2))


# ---------------------------------------------------------------------- cohorts and splits
def test_cohort_from_meshes_keeps_labels_and_regions(cohort):
    assert len(cohort) == 32 and cohort.verts.shape == (32, 258, 3) and cohort.verts.dtype == torch.float32
    assert cohort.phase("ES").phases == ["ES"] * 16
    endo_verts, endo_faces = cohort.region_mesh("endocardium", cohort.verts[:2].double())
    closed_verts, closed_faces = close_boundary(endo_verts, endo_faces)
    volumes_ml = enclosed_volume(closed_verts, closed_faces) / 1000.0
    torch.testing.assert_close(volumes_ml, cohort.clinical["cavity_ml"][:2], rtol=1e-4, atol=0)


def test_topology_mismatch_names_the_items():
    pairs = lv_cohort(3, seed=1, **GRID)
    meshes = [(pair[0].verts, pair[0].faces) for pair in pairs]
    coarse = lv_cohort(1, seed=2, n_circumferential=12, n_longitudinal=8)[0][0]
    meshes.append((coarse.verts, coarse.faces))
    meshes[1] = (meshes[1][0], meshes[1][1].flip(1))  # same vertex count, other faces
    names = ["a.vtk", "b.vtk", "c.vtk", "d.vtk"]
    with pytest.raises(MeshError) as caught:
        ShapeCohort.from_meshes(meshes, phases=["ED"] * 4, item_names=names)
    message = str(caught.value)
    assert "b.vtk" in message and "d.vtk" in message and "c.vtk" not in message
    assert "2 of 4" in message and "CardioAtlas" in message


def test_nan_and_degenerate_shapes_are_named(cohort):
    verts = cohort.verts[:4].clone()
    verts[0, 5, 1] = float("nan")
    verts[2, 5, 1] = float("inf")
    with pytest.raises(MeshError, match="2 shapes have NaN or infinite points: subject s0 ED, subject s1 ED"):
        ShapeCohort.from_arrays(verts, cohort.faces, cohort.phases[:4], cohort.subject_ids[:4])
    verts = cohort.verts[:4].clone()
    a, b, _ = cohort.faces[7].tolist()
    verts[3, b] = verts[3, a]  # collapses every face on edge (a, b) in item 3
    with pytest.raises(MeshError, match="zero-area faces.*subject s1 ES") as caught:
        ShapeCohort.from_arrays(verts, cohort.faces, cohort.phases[:4], cohort.subject_ids[:4])
    assert "weld_coincident_vertices" in str(caught.value)


def test_bad_labels_are_rejected(cohort):
    with pytest.raises(CardioInputError, match="phases"):
        ShapeCohort.from_arrays(cohort.verts[:2], cohort.faces, ["ED", "diastole"])
    with pytest.raises(CardioInputError, match="repeated: s0 ED"):
        ShapeCohort.from_arrays(cohort.verts[:2], cohort.faces, ["ED", "ED"], ["s0", "s0"])


def test_weld_merges_coincident_vertices_and_drops_collapsed_faces():
    verts, faces = icosphere(subdivisions=1)
    n = verts.shape[0]
    # a seam: a copy of vertex 0 used by half of its faces, plus a zero-area sliver (0, copy, k)
    seam_verts = torch.cat([verts, verts[:1]])
    seam_faces = faces.clone()
    around_zero = (faces == 0).any(dim=1).nonzero().flatten()
    half = around_zero[: len(around_zero) // 2]
    seam_faces[half] = torch.where(faces[half] == 0, torch.tensor(n), faces[half])
    seam_faces = torch.cat([seam_faces, torch.tensor([[0, n, 5]])])
    shapes = torch.stack([seam_verts, 2.0 * seam_verts])  # coincident in both shapes
    with pytest.raises(MeshError, match="zero-area"):
        ShapeCohort.from_arrays(shapes, seam_faces, ["ED", "ED"])
    welded_verts, welded_faces, weld = weld_coincident_vertices(shapes, seam_faces)
    assert welded_verts.shape == (2, n, 3)
    torch.testing.assert_close(welded_verts[1], 2.0 * verts.float())
    assert torch.equal(welded_faces, faces)
    assert weld.source_to_welded[n] == 0 and torch.equal(weld.source_to_welded[:n], torch.arange(n))
    torch.testing.assert_close(weld.unweld(welded_verts), shapes.float())
    ShapeCohort.from_arrays(welded_verts, welded_faces, ["ED", "ED"])  # now valid
    # vertices that coincide in one shape only are kept apart
    apart = shapes.clone()
    apart[1, n] += 1.0
    assert weld_coincident_vertices(apart, seam_faces)[0].shape[1] == n + 1


def test_split_keeps_each_subject_on_one_side(cohort):
    parts = split_by_subject(cohort, (0.5, 0.25, 0.25), seed=3)
    subject_sets = [set(part.subject_ids) for part in parts]
    assert [len(s) for s in subject_sets] == [8, 4, 4]
    assert set.union(*subject_sets) == set(cohort.subject_ids)
    assert all(not (a & b) for i, a in enumerate(subject_sets) for b in subject_sets[i + 1 :])
    for part in parts:  # both phases of every subject present
        expected = sorted((s, p) for s in set(part.subject_ids) for p in ("ED", "ES"))
        assert sorted(zip(part.subject_ids, part.phases)) == expected
        for k, (subject, phase) in enumerate(zip(part.subject_ids, part.phases)):
            original = list(zip(cohort.subject_ids, cohort.phases)).index((subject, phase))
            assert torch.equal(part.verts[k], cohort.verts[original])
    again = split_by_subject(cohort, (0.5, 0.25, 0.25), seed=3)
    assert [p.subject_ids for p in again] == [p.subject_ids for p in parts]
    assert split_by_subject(cohort, (0.5, 0.25, 0.25), seed=4)[0].subject_ids != parts[0].subject_ids
    with pytest.raises(CardioInputError, match="sum to 1"):
        split_by_subject(cohort, (0.5, 0.2))
    with pytest.raises(CardioInputError, match="empty"):
        split_by_subject(cohort, (0.98, 0.01, 0.01))


def test_stratified_split_shares_out_every_block_of_neighbours(cohort):
    """16 subjects, fractions 1/2, 1/4, 1/4: blocks of 4 neighbours in the stratum value, each
    giving 2 subjects to training and 1 to each other part; NaN values sort last."""
    subjects = list(dict.fromkeys(cohort.subject_ids))
    value_of = {s: float(k * 7 % 16) for k, s in enumerate(subjects)}  # a scrambled ranking
    value_of[subjects[3]] = float("nan")
    strata = torch.tensor([value_of[s] for s in cohort.subject_ids])
    parts = split_by_subject(cohort, (0.5, 0.25, 0.25), seed=3, strata=strata)
    part_of = {s: k for k, part in enumerate(parts) for s in part.subject_ids}
    ranked = sorted(subjects, key=lambda s: (math.isnan(value_of[s]), value_of[s]))
    assert ranked[-1] == subjects[3]
    for start in range(0, 16, 4):
        assert sorted(part_of[s] for s in ranked[start : start + 4]) == [0, 0, 1, 2]
    again = split_by_subject(cohort, (0.5, 0.25, 0.25), seed=3, strata=strata)
    assert [p.subject_ids for p in again] == [p.subject_ids for p in parts]
    assert split_by_subject(cohort, (0.5, 0.25, 0.25), seed=4, strata=strata)[2].subject_ids != parts[2].subject_ids
    with pytest.raises(CardioInputError, match="strata"):
        split_by_subject(cohort, (0.5, 0.5), strata=strata[:5])


def test_two_column_strata_balance_both_columns():
    """1,500 synthetic subjects with two independent values (say EDV and EF): the stratified test
    part's means lie closer to the training part's than a random split's, in both columns (mean
    gap over 20 seeds less than half; measured 4x and 2.5x)."""
    n = 1500
    generator = torch.Generator().manual_seed(0)
    values = torch.stack([torch.randn(n, generator=generator) * 30 + 120, torch.randn(n, generator=generator) * 7 + 60], 1)
    triangle = torch.eye(3).expand(n, 3, 3)
    cohort = ShapeCohort.from_arrays(triangle, torch.tensor([[0, 1, 2]]), ["ED"] * n, [f"s{k}" for k in range(n)])

    def mean_gaps(strata):
        gaps = []
        for seed in range(20):
            train, _, test = split_by_subject(cohort, (0.7, 0.1, 0.2), seed=seed, strata=strata)
            index = {s: k for k, s in enumerate(cohort.subject_ids)}
            rows = [values[[index[s] for s in part.subject_ids]] for part in (train, test)]
            gaps.append((rows[1].mean(0) - rows[0].mean(0)).abs())
        return torch.stack(gaps).mean(0)

    stratified, random = mean_gaps(values), mean_gaps(None)
    assert bool((stratified < random / 2).all()), (stratified, random)


def test_normalizer_round_trip_and_statistics(cohort):
    normalizer = ShapeNormalizer.fit(cohort.verts)
    shapes = cohort.verts.double()
    normalised = normalizer.normalize(shapes)
    torch.testing.assert_close(normalised.mean(dim=0), torch.zeros(258, 3, dtype=torch.float64), atol=1e-5, rtol=0)
    assert float(normalised.square().mean()) == pytest.approx(1.0, abs=1e-6)  # float32 mean and scale
    torch.testing.assert_close(normalizer.denormalize(normalised), shapes, atol=1e-12, rtol=0)
    torch.testing.assert_close(normalizer.denormalize(normalizer.normalize(cohort.verts)), cohort.verts, atol=1e-4, rtol=0)
    restored = ShapeNormalizer.identity(258)
    restored.load_state_dict(normalizer.state_dict())
    assert torch.equal(restored.normalize(shapes), normalised)
    with pytest.raises(CardioInputError, match="shapes to normalise"):
        normalizer.normalize(torch.zeros(4, 100, 3))


# ---------------------------------------------------------------------- the VAE
def test_pooling_matches_the_hierarchy_matrices(hierarchy):
    pooling = HierarchyPooling(hierarchy)
    generator = torch.Generator().manual_seed(0)
    for level in range(hierarchy.n_levels - 1):
        fine = torch.randn(3, hierarchy.n_vertices[level], 5, generator=generator)
        coarse = torch.randn(3, hierarchy.n_vertices[level + 1], 5, generator=generator)
        down_node_first = pooling.down(fine.transpose(0, 1), level).transpose(0, 1)
        torch.testing.assert_close(down_node_first, hierarchy.downsample(fine, level))
        node_first = pooling.up(coarse.transpose(0, 1), level).transpose(0, 1)
        torch.testing.assert_close(node_first, hierarchy.upsample(coarse, level), atol=1e-6, rtol=1e-5)


def test_vae_shapes_and_gradient_flow(hierarchy):
    torch.manual_seed(0)
    model = MeshVAE(hierarchy)
    x = torch.randn(4, 258, 3)
    recon, mu, logvar = model(x)
    assert recon.shape == (4, 258, 3) and mu.shape == (4, 16) and logvar.shape == (4, 16)
    assert model.encode(x[0])[0].shape == (16,) and model.decode(mu[0]).shape == (258, 3)
    vae_loss(recon, x, mu, logvar, beta=1e-3).total.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name
    with pytest.raises(CardioInputError, match="hierarchy has 5"):
        MeshVAE(hierarchy, channels=(3, 16, 32))
    with pytest.raises(CardioInputError, match="shapes to encode"):
        model.encode(torch.zeros(2, 100, 3))


def test_graph_convs_keep_sparse_products_in_float32_under_autocast(hierarchy):
    """Autocast would send the sparse Laplacian products to bfloat16, which CUDA's sparse addmm
    does not implement (found on the H200: ``addmm_sparse_cuda`` not implemented for BFloat16).
    CPU autocast shows the same cast, so this checks it without a GPU."""
    torch.manual_seed(0)
    model = MeshVAE(hierarchy)
    laplacian = model._laplacian("encoder", 0)
    terms = torch.randn(258, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sparse_node_product(laplacian, terms, None).dtype == torch.float32
        assert sparse_node_product(laplacian, terms, terms).dtype == torch.float32
        recon, _, _ = model(torch.randn(2, 258, 3))
    assert torch.isfinite(recon.float()).all()
    recon.float().square().mean().backward()  # the in-place accumulation of bfloat16 terms
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_posterior_has_no_activation(hierarchy):
    model = MeshVAE(hierarchy, latent_dim=4)
    with torch.no_grad():
        for layer, value in ((model.to_mu, -5.0), (model.to_logvar, -3.0)):
            layer.weight.zero_()
            layer.bias.fill_(value)
    mu, logvar = model.encode(torch.randn(2, 258, 3))
    assert torch.equal(mu, torch.full((2, 4), -5.0)) and torch.equal(logvar, torch.full((2, 4), -3.0))
    x = torch.randn(2, 258, 3)
    model.eval()
    mean_decoded = model(x)[0]
    assert torch.equal(model(x)[0], mean_decoded)  # eval decodes the posterior mean
    model.train()
    assert not torch.equal(model(x)[0], mean_decoded)  # training decodes a sample


def test_reparameterisation_statistics():
    torch.manual_seed(0)
    mu, logvar = torch.full((20000, 2), 1.5), torch.log(torch.full((20000, 2), 0.25))
    z = MeshVAE.reparameterize(mu, logvar)
    assert float(z.mean()) == pytest.approx(1.5, abs=0.01) and float(z.std()) == pytest.approx(0.5, abs=0.01)


def test_vae_loss_and_kl_annealing_known_values():
    target = torch.zeros(2, 3, 3)
    recon = torch.ones(2, 3, 3)
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, 0.0], [0.0, float(np.log(2.0))]])
    terms = vae_loss(recon, target, mu, logvar, beta=0.5)
    kl_expected = (0.5 + 0.5 * (2.0 - 1.0 - np.log(2.0))) / 2  # per-sample sums, batch mean
    assert float(terms.reconstruction) == pytest.approx(1.0)
    assert float(terms.kl) == pytest.approx(kl_expected, rel=1e-6)
    assert float(terms.total) == pytest.approx(1.0 + 0.5 * kl_expected, rel=1e-6)
    annealing = KLAnnealing(1e-4, 1e-3, steps=100)
    assert [annealing(s) for s in (0, 50, 100, 500)] == pytest.approx([1e-4, 5.5e-4, 1e-3, 1e-3])


def test_objective_counts_steps_for_annealing_and_saves_them(hierarchy):
    model = MeshVAE(hierarchy, latent_dim=4, cheb_k=2)
    objective = VAEObjective(KLAnnealing(1e-4, 1e-3, steps=10))
    batch = torch.randn(2, 258, 3)
    betas = [objective(model, batch)[1]["beta"] for _ in range(3)]
    assert betas == pytest.approx([1e-4, 1.9e-4, 2.8e-4]) and int(model.trained_steps) == 3
    model.eval()
    _, metrics = objective(model, batch)
    assert metrics["beta"] == pytest.approx(3.7e-4) and int(model.trained_steps) == 3  # validation does not count
    resumed = MeshVAE(hierarchy, latent_dim=4, cheb_k=2)
    resumed.load_state_dict(model.state_dict())  # what a Trainer checkpoint restores
    assert int(resumed.trained_steps) == 3


def test_millimetre_helpers_use_the_normalizer(cohort, hierarchy):
    torch.manual_seed(0)
    normalizer = ShapeNormalizer.fit(cohort.verts)
    model = MeshVAE(hierarchy, normalizer=normalizer).eval()
    z = torch.randn(3, 16)
    shapes = model.decode_shapes(z)
    with torch.no_grad():
        expected = normalizer.denormalize(model.decode(z).double()).float()
    torch.testing.assert_close(shapes, expected)
    strip = model.interpolate(z[0], z[1], 5)
    assert strip.shape == (5, 258, 3)
    torch.testing.assert_close(strip[[0, -1]], shapes[:2], atol=1e-4, rtol=0)
    torch.testing.assert_close(strip[2], model.decode_shapes((z[0] + z[1]) / 2), atol=1e-4, rtol=0)
    mu, _ = model.encode_shapes(cohort.verts[:2])
    torch.testing.assert_close(model.reconstruct(cohort.verts[:2]), model.decode_shapes(mu))
    assert "normalizer.mean_shape" in model.state_dict() and "faces" in model.state_dict()


def test_tiny_training_run_learns(cohort, tmp_path):
    """Trainer + VAEObjective on 12 phantom subjects: the loss falls and held-out subjects are
    reconstructed better than by the training mean shape."""
    train, test = split_by_subject(cohort, (0.75, 0.25), seed=0)
    hierarchy = MeshHierarchy.build(train.mean_shape(), train.faces, factors=(2, 2, 2))
    normalizer = ShapeNormalizer.fit(train.verts)
    torch.manual_seed(0)
    model = MeshVAE(hierarchy, channels=(3, 16, 16, 32), latent_dim=8, cheb_k=3, normalizer=normalizer)
    steps = 60
    config = TrainConfig(
        batch_size=8, max_steps=steps, device="cpu", show_progress=False, log_every=10, val_every=steps,
        checkpoint_dir=tmp_path, run_config=model.architecture(),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    objective = VAEObjective(KLAnnealing(1e-4, 1e-3, steps))
    result = Trainer(
        model, optimizer, objective, ShapeDataset(train, normalizer), ShapeDataset(test, normalizer), config=config
    ).fit()
    losses = [row["loss"] for row in result.history if "loss" in row]
    assert losses[-1] < 0.3 * losses[0]
    assert int(model.trained_steps) == steps and result.history[-1]["val/beta"] == pytest.approx(1e-3)
    model.eval()
    error_mm = float(torch.linalg.vector_norm(model.reconstruct(test.verts) - test.verts, dim=-1).mean())
    baseline_mm = float(torch.linalg.vector_norm(normalizer.mean_shape.float() - test.verts, dim=-1).mean())
    print(f"held-out mean vertex error {error_mm:.2f} mm vs mean-shape baseline {baseline_mm:.2f} mm")
    assert error_mm < 0.6 * baseline_mm
    assert result.history[-1]["val/vertex_error_mm"] == pytest.approx(error_mm, rel=1e-3)


@pytest.mark.cuda
def test_vae_runs_on_cuda(cohort, hierarchy):
    normalizer = ShapeNormalizer.fit(cohort.verts)
    model = MeshVAE(hierarchy, normalizer=normalizer).cuda()
    x = ShapeDataset(cohort, normalizer).shapes[:4].cuda()
    loss, metrics = VAEObjective()(model, x)
    loss.backward()
    assert loss.is_cuda and all(p.grad is not None for p in model.parameters())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        recon, mu, logvar = model(x)
    assert recon.shape == (4, 258, 3) and torch.isfinite(recon.float()).all()
    model.eval()
    cpu_model = MeshVAE(hierarchy, normalizer=normalizer)
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    on_gpu = model.reconstruct(cohort.verts[:4]).cpu()
    torch.testing.assert_close(on_gpu, cpu_model.eval().reconstruct(cohort.verts[:4]), atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------------- the CAP atlas
def test_cap_atlas_loader():
    path = shared_file("cap_lv_atlas/cap_lv_atlas_dev.npz")
    cohort = load_cap_atlas(path)
    assert len(cohort) == 3000 and len(set(cohort.subject_ids)) == 1500
    assert cohort.phases[:4] == ["ED", "ES", "ED", "ES"] and cohort.subject_ids[0] == cohort.subject_ids[1]
    # seams welded (28 duplicated pairs and a 29-fold apex per surface): 2 x (841 - 56) vertices
    assert cohort.n_vertices == 1570 and cohort.weld.source_to_welded.shape == (1682,)
    with np.load(path) as archive:
        raw = (archive["mean_es"] + archive["scores_es"][7] @ archive["coeff_es"].T).reshape(1682, 3)
    torch.testing.assert_close(cohort.weld.unweld(cohort.verts[15]).double(), torch.as_tensor(raw), atol=1e-4, rtol=0)
    volumes = {}
    for phase in ("ED", "ES"):
        part = cohort.phase(phase)
        endo_verts, endo_faces = part.region_mesh("endocardium", part.verts.double())
        volumes[phase] = (enclosed_volume(*close_boundary(endo_verts, endo_faces)) / 1000.0).numpy()
    edv, esv = volumes["ED"], volumes["ES"]
    print(f"CAP EDV median {np.median(edv):.1f} ml, 5-95 % {np.percentile(edv, 5):.1f}-{np.percentile(edv, 95):.1f} ml")
    assert (edv > 0).all() and 80 < np.percentile(edv, 5) and np.percentile(edv, 95) < 250
    assert (esv < edv).all()
    ef_mesh = 100.0 * (edv - esv) / edv
    ef_table = cohort.phase("ED").clinical["EF"].numpy()
    assert np.corrcoef(ef_mesh, ef_table)[0, 1] > 0.9 and np.abs(ef_mesh - ef_table).mean() < 3.0
    hierarchy = MeshHierarchy.build(cohort.mean_shape(), cohort.faces)  # default 4x per level
    model = MeshVAE(hierarchy, normalizer=ShapeNormalizer.fit(cohort.verts[:200]))
    assert model.reconstruct(cohort.verts[:2]).shape == (2, 1570, 3)


@pytest.mark.parametrize(("c_in", "c_out", "k"), [(5, 7, 6), (7, 3, 6), (7, 3, 4), (6, 2, 2), (4, 2, 1)],
                         ids=["inputs K6", "Clenshaw K6", "Clenshaw K4", "Clenshaw K2", "K1"])
def test_sparse_chebyshev_matches_pyg_message_passing(hierarchy, c_in, c_out, k):
    """Both evaluation orders (recurrence on the inputs when C_in <= C_out, Clenshaw on the
    projected outputs otherwise) give PyG's outputs and gradients, and without gradients (CSR,
    hops written in place) the same outputs."""
    from cardiocore.nets.graph import chebyshev_conv, scaled_laplacian, sparse_for_device
    from torch_geometric.nn import ChebConv

    torch.manual_seed(0)
    conv = ChebConv(c_in, c_out, K=k)
    edges = hierarchy.edge_index[0]
    n = hierarchy.n_vertices[0]
    x = torch.randn(3, n, c_in, requires_grad=True)
    reference = conv(x, edges)
    laplacian = scaled_laplacian(conv, edges, n)
    fast = chebyshev_conv(conv, x, laplacian)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the in-place hops of inference: same values, the input left alone
        inputs = x.detach().clone()
        torch.testing.assert_close(chebyshev_conv(conv, inputs, sparse_for_device(laplacian, "cpu")), reference,
                                   atol=1e-5, rtol=1e-5)
        assert torch.equal(inputs, x)
    weight = conv.lins[k - 1].weight
    grad_reference = torch.autograd.grad(reference.square().sum(), (x, weight))
    grad_fast = torch.autograd.grad(fast.square().sum(), (x, weight))
    for a, b in zip(grad_fast, grad_reference):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("c_in", "c_out"), [(4, 6), (7, 3)], ids=["inputs", "Clenshaw"])
def test_node_map_before_the_conv_commutes_with_the_projections(hierarchy, c_in, c_out):
    """A conv given the up-sampling as ``node_map`` (applied to the projected terms at the coarse
    level on the Clenshaw side) equals the conv of the up-sampled features, values and gradients."""
    from cardiocore.nets.graph import chebyshev_conv_node_first, scaled_laplacian
    from torch_geometric.nn import ChebConv

    torch.manual_seed(0)
    conv = ChebConv(c_in, c_out, K=6)
    pooling = HierarchyPooling(hierarchy)
    laplacian = scaled_laplacian(conv, hierarchy.edge_index[0], hierarchy.n_vertices[0])
    coarse = torch.randn(hierarchy.n_vertices[1], 3, c_in, requires_grad=True)
    up = functools.partial(pooling.up, level=0)
    mapped = chebyshev_conv_node_first(conv, coarse, laplacian, up)
    reference = chebyshev_conv_node_first(conv, up(coarse), laplacian)
    assert mapped.shape == (hierarchy.n_vertices[0], 3, c_out)
    torch.testing.assert_close(mapped, reference, atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(out.square().sum(), (coarse, conv.lins[2].weight)) for out in (mapped, reference)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_a_model_that_has_decoded_on_the_cpu_deep_copies_and_pickles(hierarchy, tmp_path):
    """The cached CSR operators (not deep-copyable) are rebuilt in the copy, not copied."""
    import copy
    import pickle

    torch.manual_seed(0)
    model = MeshVAE(hierarchy).eval()
    z = torch.randn(3, 16)
    decoded = model.decode_shapes(z)
    assert any(m.layout == torch.sparse_csr for m in model._laplacians.values())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert len(clone._laplacians) == 0 and len(clone.pooling._up_matrices) == 0
        torch.testing.assert_close(clone.decode_shapes(z), decoded)
