"""Synthetic training images for Predict mode (cardiocore.recon.synth).

Most tests use the heart label phantom (:func:`cardiocore.phantoms.heart.heart_label_phantom`), a
label map whose structure positions are known exactly, so every geometric outcome (resampling,
poses, surfaces, frame placement) is checked against truth computed from the phantom itself. One
test reads a public MM-WHS label map (skipped when the shared data are absent).
"""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest
import torch

from conftest import shared_file
from grids import oblique_ijk_to_ras, rotation
from cardiocore.errors import CardioInputError, VolumeError
from cardiocore.phantoms.heart import heart_label_phantom
from cardiocore.recon.rules import RuleSet
from cardiocore.recon.synth import (
    CONTRASTS,
    FrameWarp,
    ShortAxisStack,
    SynthOptions,
    frame_grid_points,
    image_to_frame,
    label_lookup,
    load_cases,
    long_axis_in_frame,
    normalise_intensity,
    prepare_case,
    random_pose,
    random_warp,
    resample_to_frame,
    structure_scaling_field,
    synthesize_image,
    synthesize_sample,
)

RULES = RuleSet.default()  # the phantom's coding: labels 1..7 in rule-set order


def _ras_of(matrix: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ matrix[:3, :3].T + matrix[:3, 3]


def _structure_centroids_ras(labels: np.ndarray, matrix: np.ndarray) -> list[np.ndarray]:
    """True RAS centroid (3,) mm of each structure of a phantom label map (labels 1..7)."""
    return [_ras_of(matrix, np.argwhere(labels == s + 1).astype(np.float64)).mean(axis=0)
            for s in range(len(RULES.names))]


@pytest.fixture(scope="module")
def axis_phantom():
    """The nominal phantom on its default axis-aligned 1.5 mm grid, kept at full resolution."""
    phantom = heart_label_phantom()
    return phantom, prepare_case(phantom.labels, phantom.ijk_to_ras, RULES, "phantom", spacing_mm=1.5, n_surface=1500)


@pytest.fixture(scope="module")
def oblique_phantom():
    """A seeded phantom on an oblique, anisotropic grid (1.2 x 1.6 x 2.0 mm, rotated)."""
    direction = rotation(2, 25.0) @ rotation(0, -15.0)
    phantom = heart_label_phantom(shape=(130, 100, 80), spacing=(1.2, 1.6, 2.0), direction=direction, seed=4)
    return phantom, prepare_case(phantom.labels, phantom.ijk_to_ras, RULES, "oblique", spacing_mm=1.0, n_surface=1500)


def test_image_to_frame_on_a_512x512x300_volume_is_fast_and_memory_bounded():
    """A CT-sized float32 volume (0.49 x 0.49 x 0.63 mm, 300 MB) with a bright ball: the frame is
    sampled in a few seconds, with a peak memory increase well under 1.5 GB, ball in place."""
    volume = np.empty((512, 512, 300), dtype=np.float32)
    volume[:] = 100.0  # touch every page so the volume itself is in the baseline RSS
    matrix = np.diag([0.488, 0.488, 0.625, 1.0])
    matrix[:3, 3] = (-120.0, -130.0, -90.0)
    ball_ijk = np.array([280.0, 230.0, 160.0])
    ball_ras = _ras_of(matrix, ball_ijk)
    ijk = np.ogrid[250:311, 200:261, 130:191]
    inside = sum(((axis - c) * s) ** 2 for axis, c, s in zip(ijk, ball_ijk, (0.488, 0.488, 0.625))) <= 10.0**2
    volume[250:311, 200:261, 130:191][inside] = 1000.0

    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    image, frame_to_ras = image_to_frame(volume, matrix, size=128, spacing_mm=1.5)
    seconds = time.perf_counter() - start
    peak_increase_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 2**20

    assert image.shape == (128, 128, 128) and image.dtype == torch.float32
    assert seconds < 10.0, f"{seconds:.1f} s"  # ~1 s on one idle core
    assert peak_increase_gb < 1.5, f"peak RSS grew by {peak_increase_gb:.2f} GB"
    bright = image > 0.5
    centroid_ras = _ras_of(frame_to_ras, frame_grid_points(128, 1.5)[bright].double().mean(dim=0).numpy())
    assert np.linalg.norm(centroid_ras - ball_ras) < 0.75


def test_resampling_with_an_aligned_pose_reproduces_the_index_map(axis_phantom):
    """A frame with the index map's own axes and spacing, origin on a voxel centre: nearest and
    trilinear sampling return the index map itself."""
    _, case = axis_phantom
    size, corner = 48, np.array([20, 25, 30])
    assert (corner + size <= np.array(case.index.shape)).all()
    spacing = float(case.ijk_to_ras[0, 0])
    frame_to_ras = np.eye(4)
    frame_to_ras[:3, 3] = _ras_of(case.ijk_to_ras, corner + (size - 1) / 2.0)
    expected = torch.from_numpy(case.index[tuple(slice(c, c + size) for c in corner)].astype(np.float32))
    for mode in ("nearest", "bilinear"):
        sampled = resample_to_frame(case.index, case.ijk_to_ras, frame_to_ras, size, spacing, mode=mode)
        agreement = float((torch.round(sampled) == expected).float().mean())
        assert agreement > 0.99, f"{mode}: {agreement:.4f}"
        assert expected.unique().numel() == 8  # the window holds all seven structures


def test_a_rotated_scaled_pose_moves_every_structure_centroid_where_the_pose_says(oblique_phantom):
    """Oblique anisotropic phantom, frame rotated ~35 degrees and scaled 1.1: the centroid of each
    structure in the sample's index grid (frame mm) is the inverse pose applied to its true RAS
    centroid, within 1 mm (a third of a frame voxel; measured <= 0.3 mm, a wrong pose is off by 5-28 mm)."""
    phantom, case = oblique_phantom
    spacing = 3.5
    pose = np.eye(4)
    pose[:3, :3] = 1.1 * rotation(1, 35.0) @ rotation(2, -20.0)
    pose[:3, 3] = case.centre + np.array([6.0, -4.0, 3.0])
    sample = synthesize_sample(case, 48, spacing, torch.Generator().manual_seed(0), pose=pose)
    points = frame_grid_points(48, spacing).double()
    ras_to_frame = np.linalg.inv(pose)
    for s, truth_ras in enumerate(_structure_centroids_ras(phantom.labels, phantom.ijk_to_ras)):
        found = points[sample.index == s + 1].mean(dim=0).numpy()
        expected = _ras_of(ras_to_frame, truth_ras)
        assert np.linalg.norm(found - expected) < 1.0, f"{RULES.names[s]}: {found} vs {expected}"  # measured <= 0.3


def test_surfaces_lie_on_the_boundary_of_the_resampled_labels(oblique_phantom):
    """Probes 1.5 mm either side of every surface point (8 random directions) see the structure
    and something else; points far outside the label map read -1."""
    _, case = oblique_phantom
    generator = torch.Generator().manual_seed(3)
    sample = synthesize_sample(case, 32, 5.0, generator)
    lookup = label_lookup(case, sample.frame_to_ras)
    for s, points in enumerate(sample.surfaces):
        assert points.shape[0] == 1500
        directions = torch.nn.functional.normalize(torch.randn(points.shape[0], 8, 3, generator=generator), dim=-1)
        probes = torch.cat([points[:, None] + 1.5 * directions, points[:, None] - 1.5 * directions], dim=1)
        labels = lookup(probes.reshape(-1, 3)).reshape(points.shape[0], 16)
        both = ((labels == s).any(dim=1) & (labels != s).any(dim=1)).float().mean()
        assert both > 0.97, f"{RULES.names[s]}: {float(both):.3f}"
    far = lookup(torch.tensor([[1e4, 0.0, 0.0], [0.0, -1e4, 0.0]]))
    assert far.tolist() == [-1, -1]


def test_a_random_warp_is_smooth_bounded_and_inverted_to_a_hundredth_of_a_mm():
    options = SynthOptions(elastic_mm=8.0, elastic_grid=5)
    generator = torch.Generator().manual_seed(5)
    warp = random_warp(generator, 64, 3.0, options)
    assert warp.field.shape == (3, 5, 5, 5) and warp.half_mm == 96.0
    step_mm = 2 * 96.0 / 4
    assert max(float(warp.field.diff(dim=a).abs().max()) for a in (1, 2, 3)) <= 0.5 * step_mm + 1e-4
    # Control points are reproduced exactly; between them the field is trilinear.
    corner = torch.tensor([[-96.0, -96.0, -96.0], [96.0, 0.0, -48.0]])
    assert torch.allclose(warp.displacement(corner), torch.stack([warp.field[:, 0, 0, 0], warp.field[:, 4, 2, 1]]),
                          atol=1e-4)
    points = (torch.rand(500, 3, generator=generator) - 0.5) * 180.0
    moved = points + warp.displacement(points)
    assert float((warp.inverse(moved) - points).norm(dim=1).max()) < 0.01
    # Without a deformation nothing is drawn: the default samples stay what they were.
    state = generator.get_state()
    assert random_warp(generator, 64, 3.0, SynthOptions()) is None
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("options", [
    SynthOptions(elastic_mm=6.0),
    SynthOptions(elastic_mm=6.0, dilate=("lv_cavity", "rv"), dilate_range=(1.65, 1.65)),
    SynthOptions(dilate=("la",), dilate_range=(0.8, 0.8)),
], ids=["elastic", "elastic-and-dilated", "contracted"])
def test_warped_samples_keep_labels_image_and_surfaces_together(oblique_phantom, options):
    """With a strong shape deformation (elastic, structures scaled, or both), the index map is the
    warped label look-up at the voxel centres, and the boundary points still lie on the boundary
    of the warped labels."""
    _, case = oblique_phantom
    generator = torch.Generator().manual_seed(11)
    sample = synthesize_sample(case, 32, 5.0, generator, options)
    assert isinstance(sample.warp, FrameWarp) and float(sample.warp.field.abs().max()) > 1.0
    points = (torch.rand(2000, 3, generator=generator) - 0.5) * 150.0
    inverted = sample.warp.inverse(points + sample.warp.displacement(points))
    assert float((inverted - points).norm(dim=1).max()) < 0.01
    lookup = label_lookup(case, sample.frame_to_ras, sample.warp)
    grid = frame_grid_points(32, 5.0).reshape(-1, 3)
    assert (lookup(grid).reshape(32, 32, 32) + 1 == sample.index).float().mean() > 0.999
    unwarped = label_lookup(case, sample.frame_to_ras)
    assert (unwarped(grid).reshape(32, 32, 32) + 1 != sample.index).float().mean() > 0.005  # the shape did change
    for s, points in enumerate(sample.surfaces):
        directions = torch.nn.functional.normalize(torch.randn(points.shape[0], 8, 3, generator=generator), dim=-1)
        probes = torch.cat([points[:, None] + 1.5 * directions, points[:, None] - 1.5 * directions], dim=1)
        labels = lookup(probes.reshape(-1, 3)).reshape(points.shape[0], 16)
        both = ((labels == s).any(dim=1) & (labels != s).any(dim=1)).float().mean()
        assert both > 0.97, f"{RULES.names[s]}: {float(both):.3f}"


def test_a_scaling_field_magnifies_the_ball_about_its_centre_and_fades_far_from_it():
    """Inside the ball a frame point reads the label map at c + (p - c) / k; three radii beyond
    it the displacement has faded below a thousandth of the radius."""
    centre, radius, scale = torch.tensor([[10.0, -20.0, 5.0]]), torch.tensor([30.0]), torch.tensor([1.4])
    field = structure_scaling_field(centre, radius, scale, 64, 3.0, 33)
    warp = FrameWarp.on_frame(field, 64, 3.0)
    axis = torch.linspace(-96.0, 96.0, 33)
    nodes = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    distance = (nodes - centre).norm(dim=1)
    inside, far = nodes[distance < 30.0], nodes[distance > 120.0]
    assert len(inside) > 100 and len(far) > 100
    torch.testing.assert_close(inside + warp.displacement(inside), centre + (inside - centre) / 1.4,
                               atol=1e-4, rtol=0)
    assert float(warp.displacement(far).norm(dim=1).max()) < 0.03


def test_dilating_a_structure_grows_it_and_contracting_shrinks_it(axis_phantom):
    """Same seed and pose: the LV cavity's frame volume grows with a factor above 1 and shrinks
    below 1, about as the cube of the factor; an unknown structure name is refused by name."""
    _, case = axis_phantom

    def cavity_voxels(options: SynthOptions) -> int:
        sample = synthesize_sample(case, 48, 2.5, torch.Generator().manual_seed(3), options,
                                   pose=_translation(case.centre))
        return int((sample.index == RULES.names.index("lv_cavity") + 1).sum())

    plain = cavity_voxels(SynthOptions(dilate=("lv_cavity",), dilate_range=(1.0, 1.0)))
    assert plain == cavity_voxels(SynthOptions())
    grown = cavity_voxels(SynthOptions(dilate=("lv_cavity",), dilate_range=(1.3, 1.3)))
    shrunk = cavity_voxels(SynthOptions(dilate=("lv_cavity",), dilate_range=(0.8, 0.8)))
    assert 1.3 ** 2 < grown / plain < 1.3 ** 3 * 1.1, grown / plain
    assert 0.8 ** 3 * 0.9 < shrunk / plain < 0.8 ** 2, shrunk / plain
    with pytest.raises(CardioInputError, match="'left_ventricle'.*lv_cavity"):
        synthesize_sample(case, 16, 6.0, torch.Generator(), SynthOptions(dilate=("left_ventricle",)))
    with pytest.raises(CardioInputError, match="dilate_range"):
        synthesize_sample(case, 16, 6.0, torch.Generator(), SynthOptions(dilate=("rv",), dilate_range=(1.2, 0.9)))


def _translation(centre: np.ndarray) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, 3] = centre
    return pose


