"""Synthetic cardiac phantoms: LV surfaces, whole-heart label maps, short-axis slices, DENSE motion.

Every phantom is checked against the truth it was built from: requested volumes and ejection
fractions, analytic volumes, world-coordinate anatomy across grids, and activation times recovered
from the displacement with an independent Green-Lagrange strain computation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cardiocore.errors import CardioInputError, VolumeError
from cardiocore.geometry.distance import point_to_mesh_distance
from cardiocore.geometry.mesh import boundary_loops
from cardiocore.geometry.volume import cavity_volume_ml, close_boundary, enclosed_volume
from cardiocore.phantoms.dense import dense_phantom
from cardiocore.phantoms.heart import HEART_STRUCTURES, LABEL, heart_label_phantom, voxel_centres_ras
from cardiocore.phantoms.lv import COHORT_RANGES, lv_cohort, lv_phantom, lv_phantom_pair
from cardiocore.phantoms.slices import short_axis_stack

# ---------------------------------------------------------------- LV surfaces


def _ef_percent(ed, es) -> float:
    edv = cavity_volume_ml(ed.endo_verts, ed.endo_faces)
    esv = cavity_volume_ml(es.endo_verts, es.endo_faces)
    return 100.0 * (edv - esv) / edv


def _myocardium_ml(phantom) -> float:
    return cavity_volume_ml(phantom.epi_verts, phantom.epi_faces) - cavity_volume_ml(
        phantom.endo_verts, phantom.endo_faces
    )


def _mean_wall_mm(phantom) -> float:
    """Mean distance from epicardial vertices (every third, base ring excluded) to the endocardium."""
    n_base = len(boundary_loops(phantom.epi_faces)[0])
    points = phantom.epi_verts[:-n_base:3]
    distance, _ = point_to_mesh_distance(points, phantom.endo_verts, phantom.endo_faces)
    return float(distance.mean())


def test_lv_topology_is_fixed_across_phases_subjects_and_parameters():
    cohort = lv_cohort(3, seed=7)
    other = lv_phantom_pair(edv_ml=100.0, ef_percent=40.0, sphericity=0.8, wall_thickness_mm=6.0, seed=1)
    phantoms = [p for pair in cohort for p in pair] + list(other)
    reference = phantoms[0]
    for phantom in phantoms:
        assert torch.equal(phantom.endo_faces, reference.endo_faces)
        assert torch.equal(phantom.epi_faces, reference.epi_faces)
        assert torch.equal(phantom.faces, reference.faces)
        assert phantom.verts.shape == reference.verts.shape
    ve = reference.endo_verts.shape[0]
    assert torch.equal(reference.verts[:ve], reference.endo_verts)
    assert torch.equal(reference.verts[ve:], reference.epi_verts)
    assert int(reference.faces[reference.endo_faces.shape[0] :].min()) == ve
    # An apex plus 16 rings of 48 vertices; one open boundary (the base) per surface.
    assert ve == 1 + 16 * 48
    assert [len(loop) for loop in boundary_loops(reference.endo_faces)] == [48]


@pytest.mark.parametrize(
    ("edv", "ef", "seed"), [(130.0, 60.0, None), (95.0, 52.0, 3), (175.0, 68.0, 11), (150.0, 35.0, 5)]
)
def test_lv_edv_and_ef_hit_the_requested_values(edv, ef, seed):
    ed, es = lv_phantom_pair(edv_ml=edv, ef_percent=ef, seed=seed)
    assert cavity_volume_ml(ed.endo_verts, ed.endo_faces) == pytest.approx(edv, rel=1e-4)
    assert abs(_ef_percent(ed, es) - ef) < 0.5
    assert ed.cavity_ml == pytest.approx(edv, rel=1e-4)
    assert es.cavity_ml == pytest.approx(edv * (1 - ef / 100), rel=1e-4)


def test_lv_surfaces_are_outward_cups_on_the_base_plane():
    for phantom in lv_phantom_pair(seed=4):
        for verts, faces in ((phantom.endo_verts, phantom.endo_faces), (phantom.epi_verts, phantom.epi_faces)):
            assert float(enclosed_volume(*close_boundary(verts, faces))) > 0.0
            base = boundary_loops(faces)[0]
            assert torch.allclose(verts[base, 2], torch.zeros(len(base)), atol=1e-4)
            assert float(verts[:, 2].max()) <= 1e-4
            assert int(verts[:, 2].argmin()) == 0  # vertex 0 is the apex
        # The epicardium encloses the endocardium.
        assert float(phantom.epi_verts[0, 2]) < float(phantom.endo_verts[0, 2])


def test_lv_es_conserves_myocardium_and_thickens_the_wall():
    ed, es = lv_phantom_pair(edv_ml=140.0, ef_percent=60.0, wall_thickness_mm=10.0, seed=2)
    assert _myocardium_ml(es) == pytest.approx(_myocardium_ml(ed), rel=1e-3)
    assert _mean_wall_mm(es) > 1.2 * _mean_wall_mm(ed)
    # The apex moves towards the fixed base plane (longitudinal shortening).
    assert float(es.endo_verts[0, 2]) > float(ed.endo_verts[0, 2])


def test_lv_wall_thickness_and_sphericity_respond_in_the_right_direction():
    walls = [_mean_wall_mm(lv_phantom(wall_thickness_mm=t)) for t in (7.0, 10.0, 13.0)]
    assert walls[0] < walls[1] < walls[2]
    assert walls[1] == pytest.approx(10.0, rel=0.15)

    def short_to_long(sphericity: float) -> float:
        endo = lv_phantom(sphericity=sphericity, edv_ml=120.0).endo_verts
        return float(endo[:, :2].norm(dim=1).max() / -endo[:, 2].min())

    ratios = [short_to_long(s) for s in (0.45, 0.6, 0.8)]
    assert ratios[0] < ratios[1] < ratios[2]
    # Unperturbed: widest radius / apex depth = sphericity / (1 + 0.25) (base 0.25 c above the equator).
    assert ratios[1] == pytest.approx(0.6 / 1.25, rel=0.02)


def test_lv_seeds_are_reproducible_and_varied():
    a, b, c = (lv_phantom(seed=s) for s in (5, 5, 6))
    assert torch.equal(a.verts, b.verts)
    assert not torch.allclose(a.verts, c.verts, atol=0.5)
    unperturbed = lv_phantom(seed=None).endo_verts
    ring_radii = unperturbed[1 + 8 * 48 : 1 + 9 * 48, :2].norm(dim=1)
    assert float(ring_radii.max() - ring_radii.min()) < 1e-3
    assert [e.verts.tolist() for e, _ in lv_cohort(2, seed=3)] == [e.verts.tolist() for e, _ in lv_cohort(2, seed=3)]


def test_lv_cohort_draws_physiological_parameters():
    cohort = lv_cohort(6, seed=21)
    for ed, es in cohort:
        for name, (low, high) in COHORT_RANGES.items():
            assert low <= getattr(ed, name) <= high
        assert (ed.phase, es.phase) == ("ED", "ES")
        assert ed.cavity_ml == pytest.approx(ed.edv_ml, rel=1e-4)
    assert len({round(ed.edv_ml, 3) for ed, _ in cohort}) == len(cohort)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"phase": "MD"},
        {"edv_ml": -5.0},
        {"ef_percent": 120.0},
        {"sphericity": 0.0},
        {"wall_thickness_mm": 0.0},
        {"n_circumferential": 2},
    ],
)
def test_lv_rejects_bad_parameters(kwargs):
    with pytest.raises(CardioInputError):
        lv_phantom(**kwargs)


# ---------------------------------------------------------------- whole-heart label map

OBLIQUE_DIRECTION = torch.linalg.matrix_exp(
    torch.tensor([[0.0, -0.4, 0.25], [0.4, 0.0, -0.3], [-0.25, 0.3, 0.0]], dtype=torch.float64)
).numpy()


@pytest.fixture(scope="module")
def heart():
    return heart_label_phantom(seed=3)


@pytest.fixture(scope="module")
def oblique_heart():
    return heart_label_phantom(
        shape=(112, 104, 72), spacing=(1.3, 1.4, 2.0), direction=OBLIQUE_DIRECTION, origin=None, seed=3
    )


def _volumes_and_centroids(phantom) -> dict[str, tuple[float, np.ndarray]]:
    voxel_ml = abs(np.linalg.det(phantom.ijk_to_ras[:3, :3])) / 1000.0
    centres = voxel_centres_ras(phantom.labels.shape, phantom.ijk_to_ras)
    flat = phantom.labels.reshape(-1)
    return {
        s.name: (float((flat == s.label).sum() * voxel_ml), centres[flat == s.label].mean(axis=0))
        for s in phantom.structures
    }


def test_heart_has_all_structures_inside_the_grid(heart):
    labels = heart.labels
    assert labels.dtype == np.int16 and labels.shape == (96, 96, 96)
    assert set(np.unique(labels)) == {0} | {s.label for s in HEART_STRUCTURES}
    assert len({s.name for s in HEART_STRUCTURES}) == len({s.label for s in HEART_STRUCTURES}) == 7
    for face in (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        assert not face.any()
    volumes = {name: v for name, (v, _) in _volumes_and_centroids(heart).items()}
    assert all(v > 10.0 for v in volumes.values())
    assert 60.0 < volumes["LV cavity"] < 200.0


def test_heart_lv_volumes_match_the_analytic_truth(heart):
    volumes = _volumes_and_centroids(heart)
    for name, truth in heart.truth.analytic_volumes_ml().items():
        assert volumes[name][0] == pytest.approx(truth, rel=0.02)


def test_heart_lv_cavity_is_enclosed_by_myocardium_except_at_the_valve_plane(heart):
    labels = heart.labels
    cavity = labels == LABEL["LV cavity"]
    allowed = {LABEL["LV cavity"], LABEL["LV myocardium"]}
    padded = np.pad(labels, 1)
    ijk = np.argwhere(cavity)
    leaks = np.zeros(len(ijk), dtype=bool)
    for axis in range(3):
        for step in (-1, 1):
            shifted = ijk + 1
            shifted[:, axis] += step
            neighbour = padded[tuple(shifted.T)]
            leaks |= ~np.isin(neighbour, list(allowed))
    # Leaking voxels touch the LA or aorta and lie on the base plane (w = 0) within a voxel.
    leak_ras = ijk[leaks] @ heart.ijk_to_ras[:3, :3].T + heart.ijk_to_ras[:3, 3]
    w = heart.truth.to_heart_frame(leak_ras)[:, 2]
    assert leaks.sum() > 0
    assert np.all(w > -1.5 * math.sqrt(3))


def test_heart_atria_and_arteries_sit_above_the_ventricles(heart):
    frame = {name: heart.truth.to_heart_frame(c[None])[0] for name, (_, c) in _volumes_and_centroids(heart).items()}
    for upper in ("LA", "RA", "aorta", "pulmonary artery"):
        for lower in ("LV cavity", "RV"):
            assert frame[upper][2] > frame[lower][2] + 10.0
    assert frame["RV"][0] > frame["LV cavity"][0] + 10.0  # RV across the septum (+u)
    assert frame["RA"][0] > frame["LA"][0]


def _touching(labels: np.ndarray, a: int, b: int) -> int:
    """Number of voxels labelled b that are 6-neighbours of a voxel labelled a."""
    padded = np.pad(labels, 1)
    near_a = np.zeros(padded.shape, dtype=bool)
    for axis in range(3):
        for step in (-1, 1):
            near_a |= np.roll(padded == a, step, axis=axis)
    return int((near_a & (padded == b)).sum())


def test_heart_chambers_and_arteries_connect_like_a_heart(heart):
    connected = [("aorta", "LV cavity"), ("pulmonary artery", "RV"), ("LA", "LV cavity"), ("RA", "RV")]
    separate = [
        ("aorta", "RV"),
        ("pulmonary artery", "LV cavity"),
        ("LA", "RV"),
        ("RA", "LV cavity"),
        ("RV", "LV cavity"),
    ]
    for a, b in connected:
        assert _touching(heart.labels, LABEL[a], LABEL[b]) > 20, (a, b)
    for a, b in separate:
        assert _touching(heart.labels, LABEL[a], LABEL[b]) == 0, (a, b)


def test_heart_anatomy_is_the_same_on_an_oblique_anisotropic_grid(heart, oblique_heart):
    assert not np.allclose(oblique_heart.ijk_to_ras[:3, :3] / np.array([1.3, 1.4, 2.0]), np.eye(3), atol=0.1)
    straight, oblique = _volumes_and_centroids(heart), _volumes_and_centroids(oblique_heart)
    for name, (volume, centroid) in straight.items():
        assert oblique[name][0] == pytest.approx(volume, rel=0.04), name
        assert np.linalg.norm(oblique[name][1] - centroid) < 1.0, name


def test_heart_seeds_are_reproducible_and_varied():
    coarse = {"shape": (48, 48, 48), "spacing": (3.0, 3.0, 3.0)}
    assert np.array_equal(heart_label_phantom(**coarse, seed=3).labels, heart_label_phantom(**coarse, seed=3).labels)
    assert not np.array_equal(heart_label_phantom(**coarse, seed=4).labels, heart_label_phantom(**coarse).labels)


def test_heart_rejects_a_non_orthonormal_direction():
    with pytest.raises(VolumeError):
        heart_label_phantom(shape=(8, 8, 8), direction=np.diag([1.0, 2.0, 1.0]))
    with pytest.raises(VolumeError):
        heart_label_phantom(shape=(8, 8, 8), spacing=(1.0, 0.0, 1.0))


# ---------------------------------------------------------------- short-axis slices


def _pixel_ras(stack) -> np.ndarray:
    """(S, H*W, 3) RAS of every pixel centre of every slice."""
    _, h, w = stack.images.shape
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pixels = np.stack([i.ravel(), j.ravel(), np.zeros(i.size), np.ones(i.size)])
    return np.einsum("sab,bn->sna", stack.slice_to_ras, pixels)[..., :3]


def test_slices_are_perpendicular_to_the_estimated_long_axis(oblique_heart):
    stack = short_axis_stack(oblique_heart, n_slices=6, in_plane_spacing_mm=1.25, size=80)
    truth_axis = oblique_heart.truth.lv_long_axis
    assert math.degrees(math.acos(float(stack.long_axis @ truth_axis))) < 3.0  # apex-to-base sign too
    for matrix in stack.slice_to_ras:
        e1, e2, normal = matrix[:3, 0], matrix[:3, 1], matrix[:3, 2]
        assert np.linalg.norm(e1) == pytest.approx(1.25) and np.linalg.norm(e2) == pytest.approx(1.25)
        assert abs(e1 @ stack.long_axis) < 1e-9 and abs(e2 @ stack.long_axis) < 1e-9 and abs(e1 @ e2) < 1e-9
        assert np.allclose(np.cross(e1, e2) / 1.25**2, stack.long_axis)
        assert np.allclose(normal / np.linalg.norm(normal), stack.long_axis)
    # Every pixel of a slice lies in one plane perpendicular to the axis, slices apex to base.
    heights = _pixel_ras(stack) @ stack.long_axis
    assert np.ptp(heights, axis=1).max() < 1e-6
    assert np.all(np.diff(heights[:, 0]) > 0)
    assert np.allclose(np.diff(heights[:, 0]), np.diff(stack.positions_mm))
    # The slices lie between the epicardial apex and the base plane.
    truth = oblique_heart.truth
    apex_ras = truth.to_ras(truth.lv_centre - np.array([0.0, 0.0, truth.lv_epi_axes[2]]))[0]
    apex_height = (apex_ras - stack.centre_ras) @ stack.long_axis
    base_height = (truth.centre_ras - stack.centre_ras) @ stack.long_axis
    assert apex_height < stack.positions_mm[0] and stack.positions_mm[-1] < base_height


def test_slices_sample_the_right_labels(oblique_heart):
    stack = short_axis_stack(
        oblique_heart, n_slices=5, slice_spacing_mm=10.0, long_axis=oblique_heart.truth.lv_long_axis
    )
    truth = oblique_heart.truth.label_at(_pixel_ras(stack).reshape(-1, 3)).reshape(stack.images.shape)
    assert stack.images.dtype == np.int16
    assert (truth == stack.images).mean() > 0.97
    middle = stack.images[2]
    cavity = middle == LABEL["LV cavity"]
    assert cavity.sum() > 100 and (middle == LABEL["LV myocardium"]).sum() > 100 and (middle == LABEL["RV"]).any()
    # In a mid-ventricular slice the cavity is ringed by myocardium: it never touches background.
    ring = np.zeros_like(cavity)
    ring[1:] |= cavity[:-1]
    ring[:-1] |= cavity[1:]
    ring[:, 1:] |= cavity[:, :-1]
    ring[:, :-1] |= cavity[:, 1:]
    assert set(np.unique(middle[ring & ~cavity])) == {LABEL["LV myocardium"]}


def test_slices_accept_a_bool_mask_and_reject_an_empty_one(heart):
    lv_mask = np.isin(heart.labels, [LABEL["LV cavity"], LABEL["LV myocardium"]])
    stack = short_axis_stack(lv_mask, heart.ijk_to_ras, n_slices=3, size=64)
    assert stack.images.dtype == bool and stack.images.shape == (3, 64, 64)
    assert stack.images[1].sum() > 200
    with pytest.raises(CardioInputError):
        short_axis_stack(np.zeros((8, 8, 8), dtype=bool), np.eye(4))
    with pytest.raises(VolumeError):
        short_axis_stack(lv_mask, None)
    with pytest.raises(CardioInputError):
        short_axis_stack(lv_mask, heart.ijk_to_ras, slice_spacing_mm=0.0)


# ---------------------------------------------------------------- DENSE displacement


def _sector_circumferential_strain(phantom) -> np.ndarray:
    """Mean Green-Lagrange E_cc = e_c^T E e_c, E = (F^T F - I) / 2, F = I + grad u, per sector, (S, T)."""
    u = phantom.displacement.astype(np.float64)
    h = phantom.spacing_mm
    dux_dy, dux_dx = np.gradient(u[:, 0], h, axis=(1, 2))
    duy_dy, duy_dx = np.gradient(u[:, 1], h, axis=(1, 2))
    grad = np.stack([np.stack([dux_dx, dux_dy], -1), np.stack([duy_dx, duy_dy], -1)], -2)
    f = grad + np.eye(2)
    e = 0.5 * (np.einsum("...ki,...kj->...ij", f, f) - np.eye(2))
    rows, cols = np.indices(phantom.mask.shape)
    angle = np.arctan2(rows * h - phantom.centre_xy_mm[1], cols * h - phantom.centre_xy_mm[0])
    e_c = np.stack([-np.sin(angle), np.cos(angle)], -1)
    ecc = np.einsum("hwi,thwij,hwj->thw", e_c, e, e_c)
    return np.stack([ecc[:, phantom.sectors == k].mean(axis=1) for k in range(1, phantom.activation_ms.size + 1)])


def _onset_ms(curve: np.ndarray, times: np.ndarray, threshold: float = -0.02) -> float:
    """First time (linear interpolation between frames) the strain falls below ``threshold``."""
    i = int(np.argmax(curve < threshold))
    assert i > 0 and curve[i] < threshold
    return float(times[i - 1] + (curve[i - 1] - threshold) / (curve[i - 1] - curve[i]) * (times[i] - times[i - 1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_encodes_the_prescribed_activation_times(seed):
    phantom = dense_phantom(seed=seed)
    strain = _sector_circumferential_strain(phantom)
    frame = phantom.times_ms[1]
    for curve, tos in zip(strain, phantom.activation_ms, strict=True):
        assert abs(_onset_ms(curve, phantom.times_ms) - tos) < frame
        # No shortening before activation, clear shortening after it.
        assert curve[phantom.times_ms <= tos].min() > -0.01
        assert curve.min() < -0.08


def test_dense_with_explicit_activation_times():
    activation = np.linspace(40.0, 250.0, 12)[np.random.default_rng(0).permutation(12)]
    phantom = dense_phantom(n_frames=30, frame_ms=25.0, n_sectors=12, activation_ms=activation, size=64, spacing_mm=2.0)
    strain = _sector_circumferential_strain(phantom)
    onsets = np.array([_onset_ms(c, phantom.times_ms) for c in strain])
    assert np.abs(onsets - activation).max() < 25.0
    assert np.argsort(onsets).tolist() == np.argsort(activation).tolist()


def test_dense_geometry_units_and_seeding():
    phantom = dense_phantom(seed=4)
    assert phantom.displacement.shape == (25, 2, 48, 48) and phantom.displacement.dtype == np.float32
    assert np.abs(phantom.displacement[0]).max() < 1e-6
    endo, epi = phantom.radii_mm
    area_mm2 = phantom.mask.sum() * phantom.spacing_mm**2
    assert area_mm2 == pytest.approx(math.pi * (epi**2 - endo**2), rel=0.06)
    assert set(np.unique(phantom.sectors)) == set(range(19))
    assert np.array_equal(phantom.sectors > 0, phantom.mask)
    counts = np.bincount(phantom.sectors[phantom.mask])[1:]
    assert counts.min() >= 0.6 * counts.mean()
    # Inward endocardial motion at peak systole of a few mm, back towards rest at the end.
    peak = np.abs(phantom.displacement).max(axis=(1, 2, 3))
    assert 2.0 < peak.max() < 8.0 and peak[-1] < 0.6 * peak.max()
    assert np.array_equal(dense_phantom(seed=4).displacement, phantom.displacement)
    assert not np.array_equal(dense_phantom(seed=5).activation_ms, phantom.activation_ms)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"activation_ms": np.zeros(5)},
        {"activation_ms": np.full(18, 5000.0)},
        {"radii_mm": (30.0, 20.0)},
        {"n_frames": 2},
    ],
)
def test_dense_rejects_bad_input(kwargs):
    with pytest.raises(CardioInputError):
        dense_phantom(**kwargs)