@pytest.mark.parametrize("contrast", [c for c in CONTRASTS if c != "random"])
def test_ct_and_mr_contrasts_make_blood_bright_and_myocardium_darker(axis_phantom, contrast):
    """On every seed the blood pools are brighter than the myocardium, and close to one another
    (one contrast level); an unknown contrast model is refused by name."""
    _, case = axis_phantom
    myocardium = RULES.names.index("lv_myocardium") + 1
    for seed in range(4):
        options = SynthOptions(contrast=contrast, noise_std=(0.0, 0.0), bias_coefficient=0.0, gamma=(1.0, 1.0))
        sample = synthesize_sample(case, 32, 5.0, torch.Generator().manual_seed(seed), options)
        means = {k: float(sample.image[sample.index == k].mean()) for k in range(1, len(RULES.names) + 1)}
        pools = [means[k] for k in means if k != myocardium]
        assert min(pools) > means[myocardium] + 0.05, (seed, means)
        assert max(pools) - min(pools) < 0.5 * (min(pools) - means[myocardium]) + 0.2, (seed, means)
    with pytest.raises(CardioInputError, match="contrast.*'pet'.*random, ct, mr"):
        synthesize_sample(case, 16, 6.0, torch.Generator(), SynthOptions(contrast="pet"))


def test_synthetic_images_are_normalised_random_per_seed_and_reproducible(axis_phantom):
    """Images lie in [0, 1]; the same seed gives the same sample; another seed gives other
    intensities for every structure; structures are told apart by intensity."""
    _, case = axis_phantom

    def sample(seed: int):
        return synthesize_sample(case, 32, 5.0, torch.Generator().manual_seed(seed))

    first, again, other = sample(0), sample(0), sample(1)
    assert torch.equal(first.image, again.image) and torch.equal(first.index, again.index)
    np.testing.assert_array_equal(first.frame_to_ras, again.frame_to_ras)
    for s in (first, other):
        assert s.image.shape == (32, 32, 32) and s.image.dtype == torch.float32
        assert float(s.image.min()) >= 0.0 and float(s.image.max()) <= 1.0
        assert float(s.image.max()) - float(s.image.min()) > 0.5

    def means(s) -> torch.Tensor:
        return torch.stack([s.image[s.index == k + 1].mean() for k in range(len(RULES.names))])

    assert ((means(first) - means(other)).abs() > 1e-3).all()
    assert float(means(first).std()) > 0.05


def test_synthesis_options_extremes_stay_in_range(axis_phantom):
    """No background classes, always thick slices, always flipped contrast, no supersampling."""
    _, case = axis_phantom
    options = SynthOptions(supersample=1, n_background_classes=0, thick_slice_prob=1.0, flip_contrast_prob=1.0,
                           noise_std=(0.1, 0.1))
    sample = synthesize_sample(case, 24, 6.0, torch.Generator().manual_seed(5), options)
    assert float(sample.image.min()) >= 0.0 and float(sample.image.max()) <= 1.0
    with pytest.raises(VolumeError, match="0..7"):
        synthesize_image(torch.full((4, 4, 4), 9), [False] * 7, torch.Generator(), options)


def test_a_short_axis_stack_keeps_what_its_slices_image_and_loses_what_falls_between():
    """Known truth on a 48^3 grid of 2 mm: slices every 12 mm across an oblique normal. An image
    that varies only across the normal (in-plane) comes through unchanged; a 2 mm sheet lying on a
    slice plane is still seen there, one in the middle of a gap vanishes; beyond the last slice the
    nearest slice continues (border values, as image_to_frame's resampling gives)."""
    size, spacing = 48, 2.0
    points = frame_grid_points(size, spacing).double()
    normal = np.array([1.0, 2.0, 2.0]) / 3.0
    stack = ShortAxisStack(normal, first_mm=-30.0, spacing_mm=12.0, thickness_mm=3.0, n_slices=6)
    in_plane = torch.as_tensor(np.cross(normal, [0.0, 0.0, 1.0]))
    in_plane = in_plane / in_plane.norm()
    ramp = (points @ in_plane).float()
    seen = stack.apply(ramp, spacing)
    assert torch.allclose(seen, normalise_intensity(ramp), atol=0.02)

    depth = points @ torch.as_tensor(normal)  # slices at -30, -18, -6, 6, 18 and 30 mm

    def near(at_mm: float) -> torch.Tensor:
        return (depth - at_mm).abs() <= 1.0

    seen = stack.apply((near(18.0) | near(0.0)).float(), spacing)  # a sheet on a slice, one in a gap
    assert float(seen[near(18.0)].mean()) > 0.5
    assert float(seen[near(0.0)].max()) < 0.01
    assert float(seen[near(12.0)].mean()) == pytest.approx(0.5 * float(seen[near(18.0)].mean()), abs=0.05)
    # Beyond the last slice its values continue: a ramp along the normal stops growing there.
    seen = stack.apply(depth.float().clamp(-40.0, 40.0), spacing)
    assert float(seen[near(36.0)].mean()) == pytest.approx(float(seen[near(30.0)].mean()), abs=0.02)
    assert float(seen[near(24.0)].mean()) < float(seen[near(30.0)].mean()) - 0.05


def test_short_axis_stacks_are_drawn_across_the_lv_axis_and_leave_other_draws_alone(axis_phantom):
    """The phantom's LV axis, found from its cavity points, carries the stack normal within the
    20 degree tilt; with the stack probability 0 the samples are those of the default options,
    with 1 the image changes while labels, pose and surfaces stay the same."""
    phantom, case = axis_phantom
    centre, axis = long_axis_in_frame(case, np.eye(4))
    cavity = np.argwhere(phantom.labels == 1) @ phantom.ijk_to_ras[:3, :3].T + phantom.ijk_to_ras[:3, 3]
    _, _, truth = np.linalg.svd(cavity - cavity.mean(axis=0), full_matrices=False)
    assert abs(float(axis @ truth[0])) > 0.99
    np.testing.assert_allclose(centre, cavity.mean(axis=0), atol=2.0)
    for seed in range(5):
        stack = ShortAxisStack.draw(torch.Generator().manual_seed(seed), centre, axis)
        assert abs(float(stack.normal @ axis)) >= np.cos(np.radians(20.0)) - 1e-9
        assert 8.0 <= stack.spacing_mm <= 20.0 and stack.thickness_mm <= min(10.0, stack.spacing_mm)
        assert stack.n_slices >= 2 and stack.first_mm < float(centre @ stack.normal)

    def sample(probability: float):
        return synthesize_sample(case, 32, 5.0, torch.Generator().manual_seed(2),
                                 SynthOptions(short_axis_stack_prob=probability))

    plain, always = sample(0.0), sample(1.0)
    never = synthesize_sample(case, 32, 5.0, torch.Generator().manual_seed(2))
    assert torch.equal(plain.image, never.image)
    assert torch.equal(always.index, plain.index)
    np.testing.assert_array_equal(always.frame_to_ras, plain.frame_to_ras)
    assert float((always.image - plain.image).abs().mean()) > 0.01


def test_random_pose_respects_its_ranges():
    """Rotation angle, scale and shift of 50 random poses stay within their limits."""
    generator = torch.Generator().manual_seed(2)
    centre = np.array([10.0, -20.0, 30.0])
    for _ in range(50):
        pose = random_pose(generator, centre, max_rotation_deg=10.0, scale_range=(0.9, 1.1), max_shift_mm=5.0)
        scale = np.cbrt(np.linalg.det(pose[:3, :3]))
        rot = pose[:3, :3] / scale
        angle = np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))
        assert 0.9 <= scale <= 1.1 and angle <= np.sqrt(3) * 10.0 + 1e-6
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert (np.abs(pose[:3, 3] - centre) <= 5.0).all()


def test_image_to_frame_places_a_ball_of_an_oblique_anisotropic_volume():
    """A bright 10 mm ball in an oblique 0.7 x 1.3 x 2.5 mm volume lands at its RAS position in the
    frame, whether the frame is centred on the image (default) or on the ball. (The ball fills
    1.6 % of the 64 mm frame, so the 99.5th percentile is ball intensity.)"""
    matrix = oblique_ijk_to_ras()
    shape = (100, 60, 40)
    ball_ras = _ras_of(matrix, np.array([60.0, 25.0, 22.0]))
    ras = _ras_of(matrix, np.indices(shape).reshape(3, -1).T.astype(np.float64))
    volume = np.where(np.linalg.norm(ras - ball_ras, axis=1) <= 10.0, 900.0, 100.0).reshape(shape).astype(np.int16)
    volume += np.random.default_rng(0).normal(0.0, 5.0, shape).astype(np.int16)

    image, frame_to_ras = image_to_frame(volume, matrix, size=32, spacing_mm=2.0)
    np.testing.assert_allclose(frame_to_ras[:3, :3], np.eye(3))
    np.testing.assert_allclose(frame_to_ras[:3, 3], _ras_of(matrix, (np.array(shape) - 1) / 2.0))
    points = frame_grid_points(32, 2.0).double()
    bright = image > 0.5
    assert 0.8 < int(bright.sum()) * 8.0 / (4 / 3 * np.pi * 10.0**3) < 1.25  # the ball's volume, mm^3
    found = _ras_of(frame_to_ras, points[bright].mean(dim=0).numpy())
    assert np.linalg.norm(found - ball_ras) < 0.5

    image, frame_to_ras = image_to_frame(torch.from_numpy(volume), matrix, 32, 2.0, centre_ras=ball_ras)
    assert float(points[image > 0.5].mean(dim=0).norm()) < 0.5
    assert float(image[15:17, 15:17, 15:17].min()) > 0.9


def test_bad_inputs_are_named(tmp_path):
    """Non-3-D arrays, singular matrices, empty or non-cardiac label maps, a frame off the image."""
    labels = np.zeros((8, 8, 8), dtype=np.int32)
    labels[2:5, 2:5, 2:5] = 1
    with pytest.raises(VolumeError, match="case"):
        prepare_case(labels[0], np.eye(4), RULES, "case")
    with pytest.raises(VolumeError, match="singular"):
        prepare_case(labels, np.diag([1.0, 0.0, 1.0, 1.0]), RULES, "case")
    with pytest.raises(CardioInputError, match="empty-case.*no voxel"):
        prepare_case(np.zeros_like(labels), np.eye(4), RULES, "empty-case")
    with pytest.raises(VolumeError, match="frame_to_ras"):
        resample_to_frame(labels, np.eye(4), np.zeros((4, 4)), 4, 1.0)
    with pytest.raises(VolumeError, match="volume"):
        image_to_frame(np.zeros((4, 4, 4, 2)), np.eye(4), 4, 1.0)
    with pytest.raises(CardioInputError, match="centre_ras"):
        image_to_frame(labels.astype(np.float32), np.eye(4), 4, 1.0, centre_ras=np.array([500.0, 0, 0]))

    path = tmp_path / "phantom.npz"
    np.savez(path, labels=labels, ijk_to_ras=np.eye(4))
    assert load_cases([path], "default")[0].name == "phantom"
    with pytest.raises(CardioInputError, match=f"{path}.*no voxel of any structure"):
        load_cases([path], "mmwhs")


def test_an_mmwhs_label_map_gives_complete_samples():
    """A public MM-WHS CT label map (0.49 x 0.49 x 0.63 mm): every structure is found, its index
    map is subsampled to about the requested spacing, and a sample holds all seven structures."""
    case, = load_cases([shared_file("mmwhs_ct_labels/ct_train_1002_label.nii.gz")], "mmwhs",
                       spacing_mm=2.0, n_surface=500)
    assert case.name == "ct_train_1002_label" and case.names == RuleSet.mmwhs().names
    assert case.index.dtype == np.uint8 and set(np.unique(case.index)) == set(range(8))
    np.testing.assert_allclose(np.linalg.norm(case.ijk_to_ras[:3, :3], axis=0), [1.95, 1.95, 1.875], atol=0.01)
    assert all(points.shape == (500, 3) for points in case.surfaces)
    sample = synthesize_sample(case, 40, 4.0, torch.Generator().manual_seed(0))
    assert set(sample.index.unique().tolist()) == set(range(8))
    lookup = label_lookup(case, sample.frame_to_ras)
    for s, points in enumerate(sample.surfaces):
        nearest = lookup(points)
        assert float((nearest == s).float().mean()) > 0.2 and float((nearest != s).float().mean()) > 0.2
